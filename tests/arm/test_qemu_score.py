"""Emulated arm64 run: `edge-runtime score` on the demo model under qemu-user.

Runs ``scripts/arm64-emulated.sh`` (an arm64 Debian bookworm root from debootstrap, the
aarch64 wheels of the device extra, the root's python3.11 under ``qemu-aarch64-static``),
which reuses its cache when present, and checks its ``result.json``: the emulated
process saw ``platform.machine() == "aarch64"`` and its predictions match the host's
x86_64 run of the same command within 1e-5. Needs root, the Debian mirror and PyPI the
first time (about one to two minutes), under a minute afterwards. Cache directory:
``$EDGE_ARM64_CACHE`` or /tmp/edge-arm64. Run with ``make test-arm``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "arm64-emulated.sh"
INFEASIBLE = 77  # the script's exit code for "cannot be done on this machine"

pytestmark = pytest.mark.arm


@pytest.fixture(scope="module")
def emulated_run() -> tuple[Path, dict]:
    cache = Path(os.environ.get("EDGE_ARM64_CACHE", "/tmp/edge-arm64"))
    proc = subprocess.run(["bash", str(SCRIPT), str(cache)], capture_output=True, text=True, timeout=1800)
    if proc.returncode == INFEASIBLE:
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0, f"{SCRIPT.name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return cache, json.loads((cache / "result.json").read_text())


@pytest.mark.timeout(1800)
def test_emulated_process_is_aarch64(emulated_run: tuple[Path, dict]) -> None:
    _, result = emulated_run
    assert result["emulated"]["machine"] == "aarch64"
    assert result["emulated"]["python"].startswith("3.11.")


@pytest.mark.timeout(1800)
def test_emulated_predictions_match_host(emulated_run: tuple[Path, dict]) -> None:
    cache, result = emulated_run
    arm = np.load(cache / "arm.npy", allow_pickle=False)
    host = np.load(cache / "host.npy", allow_pickle=False)
    assert arm.shape == host.shape and arm.shape[0] == 20  # device/factory/sample.csv has 20 rows
    assert np.all(np.isfinite(arm))
    np.testing.assert_allclose(arm, host, rtol=0, atol=1e-5)
    assert result["max_abs_diff"] is not None and result["max_abs_diff"] <= 1e-5
