"""``edge-runtime fleet provision``: everything N devices, their broker and their operator need,
from the operator's own CA and trust root, written into one directory.

    OUT/root.json, OUT/ca.crt            the fleet's trust root and the CA certificate
    OUT/devices/<id>/config.toml         /etc/edge-runtime/config.toml of that device
    OUT/devices/<id>/root.json           /etc/edge-runtime/root.json
    OUT/devices/<id>/mqtt/ca.crt, <id>.crt, <id>.key (0600)   /etc/edge-runtime/mqtt/
    OUT/broker/acl, edge-runtime.conf, ca.crt, server.crt, server.key (0600)
    OUT/operator/operator.crt, operator.key (0600), fleet.toml (for --fleet-config)

The certificate is the device's identity on the broker: its common name is the device id,
mosquitto takes it as the user name (``use_identity_as_username``) and the generated ACL lets
that user write only under ``devices/<id>/``. Re-running is safe: a key is never replaced
without ``force`` (a device in the field holds it), certificates still valid for their key and
CA are kept, and the derived text files are rewritten only when their content changes, so a
second run with the same arguments writes nothing. More devices later: run again with a
larger ``--devices`` or another ``--start``. The rendering is pure (``render_*``); the
writing is :func:`provision`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from edge_runtime.atomic import write_bytes_atomic
from edge_runtime.exceptions import BadDataError, UsageError
from edge_runtime.fleet.operator_config import BrokerSection, OperatorConfig, render_operator_config
from edge_runtime.fleet.pki import (
    PkiError,
    cert_pem,
    check_issued,
    issue,
    key_pem,
    load_cert,
    load_key,
    make_ca,
    new_key,
)
from edge_runtime.spec.broker_url import parse_broker_url
from edge_runtime.trust.root import verify_root

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")  # a topic level and a certificate CN alike
MAX_DEVICES = 100_000
BROKER_ETC = "/etc/mosquitto/edge-runtime"
DEVICE_ETC = "/etc/edge-runtime"


@dataclass(frozen=True)
class ProvisionRequest:
    """What to provision; paths as given on the command line."""

    out: Path
    devices: int
    ca_cert: Path
    ca_key: Path
    root: Path
    broker: str
    fleet: str
    prefix: str = "edge"
    id_prefix: str = "pi-"
    start: int = 1
    id_width: int = 4
    ca_init: bool = False
    operator_name: str = "operator"
    server_names: tuple[str, ...] = ()
    force: bool = False


@dataclass
class ProvisionResult:
    """What a run did: device ids, and the files it wrote (an unchanged file is not written)."""

    devices: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    new_keys: list[str] = field(default_factory=list)
    ca_created: bool = False
    operator_config: Path = Path()


def device_ids(id_prefix: str, start: int, count: int, width: int) -> list[str]:
    """``pi-0001`` ... : ``id_prefix`` + the zero-padded number; each must be a safe topic level."""
    if not 1 <= count <= MAX_DEVICES or start < 0 or not 1 <= width <= 12:
        raise UsageError(f"--devices must be 1..{MAX_DEVICES}, --start >= 0 and --id-width 1..12")
    ids = [f"{id_prefix}{n:0{width}d}" for n in range(start, start + count)]
    for i in (ids[0], ids[-1]):
        if not ID_RE.match(i):
            raise UsageError(f"device id {i!r} must match {ID_RE.pattern} (it is a topic level and a certificate name)")
    return ids


def _check_topic_names(fleet: str, prefix: str) -> None:
    if not ID_RE.match(fleet):
        raise UsageError(f"--fleet {fleet!r} must match {ID_RE.pattern}")
    if not all(ID_RE.match(part) for part in prefix.split("/")):
        raise UsageError(f"--prefix {prefix!r}: each level must match {ID_RE.pattern}")


def _toml(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_device_config(device: str, broker: str, fleet: str, prefix: str) -> str:
    """The device's config.toml: its identity, the pinned root and the broker over TLS."""
    mqtt = f"{DEVICE_ETC}/mqtt"
    return (
        f"# {device}: install as {DEVICE_ETC}/config.toml (device/install.sh --device-dir does).\n"
        "# Every other setting has its default: docs/configuration.md.\n"
        f"[device]\nid = {_toml(device)}\n\n"
        f"[trust]\nroot = {_toml(DEVICE_ETC + '/root.json')}\n\n"
        f"[mqtt]\nurl = {_toml(broker)}\nfleet = {_toml(fleet)}\nprefix = {_toml(prefix)}\n"
        f"ca_file = {_toml(mqtt + '/ca.crt')}\ncert_file = {_toml(f'{mqtt}/{device}.crt')}\n"
        f"key_file = {_toml(f'{mqtt}/{device}.key')}\n"
    )


def render_acl(fleet: str, prefix: str, operator: str) -> str:
    """The mosquitto ACL: the operator everything under the fleet, each device (user name =
    certificate CN = device id) its own ``devices/<id>/`` topics and the fleet's releases."""
    base = f"{prefix}/{fleet}"
    return (
        f"# mosquitto ACL for edge-runtime fleet {fleet!r} (prefix {prefix!r}), from `edge-runtime fleet provision`.\n"
        "# With use_identity_as_username, a client's user name is its certificate's common name.\n"
        "# Anything not granted is denied. mosquitto warns about the fleet-wide `pattern` lines\n"
        "# (they have no %u); that is expected.\n\n"
        f"user {operator}\ntopic readwrite {base}/#\n\n"
        f"pattern write {base}/devices/%u/state\n"
        f"pattern write {base}/devices/%u/events\n"
        f"pattern write {base}/devices/%u/online\n"
        f"pattern write {base}/devices/%u/capture/+/index\n"
        f"pattern write {base}/devices/%u/capture/+/chunk/#\n"
        f"pattern read {base}/devices/%u/capture/request\n"
        f"pattern read {base}/devices/%u/desired\n"
        f"pattern read {base}/desired\n"
        f"pattern read {base}/models/#\n"
        f"pattern read {base}/trust/root/#\n"
    )


def render_mosquitto_conf(port: int) -> str:
    """A mosquitto 2.x configuration: TLS that requires a client certificate from the CA, the
    certificate's CN as user name, the ACL, persistence (devices catch up from retained state)."""
    return (
        "# mosquitto configuration for an edge-runtime fleet, from `edge-runtime fleet provision`.\n"
        f"# Install: sudo install -d -m 0750 -o mosquitto {BROKER_ETC}\n"
        f"#          sudo install -m 0640 -o mosquitto ca.crt server.crt server.key acl {BROKER_ETC}/\n"
        "#          sudo install -m 0644 edge-runtime.conf /etc/mosquitto/conf.d/\n\n"
        "per_listener_settings false\nallow_anonymous false\n"
        f"acl_file {BROKER_ETC}/acl\n\n"
        f"listener {port}\n"
        f"cafile {BROKER_ETC}/ca.crt\ncertfile {BROKER_ETC}/server.crt\nkeyfile {BROKER_ETC}/server.key\n"
        "require_certificate true\nuse_identity_as_username true\ntls_version tlsv1.2\n\n"
        "persistence true\npersistence_location /var/lib/mosquitto/\n"
        "# A device resuming a download subscribes to up to [mqtt] download_window_chunks (256) chunks.\n"
        "max_queued_messages 1000\n"
    )


class _Writer:
    """Writes files only when their bytes change, and records what it wrote."""

    def __init__(self, result: ProvisionResult) -> None:
        self.result = result

    def dir(self, path: Path, mode: int) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)
        return path

    def file(self, path: Path, data: bytes, mode: int) -> None:
        try:
            same = path.read_bytes() == data
        except FileNotFoundError:
            same = False
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
        if same:
            path.chmod(mode)
            return
        write_bytes_atomic(path, data, mode)
        path.chmod(mode)  # the umask must not widen or narrow what the reader of the file needs
        self.result.written.append(path)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc


@dataclass(frozen=True)
class _Ca:
    pem: bytes
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _ca(req: ProvisionRequest, w: _Writer) -> _Ca:
    """The CA: loaded, or created with ``ca_init`` when neither file exists."""
    have = (req.ca_cert.exists(), req.ca_key.exists())
    if have == (False, False) and req.ca_init:
        key = new_key()
        for p in (req.ca_cert, req.ca_key):
            p.parent.mkdir(parents=True, exist_ok=True)
        w.file(req.ca_key, key_pem(key), 0o600)
        w.file(req.ca_cert, cert_pem(make_ca(key)), 0o644)
        w.result.ca_created = True
    elif have != (True, True):
        missing = " and ".join(str(p) for p, ok in zip((req.ca_cert, req.ca_key), have, strict=True) if not ok)
        hint = "" if req.ca_init else " (--ca-init creates a CA when neither file exists)"
        raise UsageError(f"no CA: {missing} missing{hint}")
    pem = _read(req.ca_cert)
    ca = _Ca(pem, load_cert(pem, str(req.ca_cert)), load_key(_read(req.ca_key), str(req.ca_key)))
    if ca.cert.public_key() != ca.key.public_key():
        raise PkiError(f"{req.ca_key} is not the key of {req.ca_cert}")
    return ca


def _leaf(w: _Writer, directory: Path, name: str, ca: _Ca, force: bool, server_names: Sequence[str] = ()) -> None:
    """``directory/name.key`` and ``name.crt``: kept when still good, never a key replaced without ``force``."""
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.crt"
    if key_path.exists() and not force:
        key = load_key(_read(key_path), str(key_path))
        if cert_path.exists():
            why = check_issued(load_cert(_read(cert_path), str(cert_path)), ca.cert, key, name)
            if not why:
                key_path.chmod(0o600)
                return
            raise PkiError(f"{cert_path}: {why}; pass --force to replace the key and certificate of {name}")
    else:
        key = new_key()
        w.file(key_path, key_pem(key), 0o600)
        w.result.new_keys.append(name)
    w.file(cert_path, cert_pem(issue(ca.cert, ca.key, key, name, server_names=server_names)), 0o644)


def provision(req: ProvisionRequest) -> ProvisionResult:
    """Write (or complete) the provisioning directory ``req.out``; see the module docstring."""
    _check_topic_names(req.fleet, req.prefix)
    if not ID_RE.match(req.operator_name):
        raise UsageError(f"--operator-name {req.operator_name!r} must match {ID_RE.pattern}")
    ids = device_ids(req.id_prefix, req.start, req.devices, req.id_width)
    if req.operator_name in ids:
        raise UsageError(f"device id {req.operator_name!r} is the operator's certificate name")
    address = parse_broker_url(req.broker)
    if not address.tls:
        raise UsageError(f"--broker {req.broker}: devices authenticate with certificates, so the broker URL must be mqtts://")
    root_data = _read(req.root)
    try:
        verify_root(root_data)
    except BadDataError as exc:
        raise UsageError(f"--root {req.root}: not a valid trust root ({exc})") from exc

    result = ProvisionResult(devices=ids)
    w = _Writer(result)
    out = w.dir(req.out, 0o755)
    ca = _ca(req, w)
    w.file(out / "root.json", root_data, 0o644)
    w.file(out / "ca.crt", ca.pem, 0o644)

    broker = w.dir(out / "broker", 0o700)
    w.file(broker / "ca.crt", ca.pem, 0o644)
    _leaf(w, broker, "server", ca, req.force, server_names=(address.host, *req.server_names))
    w.file(broker / "acl", render_acl(req.fleet, req.prefix, req.operator_name).encode(), 0o644)
    w.file(broker / "edge-runtime.conf", render_mosquitto_conf(address.port).encode(), 0o644)

    operator = w.dir(out / "operator", 0o700)
    _leaf(w, operator, req.operator_name, ca, req.force)
    absolute = out.resolve()
    cfg = OperatorConfig(
        fleet=req.fleet,
        root=str(absolute / "root.json"),
        broker=BrokerSection(
            url=req.broker, ca_file=str(absolute / "ca.crt"), prefix=req.prefix,
            cert_file=str(absolute / "operator" / f"{req.operator_name}.crt"),
            key_file=str(absolute / "operator" / f"{req.operator_name}.key"),
        ),
    )
    result.operator_config = operator / "fleet.toml"
    w.file(result.operator_config, render_operator_config(cfg).encode(), 0o600)

    devices = w.dir(out / "devices", 0o700)
    for device in ids:
        d = w.dir(devices / device, 0o700)
        mqtt = w.dir(d / "mqtt", 0o700)
        w.file(mqtt / "ca.crt", ca.pem, 0o644)
        _leaf(w, mqtt, device, ca, req.force)
        w.file(d / "root.json", root_data, 0o644)
        w.file(d / "config.toml", render_device_config(device, req.broker, req.fleet, req.prefix).encode(), 0o644)
    return result


__all__ = [
    "ProvisionRequest", "ProvisionResult", "device_ids", "provision", "render_acl", "render_device_config",
    "render_mosquitto_conf",
]
