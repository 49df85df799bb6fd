"""Ed25519 keys: generation, PEM (PKCS#8) round trip, key ids and signing."""

from __future__ import annotations

import base64
import hashlib

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_runtime.exceptions import TrustError

PrivateKey = Ed25519PrivateKey


def generate_private_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 signing key."""
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    """The key as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_private_key_pem(data: bytes) -> Ed25519PrivateKey:
    """Parse a PKCS#8 PEM Ed25519 private key."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise TrustError(f"not an unencrypted PKCS#8 PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise TrustError(f"expected an Ed25519 private key, found {type(key).__name__}")
    return key


def load_public_key(data: bytes) -> Ed25519PublicKey:
    """The public key in ``data``: a PKCS#8 PEM private key (its public half), a PEM public
    key, or the 64 hex characters ``keys show`` prints. Lets an operator add a key to a root
    from a file that never held the private key."""
    text = bytes(data).strip()
    if b"PRIVATE KEY" in text:
        return load_private_key_pem(text).public_key()
    if b"PUBLIC KEY" in text:
        try:
            key = serialization.load_pem_public_key(text)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise TrustError(f"not a PEM public key: {exc}") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise TrustError(f"expected an Ed25519 public key, found {type(key).__name__}")
        return key
    try:
        raw = bytes.fromhex(text.decode("ascii"))
        if len(raw) != 32:
            raise ValueError(f"{len(raw)} bytes")
        return Ed25519PublicKey.from_public_bytes(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise TrustError("expected a PEM private or public key, or a 32-byte Ed25519 public key in hex") from exc


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The public key as PEM (SubjectPublicKeyInfo)."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _raw_public(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_hex(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The raw 32-byte public key, hex encoded, as stored in root.json."""
    return _raw_public(key).hex()


def key_id(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The key id: sha256 of the raw public key, hex."""
    return hashlib.sha256(_raw_public(key)).hexdigest()


def sign(key: Ed25519PrivateKey, payload: bytes) -> dict[str, str]:
    """One signature entry ``{"keyid", "sig"}`` over ``payload``."""
    return {"keyid": key_id(key), "sig": base64.b64encode(key.sign(payload)).decode("ascii")}
