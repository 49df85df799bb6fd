"""Ed25519 keys (PEM round trip, key ids, signing) and canonical JSON."""

from __future__ import annotations

import base64
import hashlib
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge_runtime.bundle.manifest import parse_manifest
from edge_runtime.exceptions import CanonicalJSONError, ManifestError, TrustError
from edge_runtime.trust.canonical import canonical_json, parse_json_object
from edge_runtime.trust.keys import (
    generate_private_key,
    key_id,
    load_private_key_pem,
    private_key_pem,
    public_key_hex,
    sign,
)


def test_pem_round_trip_keeps_the_key_and_its_id() -> None:
    key = generate_private_key()
    pem = private_key_pem(key)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    again = load_private_key_pem(pem)
    assert key_id(again) == key_id(key)
    assert public_key_hex(again) == public_key_hex(key)


def test_key_id_is_sha256_of_the_raw_public_key() -> None:
    key = generate_private_key()
    raw = bytes.fromhex(public_key_hex(key))
    assert len(raw) == 32
    assert key_id(key) == hashlib.sha256(raw).hexdigest()
    assert key_id(key.public_key()) == key_id(key)


def test_signature_entry_verifies_with_the_public_key() -> None:
    key = generate_private_key()
    entry = sign(key, b"payload")
    assert entry["keyid"] == key_id(key)
    key.public_key().verify(base64.b64decode(entry["sig"]), b"payload")


def test_non_ed25519_key_is_refused() -> None:
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(TrustError, match="expected an Ed25519 private key, found"):
        load_private_key_pem(ec_pem)


def test_garbage_key_file_is_refused() -> None:
    with pytest.raises(TrustError, match="not an unencrypted PKCS#8 PEM private key"):
        load_private_key_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")


def test_canonical_json_sorts_keys_and_drops_white_space() -> None:
    assert canonical_json({"b": [1, 2.5], "a": "é"}) == '{"a":"é","b":[1,2.5]}'.encode()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {"x": [float("-inf")]}, {1, 2}])
def test_canonical_json_refuses_what_json_cannot_hold(value: object) -> None:
    with pytest.raises(CanonicalJSONError):
        canonical_json(value)


def test_non_canonical_bytes_are_refused_where_required() -> None:
    assert parse_json_object(b'{"a": 1}', "thing") == {"a": 1}
    for data in (b'{"a": 1}', b'{"b":1,"a":2}', b'{"a":1}\n'):
        with pytest.raises(CanonicalJSONError, match="thing: not canonical JSON"):
            parse_json_object(data, "thing", require_canonical=True)
    # A key given twice is refused whether or not canonical form is required.
    for canonical in (True, False):
        with pytest.raises(CanonicalJSONError, match="thing: JSON object has the key 'a' twice"):
            parse_json_object(b'{"a":1,"a":1}', "thing", require_canonical=canonical)


def test_non_canonical_manifest_bytes_are_refused(make_bundle: Callable[..., Path]) -> None:
    with tarfile.open(make_bundle(1)) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        canonical = member.read()
    assert parse_manifest(canonical).name == "fraud"  # the control
    pretty = json.dumps(json.loads(canonical), indent=1, sort_keys=True).encode()
    with pytest.raises(ManifestError, match="not canonical JSON"):
        parse_manifest(pretty)
    unsorted = json.dumps(dict(reversed(list(json.loads(canonical).items()))), separators=(",", ":")).encode()
    with pytest.raises(ManifestError, match="not canonical JSON"):
        parse_manifest(unsorted)
