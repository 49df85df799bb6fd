"""Ed25519 keys: generation, PEM (PKCS#8) round trip, key ids and signing."""

from __future__ import annotations

import base64
import hashlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_runtime.trust.pem import (
    load_private_pem,
    load_public,
    private_key_pem_bytes,
    raw_public_bytes,
)

PrivateKey = Ed25519PrivateKey


def generate_private_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 signing key."""
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    """The key as unencrypted PKCS#8 PEM."""
    return private_key_pem_bytes(key)


def load_private_key_pem(data: bytes) -> Ed25519PrivateKey:
    """Parse a PKCS#8 PEM Ed25519 private key."""
    return load_private_pem(data, Ed25519PrivateKey, "Ed25519")


def load_public_key(data: bytes) -> Ed25519PublicKey:
    """The public key in ``data``: a PKCS#8 PEM private key (its public half), a PEM public
    key, or the 64 hex characters ``keys show`` prints. Lets an operator add a key to a root
    from a file that never held the private key."""
    return load_public(data, Ed25519PublicKey, "Ed25519", private=Ed25519PrivateKey)


def public_key_hex(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The raw 32-byte public key, hex encoded, as stored in root.json."""
    return raw_public_bytes(key).hex()


def key_id(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The key id: sha256 of the raw public key, hex."""
    return hashlib.sha256(raw_public_bytes(key)).hexdigest()


def sign(key: Ed25519PrivateKey, payload: bytes) -> dict[str, str]:
    """One signature entry ``{"keyid", "sig"}`` over ``payload``."""
    return {"keyid": key_id(key), "sig": base64.b64encode(key.sign(payload)).decode("ascii")}
