"""Shared helpers for the converter tests: paths, the ``edge-convert`` runner and its result.

Imported by ``conftest.py`` and the test modules (this directory is on sys.path; it has no
``__init__.py`` because a test package named ``converter`` would shadow the real one).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
# This directory has no __init__.py (a test package named 'converter' would shadow the real one),
# so pytest puts tests/ on sys.path, where 'converter' would be found as a namespace package
# before the editable install's finder runs. The checkout goes first so the real package wins.
if sys.path[0] != str(REPO):
    sys.path.insert(0, str(REPO))

FACTORY_SRC = REPO / "device" / "factory"
EDGE_CONVERT = Path(sys.executable).parent / "edge-convert"
CONVERT_TIMEOUT_S = 900


@dataclass(frozen=True)
class Conversion:
    """One ``edge-convert`` run."""

    args: tuple[str, ...]
    code: int
    out: str
    err: str
    bundle: Path
    seconds: float

    @property
    def log(self) -> Path:
        """The onnx2tf log kept beside the bundle."""
        return self.bundle.with_name(self.bundle.stem + ".onnx2tf.log")

    def json(self) -> dict[str, Any]:
        """The ``--json`` output."""
        parsed: dict[str, Any] = json.loads(self.out)
        return parsed

    @property
    def err_lines(self) -> list[str]:
        """stderr without TensorFlow/LiteRT start-up chatter."""
        return [ln for ln in self.err.splitlines() if ln.strip() and not ln.startswith(("INFO: Created", "W0000", "E0000"))]


def require_unshare() -> None:
    """Fail (never skip) when tests cannot cut the network off."""
    if shutil.which("unshare") is None:
        pytest.fail("the converter tests need 'unshare' (util-linux) to run conversions without network")
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.fail(f"'unshare -n' does not work here (needs root or user namespaces): {probe.stderr.strip()}")


def run_convert(args: Sequence[str | Path], bundle: Path, env: dict[str, str] | None = None,
                network: bool = False) -> Conversion:
    """Run ``edge-convert ARGS -o BUNDLE`` without network (``network=True`` only for usage errors)."""
    cmd = [str(EDGE_CONVERT), *map(str, args), "-o", str(bundle)]
    if not network:
        require_unshare()
        cmd = ["unshare", "-n", *cmd]
    base = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env or base, timeout=CONVERT_TIMEOUT_S, check=False)
    return Conversion(tuple(map(str, args)), proc.returncode, proc.stdout, proc.stderr, bundle, time.monotonic() - start)


@dataclass(frozen=True)
class ModelFiles:
    """A test model and its data files."""

    onnx: Path
    calibration: Path | None = None
    validation: Path | None = None



ConversionCache = Callable[[str], Conversion]
