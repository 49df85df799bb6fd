"""Root keys with a threshold, adding and retiring keys, ``expires`` and the chain rule.

Pure calls on bytes (edge_runtime/trust/rotation.py, trust/root.py, updates/roots.py): one
test per rule, each also checking what must not change.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import pytest

from edge_runtime.exceptions import RootExpiredError, RootUpdateError, SignatureError, TrustError
from edge_runtime.trust.canonical import canonical_json
from edge_runtime.trust.keys import (
    PrivateKey,
    generate_private_key,
    key_id,
    load_public_key,
    public_key_hex,
    sign,
)
from edge_runtime.trust.pem import public_key_pem_bytes
from edge_runtime.trust.root import (
    TrustRoot,
    check_root_expiry,
    make_root,
    parse_signatures,
    sign_root,
    update_root,
    verify_root,
    verify_signed,
)
from edge_runtime.trust.rotation import (
    add_key,
    add_signatures,
    next_version,
    retire_key,
    set_threshold,
    signing_status,
    unsigned,
)
from edge_runtime.updates.roots import load_trust_root, save_root
from edge_runtime.updates.verify import PendingRoots

NOW = _dt.datetime(2027, 6, 1, 12, 0, tzinfo=_dt.UTC)
DAY = _dt.timedelta(days=1)


@pytest.fixture(scope="module")
def rk() -> list[PrivateKey]:
    """Three offline root keys."""
    return [generate_private_key() for _ in range(3)]


@pytest.fixture(scope="module")
def mk() -> list[PrivateKey]:
    """Models keys A and B."""
    return [generate_private_key() for _ in range(2)]


@pytest.fixture
def v1(rk: list[PrivateKey], mk: list[PrivateKey]) -> TrustRoot:
    """Root v1: root role 2 of 3, models role {A}, expires in a year from NOW."""
    return verify_root(sign_root(make_root(1, list(rk), [mk[0]], root_threshold=2, expires=NOW + 365 * DAY), list(rk)))


def _models_sig(key: PrivateKey, payload: bytes) -> list[tuple[str, bytes]]:
    return parse_signatures([sign(key, payload)], "test")


# -- threshold ------------------------------------------------------------------------


def test_a_new_version_needs_two_of_three_old_and_new_root_keys(v1: TrustRoot, rk: list[PrivateKey]) -> None:
    draft = unsigned(next_version(v1, NOW + 365 * DAY))
    one = add_signatures(draft, [rk[0]], v1)
    status = signing_status(one, v1)
    assert not status.complete and (status.own.valid, status.own.threshold) == (1, 2)
    assert status.previous is not None and status.previous.valid == 1
    with pytest.raises(RootUpdateError, match=r"by the keys of version 1: 1 valid signature\(s\).*threshold is 2"):
        update_root(v1, one)
    two = add_signatures(one, [rk[2]], v1)  # a second holder signs the same file later
    assert signing_status(two, v1).complete
    assert update_root(v1, two).version == 2


def test_signing_twice_with_one_key_counts_once(v1: TrustRoot, rk: list[PrivateKey]) -> None:
    draft = unsigned(next_version(v1, None))
    twice = add_signatures(add_signatures(draft, [rk[1]], v1), [rk[1]], v1)
    assert signing_status(twice, v1).own.valid == 1
    with pytest.raises(RootUpdateError, match="threshold is 2"):
        update_root(v1, twice)


def test_a_models_key_cannot_sign_a_root(v1: TrustRoot, mk: list[PrivateKey]) -> None:
    draft = unsigned(next_version(v1, None))
    with pytest.raises(TrustError, match=f"key {key_id(mk[0])[:12]} is not a root key of version 2 or version 1"):
        add_signatures(draft, [mk[0]], v1)


def test_a_threshold_above_the_keys_is_refused(v1: TrustRoot) -> None:
    with pytest.raises(TrustError, match="threshold 4 exceeds its 3 keys"):
        set_threshold(v1.signed, "root", 4)


# -- add and retire -------------------------------------------------------------------


def test_add_b_retire_a_moves_the_models_role(v1: TrustRoot, rk: list[PrivateKey], mk: list[PrivateKey]) -> None:
    a, b = mk
    signed = retire_key(add_key(next_version(v1, NOW + 365 * DAY), "models", b.public_key()), "models", key_id(a)[:10])
    v2 = update_root(v1, add_signatures(unsigned(signed), [rk[0], rk[1]], v1))
    assert v2.role("models").keyids == (key_id(b),)
    assert key_id(a) not in v2.keys, "a key no role names leaves the root"
    payload = b'{"name":"fraud","version":3}'
    verify_signed(v2, "models", payload, _models_sig(b, payload), "release by B")
    with pytest.raises(SignatureError, match=f"key {key_id(a)[:12]} is not trusted"):
        verify_signed(v2, "models", payload, _models_sig(a, payload), "release by retired A")
    verify_signed(v1, "models", payload, _models_sig(a, payload), "v1 unchanged")  # the old root is not edited


def test_a_key_is_added_once(v1: TrustRoot, mk: list[PrivateKey]) -> None:
    with pytest.raises(TrustError, match="already signs for role 'models'"):
        add_key(v1.signed, "models", mk[0])


def test_the_last_key_of_a_role_cannot_be_retired(v1: TrustRoot, mk: list[PrivateKey]) -> None:
    with pytest.raises(TrustError, match="is the last key of role 'models': add its successor first"):
        retire_key(v1.signed, "models", key_id(mk[0]))


def test_retiring_below_the_threshold_needs_a_new_threshold(v1: TrustRoot, rk: list[PrivateKey]) -> None:
    one_less = retire_key(v1.signed, "root", key_id(rk[2]))
    assert one_less["roles"]["root"]["threshold"] == 2 and len(one_less["roles"]["root"]["keyids"]) == 2
    with pytest.raises(TrustError, match="would keep 1 key.s. with threshold 2: lower the threshold"):
        retire_key(one_less, "root", key_id(rk[1]))
    assert retire_key(one_less, "root", key_id(rk[1]), threshold=1)["roles"]["root"]["threshold"] == 1


@pytest.mark.parametrize(("prefix", "match"), [("abc", "at least 8"), ("00000000", "no key of role 'models'")])
def test_retire_names_one_key(v1: TrustRoot, prefix: str, match: str) -> None:
    with pytest.raises(TrustError, match=match):
        retire_key(v1.signed, "models", prefix)


def test_public_keys_load_from_pem_hex_and_private_files(mk: list[PrivateKey]) -> None:
    from edge_runtime.trust.keys import private_key_pem

    for data in (public_key_pem_bytes(mk[1]), public_key_hex(mk[1]).encode() + b"\n", private_key_pem(mk[1])):
        assert key_id(load_public_key(data)) == key_id(mk[1])
    with pytest.raises(TrustError, match="expected a PEM private or public key"):
        load_public_key(b"hello")


# -- expires --------------------------------------------------------------------------


def test_an_expired_root_refuses_new_updates_with_the_reason(rk: list[PrivateKey], mk: list[PrivateKey]) -> None:
    root = verify_root(sign_root(make_root(1, [rk[0]], [mk[0]], expires=NOW - DAY), [rk[0]]))
    assert root.expires == NOW - DAY
    with pytest.raises(RootExpiredError, match=r"^trust root v1 expired at 2027-05-31T12:00:00Z; publish a new root"):
        check_root_expiry(root, NOW)
    check_root_expiry(root, NOW - 2 * DAY)  # not yet expired then
    check_root_expiry(root, None)  # a clock the device does not trust: not checked


def test_a_root_without_expires_never_expires(rk: list[PrivateKey], mk: list[PrivateKey]) -> None:
    old = verify_root(sign_root(make_root(1, [rk[0]], [mk[0]]), [rk[0]]))
    assert old.expires is None and "expires" not in old.signed
    check_root_expiry(old, NOW + 100 * 365 * DAY)


@pytest.mark.parametrize(
    ("value", "match"),
    [("2027-06-01T12:00:00", "needs a time zone"), ("next year", "ISO 8601 time"), (1893456000, "ISO 8601 time string"),
     ("2" * 400, "ISO 8601 time string")],
)
def test_a_malformed_expires_is_refused(rk: list[PrivateKey], mk: list[PrivateKey], value: object, match: str) -> None:
    signed = make_root(1, [rk[0]], [mk[0]])
    signed["expires"] = value
    with pytest.raises(TrustError, match=match):
        verify_root(sign_root(signed, [rk[0]]))


def test_expires_is_signed(v1: TrustRoot) -> None:
    doc = canonical_json({"signed": dict(v1.signed, expires="2099-01-01T00:00:00Z"),
                          "signatures": [{"keyid": k, "sig": s} for k, s in _sigs(v1)]})
    with pytest.raises(SignatureError, match="bad signature"):
        verify_root(doc)


def _sigs(root: TrustRoot) -> list[tuple[str, str]]:
    import json

    return [(s["keyid"], s["sig"]) for s in json.loads(root.raw)["signatures"]]


# -- the chain ignores the expiry of intermediate roots -------------------------------


def _chain(rk: list[PrivateKey], mk: list[PrivateKey]) -> list[bytes]:
    """v1 and v2 expired at NOW, v3 valid for a year."""
    expires = [NOW - 30 * DAY, NOW - DAY, NOW + 365 * DAY]
    docs = [sign_root(make_root(1, rk[:2], [mk[0]], 2, expires=expires[0]), rk[:2])]
    for version in (2, 3):
        docs.append(sign_root(make_root(version, rk[:2], [mk[0]], 2, expires=expires[version - 1]), rk[:2]))
    return docs


def test_a_chain_through_expired_roots_ends_at_an_unexpired_one(rk: list[PrivateKey], mk: list[PrivateKey]) -> None:
    docs = _chain(rk, mk)
    v1 = verify_root(docs[0])
    with pytest.raises(RootExpiredError):
        check_root_expiry(v1, NOW)
    v2 = update_root(v1, docs[1])  # signed by an expired root: still accepted
    v3 = update_root(v2, docs[2])
    with pytest.raises(RootExpiredError, match="trust root v2 expired"):
        check_root_expiry(v2, NOW)
    check_root_expiry(v3, NOW)


def test_the_device_follows_expired_rotations_from_disk_and_the_broker(
    rk: list[PrivateKey], mk: list[PrivateKey], tmp_path: Path
) -> None:
    docs = _chain(rk, mk)
    v1 = verify_root(docs[0])
    save_root(tmp_path, update_root(v1, docs[1]))
    assert load_trust_root(v1, tmp_path).version == 2  # restart: expired v2 saved, still loaded
    pending = PendingRoots()
    rotated, _ = pending.offer(v1, 3, docs[2])  # v3 waits for v2 (reported as a skipped version)
    assert rotated == []
    rotated, problems = pending.offer(v1, 2, docs[1])
    assert problems == [] and [r.version for r in rotated] == [2, 3]
    check_root_expiry(rotated[-1], NOW)
