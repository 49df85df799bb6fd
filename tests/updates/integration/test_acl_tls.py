"""The shipped mosquitto ACL and TLS example (device/mosquitto/), exercised against mosquitto:
certificates from gen-certs.sh, the example config with its paths pointed at the test
directory, and clients identified by their certificate's common name."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from edge_runtime.bundle.reader import BundleLimits
from edge_runtime.config import parse_config
from edge_runtime.store.store import ModelStore
from edge_runtime.updates.service import UpdateService
from harness.daemon import EDGE
from harness.wait import wait_until
from updates.conftest import REPO_DIR, FleetKeys, Releases
from updates.integration.conftest import Mosquitto, free_port

pytestmark = pytest.mark.integration
SHIPPED = REPO_DIR / "device" / "mosquitto"
FLEET = "default"  # the shipped ACL is written for fleet "default"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, the server certificate and client certificates, made by the shipped script."""
    d = tmp_path_factory.mktemp("certs")
    out = subprocess.run(
        ["bash", str(SHIPPED / "gen-certs.sh"), str(d), "operator", "pi-0001", "pi-0002"],
        capture_output=True, text=True, check=False, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return d


@pytest.fixture
def tls_broker(tmp_path: Path, certs: Path) -> Iterator[Mosquitto]:
    """mosquitto running the shipped edge-runtime.conf and acl, on a free loopback port."""
    etc = tmp_path / "etc"
    etc.mkdir()
    for name in ("ca.crt", "server.crt", "server.key"):
        shutil.copy(certs / name, etc / name)
    shutil.copy(SHIPPED / "acl", etc / "acl")
    port = free_port()
    conf = (
        (SHIPPED / "edge-runtime.conf").read_text()
        .replace("/etc/mosquitto/edge-runtime/", f"{etc}/")
        .replace("/var/lib/mosquitto/", f"{tmp_path / 'broker'}/")
        .replace("listener 8883", f"listener {port} 127.0.0.1")
    )
    assert f"listener {port} 127.0.0.1" in conf and "acl_file" in conf and "require_certificate true" in conf
    broker = Mosquitto(tmp_path / "broker", port=port, config=conf).start()
    yield broker
    broker.stop()


class Client:
    """A paho client authenticated by one of the test certificates; records what it receives."""

    def __init__(self, port: int, certs: Path, name: str | None, timeout_s: float = 20.0) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"test-{name}", protocol=paho.MQTTv5)
        self.c.tls_set(
            ca_certs=str(certs / "ca.crt"),
            certfile=str(certs / f"{name}.crt") if name else None,
            keyfile=str(certs / f"{name}.key") if name else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
        self.c.on_message = self._on_message
        self.c.on_connect = lambda c, u, f, rc, p: (not rc.is_failure) and self.connected.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self.connected.wait(timeout_s), f"{name} could not connect"

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.received.append((msg.topic, bytes(msg.payload)))

    def got(self, payload: bytes) -> bool:
        with self.lock:
            return any(p == payload for _, p in self.received)

    def payloads(self) -> list[bytes]:
        with self.lock:
            return [p for _, p in self.received]

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_a_device_writes_and_reads_only_its_own_topics(tls_broker: Mosquitto, certs: Path) -> None:
    operator = Client(tls_broker.port, certs, "operator")
    device = Client(tls_broker.port, certs, "pi-0001")
    try:
        operator.c.subscribe("edge/default/#", qos=1)
        operator.publish("edge/default/devices/pi-0002/desired", b"for pi-0002", retain=True)
        operator.publish("edge/default/devices/pi-0001/desired", b"for pi-0001", retain=True)
        operator.publish("edge/default/desired", b"fleet desired", retain=True)
        wait_until(lambda: operator.got(b"fleet desired"), "the operator's own messages")

        # Writes: into another device's topics and into the fleet's topics are denied.
        device.publish("edge/default/devices/pi-0002/state", b"forged state of pi-0002")
        device.publish("edge/default/devices/pi-0002/online", b"false")
        device.publish("edge/default/desired", b"forged desired", retain=True)
        device.publish("edge/default/models/fraud/9/manifest", b"forged manifest", retain=True)
        device.publish("edge/default/devices/pi-0001/state", b"own state")  # allowed, and it comes after
        wait_until(lambda: operator.got(b"own state"), "the device's own state")
        forged = [p for p in operator.payloads() if p.startswith(b"forged") or p == b"false"]
        assert forged == [], "the ACL let a device write outside its own devices/<id>/"

        # Reads: another device's desired state and state stay invisible; its own and the fleet's are readable.
        device.c.subscribe("edge/default/devices/pi-0002/desired", qos=1)
        device.c.subscribe("edge/default/devices/+/state", qos=1)
        device.c.subscribe("edge/default/devices/pi-0001/desired", qos=1)
        device.c.subscribe("edge/default/desired", qos=1)
        wait_until(lambda: device.got(b"fleet desired"), "the fleet desired state")
        assert device.got(b"for pi-0001")
        assert not device.got(b"for pi-0002") and not device.got(b"own state")
        assert device.payloads().count(b"fleet desired") == 1, "the forged retained desired state must not exist"
    finally:
        device.close()
        operator.close()


def test_clients_without_a_certificate_are_refused(tls_broker: Mosquitto, certs: Path) -> None:
    with pytest.raises((ssl.SSLError, OSError, AssertionError)):
        anonymous = Client(tls_broker.port, certs, None, timeout_s=2.0)
        anonymous.close()
    plain = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="plain")
    ok = threading.Event()
    plain.on_connect = lambda c, u, f, rc, p: (not rc.is_failure) and ok.set()
    try:
        plain.connect("127.0.0.1", tls_broker.port)
        plain.loop_start()
        assert not ok.wait(1), "a plain-text client got through the TLS listener"
    except OSError:
        pass
    finally:
        plain.loop_stop()


def test_an_update_over_tls_with_client_certificates(
    tmp_path: Path, tls_broker: Mosquitto, certs: Path, fleet_keys: FleetKeys, releases: Releases
) -> None:
    url = f"mqtts://127.0.0.1:{tls_broker.port}"
    cfg = parse_config(
        {
            "device": {"id": "pi-0001"},
            "store": {"path": str(tmp_path / "store"), "factory": str(tmp_path / "factory")},
            "trust": {"root": str(fleet_keys.path("root.json"))},
            "mqtt": {
                "url": url, "fleet": FLEET, "ca_file": str(certs / "ca.crt"),
                "cert_file": str(certs / "pi-0001.crt"), "key_file": str(certs / "pi-0001.key"),
                "reconnect_min_s": 0.05, "reconnect_max_s": 0.5,
            },
        }
    )
    store = ModelStore(tmp_path / "store", fleet_keys.root, None, BundleLimits())
    store.install(releases.bundle(1))
    store.activate("fraud", 1)
    tls = ["--broker", url, "--fleet", FLEET, "--ca-file", certs / "ca.crt",
           "--cert-file", certs / "operator.crt", "--key-file", certs / "operator.key"]
    svc = UpdateService(cfg, store, "pi-0001", selftest_in_process=True).start()
    try:
        out = subprocess.run(
            [str(EDGE), "fleet", "publish", releases.bundle(2), "--sign-key", fleet_keys.path("signing.key"), *tls],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert out.returncode == 0, out.stderr
        wait_until(lambda: store.state("fraud").active == 2, "v2 over TLS")
        status = subprocess.run([str(EDGE), "fleet", "status", *tls], capture_output=True, text=True, timeout=60, check=False)
        assert status.stdout.splitlines()[1].split()[:4] == ["pi-0001", "yes", "fraud", "v2"], status.stdout + status.stderr
    finally:
        svc.stop()
