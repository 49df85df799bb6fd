"""Pure checks: rollout membership, overrides, seq, targets, chunks, topics and small helpers."""

from __future__ import annotations

import hashlib
import random
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.bundle.writer import hash_artifact
from edge_runtime.exceptions import RollbackError, UsageError
from edge_runtime.fleet.prune import wanted_versions
from edge_runtime.fleet.publish import next_seq, read_desired_models
from edge_runtime.fleet.status import format_table
from edge_runtime.updates.exceptions import ChunkError, ReplayError
from edge_runtime.updates.mqtt import Backoff, parse_broker_url
from edge_runtime.updates.protocol import CaptureChunkTopic, ChunkTopic, DeviceTopic, ManifestTopic, Topics
from edge_runtime.updates.verify import (
    Desired,
    ModelTarget,
    ModelView,
    Rollout,
    SeqFloor,
    check_chunk,
    check_seq,
    claimed_seq,
    in_rollout,
    plan_target,
    rollout_bucket,
    targets_for,
    verify_desired,
)
from updates.conftest import FleetKeys, Repo


def _desired(models: dict[str, ModelTarget], seq: int = 1, device: str | None = None) -> Desired:
    return Desired("f1", device, seq, models, None, "d" * 64)


def test_rollout_bucket_is_sha256_of_salt_and_device_mod_100() -> None:
    expected = int.from_bytes(hashlib.sha256(b"fraud-2pi-0001").digest(), "big") % 100
    assert rollout_bucket("pi-0001", "fraud-2") == expected


def test_raising_the_percentage_keeps_every_member() -> None:
    ids = [f"pi-{i:04d}" for i in range(500)]
    members = {p: {d for d in ids if in_rollout(d, Rollout(p, "fraud-7"))} for p in (0, 10, 25, 50, 100)}
    assert members[0] == set() and members[100] == set(ids)
    assert members[10] <= members[25] <= members[50] <= members[100]
    assert 60 < len(members[25]) < 190  # about a quarter of 500


def test_override_wins_per_model_and_can_exclude() -> None:
    fleet = _desired({"a": ModelTarget(2, None), "b": ModelTarget(5, None)})
    device = _desired({"a": ModelTarget(3, None)}, device="x")
    assert targets_for("x", fleet, device) == {"a": 3, "b": 5}
    excluded = _desired({"b": ModelTarget(6, Rollout(0, "s"))}, device="x")
    assert targets_for("x", fleet, excluded) == {"a": 2}
    assert targets_for("x", None, None) == {}


def test_seq_must_increase() -> None:
    d = _desired({}, seq=4)
    assert check_seq(d, None) is True
    assert check_seq(d, SeqFloor(3, "x")) is True
    assert check_seq(d, SeqFloor(4, d.digest)) is False
    with pytest.raises(ReplayError, match="different contents"):
        check_seq(d, SeqFloor(4, "other"))
    with pytest.raises(ReplayError, match="older than the seq 9"):
        check_seq(d, SeqFloor(9, "x"))


@pytest.mark.parametrize(
    ("version", "view", "expected"),
    [
        (3, ModelView(2, 2, frozenset({1, 2}), frozenset(), frozenset()), "fetch"),
        (2, ModelView(2, 2, frozenset({2}), frozenset(), frozenset()), "none"),
        (3, ModelView(2, 3, frozenset({2, 3}), frozenset(), frozenset()), "activate"),
        (3, ModelView(2, 3, frozenset({2, 3}), frozenset({3}), frozenset()), "failed"),
        (3, ModelView(2, 3, frozenset({2, 3}), frozenset(), frozenset({3})), "fetch"),
        (1, ModelView(None, 0, frozenset(), frozenset(), frozenset()), "fetch"),
    ],
)
def test_plan_target(version: int, view: ModelView, expected: str) -> None:
    assert plan_target("m", version, view) == expected


def test_plan_target_refuses_rollbacks() -> None:
    with pytest.raises(RollbackError, match="older than the active v3"):
        plan_target("m", 2, ModelView(3, 3, frozenset({2, 3}), frozenset(), frozenset()))
    with pytest.raises(RollbackError, match="anti-rollback floor"):
        plan_target("m", 4, ModelView(None, 5, frozenset(), frozenset(), frozenset()))


def test_check_chunk_kinds() -> None:
    data = bytes(random.Random(1).randbytes(5000))
    art = hash_artifact("model.tflite", data, 1024)
    arts = {"model.tflite": art}
    check_chunk(arts, "model.tflite", 4, data[4096:])
    cases = [
        ("model.onnx", 0, data[:1024], "file"),
        ("model.tflite", 5, data[:10], "index"),
        ("model.tflite", 0, data[:1025], "oversized"),
        ("model.tflite", 4, data[4096:4100], "length"),
        ("model.tflite", 1, data[:1024], "sha256"),
    ]
    for file, index, payload, kind in cases:
        with pytest.raises(ChunkError) as info:
            check_chunk(arts, file, index, payload)
        assert info.value.kind == kind


def test_verify_desired_accepts_its_own_fleet(repo: Repo, fleet_keys: FleetKeys) -> None:
    d = verify_desired(repo.desired({"fraud": (3, 40)}, seq=9), fleet_keys.root, fleet="f1", device=None)
    assert d.seq == 9 and d.models["fraud"] == ModelTarget(3, Rollout(40, "fraud-3"))


names = st.text(string.ascii_letters + string.digits + "_.-", min_size=1, max_size=20).filter(lambda s: s[0].isalnum())


@settings(max_examples=200, deadline=None)
@given(name=names, version=st.integers(1, 10**9), index=st.integers(0, 10**6), device=names)
def test_topics_parse_what_they_build(name: str, version: int, index: int, device: str) -> None:
    t = Topics("edge/acme", "f1")
    ref = t.parse(t.chunk(name, version, "model.tflite", index))
    assert ref == ChunkTopic(name, version, "model.tflite", index) and ref.kind == "chunk"
    assert t.parse(t.delta_chunk(name, version, 3, "model.tflite", index)) == ChunkTopic(name, version, "model.tflite", index, 3)
    assert t.parse(t.manifest(name, version)) == ManifestTopic(name, version)
    s = t.parse(t.state(device))
    assert s == DeviceTopic(device, "state") and s.kind == "device_state"
    assert t.parse(t.capture_chunk(device, "0123abcd", 2, index)) == CaptureChunkTopic(device, "0123abcd", 2, index)
    assert t.parse(t.chunk(name, version, "model.tflite", index) + "/x") is None
    assert t.parse(t.chunk(name, version, "model.tflite", index).replace("/chunks/model.tflite/", "/chunks/model.tflite/0")) is None


def test_topics_reject_wildcards_and_other_fleets() -> None:
    with pytest.raises(UsageError):
        Topics("edge", "a/b")
    with pytest.raises(UsageError):
        Topics("edge/#", "f1")
    t = Topics("edge", "f1")
    assert t.parse("edge/f2/desired") is None
    assert t.parse("edge/f1/models/fraud/07/manifest") is None  # non-canonical numbers name nothing
    assert t.parse("edge/f1/trust/root/2") is not None


def test_broker_url() -> None:
    a = parse_broker_url("mqtts://user:p%40ss@broker.example:9999")
    assert (a.host, a.port, a.tls, a.username, a.password) == ("broker.example", 9999, True, "user", "p@ss")
    assert parse_broker_url("mqtt://127.0.0.1").port == 1883
    with pytest.raises(UsageError):
        parse_broker_url("http://x")


def test_backoff_is_jittered_and_capped() -> None:
    b = Backoff(0.5, 8.0, random.Random(3))
    delays = [b.next() for _ in range(30)]
    assert all(0.5 <= d <= 8.0 for d in delays)
    assert len(set(delays)) > 20, "delays must be jittered"
    assert max(delays[10:]) > 4.0, "the cap doubles up to the maximum"
    b.reset()
    assert b.next() <= 1.0


def test_operator_helpers(repo: Repo) -> None:
    assert next_seq(5, now_s=3) == 6 and next_seq(5, now_s=1_800_000_000) == 1_800_000_000
    seq, models = read_desired_models(repo.desired({"fraud": 2}, seq=11))
    assert seq == 11 and models["fraud"]["version"] == 2
    assert read_desired_models(None) == (0, {})
    assert wanted_versions([repo.desired({"fraud": 2, "cnn": 4}, seq=1), b"junk"]) == {"fraud": {2}, "cnn": {4}}
    table = format_table(
        [
            {"device": "pi-1", "online": True, "state": {"models": {"fraud": {"active": 2, "failed": {"3": "x"}}}, "update": None}},
            {"device": "pi-2", "online": False, "state": None},
        ]
    )
    lines = table.splitlines()
    assert lines[0].split() == ["DEVICE", "ONLINE", "MODELS", "UPDATE", "DRIFT", "LAST", "ERROR"]
    assert "fraud v2 (failed v3)" in lines[1] and lines[2].startswith("pi-2")


def test_a_signed_rollback_plans_only_an_installed_never_failed_version() -> None:
    view = ModelView(3, 3, frozenset({2, 3}), frozenset(), frozenset())
    with pytest.raises(RollbackError, match="older than the active"):
        plan_target("fraud", 2, view)
    assert plan_target("fraud", 2, view, rollback=True) == "activate"
    assert plan_target("fraud", 2, ModelView(3, 3, frozenset({2, 3}), frozenset(), frozenset({2})), rollback=True) == "fetch"
    assert plan_target("fraud", 2, ModelView(3, 3, frozenset({2, 3}), frozenset({2}), frozenset()), rollback=True) == "failed"
    with pytest.raises(RollbackError, match="no longer has it"):
        plan_target("fraud", 1, view, rollback=True)
    assert plan_target("fraud", 4, view, rollback=True) == "fetch", "a rollback flag on a newer version changes nothing"


def test_the_claimed_seq_of_a_refused_message_is_a_64_bit_integer_or_none(repo: Repo) -> None:
    assert claimed_seq(repo.desired({"fraud": 2}, seq=42)) == 42
    for junk in (b"", b"[]", b"\xff", b'{"desired": 5}', b'{"desired": "[1]"}', b'{"desired": "{\\"seq\\": true}"}',
                 b'{"desired": "{\\"seq\\": 0}"}', b'{"desired": "{\\"seq\\": 9223372036854775808}"}',
                 b'{"desired": "{\\"seq\\": ' + b"9" * 5000 + b'}"}', b'{"desired": "' + b"[" * 100_000 + b'"}'):
        assert claimed_seq(junk) is None, junk[:40]
