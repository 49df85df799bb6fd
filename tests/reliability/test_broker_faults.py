"""Broker faults while 8 tritonclient clients score against the daemon.

* The broker is stopped for 8 s (``make test``) or 60 s (``make test-long``), then started
  again with nothing retained (persistence off): the retained state and ``online: true``
  that a fresh subscriber sees afterwards can only come from the device reconnecting and
  publishing them again.
* The broker flaps (down and up every 1.5 s, for 12 s or 60 s) while a release is being
  delivered, throttled so that the download spans the restarts (persistence on, so the
  retained release and the device's session survive them): the device keeps reconnecting,
  the update completes, and afterwards the retained state is fresh.

Both: 0 failed scoring requests. Serving never waits on MQTT.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from updates.integration.conftest import TritonLoad

from edge_runtime.fleet.session import BrokerOptions, FleetSession
from edge_runtime.updates.protocol import Topics
from harness.wait import wait_until
from reliability.conftest import FLEET, DeviceDir, Figures, Mosquitto, Releases, publish, scale

pytestmark = pytest.mark.integration

CLIENTS = 8
OUTAGE_S = scale(8.0, 60.0)
FLAP_TOTAL_S = scale(12.0, 60.0)
FLAP_HALF_S = 1.5


def retained(broker: Mosquitto, device: str) -> dict[str, bytes]:
    """The device's retained ``state`` and ``online`` as a fresh subscriber sees them."""
    topics = Topics("edge", FLEET)
    with FleetSession(BrokerOptions(url=broker.url), topics, timeout_s=10) as session:
        got = session.snapshot([topics.state(device), topics.online(device)])
    return {t.rsplit("/", 1)[1]: p for t, p in got.items()}


def _republished_after(broker: Mosquitto, device: str, since: dt.datetime) -> dict[str, Any] | None:
    """The retained state when it is newer than ``since`` and ``online`` is true; else None."""
    try:
        got = retained(broker, device)
    except Exception:  # noqa: BLE001 - the broker may still be starting
        return None
    if got.get("online") != b"true" or "state" not in got:
        return None
    state: dict[str, Any] = json.loads(got["state"])
    when = dt.datetime.fromisoformat(state["time"].replace("Z", "+00:00"))
    return state if when >= since else None


def _device(make_device: Callable[..., DeviceDir], broker: Mosquitto, extra_mqtt: str = "") -> DeviceDir:
    dev = make_device()
    dev.write_config(broker.url, extra_mqtt=extra_mqtt)
    dev.start()
    wait_until(lambda: _republished_after(broker, dev.device_id, dt.datetime.min.replace(tzinfo=dt.UTC)), "the device's first state")
    return dev


def test_broker_stopped_then_back_device_republishes_and_scoring_never_fails(
    make_device: Callable[..., DeviceDir], broker: Mosquitto, holdout_x: np.ndarray, figures: Figures
) -> None:
    dev = _device(make_device, broker)
    daemon = dev.daemons[-1]
    with TritonLoad(daemon.url, holdout_x, clients=CLIENTS) as load:
        wait_until(lambda: load.total() >= 50, "answers before the outage")
        broker.stop()
        before = load.total()
        time.sleep(OUTAGE_S)
        during = load.total() - before
        restarted = dt.datetime.now(dt.UTC).replace(microsecond=0)
        t0 = time.monotonic()
        broker.start()  # empty: persistence is off
        state = wait_until(lambda: _republished_after(broker, dev.device_id, restarted), "the retained state and online=true again")
        back_s = time.monotonic() - t0
        answered = load.total()
        wait_until(lambda: load.total() >= answered + 50, "answers after the outage")
    assert load.failures == [], load.failures[:5]
    assert during > 0 and state["models"]["fraud"]["serving"] == 1
    assert daemon.alive and daemon.tracebacks() == [], daemon.log()[-3000:]
    figures.add(outage_s=OUTAGE_S, clients=CLIENTS, answered=load.total(), answered_during_outage=during,
                failed=len(load.failures), republished_within_s=round(back_s, 2))


def test_flapping_broker_during_an_update(
    make_device: Callable[..., DeviceDir], tmp_path: Path, releases: Releases, keys: Any, holdout_x: np.ndarray,
    figures: Figures,
) -> None:
    broker = Mosquitto(tmp_path / "flapping")  # persistence on: the retained release survives the restarts
    broker.start()
    try:
        # Throttled to ~16 KB/s, the 170 KB download spans most of the flapping.
        dev = _device(make_device, broker, extra_mqtt="max_download_bytes_per_s = 16384")
        daemon = dev.daemons[-1]
        store = dev.store()
        flaps = 0
        with TritonLoad(daemon.url, holdout_x, clients=CLIENTS) as load:
            wait_until(lambda: load.total() >= 50, "answers before the flapping")
            publish(broker.url, releases.bundle(2, pad=150_000, chunk_size=1024), keys)
            end = time.monotonic() + FLAP_TOTAL_S
            while time.monotonic() < end:
                time.sleep(FLAP_HALF_S)
                broker.stop()
                flaps += 1
                time.sleep(FLAP_HALF_S)
                broker.start()
            restarted = dt.datetime.now(dt.UTC).replace(microsecond=0)
            wait_until(lambda: store.state("fraud").serving == 2, "v2 serving after the flapping")
            # A state retained after the last restart may still be from before the activation (the
            # device republishes at connect): wait for the one that says v2 is active.
            state = wait_until(lambda: (s := _republished_after(broker, dev.device_id, restarted))
                               and s["models"]["fraud"]["active"] == 2 and s, "a fresh retained state with v2 active")
            wait_until(lambda: load.versions["2"] >= 50, "answers from v2")
        assert load.failures == [], load.failures[:5]
        assert state["models"]["fraud"]["active"] == 2
        assert daemon.alive and daemon.tracebacks() == [], daemon.log()[-3000:]
        log = daemon.log()
        figures.add(flapping_s=FLAP_TOTAL_S, broker_restarts=flaps, device_connections=log.count("connected to mqtt://"),
                    download_resumed=log.count("(session resumed)"),
                    answered=load.total(), answered_by_version=dict(load.versions), failed=len(load.failures))
    finally:
        broker.stop()
