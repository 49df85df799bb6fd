"""A delta update end to end on the real daemon: ``fleet publish v2 --delta-from v1`` to a daemon
serving v1 over a real mosquitto; the daemon rebuilds v2 from the delta, its model file is the
signed full v2 byte for byte, and v2 answers HTTP requests (issue 25's acceptance)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import numpy as np
import orjson
import pytest

from edge_runtime.bundle.reader import BundleLimits
from edge_runtime.store.store import ModelStore
from harness.daemon import EDGE, Daemon
from harness.http import request
from harness.wait import wait_until
from updates.conftest import FACTORY, FLEET, FleetKeys, Releases
from updates.integration.conftest import Mosquitto, Observer

pytestmark = pytest.mark.integration
PAD = 200_000
DEVICE = "pi-delta-daemon"


def test_a_delta_release_is_rebuilt_byte_identical_and_served(
    tmp_path: Path, mosquitto: Mosquitto, observer: Observer, fleet_keys: FleetKeys, releases: Releases,
) -> None:
    from edge_runtime.fleet.delta import read_artifacts

    v1, v2 = (releases.bundle(v, pad=PAD, chunk_size=16_384) for v in (1, 2))
    store = ModelStore(tmp_path / "store", fleet_keys.root, None, BundleLimits())
    store.install(v1)
    store.activate("fraud", 1)
    (tmp_path / "config.toml").write_text(
        f'[device]\nid = "{DEVICE}"\n[store]\npath = "{tmp_path / "store"}"\nfactory = "{tmp_path / "factory"}"\n'
        f'[server]\nport = 0\nswap_poll_ms = 100\n[trust]\nroot = "{fleet_keys.path("root.json")}"\n'
        f'[mqtt]\nurl = "{mosquitto.url}"\nfleet = "{FLEET}"\nreconnect_min_s = 0.05\nreconnect_max_s = 0.5\n',
        encoding="utf-8",
    )
    daemon = Daemon(tmp_path / "config.toml")
    try:
        daemon.wait_ready()
        wait_until(lambda: observer.state(DEVICE), "the daemon's update client to report")
        out = subprocess.run(
            [str(EDGE), "fleet", "publish", str(v2), "--delta-from", str(v1), "--fleet", FLEET, "--broker", mosquitto.url,
             "--sign-key", str(fleet_keys.path("signing.key")), "--root", str(fleet_keys.path("root.json"))],
            capture_output=True, text=True, timeout=120, check=False,
        )
        assert out.returncode == 0, out.stderr
        x = np.load(FACTORY / "sample.npy").astype(np.float32)[:1]
        body = orjson.dumps({"inputs": [{"name": "input_0", "datatype": "FP32", "shape": [1, 30],
                                         "data": x.ravel().tolist()}]})
        wait_until(lambda: b'"model_version":"2"' in request(daemon.port, "POST", "/v2/models/fraud/infer", body)[1],
                   "the daemon to answer with v2")
        rebuilt = (tmp_path / "store" / "fraud" / "2" / "model.tflite").read_bytes()
        assert hashlib.sha256(rebuilt).hexdigest() == read_artifacts(v2, None)[0].artifacts["model.tflite"].sha256
        state = wait_until(lambda: (s := observer.state(DEVICE)) and s.get("downloaded_bytes", {}).get("fraud") and s,
                           "the bytes downloaded in the state")
        assert 0 < state["downloaded_bytes"]["fraud"]["2"] < v2.stat().st_size / 10  # the delta, not the release
        assert not observer.of(DEVICE, "delta_fallback")
    finally:
        assert daemon.stop() == 0, daemon.log()
