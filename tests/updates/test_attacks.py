"""One test per attack on the update protocol, python-tuf style.

Each drives the real :class:`Updater` against a real store through :class:`FakeBroker`,
then checks that the attack was rejected with a reason that names it, that the store is
byte-for-byte unchanged and that the old version is still the active one.
"""

from __future__ import annotations

import platform

from edge_runtime.trust.keys import generate_private_key
from edge_runtime.trust.root import make_root, sign_root, verify_root
from edge_runtime.updates.protocol import Topics
from updates.conftest import DEVICE, DeviceFactory, DeviceUnderTest, FleetKeys, Releases, Repo


def _assert_unchanged(dev: DeviceUnderTest, before: str, active: int = 1) -> None:
    assert dev.store_hash() == before, "the store changed"
    assert dev.store.state("fraud").active == active
    assert not any(e["event"] in ("installed", "activated") for e in dev.broker.events())


def _chunk_subscriptions(dev: DeviceUnderTest) -> list[str]:
    return [s for s in dev.broker.subs if "/chunks/" in s]


def test_happy_path_reports_every_step(make_device: DeviceFactory, releases: Releases, repo: Repo, topics: Topics) -> None:
    dev = make_device()
    dev.broker.put(repo.release(releases.bundle(2)))
    dev.broker.put({topics.desired: repo.desired({"fraud": 2}, seq=1)})
    dev.sync()
    assert dev.store.state("fraud").active == 2
    kinds = [e["event"] for e in dev.broker.events()]
    for step in ("notified", "downloading", "verified", "installed", "activated"):
        assert step in kinds
    assert kinds.index("notified") < kinds.index("verified") < kinds.index("installed") < kinds.index("activated")
    assert dev.broker.events("downloading")[-1]["percent"] == 100
    state = dev.broker.state()
    assert state["models"]["fraud"]["active"] == 2 and state["update"] is None
    assert not _chunk_subscriptions(dev), "chunk subscriptions must be dropped once complete"
    assert not list((dev.state_dir / "staging").iterdir()), "the staging directory must be cleaned up"


def test_flipped_byte_in_chunk_is_refetched_then_accepted(
    make_device: DeviceFactory, releases: Releases, repo: Repo, topics: Topics
) -> None:
    dev = make_device()
    before = dev.store_hash()
    bundle = releases.bundle(2)
    good = repo.release(bundle)
    bad_topic = topics.chunk("fraud", 2, "model.tflite", 3)
    flipped = bytearray(good[bad_topic])
    flipped[17] ^= 0x01
    dev.broker.put({**good, bad_topic: bytes(flipped)})
    dev.broker.put({topics.desired: repo.desired({"fraud": 2}, seq=1)})
    dev.sync()
    assert any("chunk 3 does not match its sha256" in r for r in dev.reasons())
    _assert_unchanged(dev, before)
    # A stalled download re-requests what it lacks: the bad chunk is fetched again (and dropped again).
    deliveries = dev.broker.delivered.count(bad_topic)
    dev.clock.now += 10
    dev.sync()
    assert dev.broker.delivered.count(bad_topic) == deliveries + 1
    _assert_unchanged(dev, before)
    # The operator republishes the good chunk: the device is still subscribed and finishes.
    dev.broker.put({bad_topic: good[bad_topic]})
    dev.sync()
    assert dev.store.state("fraud").active == 2


def test_manifest_signed_by_unknown_key(
    make_device: DeviceFactory, releases: Releases, repo: Repo, topics: Topics, fleet_keys: FleetKeys
) -> None:
    dev = make_device()
    before = dev.store_hash()
    bundle = releases.bundle(2)
    dev.broker.put(repo.chunks(bundle))
    dev.broker.put(dict([repo.manifest(bundle, signers=[fleet_keys.stranger])]))
    dev.broker.put({topics.desired: repo.desired({"fraud": 2}, seq=1)})
    dev.sync()
    assert any("not trusted for this role" in r for r in dev.reasons())
    assert not _chunk_subscriptions(dev), "no chunk may be fetched before the manifest verifies"
    _assert_unchanged(dev, before)


def test_unsigned_desired_state(make_device: DeviceFactory, releases: Releases, repo: Repo, topics: Topics) -> None:
    dev = make_device()
    before = dev.store_hash()
    dev.broker.put(repo.release(releases.bundle(2)))
    dev.broker.put({topics.desired: repo.desired({"fraud": 2}, seq=1, signers=[])})
    dev.sync()
    dev.broker.put({topics.desired: b'{"models":{"fraud":{"version":2}},"seq":2}'})
    dev.sync()
    reasons = dev.reasons()
    assert any("no signatures" in r for r in reasons)
    assert any("expected exactly the fields 'desired' and 'signatures'" in r for r in reasons)
    assert dev.updater.floors == {}
    assert not any("/manifest" in s for s in dev.broker.subs)
    _assert_unchanged(dev, before)


def test_manifest_below_signature_threshold(
    make_device: DeviceFactory, releases: Releases, repo: Repo, topics: Topics, fleet_keys: FleetKeys
) -> None:
    second = generate_private_key()
    root = verify_root(sign_root(make_root(1, [fleet_keys.root_key], [fleet_keys.models_key, second], models_threshold=2), [fleet_keys.root_key]))
    both = [fleet_keys.models_key, second]
    dev = make_device(installed=[releases.bundle(1, signers=both)], root=root)
    before = dev.store_hash()
    dev.broker.put(repo.release(releases.bundle(2)))  # manifest signed by one of the two keys
    dev.broker.put({topics.desired: repo.desired({"fraud": 2}, seq=1, signers=both)})
    dev.sync()
    assert any("1 valid signature(s) from role 'models', threshold is 2" in r for r in dev.reasons())
    _assert_unchanged(dev, before)


def test_replayed_older_desired_state(make_device: DeviceFactory, releases: Releases, repo: Repo, topics: Topics) -> None:
    dev = make_device()
    dev.broker.put({topics.desired: repo.desired({"fraud": 1}, seq=5)})
    dev.sync()
    assert dev.updater.floors["desired"].seq == 5
    before = dev.store_hash()
    dev.broker.put(repo.release(releases.bundle(2)))
    dev.broker.put({topics.desired: repo.desired({"fraud": 2}, seq=3)})
    dev.sync()
    dev.broker.put({topics.desired: repo.desired({"fraud": 2}, seq=5)})  # same seq, other contents
    dev.sync()
    reasons = dev.reasons()
    assert any("seq 3 is older than the seq 5 already followed" in r for r in reasons)
    assert any("seq 5 was already followed with different contents" in r for r in reasons)
    assert dev.updater.floors["desired"].seq == 5
    _assert_unchanged(dev, before)


def test_older_model_version(make_device: DeviceFactory, releases: Releases, repo: Repo, topics: Topics) -> None:
    dev = make_device(2, installed=[releases.bundle(1), releases.bundle(2)])
    before = dev.store_hash()
    dev.broker.put(repo.release(releases.bundle(1)))
    dev.broker.put({topics.desired: repo.desired({"fraud": 1}, seq=1)})
    dev.sync()
    assert any("fraud v1 is older than the active v2" in r for r in dev.reasons())
    _assert_unchanged(dev, before, active=2)


def test_same_version_with_different_bytes(make_device: DeviceFactory, releases: Releases, repo: Repo, topics: Topics) -> None:
    dev = make_device(1, installed=[releases.bundle(1), releases.bundle(2)])  # v2 installed, never activated
    before = dev.store_hash()
    dev.broker.put(repo.release(releases.bundle(2, pad=100, tag="rebuilt")))
    dev.broker.put({topics.desired: repo.desired({"fraud": 2}, seq=1)})
    dev.sync()
    assert any("already installed with different bytes" in r for r in dev.reasons())
    _assert_unchanged(dev, before)


def test_manifest_for_one_model_naming_another_models_artifact(
    make_device: DeviceFactory, releases: Releases, repo: Repo, topics: Topics
) -> None:
    dev = make_device()
    before = dev.store_hash()
    other = releases.bundle(2, name="other")
    dev.broker.put(repo.chunks(other, name="fraud"))
    dev.broker.put(dict([repo.manifest(other, topic_name="fraud")]))  # validly signed, for model "other"
    dev.broker.put({topics.desired: repo.desired({"fraud": 2}, seq=1)})
    dev.sync()
    assert any("the signed manifest is for other v2, expected fraud v2" in r for r in dev.reasons())
    assert not _chunk_subscriptions(dev)
    _assert_unchanged(dev, before)


def test_chunk_larger_than_chunk_size(make_device: DeviceFactory, releases: Releases, repo: Repo, topics: Topics) -> None:
    dev = make_device()
    before = dev.store_hash()
    good = repo.release(releases.bundle(2))
    topic = topics.chunk("fraud", 2, "model.tflite", 0)
    dev.broker.put({**good, topic: good[topic] + b"\0" * 512})
    dev.broker.put({topics.desired: repo.desired({"fraud": 2}, seq=1)})
    dev.sync()
    assert any("chunk 0 is 1536 bytes, larger than chunk_size 1024" in r for r in dev.reasons())
    download = dev.updater.download
    assert dev.updater.job is not None and download is not None and not download.has("model.tflite", 0)
    _assert_unchanged(dev, before)


def test_more_chunks_than_the_manifest_declares(
    make_device: DeviceFactory, releases: Releases, repo: Repo, topics: Topics
) -> None:
    dev = make_device()
    before = dev.store_hash()
    bundle = releases.bundle(2)
    good = repo.release(bundle)
    count = sum(1 for t in good if "/chunks/" in t)
    missing = topics.chunk("fraud", 2, "model.tflite", count - 1)
    extra = {topics.chunk("fraud", 2, "model.tflite", count + i): b"x" * 100 for i in range(3)}
    dev.broker.put({**{t: p for t, p in good.items() if t != missing}, **extra})
    dev.broker.put({topics.desired: repo.desired({"fraud": 2}, seq=1)})
    dev.sync()
    assert sum(f"the manifest declares {count} chunks" in r for r in dev.reasons()) == 3
    progress = dev.updater.download.progress()  # type: ignore[union-attr]
    assert progress.rejected_bytes == 300 and progress.have_bytes < progress.total_bytes
    _assert_unchanged(dev, before)


def test_artifact_for_another_cpu_architecture(make_device: DeviceFactory, releases: Releases, repo: Repo, topics: Topics) -> None:
    other_arch = "riscv64" if platform.machine() != "riscv64" else "x86_64"
    dev = make_device()
    before = dev.store_hash()
    dev.broker.put(repo.release(releases.bundle(2, architectures=[other_arch])))
    dev.broker.put({topics.desired: repo.desired({"fraud": 2}, seq=1)})
    dev.sync()
    assert any(f"built for architectures ['{other_arch}'], this device is {platform.machine()}" in r for r in dev.reasons())
    assert not _chunk_subscriptions(dev)
    _assert_unchanged(dev, before)


def test_root_update_that_skips_a_version(make_device: DeviceFactory, topics: Topics, fleet_keys: FleetKeys) -> None:
    dev = make_device()
    before = dev.store_hash()
    new_key = generate_private_key()
    root3 = sign_root(make_root(3, [new_key], [fleet_keys.models_key]), [fleet_keys.root_key, new_key])
    dev.broker.put({topics.root(3): root3})
    dev.sync()
    assert any("expected version 2, found 3 (a skipped version)" in r for r in dev.reasons())
    assert dev.store.root.version == 1
    assert not (dev.state_dir / "roots").exists()
    _assert_unchanged(dev, before)


def test_root_update_signed_only_by_the_new_keys(make_device: DeviceFactory, topics: Topics, fleet_keys: FleetKeys) -> None:
    dev = make_device()
    before = dev.store_hash()
    new_key = generate_private_key()
    root2 = sign_root(make_root(2, [new_key], [new_key]), [new_key])
    dev.broker.put({topics.root(2): root2})
    dev.sync()
    assert any("by the keys of version 1" in r for r in dev.reasons())
    assert dev.store.root.version == 1
    _assert_unchanged(dev, before)


def test_desired_state_signed_for_another_fleet(make_device: DeviceFactory, releases: Releases, repo: Repo, topics: Topics) -> None:
    dev = make_device()
    before = dev.store_hash()
    dev.broker.put(repo.release(releases.bundle(2)))
    dev.broker.put({topics.desired: repo.desired({"fraud": 2}, seq=1, fleet="f2")})
    dev.sync()
    assert any("signed for fleet 'f2', this device is in fleet 'f1'" in r for r in dev.reasons())
    _assert_unchanged(dev, before)


def test_override_signed_for_another_device(make_device: DeviceFactory, releases: Releases, repo: Repo, topics: Topics) -> None:
    dev = make_device()
    before = dev.store_hash()
    dev.broker.put(repo.release(releases.bundle(2)))
    dev.broker.put({topics.device_desired(DEVICE): repo.desired({"fraud": 2}, seq=1, device="dev-2")})
    dev.sync()
    assert any("signed for device 'dev-2', expected 'dev-1'" in r for r in dev.reasons())
    _assert_unchanged(dev, before)


def test_expired_desired_state_with_a_trusted_clock(
    make_device: DeviceFactory, releases: Releases, repo: Repo, topics: Topics
) -> None:
    dev = make_device()
    dev.updater.clock_trusted = lambda: True
    before = dev.store_hash()
    dev.broker.put(repo.release(releases.bundle(2)))
    dev.broker.put({topics.desired: repo.desired({"fraud": 2}, seq=1, expires="2001-01-01T00:00:00Z")})
    dev.sync()
    assert any("expired at 2001-01-01" in r for r in dev.reasons())
    _assert_unchanged(dev, before)
    # Without a trusted clock (a Pi with no network has no real-time clock) expiry is not checked.
    dev.updater.clock_trusted = lambda: False
    dev.broker.put({topics.desired: repo.desired({"fraud": 2}, seq=2, expires="2001-01-01T00:00:00Z")})
    dev.sync()
    assert dev.store.state("fraud").active == 2
