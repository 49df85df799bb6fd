"""``fleet root publish`` decides purely (edge_runtime/fleet/roots.py): a new root is published
only as the next version after the fleet's chain, verified as a device will verify it, and
never already expired. What the broker holds is hostile: a bad topic or message is skipped."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.exceptions import RootExpiredError, RootUpdateError, TrustError, UsageError
from edge_runtime.fleet.roots import fleet_chain, plan_root_publish, retained_versions
from edge_runtime.trust.keys import PrivateKey, generate_private_key, private_key_pem
from edge_runtime.trust.root import make_root, sign_root, verify_root

NOW = _dt.datetime(2027, 6, 1, tzinfo=_dt.UTC)
DAY = _dt.timedelta(days=1)
PREFIX = "edge/f1/trust/root/"


@pytest.fixture(scope="module")
def k() -> list[PrivateKey]:
    """Root keys 0-1, models key 2."""
    return [generate_private_key() for _ in range(3)]


def _root(k: list[PrivateKey], version: int, expires: _dt.datetime | None = NOW + 365 * DAY, signers: int = 2) -> bytes:
    return sign_root(make_root(version, k[:2], [k[2]], 2, expires=expires), k[:signers])


def test_the_next_version_is_planned_after_the_retained_chain(k: list[PrivateKey]) -> None:
    v1 = verify_root(_root(k, 1))
    chain = fleet_chain({2: _root(k, 2)}, v1)
    assert [r.version for r in chain.roots] == [1, 2] and chain.anchored and chain.problems == []
    plan = plan_root_publish(_root(k, 3), chain, NOW)
    assert plan.new.version == 3 and plan.previous.version == 2 and not plan.already_published


def test_a_root_already_retained_is_not_published_again(k: list[PrivateKey]) -> None:
    v2 = _root(k, 2)
    plan = plan_root_publish(v2, fleet_chain({2: v2}, verify_root(_root(k, 1))), NOW)
    assert plan.already_published and plan.new.version == 2


def test_an_older_or_conflicting_version_is_refused(k: list[PrivateKey]) -> None:
    chain = fleet_chain({2: _root(k, 2)}, verify_root(_root(k, 1)))
    with pytest.raises(UsageError, match="already at version 2; this root is version 2"):
        plan_root_publish(_root(k, 2, expires=NOW + 9 * DAY), chain, NOW)


def test_a_skipped_version_is_refused(k: list[PrivateKey]) -> None:
    with pytest.raises(UsageError, match="version 3 but the fleet's chain ends at version 1.*publish version 2 first"):
        plan_root_publish(_root(k, 3), fleet_chain({}, verify_root(_root(k, 1))), NOW)


def test_a_root_below_the_threshold_is_refused(k: list[PrivateKey]) -> None:
    with pytest.raises(RootUpdateError, match="threshold is 2"):
        plan_root_publish(_root(k, 2, signers=1), fleet_chain({}, verify_root(_root(k, 1))), NOW)


def test_an_expired_new_root_is_refused_an_expired_previous_is_noted(k: list[PrivateKey]) -> None:
    chain = fleet_chain({}, verify_root(_root(k, 1, expires=NOW - DAY)))
    with pytest.raises(RootExpiredError, match="refusing to publish: trust root v2 expired"):
        plan_root_publish(_root(k, 2, expires=NOW - DAY), chain, NOW)
    plan = plan_root_publish(_root(k, 2), chain, NOW)
    assert any("root version 1 expired at" in n and "until they take version 2" in n for n in plan.notes)


def test_a_root_that_never_expires_is_published_with_a_note(k: list[PrivateKey]) -> None:
    plan = plan_root_publish(_root(k, 2, expires=None), fleet_chain({}, verify_root(_root(k, 1))), NOW)
    assert any("never expires" in n for n in plan.notes)


def test_without_an_anchor_the_chain_starts_at_the_lowest_retained_root(k: list[PrivateKey]) -> None:
    chain = fleet_chain({1: _root(k, 1), 2: _root(k, 2)}, None)
    assert chain.current.version == 2 and not chain.anchored
    assert any("pass --previous" in n for n in plan_root_publish(_root(k, 3), chain, NOW).notes)
    with pytest.raises(UsageError, match="no trust root is retained"):
        fleet_chain({}, None)


def test_hostile_retained_roots_are_skipped_and_named(k: list[PrivateKey]) -> None:
    stranger = generate_private_key()
    forged = sign_root(make_root(2, [stranger], [stranger]), [stranger])
    retained, problems = retained_versions(
        {PREFIX + "2": forged, PREFIX + "x": b"{}", PREFIX + "9" * 40: b"{}", PREFIX + "4": b"0" * 300_000}, PREFIX
    )
    assert sorted(retained) == [2] and len(problems) == 3
    chain = fleet_chain(retained, verify_root(_root(k, 1)))
    assert chain.current.version == 1 and "trust/root/2 does not chain from version 1" in chain.problems[0]
    with pytest.raises(TrustError, match="lowest retained root"):
        fleet_chain({1: forged.replace(b'"version":2', b'"version":1')}, None)


def test_fleet_publish_refuses_an_expired_root_before_connecting(tmp_path: Path, k: list[PrivateKey], cli: Any) -> None:
    root = tmp_path / "root.json"
    root.write_bytes(sign_root(make_root(1, k[:2], [k[2]], 2, expires=_dt.datetime(2020, 1, 1, tzinfo=_dt.UTC)), k[:2]))
    (tmp_path / "models.key").write_bytes(private_key_pem(k[2]))
    (tmp_path / "x.bundle").write_bytes(b"not opened")
    r = cli(["fleet", "publish", tmp_path / "x.bundle", "--fleet", "f1", "--broker", "mqtt://127.0.0.1:9",
             "--sign-key", tmp_path / "models.key", "--root", root])
    assert r.code == 1 and r.err.strip().startswith(
        "edge-runtime: refusing to publish: trust root v1 expired at 2020-01-01T00:00:00Z; publish a new root"
    ), r.err
