"""Device encryption keys (X25519): generation, PEM round trip, key ids.

A device's key pair is separate from the fleet's Ed25519 signing keys: signing keys say who
made a release, the device key says who may read it. The private half never leaves the
device (mode 0600, ``[trust] device_key``); the public half is what ``bundle encrypt --to``
takes. The key id is the first 16 hex digits of sha256 over the raw public key: short,
because every recipient of a release is listed by it in the manifest, and a collision costs
nothing but a failed unwrap (the wrapped key is authenticated).
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_runtime.exceptions import TrustError
from edge_runtime.trust.pem import (
    load_private_pem,
    load_public,
    private_key_pem_bytes,
    public_key_pem_bytes,
    raw_public_bytes,
)

# ``cryptography`` is imported where a key is made or read, not with this module: a daemon that
# serves no encrypted model never loads it (about 10 MB of memory, docs/serving.md).
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

    DeviceKey = X25519PrivateKey
    DevicePublicKey = X25519PublicKey
else:
    DeviceKey = Any
    DevicePublicKey = Any
KEY_ID_HEX = 16
MAX_KEY_FILE_BYTES = 16 * 1024
PRIVATE_FILE = "device.key"
PUBLIC_FILE = "device.pub"


def generate_device_key() -> X25519PrivateKey:
    """A fresh X25519 key pair."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    return X25519PrivateKey.generate()


def raw_public(key: X25519PrivateKey | X25519PublicKey) -> bytes:
    """The 32-byte raw public key."""
    return raw_public_bytes(key)


def device_key_id(key: X25519PrivateKey | X25519PublicKey) -> str:
    """The key id: the first 16 hex digits of sha256 over the raw public key."""
    return hashlib.sha256(raw_public_bytes(key)).hexdigest()[:KEY_ID_HEX]


def private_pem(key: X25519PrivateKey) -> bytes:
    """The private key as unencrypted PKCS#8 PEM."""
    return private_key_pem_bytes(key)


def public_pem(key: X25519PrivateKey | X25519PublicKey) -> bytes:
    """The public key as PEM (SubjectPublicKeyInfo)."""
    return public_key_pem_bytes(key)


def load_device_key_pem(data: bytes, what: str = "device key") -> X25519PrivateKey:
    """Parse a PKCS#8 PEM X25519 private key."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    return load_private_pem(data, X25519PrivateKey, "X25519", what)


def load_device_public(data: bytes, what: str = "device public key") -> X25519PublicKey:
    """A device's public key: PEM (what ``keys device`` writes) or the 64 hex digits of the raw key.

    A private key is refused: the operator's machine should never hold one.
    """
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    return load_public(data, X25519PublicKey, "X25519", what=what,
                       private_refusal="this is a private key; pass the device's public key (device.pub)")


def read_device_key(path: Path) -> X25519PrivateKey:
    """The device's private key from ``path`` (``[trust] device_key``).

    Refused when group or others may read it, as ssh does: a key anyone can copy protects
    nothing, and saying so at start-up beats finding out after the SD card is gone.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise TrustError(f"cannot read device key {path}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TrustError(f"device key {path} is not a regular file")
        if st.st_mode & 0o077:
            raise TrustError(f"device key {path} has mode {stat.S_IMODE(st.st_mode):04o}; it must be 0600 or stricter")
        data = os.read(fd, MAX_KEY_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise TrustError(f"device key {path} is over {MAX_KEY_FILE_BYTES} bytes")
    return load_device_key_pem(data, f"device key {path}")


def read_public_keys(path: Path) -> list[X25519PublicKey]:
    """The public keys named by ``--to``/``--encrypt-to``: one file, or every ``*.pub`` in a directory."""
    path = Path(path)
    files = sorted(path.glob("*.pub")) if path.is_dir() else [path]
    if not files:
        raise TrustError(f"{path}: no *.pub file in this directory")
    keys = []
    for f in files:
        try:
            data = f.read_bytes()[: MAX_KEY_FILE_BYTES + 1]
        except OSError as exc:
            raise TrustError(f"cannot read {f}: {exc.strerror}") from exc
        keys.append(load_device_public(data, str(f)))
    return keys


__all__ = [
    "PRIVATE_FILE",
    "PUBLIC_FILE",
    "DeviceKey",
    "DevicePublicKey",
    "device_key_id",
    "generate_device_key",
    "load_device_key_pem",
    "load_device_public",
    "private_pem",
    "public_pem",
    "raw_public",
    "read_device_key",
    "read_public_keys",
]
