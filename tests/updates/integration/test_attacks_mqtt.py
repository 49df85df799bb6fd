"""Acceptance 4 against a real mosquitto: each attack is published as retained messages, the
device (the update service, connected over MQTT) rejects it and says why on its events
topic, and its store is byte-for-byte unchanged with the old version active.

(The same attacks are unit tests in ../test_attacks.py; the ACL case is in test_acl_tls.py.)
"""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edge_runtime.bundle.reader import BundleLimits
from edge_runtime.config import parse_config
from edge_runtime.fleet.session import BrokerOptions, FleetSession
from edge_runtime.store.store import ModelStore
from edge_runtime.trust.keys import generate_private_key
from edge_runtime.trust.root import TrustRoot, make_root, sign_root, verify_root
from edge_runtime.updates.protocol import Topics
from edge_runtime.updates.service import UpdateService
from harness.wait import wait_until
from updates.conftest import FLEET, FleetKeys, Releases, Repo
from updates.integration.conftest import Mosquitto, Observer

pytestmark = pytest.mark.integration
DEV = "pi-attacked"
OTHER_ARCH = "riscv64" if platform.machine() != "riscv64" else "x86_64"
SECOND_MODELS_KEY = generate_private_key()
Batches = list[dict[str, bytes]]


def _tree(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if ".updates" in p.parts:
            continue
        h.update(str(p.relative_to(path)).encode() + (p.read_bytes() if p.is_file() else b"/"))
    return h.hexdigest()


def _chunk(t: Topics, i: int, version: int = 2) -> str:
    return t.chunk("fraud", version, "model.tflite", i)


def _oversized(r: Repo, rel: Releases) -> Batches:
    good = r.release(rel.bundle(2))
    t = _chunk(r.topics, 0)
    missing = _chunk(r.topics, 18)
    return [{**{k: v for k, v in good.items() if k != missing}, t: good[t] + b"\0" * 100}, {r.topics.desired: r.desired({"fraud": 2}, 1)}]


def _extra_chunks(r: Repo, rel: Releases) -> Batches:
    good = r.release(rel.bundle(2))
    missing = _chunk(r.topics, 18)
    extra = {_chunk(r.topics, 19 + i): b"y" * 64 for i in range(2)}
    return [{**{k: v for k, v in good.items() if k != missing}, **extra}, {r.topics.desired: r.desired({"fraud": 2}, 1)}]


def _threshold_root(k: FleetKeys) -> TrustRoot:
    signed = make_root(1, [k.root_key], [k.models_key, SECOND_MODELS_KEY], models_threshold=2)
    return verify_root(sign_root(signed, [k.root_key]))


@dataclass
class Attack:
    """Messages an attacker (or a broken operator tool) gets onto the broker, and the reason expected."""

    reason: str
    batches: Callable[[Repo, Releases, FleetKeys], Batches]
    installed: Callable[[Releases], list[Path]] = field(default=lambda rel: [rel.bundle(1)])
    active: int = 1
    root: Callable[[FleetKeys], TrustRoot] | None = None
    # The device must have taken this fleet seq before the next batch goes out: a later retained
    # desired state may otherwise overtake an earlier one the device has not handled yet.
    settle_seq: int | None = None


ATTACKS = {
    "manifest signed by an unknown key": Attack(
        "not trusted for this role",
        lambda r, rel, k: [r.chunks(rel.bundle(2)), dict([r.manifest(rel.bundle(2), signers=[k.stranger])]),
                           {r.topics.desired: r.desired({"fraud": 2}, 1)}],
    ),
    "unsigned desired state": Attack(
        "no signatures",
        lambda r, rel, k: [r.release(rel.bundle(2)), {r.topics.desired: r.desired({"fraud": 2}, 1, signers=[])}],
    ),
    "manifest below the signature threshold": Attack(
        "1 valid signature(s) from role 'models', threshold is 2",
        lambda r, rel, k: [r.release(rel.bundle(2)),
                           {r.topics.desired: r.desired({"fraud": 2}, 1, signers=[k.models_key, SECOND_MODELS_KEY])}],
        installed=lambda rel: [rel.bundle(1, signers=[rel.keys.models_key, SECOND_MODELS_KEY])],
        root=_threshold_root,
    ),
    "replayed older desired state": Attack(
        "seq 3 is older than the seq 5 already followed",
        lambda r, rel, k: [{r.topics.desired: r.desired({"fraud": 1}, 5)}, r.release(rel.bundle(2)),
                           {r.topics.desired: r.desired({"fraud": 2}, 3)}],
        settle_seq=5,
    ),
    "older model version": Attack(
        "fraud v1 is older than the active v2",
        lambda r, rel, k: [r.release(rel.bundle(1)), {r.topics.desired: r.desired({"fraud": 1}, 1)}],
        installed=lambda rel: [rel.bundle(1), rel.bundle(2)],
        active=2,
    ),
    "same version with different bytes": Attack(
        "already installed with different bytes",
        lambda r, rel, k: [r.release(rel.bundle(2, pad=100, tag="rebuilt")), {r.topics.desired: r.desired({"fraud": 2}, 1)}],
        installed=lambda rel: [rel.bundle(1), rel.bundle(2)],
    ),
    "manifest naming another model's artifact": Attack(
        "the signed manifest is for other v2, expected fraud v2",
        lambda r, rel, k: [r.chunks(rel.bundle(2, name="other"), name="fraud"),
                           dict([r.manifest(rel.bundle(2, name="other"), topic_name="fraud")]),
                           {r.topics.desired: r.desired({"fraud": 2}, 1)}],
    ),
    "chunk larger than chunk_size": Attack("chunk 0 is 1124 bytes, larger than chunk_size 1024", lambda r, rel, k: _oversized(r, rel)),
    "more chunks than the manifest declares": Attack("the manifest declares 19 chunks", lambda r, rel, k: _extra_chunks(r, rel)),
    "artifact for another CPU architecture": Attack(
        f"built for architectures ['{OTHER_ARCH}']",
        lambda r, rel, k: [r.release(rel.bundle(2, architectures=[OTHER_ARCH])), {r.topics.desired: r.desired({"fraud": 2}, 1)}],
    ),
    "root update that skips a version": Attack(
        "expected version 2, found 3 (a skipped version)",
        lambda r, rel, k: [{r.topics.root(3): sign_root(make_root(3, [k.root_key], [k.models_key]), [k.root_key])}],
    ),
    "root update signed only by the new keys": Attack(
        "by the keys of version 1",
        lambda r, rel, k: [{r.topics.root(2): sign_root(make_root(2, [SECOND_MODELS_KEY], [k.models_key]), [SECOND_MODELS_KEY])}],
    ),
}


def _start(tmp_path: Path, url: str, keys: FleetKeys, store: ModelStore) -> UpdateService:
    cfg = parse_config(
        {
            "device": {"id": DEV},
            "store": {"path": str(store.path)},
            "trust": {"root": str(keys.path("root.json"))},
            "mqtt": {"url": url, "fleet": FLEET, "reconnect_min_s": 0.05, "reconnect_max_s": 0.5, "download_stall_s": 1.0},
        }
    )
    return UpdateService(cfg, store, DEV, selftest_in_process=True).start()


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_is_rejected_and_changes_nothing(
    name: str, tmp_path: Path, mosquitto: Mosquitto, observer: Observer, fleet_keys: FleetKeys, releases: Releases
) -> None:
    attack = ATTACKS[name]
    topics = Topics("edge", FLEET)
    store = ModelStore(tmp_path / "store", attack.root(fleet_keys) if attack.root else fleet_keys.root, None, BundleLimits())
    for b in attack.installed(releases):
        store.install(b)
    store.activate("fraud", attack.active)
    before = _tree(store.path)
    svc = _start(tmp_path, mosquitto.url, fleet_keys, store)
    try:
        wait_until(lambda: observer.state(DEV), "the device to connect")
        with FleetSession(BrokerOptions(url=mosquitto.url), topics) as session:
            settle = attack.settle_seq
            for batch in attack.batches(Repo(topics, fleet_keys), releases, fleet_keys):
                session.publish_all(list(batch.items()))
                if settle is not None and topics.desired in batch:
                    wait_until(lambda want=settle: (observer.state(DEV).get("desired_seq") or {}).get("desired") == want,
                               f"the device to take desired seq {settle}")
                    settle = None
        wait_until(lambda: any(attack.reason in e.get("reason", "") for e in observer.of(DEV, "rejected")), f"a rejection naming {attack.reason!r}; got {[e.get('reason') for e in observer.of(DEV, 'rejected')]}")
        state = wait_until(lambda: (s := observer.state(DEV)).get("last_error") and s, "last_error in state")
        assert state["models"]["fraud"]["active"] == attack.active
    finally:
        svc.stop()
    assert _tree(store.path) == before, "the store changed"
    assert store.state("fraud").active == attack.active
    assert store.root.version == 1
    assert not observer.of(DEV, "installed") and not observer.of(DEV, "activated")


def test_flipped_byte_is_refetched_and_accepted_once_republished(
    tmp_path: Path, mosquitto: Mosquitto, observer: Observer, fleet_keys: FleetKeys, releases: Releases
) -> None:
    topics = Topics("edge", FLEET)
    repo = Repo(topics, fleet_keys)
    store = ModelStore(tmp_path / "store", fleet_keys.root, None, BundleLimits())
    store.install(releases.bundle(1))
    store.activate("fraud", 1)
    before = _tree(store.path)
    good = repo.release(releases.bundle(2))
    bad_topic = _chunk(topics, 5)
    flipped = bytearray(good[bad_topic])
    flipped[100] ^= 0x80
    svc = _start(tmp_path, mosquitto.url, fleet_keys, store)
    try:
        wait_until(lambda: observer.state(DEV), "the device to connect")
        with FleetSession(BrokerOptions(url=mosquitto.url), topics) as session:
            session.publish_all(list({**good, bad_topic: bytes(flipped)}.items()))
            session.publish_all([(topics.desired, repo.desired({"fraud": 2}, 1))])

            def bad_chunk_reports() -> int:
                return sum("chunk 5 does not match its sha256" in e.get("reason", "") for e in observer.of(DEV, "rejected"))

            wait_until(lambda: bad_chunk_reports() >= 2, "the bad chunk to be fetched again after a stall")
            assert _tree(store.path) == before and store.state("fraud").active == 1
            session.publish_all([(bad_topic, good[bad_topic])])
        wait_until(lambda: store.state("fraud").active == 2, "v2 once the good chunk is republished")
    finally:
        svc.stop()
