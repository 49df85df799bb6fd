"""Delta updates and maintenance windows through a real mosquitto and the ``fleet publish`` CLI:
a v2 delivered as a delta is byte-identical to the full v2; a corrupted delta falls back to the
full artifact; a closed window leaves v1 serving with v2 downloaded until it opens (the device's
wall clock is injected, nothing waits real minutes)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import subprocess
from pathlib import Path

import pytest

from edge_runtime.fleet.session import BrokerOptions, FleetSession
from edge_runtime.store.store import ModelStore
from edge_runtime.updates.protocol import Topics
from harness.daemon import EDGE
from harness.wait import wait_until
from updates.conftest import FLEET, FleetKeys, Releases
from updates.integration.conftest import Mosquitto, Observer, publish, start_device

pytestmark = pytest.mark.integration
PAD = 200_000


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _model(store: ModelStore, version: int) -> Path:
    return store.version_dir("fraud", version) / "model.tflite"


def _signed_sha(bundle: Path) -> str:
    from edge_runtime.fleet.delta import read_artifacts

    return read_artifacts(bundle, None)[0].artifacts["model.tflite"].sha256


def test_delta_fallback_and_window(tmp_path: Path, mosquitto: Mosquitto, observer: Observer, fleet_keys: FleetKeys,
                                   releases: Releases) -> None:
    v1, v2, v3, v4 = (releases.bundle(v, pad=PAD, chunk_size=16_384) for v in (1, 2, 3, 4))
    full_bytes = v2.stat().st_size

    # 1. A device with v1 takes v2 as a delta published by the CLI.
    svc, store = start_device(tmp_path / "a", mosquitto.url, "pi-delta", fleet_keys, [v1], 1)
    try:
        out = subprocess.run(
            [str(EDGE), "fleet", "publish", str(v2), "--delta-from", str(v1), "--fleet", FLEET, "--broker", mosquitto.url,
             "--sign-key", str(fleet_keys.path("signing.key")), "--root", str(fleet_keys.path("root.json"))],
            capture_output=True, text=True, timeout=120, check=False,
        )
        assert out.returncode == 0, out.stderr
        assert "delta from v1:" in out.stdout
        wait_until(lambda: store.state("fraud").active == 2, "v2 through the delta")
        assert _sha(_model(store, 2)) == _signed_sha(v2), "the rebuilt v2 differs from the signed full v2"
        state = wait_until(lambda: (s := observer.state("pi-delta")) and s.get("downloaded_bytes", {}).get("fraud") and s,
                           "the downloaded bytes in the state")
        got = state["downloaded_bytes"]["fraud"]["2"]
        assert 0 < got < full_bytes / 10, (got, full_bytes)
        assert not observer.of("pi-delta", "delta_fallback")
    finally:
        svc.stop()

    # 2. v3's delta from v2 has a corrupted chunk on the broker: a device with v2 falls back to the full v3.
    publish(mosquitto.url, v3, fleet_keys.models_key, delta_from=[v2], percent=0)  # nobody takes it yet
    topics = Topics("edge", FLEET)
    with FleetSession(BrokerOptions(url=mosquitto.url), topics, timeout_s=20) as session:
        chunk = topics.delta_chunk("fraud", 3, 2, "model.tflite", 0)
        good = session.snapshot([chunk])[chunk]
        session.publish(chunk, bytes([good[0] ^ 0xFF]) + good[1:]).wait(20)
    svc, store = start_device(tmp_path / "b", mosquitto.url, "pi-fallback", fleet_keys, [v1, v2], 2)
    try:
        wall = {"now": _dt.datetime(2026, 1, 10, 12, 0, tzinfo=_dt.UTC)}
        svc.updater.wall = lambda: wall["now"]
        publish(mosquitto.url, v3, fleet_keys.models_key, delta_from=[v2])
        wait_until(lambda: store.state("fraud").active == 3, "v3 after the fallback")
        assert _sha(_model(store, 3)) == _signed_sha(v3)
        fallback = wait_until(lambda: observer.of("pi-fallback", "delta_fallback"), "the delta_fallback event")
        assert "sha256" in fallback[0]["reason"]

        # 3. v4 with a window that is closed at the device's (injected) time: downloaded, v3 serves.
        from edge_runtime.spec.window import parse_window

        publish(mosquitto.url, v4, fleet_keys.models_key, delta_from=[v3], window=parse_window("0 2 * * *", 60))
        state = wait_until(lambda: (s := observer.state("pi-fallback")) and (s.get("update") or {}).get("phase")
                           == "waiting_window" and s, "downloaded, waiting for the window")
        assert state["update"]["until"] == "2026-01-11T02:00:00+00:00"
        assert store.state("fraud").active == 3 and 4 in store.versions("fraud")
        wall["now"] = _dt.datetime(2026, 1, 11, 2, 5, tzinfo=_dt.UTC)  # the window opens
        wait_until(lambda: store.state("fraud").active == 4, "v4 once the window opened")
        assert _sha(_model(store, 4)) == _signed_sha(v4)
    finally:
        svc.stop()
