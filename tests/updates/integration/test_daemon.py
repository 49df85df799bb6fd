"""End to end with the real daemon (``edge-runtime serve``) and mosquitto.

Acceptance 1: v2 is published while the daemon serves v1 to a few tritonclient clients;
v2 becomes active with 0 failed requests, ``state`` shows it and ``events`` show each step;
with the broker then gone, every request is still answered.
Acceptance 5: a properly signed v2 whose golden outputs are wrong fails the daemon's
self-test, is rolled back, reported ``failed``, and the fleet status table shows it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.bundle.reader import BundleLimits
from edge_runtime.store.store import ModelStore
from harness.daemon import EDGE, Daemon
from harness.wait import wait_until
from updates.conftest import FACTORY, FLEET, FleetKeys, Releases
from updates.integration.conftest import Mosquitto, Observer, TritonLoad, publish

pytestmark = pytest.mark.integration
pytest.importorskip("tritonclient.http")  # TritonLoad
pytest.importorskip("edge_runtime.daemon")


@pytest.fixture
def device_dir(tmp_path: Path, mosquitto: Mosquitto, fleet_keys: FleetKeys, releases: Releases) -> Iterator[Path]:
    """A device with fraud v1 active and a config with [mqtt] pointing at the test broker."""
    store = ModelStore(tmp_path / "store", fleet_keys.root, None, BundleLimits())
    store.install(releases.bundle(1))
    store.activate("fraud", 1)
    (tmp_path / "config.toml").write_text(
        f'[device]\nid = "pi-serve"\n[store]\npath = "{tmp_path / "store"}"\nfactory = "{tmp_path / "factory"}"\n'
        f'[server]\nport = 0\nswap_poll_ms = 200\n[trust]\nroot = "{fleet_keys.path("root.json")}"\n'
        f'[mqtt]\nurl = "{mosquitto.url}"\nfleet = "{FLEET}"\nreconnect_min_s = 0.05\nreconnect_max_s = 0.5\n',
        encoding="utf-8",
    )
    yield tmp_path


@pytest.fixture
def daemon(device_dir: Path, observer: Observer) -> Iterator[Daemon]:
    """The daemon on ``device_dir``, ready and reporting to the broker; stopped after the test."""
    d = Daemon(device_dir / "config.toml")
    try:
        d.wait_ready()
        wait_until(lambda: observer.state("pi-serve"), "the daemon's update client to report")
        yield d
    finally:
        d.stop()


def test_update_under_load_with_zero_failed_requests(
    daemon: Daemon, device_dir: Path, mosquitto: Mosquitto, observer: Observer, fleet_keys: FleetKeys,
    releases: Releases,
) -> None:
    with TritonLoad(daemon.url, np.load(FACTORY / "sample.npy"), timeout_s=30.0) as load:
        wait_until(lambda: load.count(1) >= 50, "requests answered by v1")
        publish(mosquitto.url, releases.bundle(2, pad=30_000), fleet_keys.models_key)
        wait_until(lambda: observer.of("pi-serve", "activated"), "the activated event")
        wait_until(lambda: load.count(2) >= 50, "requests answered by v2")
        mosquitto.stop()  # scoring never waits on MQTT
        answered = load.count(2)
        wait_until(lambda: load.count(2) >= answered + 50, "requests answered with the broker gone")
    assert load.failures == [], load.failures[:5]
    kinds = [e["event"] for e in observer.of("pi-serve")]
    order = [kinds.index(k) for k in ("notified", "downloading", "verified", "installed", "activated")]
    assert order == sorted(order), kinds
    state = observer.state("pi-serve")["models"]["fraud"]
    assert state["active"] == 2 and state["serving"] == 2 and state["last_known_good"] == 1
    assert daemon.stop() == 0, daemon.log()


def test_failing_selftest_rolls_back_and_status_shows_failed(
    daemon: Daemon, device_dir: Path, mosquitto: Mosquitto, observer: Observer, fleet_keys: FleetKeys,
    releases: Releases,
) -> None:
    with TritonLoad(daemon.url, np.load(FACTORY / "sample.npy"), clients=2, timeout_s=30.0) as load:
        publish(mosquitto.url, releases.bundle(2, wrong_golden=True), fleet_keys.models_key)
        failed = wait_until(lambda: observer.of("pi-serve", "failed"), "the failed event")[0]
        rolled = wait_until(lambda: observer.of("pi-serve", "rolled_back"), "the rolled_back event")[0]
        answered = load.count(1)
        wait_until(lambda: load.count(1) >= answered + 20, "v1 to keep answering")
    assert load.failures == [] and load.count(2) == 0
    assert failed["version"] == 2 and "differs from golden" in failed["reason"]
    assert rolled["version"] == 1 and not observer.of("pi-serve", "activated")
    store_state = ModelStore(device_dir / "store", fleet_keys.root, None, BundleLimits()).state("fraud")
    assert store_state.active == 1 and 2 in store_state.failed
    wait_until(lambda: observer.state("pi-serve").get("last_error"), "last_error in state")
    out = subprocess.run(
        [str(EDGE), "fleet", "status", "--fleet", FLEET, "--broker", mosquitto.url],
        capture_output=True, text=True, timeout=60, check=False,
    )
    row = out.stdout.splitlines()[1]
    assert row.startswith("pi-serve") and "fraud v1 (failed v2)" in row and "differs from golden" in row, out.stdout
