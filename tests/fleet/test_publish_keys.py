"""``fleet publish`` and ``fleet rollback`` refuse a signing key the fleet's root does not trust,
before a single message is published: ``--root`` when given (advanced through the rotations
retained on the broker), else the newest root retained there. An in-memory session stands in
for the broker; the real one is in test_rollout_truth.py."""

from __future__ import annotations

from collections.abc import Sequence

import paho.mqtt.client as paho
import pytest
from updates.conftest import FLEET, FleetKeys, Releases

from edge_runtime.exceptions import SignatureError, UsageError
from edge_runtime.fleet.publish import check_signing_keys, current_root, publish_release
from edge_runtime.fleet.rollback import order_rollback
from edge_runtime.trust.keys import generate_private_key, key_id
from edge_runtime.trust.root import make_root, sign_root, verify_root
from edge_runtime.updates.protocol import Topics
from edge_runtime.updates.verify import verify_desired

TOPICS = Topics("edge", FLEET)


class Done:
    def wait(self, timeout_s: float) -> None:
        return None


class FakeSession:
    """What publish_release and order_rollback use of a FleetSession, over a dict of retained messages."""

    timeout_s = 5.0

    def __init__(self, retained: dict[str, bytes] | None = None) -> None:
        self.topics = TOPICS
        self.retained = dict(retained or {})
        self.published: list[str] = []

    def snapshot(self, filters: Sequence[str]) -> dict[str, bytes]:
        return {t: p for t, p in self.retained.items() if any(paho.topic_matches_sub(f, t) for f in filters)}

    def publish(self, topic: str, payload: bytes, *, retain: bool = True) -> Done:
        self.published.append(topic)
        self.retained[topic] = payload
        return Done()

    def publish_all(self, messages: Sequence[tuple[str, bytes]], progress: object = None, *, retain: bool = True) -> int:
        for topic, payload in messages:
            self.publish(topic, payload)
        return sum(len(p) for _, p in messages)


def test_a_key_the_root_does_not_trust_is_refused_before_anything_is_published(
    fleet_keys: FleetKeys, releases: Releases
) -> None:
    session = FakeSession()
    with pytest.raises(SignatureError) as exc:
        publish_release(session, releases.bundle(2), [fleet_keys.stranger], root=fleet_keys.root)  # type: ignore[arg-type]
    message = str(exc.value)
    assert key_id(fleet_keys.stranger)[:16] in message and key_id(fleet_keys.models_key)[:16] in message
    assert "--root" in message and "nothing was published" in message
    assert session.published == []


def test_without_root_the_fleets_retained_root_decides(fleet_keys: FleetKeys, releases: Releases) -> None:
    session = FakeSession({TOPICS.root(1): fleet_keys.root_bytes})
    with pytest.raises(SignatureError, match=r"retained trust root \(edge/f1/trust/root/1\)"):
        publish_release(session, releases.bundle(2), [fleet_keys.stranger])  # type: ignore[arg-type]
    assert session.published == []
    result = publish_release(session, releases.bundle(2), [fleet_keys.models_key])  # type: ignore[arg-type]
    assert session.published[-1] == TOPICS.desired and len(result.desired_sha256) == 64


def test_the_root_is_advanced_through_retained_rotations_as_devices_do(fleet_keys: FleetKeys) -> None:
    newer = generate_private_key()
    v2 = sign_root(make_root(2, [fleet_keys.root_key], [newer]), [fleet_keys.root_key])  # the old models key retired
    current = current_root(fleet_keys.root, {2: v2, 4: b"garbage"})
    assert current is not None and current.version == 2
    with pytest.raises(SignatureError, match="not trusted"):
        check_signing_keys(current, [fleet_keys.models_key], "--root")
    check_signing_keys(current, [newer], "--root")
    # Without an anchor: the lowest retained root that verifies on its own, then the chain.
    assert current_root(None, {1: fleet_keys.root_bytes, 2: v2}).version == 2  # type: ignore[union-attr]
    assert current_root(None, {1: b"{}", 3: b"not json"}) is None
    assert current_root(None, {}) is None


def test_a_threshold_of_trusted_keys_is_needed() -> None:
    a, b, root_key = generate_private_key(), generate_private_key(), generate_private_key()
    root = verify_root(sign_root(make_root(1, [root_key], [a, b], models_threshold=2), [root_key]))
    with pytest.raises(SignatureError, match="1 trusted --sign-key"):
        check_signing_keys(root, [a], "--root")
    with pytest.raises(SignatureError, match="1 trusted --sign-key"):
        check_signing_keys(root, [a, a], "--root")  # the same key twice counts once
    check_signing_keys(root, [a, b], "--root")


def test_rollback_needs_a_trusted_key_and_a_retained_release(fleet_keys: FleetKeys, releases: Releases) -> None:
    session = FakeSession({TOPICS.root(1): fleet_keys.root_bytes})
    publish_release(session, releases.bundle(2), [fleet_keys.models_key])  # type: ignore[arg-type]
    publish_release(session, releases.bundle(3), [fleet_keys.models_key])  # type: ignore[arg-type]
    before = list(session.published)
    with pytest.raises(SignatureError):
        order_rollback(session, "fraud", 2, [fleet_keys.stranger])  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="not retained on the broker"):
        order_rollback(session, "fraud", 1, [fleet_keys.models_key])  # type: ignore[arg-type]
    assert session.published == before
    r = order_rollback(session, "fraud", 2, [fleet_keys.models_key])  # type: ignore[arg-type]
    assert (r.previous, r.version) == (3, 2)
    desired = verify_desired(session.retained[TOPICS.desired], fleet_keys.root, fleet=FLEET, device=None)
    assert desired.models["fraud"].version == 2 and desired.models["fraud"].rollback
    with pytest.raises(UsageError, match="use fleet publish"):
        order_rollback(session, "fraud", 3, [fleet_keys.models_key])  # type: ignore[arg-type]

