"""Attack (issue 22, finding 5) through the real daemon and mosquitto: a signed release whose
golden.npz is a deflate bomb is refused at install from its zip directory; the daemon's memory
stays flat and v1 keeps serving."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from harness.bundles import golden_bomb, resigned_with_artifacts
from harness.daemon import Daemon
from harness.wait import wait_until
from updates.conftest import FACTORY, FleetKeys, Releases
from updates.integration.conftest import Mosquitto, Observer, TritonLoad, publish
from updates.integration.test_daemon import daemon, device_dir  # noqa: F401  (the real daemon on fraud v1, reporting)

pytest.importorskip("tritonclient.http")  # TritonLoad
MAX_DAEMON_GROWTH_MB = 100


def test_daemon_refuses_a_golden_npz_deflate_bomb_over_mqtt_in_bounded_memory(
    daemon: Daemon, mosquitto: Mosquitto, observer: Observer, fleet_keys: FleetKeys,  # noqa: F811
    releases: Releases, tmp_path: Path,
) -> None:
    bundle = resigned_with_artifacts(releases.bundle(2), tmp_path / "bomb.bundle", fleet_keys.models_key, 2,
                                     {"golden.npz": golden_bomb(512 * 1024 * 1024)},  # built once per session
                                     golden={"file": "golden.npz", "atol": 1e-4, "rtol": 1e-3})
    start = peak = daemon.rss_bytes()
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.wait(0.02):
            peak = max(peak, daemon.rss_bytes())

    watcher = threading.Thread(target=watch, name="rss-watch")
    watcher.start()
    try:
        with TritonLoad(daemon.url, np.load(FACTORY / "sample.npy"), clients=1, timeout_s=30.0) as load:
            publish(mosquitto.url, bundle, fleet_keys.models_key)
            (rejected,) = wait_until(lambda: observer.of("pi-serve", "rejected"), "the rejected event")
            answered = load.count(1)
            wait_until(lambda: load.count(1) >= answered + 5, "v1 to keep answering")
    finally:
        done.set()
        watcher.join()
    assert load.failures == [] and load.count(2) == 0
    assert rejected["version"] == 2 and "golden.npz: member 'input_0.npy' declares" in rejected["reason"]
    assert (peak - start) / 2**20 < MAX_DAEMON_GROWTH_MB, (start / 2**20, peak / 2**20)
    assert observer.state("pi-serve")["models"]["fraud"]["serving"] == 1
    assert daemon.tracebacks() == []
