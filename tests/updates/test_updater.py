"""The updater's state machine beyond attacks: self-test failure, the daemon hand-off, resume
after a restart, overrides, root rotation and the offline event queue (FakeBroker, real store)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from edge_runtime.exceptions import TransportError
from edge_runtime.inference.delegates import InstallCheck
from edge_runtime.trust.keys import generate_private_key, sign
from edge_runtime.trust.root import make_root, sign_root
from edge_runtime.updates.download import Download, release_dir
from edge_runtime.updates.effects import DownloadFailed, Phase
from edge_runtime.updates.protocol import Topics
from edge_runtime.updates.roots import load_trust_root
from edge_runtime.updates.updater import Updater, UpdaterEvent
from edge_runtime.updates.verify import rollout_bucket
from harness.bundles import rebuilt_bundle
from updates.conftest import DEVICE, DeviceFactory, FakeBroker, FleetKeys, Releases, Repo


def test_failed_selftest_rolls_back_and_is_not_retried(
    make_device: DeviceFactory, releases: Releases, repo: Repo, topics: Topics
) -> None:
    dev = make_device()
    dev.broker.put(repo.release(releases.bundle(2, wrong_golden=True)))
    dev.broker.put({topics.desired: repo.desired({"fraud": 2}, seq=1)})
    dev.sync()
    state = dev.store.state("fraud")
    assert state.active == 1 and 2 in state.failed
    failed = dev.broker.events("failed")
    assert failed and "differs from golden" in failed[0]["reason"]
    rolled = dev.broker.events("rolled_back")
    assert rolled and rolled[0]["version"] == 1 and rolled[0]["from_version"] == 2
    assert "differs from golden" in dev.broker.state()["last_error"]["reason"]
    # The same desired state again (a reconnect) does not fetch the failed version a second time.
    published = len(dev.broker.published)
    dev.updater.on_connect(False)
    dev.sync()
    assert not any("/manifest" in s for s in dev.broker.subs)
    assert len(dev.broker.events("notified")) == 1 and len(dev.broker.published) > published


def test_daemon_confirms_the_swap(make_device: DeviceFactory, releases: Releases, repo: Repo, topics: Topics) -> None:
    woken: list[int] = []
    dev = make_device(selftest=False)
    dev.updater.wake = lambda: woken.append(1)
    dev.broker.put(repo.release(releases.bundle(2)))
    dev.broker.put({topics.desired: repo.desired({"fraud": 2}, seq=1)})
    dev.sync()
    assert woken and dev.store.state("fraud").active == 2
    assert dev.updater.job is not None and dev.updater.job.phase == "activating"
    assert not dev.broker.events("activated"), "activated is reported only once the daemon serves it"
    dev.store.record_serving("fraud", 2)  # what the daemon does after its self-test passed
    dev.sync()
    assert dev.broker.events("activated")[0]["version"] == 2 and dev.updater.job is None


def test_daemon_reports_a_failed_swap(make_device: DeviceFactory, releases: Releases, repo: Repo, topics: Topics) -> None:
    dev = make_device(selftest=False)
    dev.broker.put(repo.release(releases.bundle(2)))
    dev.broker.put({topics.desired: repo.desired({"fraud": 2}, seq=1)})
    dev.sync()
    dev.store.record_failure("fraud", 2, "self-test: output differs", revert_to=1)  # the daemon's rollback
    dev.sync()
    assert dev.broker.events("failed")[0]["reason"] == "self-test: output differs"
    assert dev.broker.events("rolled_back")[0]["version"] == 1
    assert dev.store.state("fraud").active == 1


def test_daemon_that_never_confirms_is_rolled_back(
    make_device: DeviceFactory, releases: Releases, repo: Repo, topics: Topics
) -> None:
    dev = make_device(selftest=False, activation_timeout_s=30.0)
    dev.broker.put(repo.release(releases.bundle(2)))
    dev.broker.put({topics.desired: repo.desired({"fraud": 2}, seq=1)})
    dev.sync()
    dev.clock.now += 31
    dev.sync()
    state = dev.store.state("fraud")
    assert state.active == 1 and "did not confirm" in state.failed[2]
    assert dev.broker.events("rolled_back")[0]["version"] == 1


def test_restart_resumes_with_only_the_missing_chunks(
    make_device: DeviceFactory, releases: Releases, repo: Repo, topics: Topics
) -> None:
    dev = make_device()
    bundle = releases.bundle(2, pad=20_000)
    release = repo.release(bundle)
    chunk_topics = sorted((t for t in release if "/chunks/" in t), key=lambda t: int(t.rsplit("/", 1)[1]))
    half = chunk_topics[: len(chunk_topics) // 2]
    dev.broker.put({t: p for t, p in release.items() if t not in chunk_topics[len(half) :]})
    dev.broker.put({topics.desired: repo.desired({"fraud": 2}, seq=1)})
    dev.sync()
    progress = dev.updater.download.progress()  # type: ignore[union-attr]
    assert 0 < progress.have_bytes < progress.total_bytes
    dev.updater.download.close()  # type: ignore[union-attr]  # the process dies

    # A new process on the same directories and a broker that lost the session.
    broker = FakeBroker(topics)
    broker.retained = dict(dev.broker.retained)
    broker.put({t: release[t] for t in chunk_topics[len(half) :]})
    updater = Updater(dev.updater.settings, dev.store, broker, selftest=dev.updater.selftest, monotonic=dev.clock)
    broker.updater = updater
    updater.load()
    assert updater.job is not None and updater.download is not None
    assert updater.download.progress().have_bytes == progress.have_bytes
    updater.on_connect(False)
    chunk_subs = sorted(s for s in broker.subs if "/chunks/" in s)
    assert chunk_subs == sorted(chunk_topics[len(half) :]), "a resume subscribes only to the missing chunks"
    broker.pump()
    updater.tick()
    broker.pump()
    assert dev.store.state("fraud").active == 2
    received = [t for t in broker.delivered if "/chunks/" in t]
    assert sorted(received) == sorted(chunk_topics[len(half) :])


def test_resume_rehashes_claimed_chunks(make_device: DeviceFactory, releases: Releases, repo: Repo, topics: Topics) -> None:
    dev = make_device()
    release = repo.release(releases.bundle(2, pad=5000))
    last = max((t for t in release if "/chunks/" in t), key=lambda t: int(t.rsplit("/", 1)[1]))
    dev.broker.put({t: p for t, p in release.items() if t != last})
    dev.broker.put({topics.desired: repo.desired({"fraud": 2}, seq=1)})
    dev.sync()
    dev.updater.download.close()  # type: ignore[union-attr]
    part = release_dir(dev.updater.settings.staging_dir, "fraud", 2) / "model.tflite.part"
    with open(part, "r+b") as fh:  # a torn write after a power cut: chunk 0 claimed but wrong on disk
        fh.write(b"\xff" * 10)
    updater = Updater(dev.updater.settings, dev.store, FakeBroker(topics), monotonic=dev.clock)
    updater.load()
    download = updater.download  # type: ignore[union-attr]
    assert not download.has("model.tflite", 0) and download.has("model.tflite", 1)


def test_device_override_wins_over_the_fleet(make_device: DeviceFactory, releases: Releases, repo: Repo, topics: Topics) -> None:
    dev = make_device()
    dev.broker.put(repo.release(releases.bundle(2)))
    dev.broker.put(repo.release(releases.bundle(3)))
    dev.broker.put({topics.desired: repo.desired({"fraud": 2}, seq=1)})
    dev.broker.put({topics.device_desired(DEVICE): repo.desired({"fraud": 3}, seq=1, device=DEVICE)})
    dev.sync()
    assert dev.store.state("fraud").active == 3


def test_rollout_outside_the_bucket_does_nothing(make_device: DeviceFactory, releases: Releases, repo: Repo, topics: Topics) -> None:
    bucket = rollout_bucket(DEVICE, "fraud-2")
    dev = make_device()
    dev.broker.put(repo.release(releases.bundle(2)))
    dev.broker.put({topics.desired: repo.desired({"fraud": (2, bucket)}, seq=1)})  # bucket < percent is false
    dev.sync()
    assert dev.store.state("fraud").active == 1 and not dev.broker.events("notified")
    dev.broker.put({topics.desired: repo.desired({"fraud": (2, bucket + 1)}, seq=2)})
    dev.sync()
    assert dev.store.state("fraud").active == 2


def test_root_rotation_is_applied_saved_and_used(
    make_device: DeviceFactory, releases: Releases, repo: Repo, topics: Topics, fleet_keys: FleetKeys
) -> None:
    dev = make_device()
    new_root_key, new_models_key = generate_private_key(), generate_private_key()
    root2 = sign_root(make_root(2, [new_root_key], [new_models_key]), [fleet_keys.root_key, new_root_key])
    dev.broker.put(repo.release(releases.bundle(2, signers=[new_models_key])))
    dev.broker.put({topics.desired: repo.desired({"fraud": 2}, seq=1, signers=[new_models_key])})
    dev.sync()
    assert any("not trusted" in r for r in dev.reasons()), "the new models key is not trusted before the rotation"
    dev.broker.put({topics.root(2): root2})
    dev.sync()
    assert dev.store.root.version == 2 and dev.broker.events("root_updated")
    assert load_trust_root(fleet_keys.root, dev.state_dir).version == 2, "the rotation survives a restart"
    assert dev.store.state("fraud").active == 2, "the desired state refused before is re-checked after the rotation"


def test_events_wait_in_a_bounded_queue_while_offline(make_device: DeviceFactory) -> None:
    dev = make_device(max_events=3)
    dev.broker.connected = False  # type: ignore[misc]
    for i in range(5):
        dev.updater.reporter.event("rejected", reason=f"r{i}")
    assert dev.updater.reporter.queued == 3
    published = len(dev.broker.events())
    dev.broker.connected = True  # type: ignore[misc]
    dev.updater.on_connect(True)
    flushed = dev.broker.events()[published:]
    assert [e["reason"] for e in flushed] == ["r2", "r3", "r4"]
    assert flushed[0]["dropped_before"] == 2
    assert json.loads([p for t, p, r in dev.broker.published if t.endswith("/online")][-1]) is True


def test_desired_state_signed_with_a_threshold(make_device: DeviceFactory, repo: Repo, topics: Topics, fleet_keys: FleetKeys) -> None:
    dev = make_device()
    message = json.loads(repo.desired({"fraud": 1}, seq=7))
    message["signatures"].append(sign(fleet_keys.stranger, message["desired"].encode()))  # an extra untrusted one is ignored
    dev.broker.put({topics.desired: json.dumps(message).encode()})
    dev.sync()
    assert dev.updater.floors["desired"].seq == 7 and not dev.reasons()


def test_root_versions_arriving_out_of_order_are_chained(make_device: DeviceFactory, topics: Topics, fleet_keys: FleetKeys) -> None:
    dev = make_device()
    k2, k3 = generate_private_key(), generate_private_key()
    root2 = sign_root(make_root(2, [k2], [fleet_keys.models_key]), [fleet_keys.root_key, k2])
    root3 = sign_root(make_root(3, [k3], [fleet_keys.models_key]), [k2, k3])
    dev.broker.put({topics.root(3): root3})  # retained messages come in any order
    dev.sync()
    assert dev.store.root.version == 1 and any("a skipped version" in r for r in dev.reasons())
    dev.broker.put({topics.root(2): root2})
    dev.sync()
    assert dev.store.root.version == 3
    assert [e["root_version"] for e in dev.broker.events("root_updated")] == [2, 3]
    assert load_trust_root(fleet_keys.root, dev.state_dir).version == 3


def test_a_release_needing_an_absent_delegate_is_refused_at_install_and_reported(
    make_device: DeviceFactory, releases: Releases, repo: Repo, topics: Topics, fleet_keys: FleetKeys, tmp_path: Path
) -> None:
    """The store's install check (the daemon builds its store with it) refuses the release
    before anything is written; the device's state says why (what `fleet status` shows)."""
    dev = make_device()
    dev.store.bundle_check = InstallCheck({})
    signer = SimpleNamespace(key=fleet_keys.models_key)
    needs = rebuilt_bundle(releases.bundle(2), tmp_path / "tpu.bundle", signer, 2, runtime={"requires_delegate": "edgetpu"})
    dev.broker.put(repo.release(needs))
    dev.broker.put({topics.desired: repo.desired({"fraud": 2}, seq=1)})
    dev.sync()
    assert dev.store.state("fraud").active == 1 and dev.store.versions("fraud") == [1]
    reason = dev.broker.state()["last_error"]["reason"]
    assert "fraud v2 needs the 'edgetpu' delegate" in reason and "libedgetpu.so.1" in reason


def test_network_thread_events_are_typed_and_a_failed_write_aborts(
    make_device: DeviceFactory, releases: Releases, repo: Repo, topics: Topics, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks handed over through ``post`` (as the service does) arrive as typed events; a
    failed staging write becomes DownloadFailed, which aborts the job on the updater thread."""
    dev = make_device()
    posted: list[UpdaterEvent] = []
    dev.updater.post = posted.append
    dev.broker.put(repo.release(releases.bundle(2)))
    dev.broker.put({topics.desired: repo.desired({"fraud": 2}, seq=1)})

    def disk_full(self: Download, file: str, index: int, data: bytes) -> bool:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Download, "offer", disk_full)
    dev.broker.pump()
    assert posted and all(isinstance(e, DownloadFailed) for e in posted)
    assert dev.updater.job is not None and dev.updater.job.phase == Phase.DOWNLOADING
    for event in posted:
        dev.updater.on_internal(event)
    assert dev.updater.job is None
    assert any("No space left" in r for r in dev.reasons())
    assert dev.store.state("fraud").active == 1


def test_the_state_hook_is_given_to_the_constructor(make_device: DeviceFactory) -> None:
    """What another part adds to the state document (health, drift) is wired in when the updater
    is made, never assigned afterwards (a document published in between would lack it)."""
    dev = make_device()
    updater = Updater(dev.updater.settings, dev.store, dev.broker, amend_state=lambda doc: doc.update(health={"ok": True}))
    dev.broker.updater = updater
    updater.load()
    updater.on_connect(False)
    assert dev.broker.state()["health"] == {"ok": True}


def test_a_link_lost_as_the_manifest_is_handled_resumes_the_download_on_reconnect(
    make_device: DeviceFactory, releases: Releases, repo: Repo, topics: Topics
) -> None:
    """The broker goes away between the manifest's arrival and its handling: unsubscribing and
    subscribing fail (paho: not connected). The job must not be left downloading nothing: after
    the reconnect the device fetches and activates the release."""
    dev = make_device()
    dev.broker.put(repo.release(releases.bundle(2)))
    dev.broker.put({topics.desired: repo.desired({"fraud": 2}, seq=1)})
    broker = dev.broker
    down = {"on": False}

    def refuse(*_: Any, **__: Any) -> None:
        raise TransportError("not connected")

    real_subscribe, real_unsubscribe = broker.subscribe, broker.unsubscribe
    broker.subscribe = lambda filters, *, new_only=False: refuse() if down["on"] else real_subscribe(filters, new_only=new_only)  # type: ignore[method-assign]
    broker.unsubscribe = lambda filters: refuse() if down["on"] else real_unsubscribe(filters)  # type: ignore[method-assign]
    # Deliver until the manifest is next, then drop the link just before it is handled.
    while broker.queue and "/manifest" not in broker.queue[0][0]:
        broker.pump(limit=1)
    assert broker.queue, "the manifest was queued"
    down["on"] = True
    with contextlib.suppress(TransportError):  # the service logs it: "update step deferred"
        broker.pump(limit=1)
    broker.queue.clear()  # the link is gone: nothing more arrives
    down["on"] = False
    broker.subs.clear()  # a clean session
    dev.updater.on_connect(False)
    for _ in range(5):
        dev.clock.now += 10
        dev.sync()
    assert dev.store.state("fraud").active == 2
