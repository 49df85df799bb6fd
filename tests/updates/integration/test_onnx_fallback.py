"""An ONNX fallback release reaching a device installed without onnxruntime (the `device` extra
only): the device refuses it with the reason, keeps serving the version it had, and `fleet
status` shows the refusal. Real mosquitto, the real update client, the real CLI.

The device is in-process; "installed without onnxruntime" is made real for it by making
``import onnxruntime`` fail (``sys.modules["onnxruntime"] = None``), which is what the backend
meets on such a device.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from converter.package import pack_onnx
from edge_runtime.bundle.reader import open_bundle
from harness.wait import wait_until
from updates.conftest import FACTORY, FLEET, FleetKeys, Releases
from updates.integration.conftest import Mosquitto, Observer, publish, start_device

EDGE = Path(sys.executable).parent / "edge-runtime"
pytestmark = pytest.mark.integration


def test_a_device_without_onnxruntime_refuses_an_onnx_release_and_fleet_status_says_why(
    tmp_path: Path, mosquitto: Mosquitto, observer: Observer, fleet_keys: FleetKeys, releases: Releases,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    onnx_bundle = tmp_path / "fraud-v2-onnx.bundle"
    pack_onnx(FACTORY / "fraud.onnx", name="fraud", version=2, keys=[fleet_keys.models_key], out=onnx_bundle,
              chunk_size=4096, golden=None, reason="onnx2tf failed (test)", report=None, architectures=["any"])
    with open_bundle(onnx_bundle, fleet_keys.root) as b:
        assert b.manifest.format == "onnx"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # this device has the `device` extra only
    service, store = start_device(tmp_path / "pi", mosquitto.url, "pi-no-onnx", fleet_keys, [releases.bundle(1)], 1)
    try:
        wait_until(lambda: observer.state("pi-no-onnx"), "the device to report")
        publish(mosquitto.url, onnx_bundle, fleet_keys.models_key)
        failed = wait_until(lambda: observer.of("pi-no-onnx", "failed"), "the failed event")[0]
        assert failed["version"] == 2 and "needs onnxruntime" in failed["reason"]
        assert "install.sh --with-onnx" in failed["reason"]
        state = store.state("fraud")
        assert state.active == 1 and 2 in state.failed  # still serving v1
        wait_until(lambda: observer.state("pi-no-onnx").get("last_error"), "last_error in the state")
    finally:
        service.stop()
    out = subprocess.run([str(EDGE), "fleet", "status", "--fleet", FLEET, "--broker", mosquitto.url],
                         capture_output=True, text=True, timeout=60, check=False)
    row = next(line for line in out.stdout.splitlines() if line.startswith("pi-no-onnx"))
    assert "fraud v1 (failed v2)" in row and "needs onnxruntime" in row, out.stdout
    assert "fraud: v1 on 1; failed v2 on 1" in out.stdout
