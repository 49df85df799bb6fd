"""Acceptance 6: a staged rollout over 20 simulated devices, then raised to 100 % without
sending a single chunk again."""

from __future__ import annotations

import threading
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from edge_runtime.store.store import ModelStore
from edge_runtime.updates.service import UpdateService
from edge_runtime.updates.verify import rollout_bucket
from harness.wait import wait_until
from updates.conftest import FleetKeys, Releases
from updates.integration.conftest import Mosquitto, Observer, publish, start_device

pytestmark = pytest.mark.integration


class ChunkSpy:
    """Counts chunk messages published while it listens (retained replays excluded)."""

    def __init__(self, port: int, chunk_filter: str) -> None:
        self.live = 0
        self.lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="chunk-spy")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(chunk_filter, qos=1)
        self.client.loop_start()

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        if not msg.retain:  # a retained flag marks replays to a new subscription, not new publishes
            with self.lock:
                self.live += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_staged_rollout_then_raised_to_everyone(
    tmp_path: Path, mosquitto: Mosquitto, observer: Observer, fleet_keys: FleetKeys, releases: Releases
) -> None:
    ids = [f"sim-{i:02d}" for i in range(20)]
    in_bucket = {d for d in ids if rollout_bucket(d, "fraud-2") < 25}
    assert 0 < len(in_bucket) < len(ids)
    devices: dict[str, tuple[UpdateService, ModelStore]] = {}
    spy = ChunkSpy(mosquitto.port, "edge/f1/models/fraud/2/chunks/#")
    try:
        for d in ids:
            devices[d] = start_device(tmp_path / d, mosquitto.url, d, fleet_keys, [releases.bundle(1)], 1)
        wait_until(lambda: all(observer.state(d) for d in ids), "every device's first state")

        first = publish(mosquitto.url, releases.bundle(2), fleet_keys.models_key, percent=25)
        assert first.chunks_sent == 19
        wait_until(lambda: all(observer.state(d).get("desired_seq", {}).get("desired") == first.seq for d in ids), "every device to follow the new desired state")
        wait_until(lambda: all(devices[d][1].state("fraud").active == 2 for d in in_bucket), "the bucket to update")
        wait_until(lambda: all(observer.state(d).get("update") is None for d in ids), "every device to be idle")
        updated = {d for d in ids if devices[d][1].state("fraud").active == 2}
        assert updated == in_bucket, "exactly the devices whose hash is in the bucket update"
        live_before = spy.live

        second = publish(mosquitto.url, releases.bundle(2), fleet_keys.models_key, percent=100)
        assert second.chunks_already_published and second.chunks_sent == 0 and second.seq > first.seq
        wait_until(lambda: all(devices[d][1].state("fraud").active == 2 for d in ids), "everyone on v2")
        assert spy.live == live_before, "raising the rollout re-sent chunks"
        for d in ids:
            notified = observer.of(d, "notified")
            assert len(notified) == 1, f"{d} was notified {len(notified)} times"
    finally:
        spy.close()
        for svc, _ in devices.values():
            svc.stop()
