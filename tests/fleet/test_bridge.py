"""Acceptance 3: two mosquitto brokers joined by a bridge (``connection`` / ``address`` /
``topic edge/# both 1``). The operator publishes on broker A; devices connected to broker B update
from retained messages (ones published before the bridge connected, and ones published after);
their state, published on B, is visible from A (``fleet status`` against A). With A gone, a device
that joins B late still updates from B's own retained copies."""

from __future__ import annotations

from pathlib import Path

import pytest
from updates.integration.conftest import free_port, publish

from fleet.conftest import FLEET, FleetKeys, Mosquitto, Releases, SimulateFn, Watch, cli, model_entry
from harness.wait import wait_until

pytestmark = pytest.mark.integration


def bridge_config(port: int, remote_port: int, directory: Path) -> str:
    """Broker B: its own listener, and a bridge to A carrying the fleet's topics both ways at QoS 1."""
    return (
        f"listener {port} 127.0.0.1\nallow_anonymous true\n"
        f"persistence true\npersistence_location {directory}/\nautosave_interval 0\n"
        "connection fleet-uplink\n"
        f"address 127.0.0.1:{remote_port}\n"
        "topic edge/# both 1\n"
        "restart_timeout 1 5\n"
    )


def test_devices_on_a_bridged_broker_follow_the_operator_on_the_other(
    tmp_path: Path, fleet_keys: FleetKeys, releases: Releases, simulate: SimulateFn
) -> None:
    broker_a = Mosquitto(tmp_path / "a").start()
    port_b = free_port()
    broker_b = Mosquitto(tmp_path / "b", port=port_b, config=bridge_config(port_b, broker_a.port, tmp_path / "b"))
    watchers: list[Watch] = []
    try:
        # Retained on A before B and its bridge exist: the bridge's subscription brings them to B.
        first = publish(broker_a.url, releases.bundle(2), fleet_keys.models_key)
        broker_b.start()
        watch_a = Watch(broker_a.url)
        watchers.append(watch_a)
        ids = ["bridged-0", "bridged-1"]
        fleet = simulate(broker_b.url, ids)
        wait_until(lambda: all(model_entry(watch_a.state(d)).get("active") == 2 for d in ids), "the devices on B to report v2, seen from A")
        assert all(fleet.active(d, "fraud") == 2 for d in ids)
        assert all((watch_a.state(d).get("desired_seq") or {}).get("desired") == first.seq for d in ids)

        out = cli("fleet", "status", "--fleet", FLEET, "--broker", broker_a.url)
        assert out.returncode == 0, out.stderr
        rows = {line.split()[0]: line.split() for line in out.stdout.splitlines()[1:3]}
        assert {d: rows[d][:4] for d in ids} == {d: [d, "yes", "fraud", "v2"] for d in ids}, out.stdout
        assert "desired fraud v2 at 100%: 2 updated, 0 failed, 0 rejected, 0 pending" in out.stdout, out.stdout

        # Published on A while the bridge is up: forwarded live, still retained on B.
        second = publish(broker_a.url, releases.bundle(3), fleet_keys.models_key)
        assert second.chunks_sent == 19
        wait_until(lambda: all(model_entry(watch_a.state(d)).get("active") == 3 for d in ids), "the devices on B to report v3, seen from A")
        watchers.remove(watch_a)
        watch_a.close()
        broker_a.stop()

        # A is gone: a device that joins B now has only B's retained copies to go by.
        late = simulate(broker_b.url, ["bridged-late"], name="late")
        wait_until(lambda: late.active("bridged-late", "fraud") == 3, "the late device to reach v3 from B alone")
        watch_b = Watch(broker_b.url)
        try:
            wait_until(lambda: model_entry(watch_b.state("bridged-late")).get("active") == 3, "its state on B")
        finally:
            watch_b.close()
    finally:
        for w in watchers:
            w.close()
        broker_b.stop()
        broker_a.stop()
