"""PEM and hex readers and writers shared by the two key kinds: the fleet's Ed25519 signing keys
(:mod:`.keys`) and the devices' X25519 encryption keys (:mod:`.device_keys`).

Both read the same three forms (a PKCS#8 PEM private key, a PEM public key, the 64 hex digits of
the raw public key) and refuse the same way, so one reader serves both, told which key classes to
accept. ``cryptography`` is imported inside the functions, not with this module: a daemon that
serves no encrypted model never loads it through :mod:`.device_keys`.
"""

from __future__ import annotations

from typing import Any

from edge_runtime.exceptions import TrustError

RAW_KEY_BYTES = 32  # Ed25519 and X25519 public keys alike

def _prefix(what: str) -> str:
    return f"{what}: " if what else ""


def _public_half(key: Any) -> Any:
    """The public key of a private key, or the public key itself."""
    return key.public_key() if hasattr(key, "private_bytes") else key


def raw_public_bytes(key: Any) -> bytes:
    """The 32-byte raw public key of a private or public Ed25519/X25519 key."""
    from cryptography.hazmat.primitives import serialization

    return bytes(_public_half(key).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def private_key_pem_bytes(key: Any) -> bytes:
    """The private key as unencrypted PKCS#8 PEM."""
    from cryptography.hazmat.primitives import serialization

    return bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))


def public_key_pem_bytes(key: Any) -> bytes:
    """The public key (of a private or public key) as PEM (SubjectPublicKeyInfo)."""
    from cryptography.hazmat.primitives import serialization

    return bytes(_public_half(key).public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo))


def load_private_pem(data: bytes, cls: type[Any], algorithm: str, what: str = "") -> Any:
    """Parse a PKCS#8 PEM private key of class ``cls`` (``algorithm`` names it in errors)."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise TrustError(f"{_prefix(what)}not an unencrypted PKCS#8 PEM private key: {exc}") from exc
    if not isinstance(key, cls):
        raise TrustError(f"{_prefix(what)}expected an {algorithm} private key, found {type(key).__name__}")
    return key


def load_public(data: bytes, cls: type[Any], algorithm: str, *, what: str = "",
                private: type[Any] | None = None, private_refusal: str = "") -> Any:
    """The public key in ``data``: a PEM public key or the 64 hex digits of the raw key.

    A PEM private key gives its public half when ``private`` (its class) is given; otherwise it
    is refused with ``private_refusal`` (the operator's machine should never hold one).
    """
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    text = bytes(data).strip()
    if b"PRIVATE KEY" in text:
        if private is None:
            raise TrustError(f"{_prefix(what)}{private_refusal or 'this is a private key; pass the public key'}")
        return _public_half(load_private_pem(text, private, algorithm, what))
    if b"PUBLIC KEY" in text:
        try:
            key = serialization.load_pem_public_key(text)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise TrustError(f"{_prefix(what)}not a PEM public key: {exc}") from exc
        if not isinstance(key, cls):
            raise TrustError(f"{_prefix(what)}expected an {algorithm} public key, found {type(key).__name__}")
        return key
    try:
        raw = bytes.fromhex(text.decode("ascii"))
        if len(raw) != RAW_KEY_BYTES:
            raise ValueError(f"{len(raw)} bytes")
        return cls.from_public_bytes(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        forms = "a PEM private or public key" if private is not None else f"a PEM {algorithm} public key"
        raise TrustError(f"{_prefix(what)}expected {forms}, or a {RAW_KEY_BYTES}-byte {algorithm} public key "
                         "in hex") from exc
