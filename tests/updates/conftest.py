"""Fixtures for the update protocol: fleet keys, releases built from the demo model, an
operator-side message builder (:class:`Repo`) and an in-memory broker (:class:`FakeBroker`)
that implements the updater's transport with retained-message semantics, for unit tests.

Integration tests (``integration/``) use the real mosquitto instead of :class:`FakeBroker`.
"""

from __future__ import annotations

import collections
import hashlib
import json
import platform
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import pytest

from edge_runtime.bundle.reader import BundleLimits, open_bundle
from edge_runtime.bundle.writer import build_manifest, write_bundle
from edge_runtime.inference.selftest import selftest_version
from edge_runtime.packaging import PackRequest, pack_model
from edge_runtime.store.store import ModelStore
from edge_runtime.trust.canonical import canonical_json
from edge_runtime.trust.keys import PrivateKey, generate_private_key, private_key_pem, sign
from edge_runtime.trust.root import TrustRoot, make_root, sign_root, verify_root
from edge_runtime.updates.protocol import (
    ChunkTopic,
    Topics,
    desired_document,
    manifest_message,
    rollout_salt,
    signed_message,
)
from edge_runtime.updates.updater import Updater, UpdaterSettings

REPO_DIR = Path(__file__).resolve().parents[2]
FACTORY = REPO_DIR / "device" / "factory"
FLEET = "f1"
DEVICE = "dev-1"


@dataclass(frozen=True)
class FleetKeys:
    """Root key, models key, a stranger's key, and the version-1 root naming the first two."""

    root_key: PrivateKey
    models_key: PrivateKey
    stranger: PrivateKey
    root: TrustRoot
    root_bytes: bytes
    dir: Path

    def path(self, name: str) -> Path:
        """``signing.key`` (models key), ``root.key``, ``stranger.key`` or ``root.json``."""
        return self.dir / name


@pytest.fixture(scope="session")
def fleet_keys(tmp_path_factory: pytest.TempPathFactory) -> FleetKeys:
    """Separate root and models keys, as an operator would keep them."""
    d = tmp_path_factory.mktemp("fleet-keys")
    root_key, models_key, stranger = generate_private_key(), generate_private_key(), generate_private_key()
    root_bytes = sign_root(make_root(1, [root_key], [models_key]), [root_key])
    for name, key in (("root.key", root_key), ("signing.key", models_key), ("stranger.key", stranger)):
        (d / name).write_bytes(private_key_pem(key))
    (d / "root.json").write_bytes(root_bytes)
    return FleetKeys(root_key, models_key, stranger, verify_root(root_bytes), root_bytes, d)


class Releases:
    """Signed bundles of the demo model, cached by their arguments."""

    def __init__(self, directory: Path, keys: FleetKeys) -> None:
        self.dir = directory
        self.keys = keys
        self._cache: dict[str, Path] = {}
        self._golden = np.load(FACTORY / "golden.npy")

    def bundle(
        self,
        version: int,
        *,
        name: str = "fraud",
        pad: int = 0,
        chunk_size: int = 1024,
        architectures: Iterable[str] = ("any",),
        signers: Iterable[PrivateKey] | None = None,
        wrong_golden: bool = False,
        tag: str = "",
    ) -> Path:
        """A bundle of ``fraud.tflite`` plus ``pad`` trailing bytes (LiteRT ignores them; they
        make bigger models and different bytes for one version). ``wrong_golden`` signs a
        manifest whose expected outputs are off by 1, so its self-test fails."""
        signers = list(signers) if signers is not None else [self.keys.models_key]
        arch = tuple(architectures)
        key = f"{name}-{version}-{pad}-{chunk_size}-{arch}-{[s.public_key().public_bytes_raw().hex() for s in signers]}-{wrong_golden}-{tag}"
        if key in self._cache:
            return self._cache[key]
        model = self.dir / f"model-{len(self._cache)}.tflite"
        seed = hashlib.sha256(f"{version}{tag}".encode()).digest()
        filler = (seed * (pad // len(seed) + 1))[:pad]
        model.write_bytes((FACTORY / "fraud.tflite").read_bytes() + filler)
        out = self.dir / f"{name}-v{version}-{len(self._cache)}.bundle"
        pack_model(PackRequest(
            model, name=name, version=version, keys=signers, out=out, chunk_size=chunk_size,
            input_names=["input_0"], output_names=["output_0"], golden_inputs=[self._golden], architectures=arch,
        ))
        if wrong_golden:
            with open_bundle(out, None) as b:
                fields = b.manifest.to_json()
                data = b.read_artifact(b.manifest.model_file)
            out_tensor = fields["golden"]["outputs"]["output_0"]
            out_tensor["data"] = [v + 1.0 for v in out_tensor["data"]]
            manifest = build_manifest(fields)
            write_bundle(out, manifest, {manifest.model_file: data}, signers)
        self._cache[key] = out
        return out


@pytest.fixture(scope="session")
def releases(tmp_path_factory: pytest.TempPathFactory, fleet_keys: FleetKeys) -> Releases:
    """Bundle factory shared by the whole session."""
    return Releases(tmp_path_factory.mktemp("releases"), fleet_keys)


class Repo:
    """The operator side as plain message bytes (what ``fleet publish`` would send)."""

    def __init__(self, topics: Topics, keys: FleetKeys) -> None:
        self.topics = topics
        self.keys = keys

    def desired(
        self,
        models: dict[str, int | tuple[int, int]],
        seq: int,
        *,
        device: str | None = None,
        fleet: str | None = None,
        signers: Iterable[PrivateKey] | None = None,
        expires: str | None = None,
    ) -> bytes:
        """A signed desired state; a tuple value is ``(version, rollout percent)``."""
        entries: dict[str, Any] = {}
        for name, target in models.items():
            version, percent = target if isinstance(target, tuple) else (target, 100)
            entries[name] = {"version": version, "rollout": {"percent": percent, "salt": rollout_salt(name, version)}}
        doc = desired_document(fleet or self.topics.fleet, seq, entries, device=device, expires=expires)
        payload = canonical_json(doc)
        signers = list(signers) if signers is not None else [self.keys.models_key]
        return signed_message("desired", payload, [sign(k, payload) for k in signers])

    def desired_topic(self, device: str | None = None) -> str:
        """Where a desired state goes."""
        return self.topics.device_desired(device) if device else self.topics.desired

    def manifest(self, bundle: Path, signers: Iterable[PrivateKey] | None = None, topic_name: str | None = None) -> tuple[str, bytes]:
        """``(topic, message)``; ``signers`` re-signs the manifest, ``topic_name`` files it under another model."""
        with open_bundle(bundle, None) as b:
            m, raw, sig = b.manifest, b.manifest_bytes, b.signature_bytes
        sigs = [sign(k, raw) for k in signers] if signers is not None else json.loads(sig)["signatures"]
        return self.topics.manifest(topic_name or m.name, m.version), manifest_message(raw, sigs)

    def chunks(self, bundle: Path, name: str | None = None) -> dict[str, bytes]:
        """Every chunk topic of the bundle's artifacts and its bytes."""
        out: dict[str, bytes] = {}
        with open_bundle(bundle, None) as b:
            m = b.manifest
            for file, art in m.artifacts.items():
                data = b.read_artifact(file)
                for i in range(art.chunk_count):
                    out[self.topics.chunk(name or m.name, m.version, file, i)] = data[i * art.chunk_size : (i + 1) * art.chunk_size]
        return out

    def release(self, bundle: Path) -> dict[str, bytes]:
        """Manifest and chunks of a release."""
        topic, msg = self.manifest(bundle)
        return {**self.chunks(bundle), topic: msg}


@pytest.fixture
def topics() -> Topics:
    """The test fleet's topics."""
    return Topics("edge", FLEET)


@pytest.fixture
def repo(topics: Topics, fleet_keys: FleetKeys) -> Repo:
    """Builds operator messages."""
    return Repo(topics, fleet_keys)


class FakeBroker:
    """An in-memory broker for unit tests: retained messages, subscriptions, in-order delivery.

    Delivery is explicit (:meth:`pump`) so a test controls exactly what arrives when.
    """

    connected = True

    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self.retained: dict[str, bytes] = {}
        self.subs: set[str] = set()
        self.queue: collections.deque[tuple[str, bytes]] = collections.deque()
        self.published: list[tuple[str, bytes, bool]] = []
        self.delivered: list[str] = []
        self.updater: Updater | None = None

    # transport side (called by the updater)
    def subscribe(self, filters: list[str], *, new_only: bool = False) -> None:
        for f in filters:
            new = f not in self.subs
            self.subs.add(f)
            if new or not new_only:
                self.queue.extend((t, p) for t, p in sorted(self.retained.items()) if paho.topic_matches_sub(f, t))

    def unsubscribe(self, filters: list[str]) -> None:
        self.subs.difference_update(filters)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1) -> None:
        self.published.append((topic, payload, retain))

    # operator side
    def put(self, messages: dict[str, bytes]) -> None:
        """Publish retained messages (an empty payload clears a topic)."""
        for topic, payload in messages.items():
            if payload:
                self.retained[topic] = payload
            else:
                self.retained.pop(topic, None)
            if any(paho.topic_matches_sub(f, topic) for f in self.subs):
                self.queue.append((topic, payload))

    def pump(self, limit: int = 100_000) -> int:
        """Deliver queued messages (and what they cause) until nothing is left; returns the count."""
        assert self.updater is not None
        n = 0
        while self.queue and n < limit:
            topic, payload = self.queue.popleft()
            ref = self.topics.parse(topic)
            n += 1
            self.delivered.append(topic)
            if ref is None:
                continue
            if isinstance(ref, ChunkTopic):
                self.updater.on_chunk(ref, payload)
            else:
                self.updater.on_message(ref, payload)
        return n

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Events the device published, optionally only one kind."""
        evs = [json.loads(p) for t, p, _ in self.published if t.endswith("/events")]
        return [e for e in evs if kind is None or e["event"] == kind]

    def state(self) -> dict[str, Any]:
        """The device's last retained state."""
        states = [json.loads(p) for t, p, r in self.published if t.endswith("/state")]
        assert states, "the device published no state"
        return states[-1]


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class DeviceUnderTest:
    """A store, an updater wired to a FakeBroker, and what is needed to check nothing changed."""

    store: ModelStore
    broker: FakeBroker
    updater: Updater
    clock: FakeClock
    state_dir: Path

    def store_hash(self) -> str:
        """sha256 over the store tree (every path and file)."""
        h = hashlib.sha256()
        for p in sorted(self.store.path.rglob("*")):
            if ".updates" in p.parts:
                continue
            h.update(str(p.relative_to(self.store.path)).encode())
            if p.is_file():
                h.update(p.read_bytes())
        return h.hexdigest()

    def sync(self) -> None:
        """Deliver everything queued and run the timers once."""
        self.broker.pump()
        self.updater.tick()
        self.broker.pump()

    def reasons(self) -> list[str]:
        """Reasons of every ``rejected`` event."""
        return [e.get("reason", "") for e in self.broker.events("rejected")]


DeviceFactory = Callable[..., DeviceUnderTest]


@pytest.fixture
def make_device(tmp_path: Path, fleet_keys: FleetKeys, releases: Releases, topics: Topics) -> DeviceFactory:
    """``make_device(active=1, installed=(), selftest=True, root=None, **settings)``: a device with
    ``fraud`` v``active`` active (``installed`` bundles, else that version's default bundle),
    connected to a FakeBroker. ``settings`` go to :class:`UpdaterSettings`."""
    made = 0

    def build(
        active: int | None = 1,
        *,
        installed: Iterable[Path] = (),
        selftest: bool = True,
        root: TrustRoot | None = None,
        **settings: Any,
    ) -> DeviceUnderTest:
        nonlocal made
        made += 1
        base = tmp_path / f"device-{made}"
        store = ModelStore(base / "store", root or fleet_keys.root, None, BundleLimits())
        bundles = list(installed) or ([releases.bundle(active)] if active is not None else [])
        for b in bundles:
            store.install(b)
        if active is not None:
            store.activate("fraud", active)
        broker = FakeBroker(topics)
        clock = FakeClock()
        state_dir = base / "store" / ".updates"
        defaults: dict[str, Any] = {"device_id": DEVICE, "machine": platform.machine(), "stall_s": 5.0, "activation_timeout_s": 30.0}
        defaults.update(settings)
        updater = Updater(
            UpdaterSettings(topics=topics, state_dir=state_dir, staging_dir=state_dir / "staging", **defaults),
            store,
            broker,
            selftest=selftest_version if selftest else None,
            monotonic=clock,
        )
        broker.updater = updater
        updater.load()
        updater.on_connect(False)
        broker.pump()
        return DeviceUnderTest(store, broker, updater, clock, state_dir)

    return build

