"""``make run`` works: the commands the Makefile's ``run`` target runs, taken from
``make -n run``, run with this virtual environment's ``edge-runtime`` in a copy of the
demo files (so the store lands in a temporary directory, never in the checkout)."""

from __future__ import annotations

import csv
import io
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.daemon import EDGE

REPO = Path(__file__).resolve().parents[2]
ONE_SHOT = {"models", "score", "bundle", "keys"}  # a daemon command (serve) would not return


def _run_commands(edge: Path) -> list[list[str]]:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    dry = subprocess.run(["make", "-n", "-s", "run", f"EDGE={edge}"], cwd=REPO, capture_output=True, text=True,
                         check=True, timeout=60)
    commands = [shlex.split(line) for line in dry.stdout.splitlines() if line.startswith(str(edge))]
    return [c for c in commands if len(c) > 1 and c[1] in ONE_SHOT]


def test_make_run_installs_the_demo_bundle_and_prints_the_predictions(
    tmp_path: Path, litert: Any, sample_x: np.ndarray
) -> None:
    commands = _run_commands(EDGE)  # this interpreter's environment, wherever it lives
    assert [c[1:3] for c in commands][:1] == [["models", "install"]]
    assert any(c[1] == "score" for c in commands)
    for part in ("device/factory", "device/demo-keys"):
        shutil.copytree(REPO / part, tmp_path / part)
    want = litert(REPO / "device" / "factory" / "fraud.tflite", sample_x)

    for attempt in (1, 2):  # and again: a second `make run` must work too
        outputs = []
        for cmd in commands:
            proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
            assert proc.returncode == 0, f"{shlex.join(cmd)}: {proc.stderr}"
            assert "Traceback" not in proc.stderr
            outputs.append((cmd[1:3], proc.stdout))
        install_out = next(out for c, out in outputs if c == ["models", "install"])
        assert ("fraud v1 installed" if attempt == 1 else "fraud v1 already installed") in install_out
        list_out = next(out for c, out in outputs if c == ["models", "list"])
        assert any(line.split()[:3] == ["fraud", "1", "active"] for line in list_out.splitlines())
        score_out = next(out for c, out in outputs if c[0] == "score")
        rows = list(csv.reader(io.StringIO(score_out)))
        assert rows[0] == ["output_0"] and len(rows) == 21
        assert np.max(np.abs(np.array(rows[1:], dtype=np.float64) - want)) <= 1e-6
    assert (tmp_path / ".edge" / "store" / "fraud" / "1" / "model.tflite").is_file()
