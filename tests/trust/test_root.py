"""The trust root: one test per way a root, a rotation or a signature can be wrong.

Verification is pure (bytes in, TrustRoot or an error out), so each attack is a plain
call; the current root must come out of a refused rotation unchanged.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest

from edge_runtime.bundle.reader import verify_manifest_signature
from edge_runtime.exceptions import RootUpdateError, SignatureError, TrustError
from edge_runtime.trust.canonical import canonical_json
from edge_runtime.trust.keys import PrivateKey, generate_private_key, key_id, public_key_hex, sign
from edge_runtime.trust.root import TrustRoot, make_root, sign_root, update_root, verify_root, verify_signed


@pytest.fixture(scope="module")
def k() -> list[PrivateKey]:
    """Five keys: 0-1 root keys of v1, 2-3 root keys of v2, 4 a model key."""
    return [generate_private_key() for _ in range(5)]


@pytest.fixture
def root_v1(k: list[PrivateKey]) -> TrustRoot:
    """Root v1: root role {k0, k1} threshold 1, models role {k4} threshold 1."""
    return verify_root(sign_root(make_root(1, [k[0], k[1]], [k[4]]), [k[0]]))


def _resign(signed: dict[str, Any], signers: list[PrivateKey]) -> bytes:
    return sign_root(signed, signers)


def _snapshot(root: TrustRoot) -> tuple[int, str, bytes]:
    return root.version, canonical_json(root.signed).decode(), root.raw


# -- a good root and a good rotation (the controls) -----------------------------------


def test_version_1_root_signed_by_its_own_root_key_verifies(root_v1: TrustRoot, k: list[PrivateKey]) -> None:
    assert root_v1.version == 1
    assert set(root_v1.role("root").keyids) == {key_id(k[0]), key_id(k[1])}
    assert root_v1.role("models").keyids == (key_id(k[4]),)
    assert root_v1.role("models").threshold == 1


def test_rotation_signed_by_old_and_new_root_keys_is_accepted(root_v1: TrustRoot, k: list[PrivateKey]) -> None:
    new = update_root(root_v1, sign_root(make_root(2, [k[2], k[3]], [k[4]]), [k[0], k[2]]))
    assert new.version == 2
    assert set(new.role("root").keyids) == {key_id(k[2]), key_id(k[3])}


# -- signatures -----------------------------------------------------------------------


def test_bad_signature_is_refused(k: list[PrivateKey]) -> None:
    doc = json.loads(sign_root(make_root(1, [k[0]], [k[4]]), [k[0]]))
    sig = bytearray(base64.b64decode(doc["signatures"][0]["sig"]))
    sig[0] ^= 0x01
    doc["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    with pytest.raises(SignatureError, match=r"0 valid signature\(s\).*bad signature by key"):
        verify_root(json.dumps(doc).encode())


def test_signature_over_other_content_is_refused(k: list[PrivateKey]) -> None:
    signed = make_root(1, [k[0]], [k[4]])
    other = dict(signed, version=7)
    doc = {"signed": signed, "signatures": [sign(k[0], canonical_json(other))]}
    with pytest.raises(SignatureError, match="bad signature"):
        verify_root(canonical_json(doc))


def test_signature_by_an_unknown_key_is_refused(k: list[PrivateKey]) -> None:
    stranger = generate_private_key()
    with pytest.raises(SignatureError, match=f"key {key_id(stranger)[:12]} is not trusted"):
        verify_root(sign_root(make_root(1, [k[0]], [k[4]]), [stranger]))


def test_signature_by_a_key_of_another_role_is_refused(k: list[PrivateKey]) -> None:
    # k4 is listed in the root (for models) but may not sign the root itself.
    with pytest.raises(SignatureError, match="not trusted for this role"):
        verify_root(sign_root(make_root(1, [k[0]], [k[4]]), [k[4]]))


def test_below_threshold_is_refused(k: list[PrivateKey]) -> None:
    signed = make_root(1, [k[0], k[1]], [k[4]], root_threshold=2)
    with pytest.raises(SignatureError, match=r"1 valid signature\(s\) from role 'root', threshold is 2"):
        verify_root(sign_root(signed, [k[0]]))
    assert verify_root(sign_root(signed, [k[0], k[1]])).role("root").threshold == 2


def test_duplicate_signatures_by_one_key_count_once(k: list[PrivateKey]) -> None:
    signed = make_root(1, [k[0], k[1]], [k[4]], root_threshold=2)
    payload = canonical_json(signed)
    doc = {"signed": signed, "signatures": [sign(k[0], payload), sign(k[0], payload)]}
    with pytest.raises(SignatureError, match=r"1 valid signature\(s\).*threshold is 2"):
        verify_root(canonical_json(doc))


def test_no_signatures_is_refused(k: list[PrivateKey]) -> None:
    doc = {"signed": make_root(1, [k[0]], [k[4]]), "signatures": []}
    with pytest.raises(SignatureError, match="no signatures"):
        verify_root(canonical_json(doc))


def test_manifest_signature_needs_the_models_role(root_v1: TrustRoot, k: list[PrivateKey]) -> None:
    manifest = b'{"name":"fraud"}'
    good = canonical_json({"signatures": [sign(k[4], manifest)]})
    verify_manifest_signature(root_v1, manifest, good)  # the control: k4 signs models
    by_root_key = canonical_json({"signatures": [sign(k[0], manifest)]})
    with pytest.raises(SignatureError, match="not trusted for this role"):
        verify_manifest_signature(root_v1, manifest, by_root_key)
    with pytest.raises(SignatureError, match="bad signature"):
        verify_manifest_signature(root_v1, manifest + b" ", good)


def test_verify_signed_checks_the_exact_bytes(root_v1: TrustRoot, k: list[PrivateKey]) -> None:
    payload = b'{"a":1}'
    raw = base64.b64decode(sign(k[4], payload)["sig"])
    verify_signed(root_v1, "models", payload, [(key_id(k[4]), raw)], "thing")
    with pytest.raises(SignatureError, match="thing: 0 valid"):
        verify_signed(root_v1, "models", b'{"a": 1}', [(key_id(k[4]), raw)], "thing")


# -- rotation ---------------------------------------------------------------------------


def test_skipped_root_version_is_refused(root_v1: TrustRoot, k: list[PrivateKey]) -> None:
    before = _snapshot(root_v1)
    v3 = sign_root(make_root(3, [k[0], k[1]], [k[4]]), [k[0], k[1]])
    with pytest.raises(RootUpdateError, match="expected version 2, found 3 .a skipped version"):
        update_root(root_v1, v3)
    assert _snapshot(root_v1) == before


def test_same_root_version_is_refused(root_v1: TrustRoot, k: list[PrivateKey]) -> None:
    before = _snapshot(root_v1)
    # Even a root v1 with other keys, correctly signed by the current root key.
    with pytest.raises(RootUpdateError, match="expected version 2, found 1 .not newer"):
        update_root(root_v1, sign_root(make_root(1, [k[0], k[2]], [k[4]]), [k[0], k[2]]))
    assert _snapshot(root_v1) == before


def test_older_root_version_is_refused(k: list[PrivateKey]) -> None:
    v2 = update_root(
        verify_root(sign_root(make_root(1, [k[0]], [k[4]]), [k[0]])), sign_root(make_root(2, [k[2]], [k[4]]), [k[0], k[2]])
    )
    with pytest.raises(RootUpdateError, match="expected version 3, found 1 .not newer"):
        update_root(v2, sign_root(make_root(1, [k[0]], [k[4]]), [k[0]]))


def test_rotation_signed_only_by_the_new_keys_is_refused(root_v1: TrustRoot, k: list[PrivateKey]) -> None:
    before = _snapshot(root_v1)
    with pytest.raises(RootUpdateError, match="by the keys of version 1: 0 valid"):
        update_root(root_v1, sign_root(make_root(2, [k[2], k[3]], [k[4]]), [k[2], k[3]]))
    assert _snapshot(root_v1) == before


def test_rotation_signed_only_by_the_old_keys_is_refused(root_v1: TrustRoot, k: list[PrivateKey]) -> None:
    before = _snapshot(root_v1)
    with pytest.raises(RootUpdateError, match="by its own keys: 0 valid"):
        update_root(root_v1, sign_root(make_root(2, [k[2], k[3]], [k[4]]), [k[0], k[1]]))
    assert _snapshot(root_v1) == before


def test_rotation_below_the_old_threshold_is_refused(k: list[PrivateKey]) -> None:
    v1 = verify_root(sign_root(make_root(1, [k[0], k[1]], [k[4]], root_threshold=2), [k[0], k[1]]))
    with pytest.raises(RootUpdateError, match=r"by the keys of version 1: 1 valid signature\(s\).*threshold is 2"):
        update_root(v1, sign_root(make_root(2, [k[2]], [k[4]]), [k[0], k[2]]))


def test_rotation_that_is_malformed_is_a_root_update_error(root_v1: TrustRoot) -> None:
    with pytest.raises(RootUpdateError, match="malformed JSON"):
        update_root(root_v1, b'{"signed": ')


# -- malformed documents and wrong types ---------------------------------------------


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "malformed JSON"),
        (b'{"signed": {', "malformed JSON"),
        (b"[]", "expected a JSON object, found list"),
        (b"\xff\xfe", "not UTF-8"),
        (b'{"signed": NaN}', "non-standard number NaN"),
        (b'{"signed": {}, "signatures": [], "extra": 1}', r"unknown fields \['extra'\]"),
    ],
)
def test_malformed_json_is_refused(data: bytes, match: str) -> None:
    with pytest.raises(TrustError, match=match):
        verify_root(data)


Mutation = Callable[[dict[str, Any], list[PrivateKey]], None]


def _set(path: tuple[Any, ...], value: Any) -> Mutation:
    def apply(signed: dict[str, Any], k: list[PrivateKey]) -> None:
        obj = signed
        for p in path[:-1]:
            obj = obj[p] if not callable(p) else p(obj, k)
        obj[path[-1]] = value

    return apply


def _first_key(obj: dict[str, Any], k: list[PrivateKey]) -> dict[str, Any]:
    return obj[key_id(k[0])]


WRONG_TYPES: list[tuple[str, Mutation, str]] = [
    ("_type missing", lambda s, k: s.pop("_type"), "'_type' must be 'root', found None"),
    ("_type other", _set(("_type",), "models"), "'_type' must be 'root', found 'models'"),
    ("version string", _set(("version",), "1"), "'version' must be an integer >= 1, found '1'"),
    ("version float", _set(("version",), 1.0), "'version' must be an integer >= 1, found 1.0"),
    ("version bool", _set(("version",), True), "'version' must be an integer >= 1, found True"),
    ("version null", _set(("version",), None), "'version' must be an integer >= 1, found None"),
    ("keys list", _set(("keys",), []), "'keys' must be a non-empty object"),
    ("keys empty", _set(("keys",), {}), "'keys' must be a non-empty object"),
    ("key entry string", lambda s, k: s["keys"].__setitem__(key_id(k[0]), "abc"), "must be an object"),
    ("keytype rsa", _set(("keys", _first_key, "keytype"), "rsa"), "keytype 'rsa', expected 'ed25519'"),
    ("public number", _set(("keys", _first_key, "public"), 5), "'public' must be a hex string"),
    ("public not hex", _set(("keys", _first_key, "public"), "zz" * 32), "not a 32-byte Ed25519 public key"),
    ("public short", _set(("keys", _first_key, "public"), "ab" * 16), "not a 32-byte Ed25519 public key"),
    ("roles list", _set(("roles",), []), "'roles' must be an object"),
    ("role missing", lambda s, k: s["roles"].pop("models"), "role 'models' is missing"),
    ("role string", _set(("roles", "root"), "k0"), "role 'root' must be an object, found str"),
    ("unknown role", _set(("roles", "targets"), {"keyids": ["x"], "threshold": 1}), r"unknown roles \['targets'\]"),
    ("keyids string", _set(("roles", "root", "keyids"), "abc"), "'keyids' must be a non-empty list of strings"),
    ("keyids empty", _set(("roles", "root", "keyids"), []), "'keyids' must be a non-empty list of strings"),
    ("keyids numbers", _set(("roles", "root", "keyids"), [1]), "'keyids' must be a non-empty list of strings"),
    ("threshold string", _set(("roles", "root", "threshold"), "1"), "'threshold' must be an integer >= 1, found '1'"),
    ("threshold zero", _set(("roles", "root", "threshold"), 0), "'threshold' must be an integer >= 1, found 0"),
    ("threshold bool", _set(("roles", "models", "threshold"), True), "'threshold' must be an integer >= 1, found True"),
    ("threshold too high", _set(("roles", "root", "threshold"), 3), "threshold 3 exceeds its 1 keys"),
    ("role names unknown key", _set(("roles", "models", "keyids"), ["00" * 32]), "names unknown key ids"),
]


@pytest.mark.parametrize(("mutate", "match"), [(m, e) for _, m, e in WRONG_TYPES], ids=[i for i, _, _ in WRONG_TYPES])
def test_wrong_type_in_signed_part_is_refused(k: list[PrivateKey], mutate: Mutation, match: str) -> None:
    signed = make_root(1, [k[0]], [k[4]])
    mutate(signed, k)
    # Signed after the change, so the type check (not the signature) must be what refuses it.
    with pytest.raises(TrustError, match=match):
        verify_root(_resign(signed, [k[0]]))


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({"signatures": []}, "'signed' must be an object, found NoneType"),
        ({"signed": [], "signatures": []}, "'signed' must be an object, found list"),
        ({"signed": "SIGNED", "signatures": []}, "'signed' must be an object, found str"),
        ({"signatures": {}}, "'signed' must be an object"),
        ("SIGNED_NO_SIGS", "'signatures' must be a list, found NoneType"),
        ("SIGS_OBJECT", "'signatures' must be a list, found dict"),
        ("SIG_NOT_OBJECT", "signature 0 must be an object with string 'keyid' and 'sig'"),
        ("SIG_KEYID_NUMBER", "signature 0 must be an object with string 'keyid' and 'sig'"),
        ("SIG_SIG_NUMBER", "signature 0 must be an object with string 'keyid' and 'sig'"),
        ("SIG_NOT_BASE64", "signature 0 is not base64"),
    ],
)
def test_wrong_type_in_the_envelope_is_refused(k: list[PrivateKey], doc: Any, match: str) -> None:
    signed = make_root(1, [k[0]], [k[4]])
    good = sign(k[0], canonical_json(signed))
    envelopes: dict[str, Any] = {
        "SIGNED_NO_SIGS": {"signed": signed},
        "SIGS_OBJECT": {"signed": signed, "signatures": {"0": good}},
        "SIG_NOT_OBJECT": {"signed": signed, "signatures": ["sig"]},
        "SIG_KEYID_NUMBER": {"signed": signed, "signatures": [dict(good, keyid=1)]},
        "SIG_SIG_NUMBER": {"signed": signed, "signatures": [dict(good, sig=1)]},
        "SIG_NOT_BASE64": {"signed": signed, "signatures": [dict(good, sig="***")]},
    }
    data = envelopes[doc] if isinstance(doc, str) else doc
    with pytest.raises(TrustError, match=match):
        verify_root(canonical_json(data))


def test_key_id_not_matching_its_key_is_refused(k: list[PrivateKey]) -> None:
    signed = make_root(1, [k[0]], [k[4]])
    # k0's entry holds k1's public key: the id no longer is sha256 of the key.
    signed["keys"][key_id(k[0])]["public"] = public_key_hex(k[1])
    with pytest.raises(TrustError, match=f"key id '{key_id(k[0])}' does not match its public key"):
        verify_root(sign_root(signed, [k[0]]))
