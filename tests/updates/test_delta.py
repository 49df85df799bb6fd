"""Delta updates on the device (FakeBroker, real store): a delta is applied and checked against the
signed full hash, and every kind of trouble falls back to the full artifact."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.exceptions import BadDataError
from edge_runtime.fleet.delta import plan_delta, read_artifacts
from edge_runtime.trust.canonical import canonical_json
from edge_runtime.trust.keys import sign
from edge_runtime.updates.delta import choose_base, make_delta, patch, verify_delta_message
from edge_runtime.updates.protocol import Topics, desired_document, rollout_salt, signed_message
from updates.conftest import DeviceFactory, DeviceUnderTest, FleetKeys, Releases, Repo

PAD = 64 * 1024  # v2 = v1's model plus trailing bytes: a small delta


def desired(keys: FleetKeys, topics: Topics, name: str, version: int, seq: int, **extra: Any) -> bytes:
    """A signed desired state whose entry carries ``extra`` (deltas, window)."""
    entry = {"version": version, "rollout": {"percent": 100, "salt": rollout_salt(name, version)}, **extra}
    payload = canonical_json(desired_document(topics.fleet, seq, {name: entry}))
    return signed_message("desired", payload, [sign(keys.models_key, payload)])


def publish_delta(dev: DeviceUnderTest, repo: Repo, keys: FleetKeys, topics: Topics, new: Path, old: Path,
                  old_data: dict[str, bytes] | None = None) -> dict[str, bytes]:
    n, o = read_artifacts(new, None), read_artifacts(old, None)
    if old_data is not None:
        o = (o[0], old_data)
    plan = plan_delta(topics, n, o, [keys.models_key])
    assert not plan.skipped and plan.messages
    dev.broker.put(repo.release(new))
    dev.broker.put(plan.messages)
    return plan.messages


def full_chunks(dev: DeviceUnderTest) -> list[str]:
    return [t for t in dev.broker.delivered if "/chunks/" in t and "/delta/" not in t]


def artifact_sha(dev: DeviceUnderTest, version: int) -> str:
    return hashlib.sha256((dev.store.version_dir("fraud", version) / "model.tflite").read_bytes()).hexdigest()


def signed_sha(bundle: Path) -> str:
    return read_artifacts(bundle, None)[0].artifacts["model.tflite"].sha256


def test_delta_update_is_applied_and_byte_identical(make_device: DeviceFactory, releases: Releases, repo: Repo,
                                                    topics: Topics, fleet_keys: FleetKeys) -> None:
    v2 = releases.bundle(2, pad=PAD, chunk_size=4096)
    dev = make_device()
    messages = publish_delta(dev, repo, fleet_keys, topics, v2, releases.bundle(1))
    dev.broker.put({topics.desired: desired(fleet_keys, topics, "fraud", 2, 1, deltas=[1])})
    dev.sync()
    assert dev.store.state("fraud").active == 2
    assert artifact_sha(dev, 2) == signed_sha(v2)
    assert not full_chunks(dev), "a device with v1 fetched full chunks although a delta was offered"
    assert not dev.broker.events("delta_fallback")
    delta_bytes = sum(len(p) for t, p in messages.items() if "/delta/1/chunks/" in t)
    full_bytes = read_artifacts(v2, None)[0].artifacts["model.tflite"].length
    got = dev.broker.state()["downloaded_bytes"]["fraud"]["2"]
    assert got == delta_bytes and got < full_bytes / 10


def test_corrupted_delta_chunk_falls_back_to_the_full_artifact(make_device: DeviceFactory, releases: Releases,
                                                               repo: Repo, topics: Topics, fleet_keys: FleetKeys) -> None:
    v2 = releases.bundle(2, pad=PAD, chunk_size=4096)
    dev = make_device()
    messages = publish_delta(dev, repo, fleet_keys, topics, v2, releases.bundle(1))
    first = topics.delta_chunk("fraud", 2, 1, "model.tflite", 0)
    dev.broker.put({first: b"\x00" + messages[first][1:]})
    dev.broker.put({topics.desired: desired(fleet_keys, topics, "fraud", 2, 1, deltas=[1])})
    dev.sync()
    dev.sync()
    assert dev.store.state("fraud").active == 2 and artifact_sha(dev, 2) == signed_sha(v2)
    fallback = dev.broker.events("delta_fallback")
    assert len(fallback) == 1 and "sha256" in fallback[0]["reason"]
    assert full_chunks(dev)


def test_signed_delta_that_rebuilds_wrong_bytes_falls_back(make_device: DeviceFactory, releases: Releases,
                                                           repo: Repo, topics: Topics, fleet_keys: FleetKeys) -> None:
    # Hashes all match (the operator signed it), but it was made from other base bytes: only the
    # check against the release's signed full hash catches it, and before anything is installed.
    v1, v2 = releases.bundle(1), releases.bundle(2, pad=PAD, chunk_size=4096)
    wrong = read_artifacts(releases.bundle(1, pad=4096, tag="other"), None)[1]
    dev = make_device()
    publish_delta(dev, repo, fleet_keys, topics, v2, v1, old_data=wrong)
    dev.broker.put({topics.desired: desired(fleet_keys, topics, "fraud", 2, 1, deltas=[1])})
    dev.sync()
    dev.sync()
    assert dev.store.state("fraud").active == 2 and artifact_sha(dev, 2) == signed_sha(v2)
    reasons = [e["reason"] for e in dev.broker.events("delta_fallback")]
    assert len(reasons) == 1 and ("sha256" in reasons[0] or "rebuild" in reasons[0]), reasons


def test_delta_index_for_another_base_falls_back(make_device: DeviceFactory, releases: Releases, repo: Repo,
                                                 topics: Topics, fleet_keys: FleetKeys) -> None:
    v2 = releases.bundle(2, pad=PAD, chunk_size=4096)
    other_v1 = releases.bundle(1, pad=4096, tag="other")  # a v1 this device does not have
    dev = make_device()
    publish_delta(dev, repo, fleet_keys, topics, v2, other_v1)
    dev.broker.put({topics.desired: desired(fleet_keys, topics, "fraud", 2, 1, deltas=[1])})
    dev.sync()
    dev.sync()
    assert dev.store.state("fraud").active == 2
    reasons = [e["reason"] for e in dev.broker.events("delta_fallback")]
    assert len(reasons) == 1 and "patches a base" in reasons[0]
    assert not [t for t in dev.broker.delivered if "/delta/1/chunks/" in t], "delta chunks fetched for a wrong base"


def test_missing_delta_index_falls_back_after_the_stall_time(make_device: DeviceFactory, releases: Releases,
                                                             repo: Repo, topics: Topics, fleet_keys: FleetKeys) -> None:
    v2 = releases.bundle(2, pad=PAD, chunk_size=4096)
    dev = make_device()
    dev.broker.put(repo.release(v2))  # no delta published, although the desired state offers one
    dev.broker.put({topics.desired: desired(fleet_keys, topics, "fraud", 2, 1, deltas=[1])})
    dev.sync()
    assert dev.store.state("fraud").active == 1 and dev.broker.state()["update"]["phase"] == "delta_index"
    dev.clock.now += 10
    dev.sync()  # the first stall asks for the index once more
    assert dev.store.state("fraud").active == 1 and not dev.broker.events("delta_fallback")
    dev.clock.now += 10
    dev.sync()
    dev.sync()
    assert dev.store.state("fraud").active == 2
    assert "no delta index" in dev.broker.events("delta_fallback")[0]["reason"]


def test_device_without_the_base_fetches_in_full(make_device: DeviceFactory, releases: Releases, repo: Repo,
                                                 topics: Topics, fleet_keys: FleetKeys) -> None:
    v3 = releases.bundle(3, pad=PAD, chunk_size=4096)
    dev = make_device()  # has v1; the delta is from v2
    publish_delta(dev, repo, fleet_keys, topics, v3, releases.bundle(2, pad=PAD, chunk_size=4096))
    dev.broker.put({topics.desired: desired(fleet_keys, topics, "fraud", 3, 1, deltas=[2])})
    dev.sync()
    assert dev.store.state("fraud").active == 3 and full_chunks(dev)
    assert not [t for t in dev.broker.delivered if "/delta/" in t] and not dev.broker.events("delta_fallback")


def test_choose_base_prefers_the_active_version() -> None:
    assert choose_base([1, 2, 3], installed={1, 2}, active=1) == 1
    assert choose_base([1, 2, 3], installed={1, 2}, active=5) == 2
    assert choose_base([2], installed={1}, active=1) is None
    assert choose_base([1, 2], installed={1, 2}, active=2, unusable={2}) == 1


def test_delta_index_checks(releases: Releases, topics: Topics, fleet_keys: FleetKeys) -> None:
    new = read_artifacts(releases.bundle(2, pad=PAD, chunk_size=4096), None)
    plan = plan_delta(topics, new, read_artifacts(releases.bundle(1), None), [fleet_keys.models_key])
    index = plan.messages[topics.delta_index("fraud", 2, 1)]
    verified = verify_delta_message(index, fleet_keys.root, new[0], 1, 10**9)
    assert verified.base == 1 and verified.total_bytes == plan.delta_bytes
    with pytest.raises(BadDataError, match="signed for"):
        verify_delta_message(index, fleet_keys.root, new[0], 3, 10**9)  # replayed under another base
    with pytest.raises(BadDataError):
        verify_delta_message(index, fleet_keys.root, new[0], 1, 16)  # a delta larger than the device allows
    forged = index.replace(b'"base\\":1', b'"base\\":1 ')
    with pytest.raises(BadDataError):
        verify_delta_message(forged, fleet_keys.root, new[0], 1, 10**9)


def test_make_delta_round_trip_and_no_base() -> None:
    base = bytes(range(256)) * 400
    new = base[:50_000] + b"changed" + base[50_000:]
    assert patch(base, make_delta(base, new)) == new
    assert len(make_delta(base, new)) < len(new) // 50
    assert patch(None, make_delta(None, new)) == new


def test_segmented_delta_streams_through_apply_delta(tmp_path: Path) -> None:
    # Several frames (one per segment), each matching against the whole base: patched as a stream,
    # and the result is checked against the signed artifact before it is kept.
    from edge_runtime.bundle.writer import hash_artifact
    from edge_runtime.updates.delta import DeltaError, apply_delta

    rng = __import__("numpy").random.default_rng(0)
    base = rng.integers(0, 256, 300_000, dtype="uint8").tobytes()
    new = base[:200_000] + b"tuned" * 100 + base[200_500:]
    delta = make_delta(base, new, segment_bytes=64 * 1024)
    assert len(delta) < len(new) // 20
    (tmp_path / "base").write_bytes(base)
    (tmp_path / "delta").write_bytes(delta)
    apply_delta(tmp_path / "base", tmp_path / "delta", tmp_path / "out", hash_artifact("model.tflite", new))
    assert (tmp_path / "out").read_bytes() == new
    with pytest.raises(DeltaError):
        apply_delta(tmp_path / "base", tmp_path / "delta", tmp_path / "out", hash_artifact("model.tflite", new + b"x"))
    assert not (tmp_path / "out").exists(), "a rebuilt file that does not match is not kept"


def _random_bundle(directory: Path, version: int, tail: bytes, keys: FleetKeys) -> Path:
    import numpy as np

    from edge_runtime.packaging import PackRequest, pack_model
    from updates.conftest import FACTORY

    model = directory / f"model-{version}.tflite"
    model.write_bytes((FACTORY / "fraud.tflite").read_bytes() + tail)
    out = directory / f"fraud-v{version}-random.bundle"
    pack_model(PackRequest(model, name="fraud", version=version, keys=[keys.models_key], out=out, chunk_size=1024,
               input_names=["input_0"], output_names=["output_0"], golden_inputs=[np.load(FACTORY / "golden.npy")]))
    return out


def test_interrupted_delta_download_resumes_as_a_delta(tmp_path: Path, make_device: DeviceFactory, repo: Repo,
                                                        topics: Topics, fleet_keys: FleetKeys) -> None:
    import os

    from edge_runtime.updates.updater import Updater
    from updates.conftest import FakeBroker

    v1 = _random_bundle(tmp_path, 1, os.urandom(8192), fleet_keys)
    v2 = _random_bundle(tmp_path, 2, os.urandom(8192), fleet_keys)  # a delta of several 1 KiB chunks
    dev = make_device(installed=[v1])
    plan = plan_delta(topics, read_artifacts(v2, None), read_artifacts(v1, None), [fleet_keys.models_key])
    delta_chunks = sorted(t for t in plan.messages if "/chunks/" in t)
    assert len(delta_chunks) > 3
    withheld = delta_chunks[-1]
    everything = {**repo.release(v2), **plan.messages,
                  topics.desired: desired(fleet_keys, topics, "fraud", 2, 1, deltas=[1])}
    dev.broker.put({t: p for t, p in everything.items() if t != withheld})
    dev.sync()
    download = dev.updater.download
    assert dev.updater.job is not None and download is not None and download.base == 1 and not download.complete
    download.close()  # the process dies here
    broker = FakeBroker(topics)
    broker.put(everything)
    updater = Updater(dev.updater.settings, dev.store, broker, monotonic=dev.clock)
    broker.updater = updater
    updater.load()
    assert updater.job is not None and updater.download is not None and updater.download.base == 1
    updater.on_connect(False)
    broker.pump()
    updater.tick()
    broker.pump()
    assert dev.store.state("fraud").active == 2 and artifact_sha(dev, 2) == signed_sha(v2)
    fetched = [t for t in broker.delivered if "/chunks/" in t]
    assert fetched == [withheld], fetched
