"""The operator's whole lifecycle on one fleet of 20 devices (issue 21's acceptance).

Real mosquitto over TLS, configured by ``fleet provision`` (every device authenticates with its
own client certificate, the generated ACL keeps it to its own topics); the operator's own keys
(``keys root init``: three offline root keys, threshold 2, a separate models key) and own model
(``scorer``); two real daemons and eighteen simulated devices (the real update client) with
``[store] keep_versions = 2``; every operator step the real ``edge-runtime`` command reading
the operator file ``fleet provision`` wrote. The tests run in order, each one step:

provision -> factory serving -> staged rollout with a bake -> a rollout the devices reject halts
(exit 1) -> ``fleet rollback`` -> root and models-key rotation -> retention.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from updates.integration.conftest import free_port

from edge_runtime.config import BrokerOptions
from edge_runtime.fleet.session import FleetSession
from edge_runtime.fleet.simulate import SimSettings, SimulatedFleet
from edge_runtime.fleet.status import DeviceStates
from edge_runtime.trust.keys import PrivateKey, key_id, load_private_key_pem
from edge_runtime.updates.protocol import Topics
from fleet.conftest import Mosquitto, Releases, cli, releases
from harness.daemon import Daemon
from harness.http import request
from harness.wait import wait_until

pytestmark = pytest.mark.integration

FLEET = "plant-9"
TOPICS = Topics("edge", FLEET)
DEVICES = 20
WAIT_S = 180
REAL = ("pi-0001", "pi-0002")  # real daemons; the rest are simulated
KEEP = 2
MODEL = "scorer"

__all__ = ["releases"]  # the fixture, imported for pytest


@dataclass
class Fleet:
    """Everything the steps share."""

    base: Path
    ops: Path
    prov: Path
    broker: Mosquitto
    ids: list[str]
    daemons: dict[str, Daemon] = field(default_factory=dict)
    sims: SimulatedFleet | None = None
    session: FleetSession | None = None
    states: DeviceStates = field(default_factory=lambda: DeviceStates(TOPICS))

    @property
    def op(self) -> list[str]:
        return ["--fleet-config", str(self.prov / "operator" / "fleet.toml")]

    def key(self, name: str) -> PrivateKey:
        return load_private_key_pem((self.ops / name).read_bytes())

    def state(self, device: str) -> dict[str, Any]:
        for row in self.states.devices():
            if row["device"] == device:
                return dict(row["state"] or {})
        return {}

    def active(self, device: str) -> int | None:
        entry = (self.state(device).get("models") or {}).get(MODEL) or {}
        return entry.get("active") if isinstance(entry, dict) else None

    def serving(self, version: int) -> list[str]:
        return [d for d in self.ids if self.active(d) == version]

    def wait_all(self, version: int, what: str) -> None:
        try:
            wait_until(lambda: len(self.serving(version)) == len(self.ids), f"all {len(self.ids)} devices {what}",
                       timeout=WAIT_S)
        except AssertionError as exc:
            late = {d: (self.state(d).get("models") or {}).get(MODEL) for d in self.ids if self.active(d) != version}
            raise AssertionError(f"{exc}; not there: {late}") from None


def _entry(state: dict[str, Any], serving: int) -> dict[str, Any] | None:
    entry = (state.get("models") or {}).get(MODEL)
    return entry if isinstance(entry, dict) and entry.get("serving") == serving else None


def _ok(*args: Any) -> str:
    r = cli(*args, timeout_s=300)
    assert r.returncode == 0, f"{args}: rc {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


def _device_config(prov: Path, device: str, base: Path, factory: Path) -> Path:
    """The provisioned config with its /etc paths pointed at the provisioning output, plus a
    store, the factory directory, retention and a free HTTP port."""
    text = (prov / "devices" / device / "config.toml").read_text(encoding="utf-8")
    text = text.replace("/etc/edge-runtime/mqtt/", f"{prov}/devices/{device}/mqtt/")
    text = text.replace("/etc/edge-runtime/root.json", f"{prov}/devices/{device}/root.json")
    text += (f'\n[store]\npath = "{base / device / "store"}"\nfactory = "{factory}"\nkeep_versions = {KEEP}\n'
             "[server]\nport = 0\n")
    path = base / device / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, releases: Releases) -> Iterator[Fleet]:
    base = tmp_path_factory.mktemp("lifecycle")
    ops, prov = base / "ops", base / "prov"
    port = free_port()
    _ok("keys", "root", "init", "--out", ops, "--root-keys", "3", "--threshold", "2")
    _ok("fleet", "provision", "--devices", DEVICES, "--ca", base / "ca.crt", "--ca-key", base / "ca.key", "--ca-init",
        "--root", ops / "root.json", "--broker", f"mqtts://127.0.0.1:{port}", "--fleet", FLEET, "--out", prov)
    conf = ((prov / "broker" / "edge-runtime.conf").read_text()
            .replace("/etc/mosquitto/edge-runtime/", f"{prov / 'broker'}/")
            .replace("/var/lib/mosquitto/", f"{base / 'mosq'}/")
            .replace(f"listener {port}", f"listener {port} 127.0.0.1"))
    broker = Mosquitto(base / "mosq", port=port, config=conf).start()
    ids = sorted(p.name for p in (prov / "devices").iterdir())
    f = Fleet(base, ops, prov, broker, ids)
    try:
        yield f
    finally:
        if f.session is not None:
            f.session.__exit__(None, None, None)
        for d in f.daemons.values():
            d.stop()
        if f.sims is not None:
            f.sims.stop()
        broker.stop()


def test_1_provisioned_devices_serve_the_operators_factory_model(fleet: Fleet, releases: Releases) -> None:
    assert len(fleet.ids) == DEVICES
    models_key = fleet.key("models.key")
    factory = fleet.base / "factory"
    factory.mkdir()
    v1 = releases.bundle(1, name=MODEL, signers=[models_key])
    verified = json.loads(_ok("bundle", "verify", v1, "--root", fleet.ops / "root.json", "--json"))
    (factory / f"{verified['name']}.bundle").write_bytes(v1.read_bytes())  # named by the manifest, as install.sh does
    for device in REAL:
        fleet.daemons[device] = Daemon(_device_config(fleet.prov, device, fleet.base, factory))
    sims = [d for d in fleet.ids if d not in REAL]
    fleet.sims = SimulatedFleet(SimSettings(
        url=fleet.broker.url.replace("mqtt://", "mqtts://"), fleet=FLEET, root_file=fleet.prov / "root.json",
        work_dir=fleet.base / "sims", factory_dir=factory, mqtt={"ca_file": str(fleet.prov / "ca.crt")},
        device_mqtt={d: {"cert_file": str(fleet.prov / "devices" / d / "mqtt" / f"{d}.crt"),
                         "key_file": str(fleet.prov / "devices" / d / "mqtt" / f"{d}.key")} for d in sims},
        store={"keep_versions": KEEP},
    ), sims).start()
    for d in fleet.daemons.values():
        d.wait_ready()
    op = BrokerOptions(url=fleet.broker.url.replace("mqtt://", "mqtts://"), ca_file=str(fleet.prov / "ca.crt"),
                       cert_file=str(fleet.prov / "operator" / "operator.crt"),
                       key_file=str(fleet.prov / "operator" / "operator.key"))
    fleet.session = FleetSession(op, TOPICS, timeout_s=30).__enter__()
    fleet.session.watch([TOPICS.devices_filter("state"), TOPICS.devices_filter("online")], fleet.states.on_message)
    try:
        wait_until(lambda: all(fleet.state(d) for d in fleet.ids), "every device to report over TLS", timeout=WAIT_S)
    except AssertionError:
        raise AssertionError(f"silent: {[d for d in fleet.ids if not fleet.state(d)]}; " + "\n".join(
            d.log()[-3000:] for d in fleet.daemons.values())) from None
    for device, d in fleet.daemons.items():  # the daemons serve the operator's factory model, and say so
        status, body = request(d.port, "GET", f"/v2/models/{MODEL}/ready")
        assert status == 200, (device, body)
        entry = wait_until(lambda device=device: _entry(fleet.state(device), 1), f"{device} to report factory v1")
        assert entry["serving_factory"] is True and entry["active"] is None
        health = fleet.state(device).get("health")
        assert isinstance(health, dict) and health.get("store_free_bytes", 0) > 0, fleet.state(device)
    table = _ok("fleet", "status", *fleet.op)
    assert all(d in table for d in fleet.ids)


def test_2_a_staged_rollout_with_a_bake_reaches_every_device(fleet: Fleet, releases: Releases) -> None:
    v2 = releases.bundle(2, name=MODEL, signers=[fleet.key("models.key")])
    out = _ok("fleet", "publish", v2, *fleet.op, "--sign-key", fleet.ops / "models.key", "--steps", "50,100",
              "--bake", "1", "--step-wait", "150", "--max-failures", "0")
    assert "baking step 50%" in out and "100%" in out, out
    fleet.wait_all(2, "to serve v2")


def test_3_a_rollout_the_devices_reject_halts_and_exits_non_zero(fleet: Fleet, releases: Releases) -> None:
    v3 = releases.bundle(3, name=MODEL, signers=[fleet.key("models.key")], architectures=("riscv64",))
    r = cli("fleet", "publish", v3, *fleet.op, "--sign-key", fleet.ops / "models.key", "--steps", "50,100",
            "--step-wait", "150", "--max-failures", "0", timeout_s=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "halt" in (r.stdout + r.stderr).lower() and "rejected" in r.stdout + r.stderr
    assert fleet.serving(2) == fleet.ids  # nobody left v2


def test_4_fleet_rollback_brings_every_device_back(fleet: Fleet, releases: Releases) -> None:
    v4 = releases.bundle(4, name=MODEL, signers=[fleet.key("models.key")])
    _ok("fleet", "publish", v4, *fleet.op, "--sign-key", fleet.ops / "models.key", "--rollout", "100")
    fleet.wait_all(4, "to serve v4")
    out = _ok("fleet", "rollback", MODEL, "--to", "2", *fleet.op, "--sign-key", fleet.ops / "models.key",
              "--step-wait", "150")
    assert f"{DEVICES} of {DEVICES} devices serve" in out, out
    fleet.wait_all(2, "to be back on v2")


def test_5_root_and_models_key_rotation_on_the_live_fleet(fleet: Fleet, releases: Releases) -> None:
    ops = fleet.ops
    _ok("keys", "new-key", "--out", ops / "models-b.key")
    old = fleet.key("models.key")
    _ok("keys", "root", "add-key", ops / "root.json", "--role", "models", "--key", ops / "models-b.key",
        "-o", ops / "root-2.json")
    _ok("keys", "root", "retire-key", ops / "root-2.json", "--role", "models", "--keyid", key_id(old),
        "-o", ops / "root-2.json")
    _ok("keys", "root", "sign", ops / "root-2.json", "--key", ops / "root-1.key", "--key", ops / "root-2.key",
        "--previous", ops / "root.json")
    _ok("fleet", "root", "publish", ops / "root-2.json", *fleet.op)
    wait_until(lambda: all(fleet.state(d).get("trust_root_version") == 2 for d in fleet.ids),
               "every device to take root v2", timeout=120)
    v5 = releases.bundle(5, name=MODEL, signers=[fleet.key("models-b.key")])
    _ok("fleet", "publish", v5, *fleet.op, "--sign-key", ops / "models-b.key", "--rollout", "100")
    fleet.wait_all(5, "to serve v5, signed by the new models key")
    v6 = releases.bundle(6, name=MODEL, signers=[old])
    r = cli("fleet", "publish", v6, *fleet.op, "--sign-key", ops / "models.key", "--rollout", "100")
    assert r.returncode == 1 and "not trusted" in r.stderr, r.stderr
    assert fleet.serving(5) == fleet.ids


def test_6_retention_keeps_the_newest_versions_and_what_must_stay(fleet: Fleet) -> None:
    for device in fleet.ids:
        store = fleet.base / device / "store" if device in REAL else fleet.base / "sims" / device / "store"
        versions = sorted(int(p.name) for p in (store / MODEL).iterdir() if p.name.isdigit())
        state = json.loads((store / MODEL / "state.json").read_text())
        protected = {state.get("active"), state.get("last_known_good")}
        assert 5 in versions and len(versions) <= KEEP + 1, (device, versions, state)  # + a last known good
        assert 2 not in versions or 2 in protected, (device, versions, state)  # v2 is older than the 2 newest
