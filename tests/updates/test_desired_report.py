"""A device that refuses a desired state says so in its retained state (``desired``: status,
reason, the sha256 of the exact message, its scope and the seq it claimed) and in a ``rejected``
event; one it follows is reported as ``applied``. And an operator-ordered rollback (a signed
``"rollback": true``) takes the device back to a version it still has, and no further."""

from __future__ import annotations

import hashlib
import json

from edge_runtime.trust.canonical import canonical_json
from edge_runtime.trust.keys import PrivateKey, sign
from edge_runtime.updates.protocol import MAX_SEQ, Topics, desired_document, signed_message
from edge_runtime.updates.updater import MAX_REASON_CHARS
from updates.conftest import DEVICE, DeviceFactory, FleetKeys, Releases, Repo


def _sha(message: bytes) -> str:
    return hashlib.sha256(message).hexdigest()


def test_a_desired_state_signed_by_an_untrusted_key_is_reported_rejected(
    make_device: DeviceFactory, releases: Releases, repo: Repo, topics: Topics, fleet_keys: FleetKeys
) -> None:
    dev = make_device()
    dev.broker.put(repo.release(releases.bundle(2)))
    forged = repo.desired({"fraud": 2}, seq=5, signers=[fleet_keys.stranger])
    dev.broker.put({topics.desired: forged})
    dev.sync()
    desired = dev.broker.state()["desired"]
    assert desired["status"] == "rejected" and desired["scope"] == "fleet" and desired["seq"] == 5
    assert desired["sha256"] == _sha(forged) and "not trusted" in desired["reason"]
    event = dev.broker.events("rejected")[-1]
    assert event["sha256"] == _sha(forged) and event["scope"] == "fleet" and event["seq"] == 5
    assert dev.store.state("fraud").active == 1

    good = repo.desired({"fraud": 2}, seq=6)
    dev.broker.put({topics.desired: good})
    dev.sync()
    assert dev.broker.state()["desired"] == {"seq": 6, "status": "applied", "sha256": _sha(good), "scope": "fleet"}
    assert dev.store.state("fraud").active == 2


def test_a_second_forgery_with_the_same_reason_still_changes_the_reported_sha(
    make_device: DeviceFactory, repo: Repo, topics: Topics, fleet_keys: FleetKeys
) -> None:
    dev = make_device()
    first = repo.desired({"fraud": 2}, seq=5, signers=[fleet_keys.stranger])
    second = repo.desired({"fraud": 2}, seq=6, signers=[fleet_keys.stranger])
    dev.broker.put({topics.desired: first})
    dev.sync()
    dev.broker.put({topics.desired: second})
    dev.sync()
    assert len(dev.broker.events("rejected")) == 1, "the same reason is reported once"
    assert dev.broker.state()["desired"]["sha256"] == _sha(second), "the state names the newest message"


def test_a_replayed_override_reports_the_seq_it_claimed_and_its_scope(
    make_device: DeviceFactory, repo: Repo, topics: Topics
) -> None:
    dev = make_device()
    newer = repo.desired({"fraud": 1}, seq=9, device=DEVICE)
    older = repo.desired({"fraud": 1}, seq=3, device=DEVICE)
    dev.broker.put({topics.device_desired(DEVICE): newer})
    dev.sync()
    dev.broker.put({topics.device_desired(DEVICE): older})
    dev.sync()
    desired = dev.broker.state()["desired"]
    assert (desired["status"], desired["scope"], desired["seq"]) == ("rejected", "device", 3)
    assert "older than the seq 9" in desired["reason"]


def _raw_desired(topics: Topics, key: PrivateKey, seq: object, models: dict[str, object] | None = None) -> bytes:
    doc = desired_document(topics.fleet, 1, models or {}, device=None)
    doc["seq"] = seq
    payload = canonical_json(doc)
    return signed_message("desired", payload, [sign(key, payload)])


def test_hostile_seqs_and_garbage_are_reported_without_a_seq_and_with_a_bounded_reason(
    make_device: DeviceFactory, topics: Topics, fleet_keys: FleetKeys
) -> None:
    dev = make_device()
    for message in (b"not json at all", _raw_desired(topics, fleet_keys.models_key, MAX_SEQ + 1),
                    _raw_desired(topics, fleet_keys.models_key, True), b'{"desired": "' + b"9" * 5000 + b'"}'):
        dev.broker.put({topics.desired: message})
        dev.sync()
        desired = dev.broker.state()["desired"]
        assert desired["status"] == "rejected" and desired["seq"] is None, desired
        assert desired["sha256"] == _sha(message) and len(desired["reason"]) <= MAX_REASON_CHARS
    # A model name of 100,000 characters is echoed only in part.
    huge = _raw_desired(topics, fleet_keys.models_key, 4, {"x" * 100_000: {"version": 2}})
    dev.broker.put({topics.desired: huge})
    dev.sync()
    desired = dev.broker.state()["desired"]
    assert desired["seq"] == 4 and len(desired["reason"]) <= MAX_REASON_CHARS
    assert len(json.dumps(dev.broker.state())) < 20_000


# -- an operator-ordered rollback -------------------------------------------------------------


def _rollback(repo: Repo, version: int, seq: int, rollback: bool = True) -> bytes:
    entry: dict[str, object] = {"version": version}
    if rollback:
        entry["rollback"] = True
    payload = canonical_json(desired_document(repo.topics.fleet, seq, {"fraud": entry}))
    return signed_message("desired", payload, [sign(repo.keys.models_key, payload)])


def test_a_signed_rollback_activates_an_installed_earlier_version(
    make_device: DeviceFactory, releases: Releases, repo: Repo, topics: Topics
) -> None:
    dev = make_device(active=3, installed=[releases.bundle(2), releases.bundle(3)])
    dev.broker.put(repo.release(releases.bundle(2)))
    dev.broker.put({topics.desired: _rollback(repo, 2, seq=1, rollback=False)})
    dev.sync()
    assert dev.store.state("fraud").active == 3, "without the rollback flag versions only go up"
    assert any("older than the active v3" in r for r in dev.reasons())
    dev.broker.put({topics.desired: _rollback(repo, 2, seq=2)})
    dev.sync()
    state = dev.store.state("fraud")
    assert state.active == 2 and state.highest_seen == 3, "the floor stays where it was"
    assert dev.broker.events("activated")[-1]["version"] == 2
    assert dev.broker.state()["desired"]["status"] == "applied"


def test_a_rollback_never_takes_a_failed_version_nor_fetches_one_no_longer_installed(
    make_device: DeviceFactory, releases: Releases, repo: Repo, topics: Topics
) -> None:
    dev = make_device(active=3, installed=[releases.bundle(2), releases.bundle(3)])
    dev.store.record_failure("fraud", 2, "self-test failed")
    dev.broker.put(repo.release(releases.bundle(2)))
    dev.broker.put({topics.desired: _rollback(repo, 2, seq=1)})
    dev.sync()
    assert dev.store.state("fraud").active == 3 and dev.broker.events("failed")

    gone = make_device(active=3, installed=[releases.bundle(3)])  # v2 never installed here, v1 neither
    gone.broker.put(repo.release(releases.bundle(2)))
    gone.broker.put({topics.desired: _rollback(repo, 2, seq=1)})
    gone.sync()
    assert gone.store.state("fraud").active == 3
    assert any("no longer has it" in r for r in gone.reasons())
    assert gone.broker.state()["last_error"]["version"] == 2, "the operator counts it as rejected"


def test_a_rollback_flag_that_is_not_a_boolean_is_refused(
    make_device: DeviceFactory, repo: Repo, topics: Topics
) -> None:
    dev = make_device()
    payload = canonical_json(desired_document(topics.fleet, 1, {"fraud": {"version": 1, "rollback": "yes"}}))
    dev.broker.put({topics.desired: signed_message("desired", payload, [sign(repo.keys.models_key, payload)])})
    dev.sync()
    assert dev.broker.state()["desired"]["status"] == "rejected"
    assert "rollback must be true or false" in dev.broker.state()["desired"]["reason"]
