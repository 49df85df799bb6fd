"""``edge-runtime fleet provision``: per-device certificates from the operator's CA, configs,
the broker's ACL and configuration; re-runs that keep keys; and the generated broker
enforcing "a device writes only its own topics" on a real mosquitto over TLS."""

from __future__ import annotations

import shutil
import ssl
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from updates.conftest import FleetKeys
from updates.integration.conftest import free_port

from edge_runtime.config import load_config
from edge_runtime.exceptions import UsageError
from edge_runtime.fleet.operator_config import load_operator_config
from edge_runtime.fleet.pki import PkiError
from edge_runtime.fleet.provision import ProvisionRequest, provision
from fleet.conftest import Mosquitto, cli
from harness.wait import wait_until

FLEET = "plant-7"


def _request(tmp: Path, root: Path, **kw: object) -> ProvisionRequest:
    args: dict[str, object] = dict(
        out=tmp / "out", devices=3, ca_cert=tmp / "ca" / "ca.crt", ca_key=tmp / "ca" / "ca.key", ca_init=True,
        root=root, broker="mqtts://127.0.0.1:8883", fleet=FLEET,
    )
    args.update(kw)
    return ProvisionRequest(**args)  # type: ignore[arg-type]


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_each_device_gets_a_key_a_certificate_from_the_ca_and_a_config(tmp_path: Path, fleet_keys: FleetKeys) -> None:
    result = provision(_request(tmp_path, fleet_keys.path("root.json")))
    out = tmp_path / "out"
    assert result.devices == ["pi-0001", "pi-0002", "pi-0003"] and result.ca_created
    ca = _cert(tmp_path / "ca" / "ca.crt")
    assert not (out / "ca.key").exists() and not list(out.rglob("ca.key"))  # the CA key never leaves its place
    for device in result.devices:
        d = out / "devices" / device
        cert = _cert(d / "mqtt" / f"{device}.crt")
        cert.verify_directly_issued_by(ca)
        assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == [device]
        assert _mode(d / "mqtt" / f"{device}.key") == 0o600
        assert (d / "root.json").read_bytes() == fleet_keys.path("root.json").read_bytes()
        cfg = load_config(d / "config.toml")
        assert cfg.device.id == device and cfg.trust.root == "/etc/edge-runtime/root.json"
        assert cfg.mqtt is not None and (cfg.mqtt.fleet, cfg.mqtt.url) == (FLEET, "mqtts://127.0.0.1:8883")
        assert cfg.mqtt.cert_file == f"/etc/edge-runtime/mqtt/{device}.crt"
    assert _mode(out / "broker" / "server.key") == 0o600 and _mode(out / "operator" / "operator.key") == 0o600
    assert f"pattern write edge/{FLEET}/devices/%u/state" in (out / "broker" / "acl").read_text()
    op = load_operator_config(result.operator_config, env={})
    assert (op.fleet, op.broker.url, op.broker.key_file) == (FLEET, "mqtts://127.0.0.1:8883", str(out.resolve() / "operator/operator.key"))


def test_a_second_run_writes_nothing_and_more_devices_keep_the_first(tmp_path: Path, fleet_keys: FleetKeys) -> None:
    provision(_request(tmp_path, fleet_keys.path("root.json")))
    key = tmp_path / "out/devices/pi-0001/mqtt/pi-0001.key"
    before = key.read_bytes()
    again = provision(_request(tmp_path, fleet_keys.path("root.json")))
    assert again.written == [] and again.new_keys == [] and not again.ca_created
    more = provision(_request(tmp_path, fleet_keys.path("root.json"), devices=2, start=4))
    assert more.new_keys == ["pi-0004", "pi-0005"]
    assert key.read_bytes() == before


def test_a_key_is_never_replaced_without_force(tmp_path: Path, fleet_keys: FleetKeys) -> None:
    provision(_request(tmp_path, fleet_keys.path("root.json")))
    mqtt = tmp_path / "out/devices/pi-0001/mqtt"
    key = (mqtt / "pi-0001.key").read_bytes()
    # A certificate that does not belong to the key beside it (another device's).
    shutil.copy(tmp_path / "out/devices/pi-0002/mqtt/pi-0002.crt", mqtt / "pi-0001.crt")
    with pytest.raises(PkiError, match="pass --force"):
        provision(_request(tmp_path, fleet_keys.path("root.json")))
    assert (mqtt / "pi-0001.key").read_bytes() == key
    forced = provision(_request(tmp_path, fleet_keys.path("root.json"), force=True))
    assert "pi-0001" in forced.new_keys and (mqtt / "pi-0001.key").read_bytes() != key


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ca_init": False}, "--ca-init creates a CA"),
        ({"broker": "mqtt://127.0.0.1:1883"}, "must be mqtts://"),
        ({"fleet": "a/b"}, "--fleet"),
        ({"id_prefix": "pi/"}, "device id"),
    ],
)
def test_bad_requests_are_usage_errors(tmp_path: Path, fleet_keys: FleetKeys, change: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        provision(_request(tmp_path, fleet_keys.path("root.json"), **change))
    assert not (tmp_path / "out" / "devices").exists()


def test_a_root_that_does_not_verify_is_refused(tmp_path: Path, fleet_keys: FleetKeys) -> None:
    bad = tmp_path / "root.json"
    bad.write_text('{"signed": {}, "signatures": []}')
    with pytest.raises(UsageError, match="not a valid trust root"):
        provision(_request(tmp_path, bad))


# --- the generated broker on a real mosquitto --------------------------------------------------


class _Client:
    """A paho client authenticated by one provisioned certificate; records what it receives."""

    def __init__(self, port: int, ca: Path, cert: Path, key: Path) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        connected = threading.Event()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"t-{cert.stem}", protocol=paho.MQTTv5)
        self.c.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key), cert_reqs=ssl.CERT_REQUIRED)
        self.c.on_message = lambda c, u, m: self._got(m.topic, bytes(m.payload))
        self.c.on_connect = lambda c, u, f, rc, p: (not rc.is_failure) and connected.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        wait_until(connected.is_set, f"{cert.stem} to connect over TLS")

    def _got(self, topic: str, payload: bytes) -> None:
        with self.lock:
            self.received.append((topic, payload))

    def payloads(self) -> list[bytes]:
        with self.lock:
            return [p for _, p in self.received]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def provisioned_broker(tmp_path: Path, fleet_keys: FleetKeys) -> Iterator[tuple[Path, Mosquitto]]:
    """Three devices provisioned for a broker on a free port, and mosquitto running the generated
    configuration and ACL with the generated server certificate."""
    port = free_port()
    out = tmp_path / "out"
    made = cli(
        "fleet", "provision", "--devices", "3", "--ca", tmp_path / "ca.crt", "--ca-key", tmp_path / "ca.key", "--ca-init",
        "--root", fleet_keys.path("root.json"), "--broker", f"mqtts://127.0.0.1:{port}", "--fleet", FLEET, "--out", out,
    )
    assert made.returncode == 0, made.stderr
    assert "3 devices pi-0001 .. pi-0003: 5 new key(s)" in made.stdout and "created the CA" in made.stdout
    conf = (
        (out / "broker" / "edge-runtime.conf").read_text()
        .replace("/etc/mosquitto/edge-runtime/", f"{out / 'broker'}/")
        .replace("/var/lib/mosquitto/", f"{tmp_path / 'mosq'}/")
        .replace(f"listener {port}", f"listener {port} 127.0.0.1")
    )
    assert "use_identity_as_username true" in conf and "require_certificate true" in conf
    broker = Mosquitto(tmp_path / "mosq", port=port, config=conf).start()
    yield out, broker
    broker.stop()


@pytest.mark.integration
def test_generated_broker_lets_a_device_write_only_its_own_topics(provisioned_broker: tuple[Path, Mosquitto]) -> None:
    out, broker = provisioned_broker
    # The operator's file alone reaches the TLS broker with the operator's certificate.
    status = cli("fleet", "status", "--fleet-config", out / "operator" / "fleet.toml", "--timeout", "20")
    assert status.returncode == 0, status.stderr
    assert f"no device of fleet {FLEET!r} has reported yet" in status.stdout

    def client(name: str, d: Path) -> _Client:
        return _Client(broker.port, out / "ca.crt", d / f"{name}.crt", d / f"{name}.key")

    operator = client("operator", out / "operator")
    device = client("pi-0001", out / "devices" / "pi-0001" / "mqtt")
    try:
        operator.c.subscribe(f"edge/{FLEET}/#", qos=1)
        operator.c.publish(f"edge/{FLEET}/desired", b"operator sync", qos=1).wait_for_publish(10)
        wait_until(lambda: b"operator sync" in operator.payloads(), "the operator's subscription")
        device.c.publish(f"edge/{FLEET}/devices/pi-0002/state", b"forged state of pi-0002", qos=1).wait_for_publish(10)
        device.c.publish(f"edge/{FLEET}/desired", b"forged desired", qos=1).wait_for_publish(10)
        device.c.publish(f"edge/{FLEET}/devices/pi-0001/state", b"own state", qos=1).wait_for_publish(10)
        # mosquitto handles one client's messages in order: once "own state" arrives, the forged ones were dropped.
        wait_until(lambda: b"own state" in operator.payloads(), "pi-0001's own state")
        assert [p for p in operator.payloads() if p.startswith(b"forged")] == []
    finally:
        device.close()
        operator.close()
