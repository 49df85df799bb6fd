"""A copy of a signed capture request, sent again within its hour: the real daemon and mosquitto.

The device answers a request's nonce once and keeps the nonces it answered across a restart:
the copy gets a ``capture_refused`` event (reason ``replay``) and no second answer.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from edge_runtime.bundle.reader import BundleLimits
from edge_runtime.fleet.capture import capture_request_message
from edge_runtime.store.store import ModelStore
from edge_runtime.updates.protocol import Topics
from harness.daemon import Daemon
from harness.wait import wait_until
from updates.conftest import FLEET, FleetKeys, Releases
from updates.integration.conftest import Mosquitto, Observer

pytestmark = pytest.mark.integration

DEVICE = "pi-replay"
TOPICS = Topics("edge", FLEET)
REQUEST = "0badc0de0badc0de"


class Answers:
    """Counts the device's capture indexes (its answers) for one request id."""

    def __init__(self, port: int) -> None:
        self.count = 0
        self.lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="replay-watcher")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        result, _ = self.client.subscribe(TOPICS.capture_index(DEVICE, REQUEST), qos=1)
        assert result == paho.MQTT_ERR_SUCCESS
        self.client.loop_start()

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.count += 1

    def close(self) -> None:
        """Disconnect."""
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def config(tmp_path: Path, mosquitto: Mosquitto, fleet_keys: FleetKeys, releases: Releases) -> Path:
    store = ModelStore(tmp_path / "store", fleet_keys.root, None, BundleLimits())
    store.install(releases.bundle(1))
    store.activate("fraud", 1)
    path = tmp_path / "config.toml"
    path.write_text(
        f'[device]\nid = "{DEVICE}"\n[store]\npath = "{tmp_path / "store"}"\n[server]\nport = 0\n'
        f'[trust]\nroot = "{fleet_keys.path("root.json")}"\n'
        f'[mqtt]\nurl = "{mosquitto.url}"\nfleet = "{FLEET}"\nreconnect_min_s = 0.05\nreconnect_max_s = 0.5\n'
        f'[monitoring]\nstate_interval_s = 0.5\n',
        encoding="utf-8",
    )
    return path


@pytest.fixture
def answers(mosquitto: Mosquitto) -> Iterator[Answers]:
    a = Answers(mosquitto.port)
    yield a
    a.close()


def _refusals(observer: Observer) -> int:
    with observer.lock:
        return sum(1 for e in observer.events if e.get("device") == DEVICE and e.get("event") == "capture_refused"
                   and e.get("reason") == "replay" and e.get("request") == REQUEST)


def _start(config: Path, observer: Observer) -> Daemon:
    d = Daemon(config)
    d.wait_ready()
    wait_until(lambda: observer.state(DEVICE), "the daemon's state")
    return d


def test_a_replayed_capture_request_is_refused_also_after_a_restart(
    config: Path, mosquitto: Mosquitto, observer: Observer, answers: Answers, fleet_keys: FleetKeys,
) -> None:
    request = capture_request_message(TOPICS, DEVICE, REQUEST, [fleet_keys.models_key])
    operator = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="replayer")
    operator.connect("127.0.0.1", mosquitto.port)
    operator.loop_start()
    d = _start(config, observer)
    try:
        # Retained, as the operator sends it: a device that is not subscribed yet gets it when it is.
        operator.publish(TOPICS.capture_request(DEVICE), request, qos=1, retain=True).wait_for_publish(30)
        wait_until(lambda: answers.count == 1, "the answer to the request")
        d.stop()
        d = _start(config, observer)
        # The retained request comes again, and the attacker's copy (before: a second whole answer).
        operator.publish(TOPICS.capture_request(DEVICE), request, qos=1).wait_for_publish(30)
        wait_until(lambda: _refusals(observer) == 1, "a capture_refused event for the replay", timeout=60)
        assert answers.count == 1
        assert "refused: its nonce was answered before" in d.log()
    finally:
        d.stop()
        operator.loop_stop()
        operator.disconnect()
