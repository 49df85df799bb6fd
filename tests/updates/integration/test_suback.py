"""Subscriptions wait for their SUBACK: a filter the broker refuses (its ACL, here mosquitto's
dynamic-security plugin, which checks subscriptions) is reported when the SUBACK says so,
not when the download stall timer notices that nothing arrives."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_runtime.exceptions import SubscriptionRefusedError
from edge_runtime.fleet.session import BrokerOptions, FleetSession
from edge_runtime.updates.mqtt import LinkSettings, MqttLink
from edge_runtime.updates.protocol import Topics
from harness.wait import wait_until
from updates.conftest import FLEET, FleetKeys, Releases
from updates.integration.conftest import Mosquitto, Observer, free_port, publish, start_device

pytestmark = pytest.mark.integration

DYNSEC = Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so")
CHUNKS = f"edge/{FLEET}/models/+/+/chunks/#"


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """mosquitto whose ACL lets anonymous clients do everything but subscribe to chunk topics."""
    if not DYNSEC.exists():
        pytest.skip("mosquitto's dynamic security plugin is not installed")
    d = tmp_path / "broker"
    d.mkdir()
    acl = {
        "defaultACLAccess": {"publishClientSend": True, "publishClientReceive": True, "subscribe": True, "unsubscribe": True},
        "clients": [],
        "groups": [{"groupname": "anonymous", "roles": [{"rolename": "no-chunks"}]}],
        "roles": [{"rolename": "no-chunks", "acls": [{"acltype": "subscribePattern", "topic": CHUNKS, "allow": False}]}],
        "anonymousGroup": "anonymous",
    }
    (d / "dynsec.json").write_text(json.dumps(acl), encoding="utf-8")
    port = free_port()
    config = (
        f"listener {port} 127.0.0.1\nallow_anonymous true\n"
        f"plugin {DYNSEC}\nplugin_opt_config_file {d / 'dynsec.json'}\n"
    )
    broker = Mosquitto(d, port, config).start()
    yield broker
    broker.stop()


@pytest.fixture
def acl_observer(acl_broker: Mosquitto) -> Iterator[Observer]:
    obs = Observer(acl_broker.port, Topics("edge", FLEET))
    yield obs
    obs.close()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_refused_filter_is_reported_by_its_suback(acl_broker: Mosquitto, protocol: str) -> None:
    refusals: list[tuple[tuple[str, ...], str]] = []
    link = MqttLink(
        LinkSettings(BrokerOptions(url=acl_broker.url, protocol=protocol), client_id=f"suback-{protocol}"),
        lambda msg: None,
        on_refused=lambda filters, reason: refusals.append((filters, reason)),
    )
    link.connect(10)
    stop = threading.Event()
    net = threading.Thread(target=link.run, args=(stop,), name="test-mqtt")
    net.start()
    try:
        granted = f"edge/{FLEET}/desired"
        refused = f"edge/{FLEET}/models/fraud/2/chunks/model.tflite/+"
        link.subscribe([granted]).wait(10)  # granted: returns quietly
        sub = link.subscribe([granted, refused])
        with pytest.raises(SubscriptionRefusedError, match="refused the subscription to") as info:
            sub.wait(10)
        assert refused in str(info.value) and granted not in str(info.value)
        assert sub.refused.keys() == {refused}
        assert [f for f, _ in refusals] == [(refused,)]
    finally:
        stop.set()
        link.wakeup()
        net.join(10)
        link.close()


def test_a_fleet_snapshot_of_a_refused_filter_raises(acl_broker: Mosquitto) -> None:
    """Without the SUBACK check the snapshot would come back empty, as if nothing were retained."""
    with FleetSession(BrokerOptions(url=acl_broker.url), Topics("edge", FLEET), timeout_s=20) as session:
        assert session.snapshot([f"edge/{FLEET}/desired"]) == {}
        with pytest.raises(SubscriptionRefusedError, match="chunks"):
            session.snapshot([CHUNKS])


def test_a_device_reports_a_refused_chunk_subscription_at_once(
    tmp_path: Path, acl_broker: Mosquitto, acl_observer: Observer, fleet_keys: FleetKeys, releases: Releases
) -> None:
    # A stall timer far beyond the wait below: only the SUBACK can explain a report.
    svc, store = start_device(
        tmp_path / "dev", acl_broker.url, "dev-acl", fleet_keys, [releases.bundle(1)], 1, download_stall_s=3600.0
    )
    try:
        wait_until(lambda: acl_observer.state("dev-acl"), "the device's first state")
        publish(acl_broker.url, releases.bundle(2), fleet_keys.models_key)
        rejected = wait_until(
            lambda: [e for e in acl_observer.of("dev-acl", "rejected") if "refused the subscription" in e.get("reason", "")],
            "the refused chunk subscription to be reported",
        )
        assert rejected[0]["model"] == "fraud" and rejected[0]["version"] == 2
        assert "chunks" in rejected[0]["reason"]
        state = wait_until(lambda: acl_observer.state("dev-acl").get("last_error"), "last_error in the state")
        assert "refused the subscription" in state["reason"]
        assert store.state("fraud").active == 1
    finally:
        svc.stop()
