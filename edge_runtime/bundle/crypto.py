"""The envelope of an encrypted bundle: pure code, bytes in, bytes or an error out.

One random 32-byte content key per release encrypts every artifact with AES-256-GCM in
chunks of ``chunk_size`` plaintext bytes (64 KiB by default), so a device decrypts with one
chunk of working memory beyond the plaintext it is building. Chunk ``i`` of artifact ``name``
uses the nonce ``prefix || i`` (an 8-byte random prefix per artifact, a 4-byte big-endian
counter) and the associated data ``"edge-runtime chunk v1" NUL name NUL i final``: a chunk
moved to another artifact or position, dropped from the end or repeated does not
authenticate. The ciphertext of ``name`` travels as the artifact ``name + ".enc"``.

The content key is wrapped once per recipient (a device's X25519 key): an ephemeral X25519
key, HKDF-SHA256 over the shared secret (info binds both public keys) giving a key and a
nonce, AES-256-GCM over the content key. A wrapped key is exactly 80 bytes: the ephemeral
public key (32) and the sealed content key (32 + 16 tag). Recipients are listed by key id.

The manifest's ``encryption`` field (:func:`parse_encryption`) holds all of this, plus each
artifact's plaintext length and sha256, checked after decryption. The manifest is signed, so
the recipient list and the ciphertext hashes are covered by the release signature and checked
before any byte is decrypted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, BinaryIO

from edge_runtime.exceptions import DecryptionError, ManifestError
from edge_runtime.trust.device_keys import KEY_ID_HEX, device_key_id, raw_public

# The AEAD and key agreement come from ``cryptography``, imported by the functions that encrypt
# or decrypt: parsing a manifest (every daemon) never loads it (docs/serving.md, memory).
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

SCHEME = "x25519-hkdf-sha256-aes256gcm-v1"
ENC_SUFFIX = ".enc"
DEFAULT_CRYPT_CHUNK_BYTES = 64 * 1024
MIN_CRYPT_CHUNK_BYTES = 1024
MAX_CRYPT_CHUNK_BYTES = 4 * 1024 * 1024
TAG_BYTES = 16
KEY_BYTES = 32
PREFIX_BYTES = 8
WRAPPED_KEY_BYTES = 32 + KEY_BYTES + TAG_BYTES  # = 80
# The manifest cap (4 MiB) allows about 28,000 entries; this is the figure the format promises.
MAX_RECIPIENTS = 25_000
MAX_COUNTER = 2**32 - 1
_WRAP_INFO = b"edge-runtime key wrap v1"
_CHUNK_AAD = b"edge-runtime chunk v1\0"
KEYID_RE = re.compile(rf"^[0-9a-f]{{{KEY_ID_HEX}}}\Z")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")
_PREFIX_RE = re.compile(rf"^[0-9a-f]{{{2 * PREFIX_BYTES}}}\Z")


@dataclass(frozen=True)
class Recipient:
    """One device that may read the release: its key id and the content key wrapped for it."""

    keyid: str
    wrapped: bytes

    def to_json(self) -> dict[str, str]:
        """The manifest form."""
        return {"keyid": self.keyid, "wrapped": base64.b64encode(self.wrapped).decode("ascii")}


@dataclass(frozen=True)
class SealedFile:
    """An encrypted artifact: its plaintext name, length and sha256, and its nonce prefix."""

    name: str
    length: int
    sha256: str
    prefix: bytes

    @property
    def file(self) -> str:
        """The ciphertext artifact in the bundle and the store."""
        return self.name + ENC_SUFFIX

    def to_json(self) -> dict[str, Any]:
        """The manifest form."""
        return {"length": self.length, "sha256": self.sha256, "nonce": self.prefix.hex()}


@dataclass(frozen=True)
class Encryption:
    """The validated ``encryption`` field of a manifest."""

    chunk_size: int
    recipients: tuple[Recipient, ...]
    files: dict[str, SealedFile]

    def keyids(self) -> list[str]:
        """The recipients' key ids, in manifest order."""
        return [r.keyid for r in self.recipients]

    def to_json(self) -> dict[str, Any]:
        """The manifest form."""
        return {
            "scheme": SCHEME,
            "chunk_size": self.chunk_size,
            "recipients": [r.to_json() for r in self.recipients],
            "files": {n: f.to_json() for n, f in self.files.items()},
        }


def ciphertext_length(length: int, chunk_size: int) -> int:
    """How long the ciphertext of ``length`` plaintext bytes is: one tag per chunk."""
    return length + TAG_BYTES * -(-length // chunk_size)


def _field(obj: Mapping[str, Any], key: str, kind: type, what: str) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ManifestError(f"{what}: field '{key}' must be a {kind.__name__}")
    return value


def parse_encryption(obj: Any, artifact_lengths: Mapping[str, int], plaintext_names: frozenset[str]) -> Encryption:
    """Validate a manifest's ``encryption`` field against its (ciphertext) artifacts.

    Every artifact must be the ciphertext of one listed file, of exactly the length its
    plaintext length makes; recipients are unique key ids, each with an 80-byte wrapped key.
    """
    what = "manifest encryption"
    if not isinstance(obj, dict):
        raise ManifestError(f"{what}: expected an object")
    if set(obj) != {"scheme", "chunk_size", "recipients", "files"}:
        raise ManifestError(f"{what}: expected the fields chunk_size, files, recipients, scheme; found {sorted(obj)}")
    if obj["scheme"] != SCHEME:
        found = obj["scheme"][:64] if isinstance(obj["scheme"], str) else type(obj["scheme"]).__name__
        raise ManifestError(f"{what}: scheme {found!r} is not {SCHEME!r}")
    chunk_size = _field(obj, "chunk_size", int, what)
    if not MIN_CRYPT_CHUNK_BYTES <= chunk_size <= MAX_CRYPT_CHUNK_BYTES:
        raise ManifestError(f"{what}: chunk_size must be in [{MIN_CRYPT_CHUNK_BYTES}, {MAX_CRYPT_CHUNK_BYTES}], found {chunk_size}")
    raw_recipients = _field(obj, "recipients", list, what)
    if not 1 <= len(raw_recipients) <= MAX_RECIPIENTS:
        raise ManifestError(f"{what}: needs 1 to {MAX_RECIPIENTS} recipients, found {len(raw_recipients)}")
    recipients: list[Recipient] = []
    seen: set[str] = set()
    for i, r in enumerate(raw_recipients):
        where = f"{what} recipient {i}"
        if not isinstance(r, dict) or set(r) != {"keyid", "wrapped"}:
            raise ManifestError(f"{where}: expected {{keyid, wrapped}}")
        keyid, wrapped_text = r["keyid"], r["wrapped"]
        if not isinstance(keyid, str) or not KEYID_RE.match(keyid):
            raise ManifestError(f"{where}: keyid must be {KEY_ID_HEX} lower-case hex digits")
        if keyid in seen:
            raise ManifestError(f"{where}: key id {keyid} is listed twice")
        seen.add(keyid)
        if not isinstance(wrapped_text, str) or len(wrapped_text) > 4 * WRAPPED_KEY_BYTES:
            raise ManifestError(f"{where} ({keyid}): wrapped must be base64 of {WRAPPED_KEY_BYTES} bytes")
        try:
            wrapped = base64.b64decode(wrapped_text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ManifestError(f"{where} ({keyid}): wrapped is not base64") from exc
        if len(wrapped) != WRAPPED_KEY_BYTES:
            raise ManifestError(f"{where} ({keyid}): wrapped key is {len(wrapped)} bytes, expected {WRAPPED_KEY_BYTES}")
        recipients.append(Recipient(keyid, wrapped))
    raw_files = _field(obj, "files", dict, what)
    files: dict[str, SealedFile] = {}
    for name, f in raw_files.items():
        where = f"{what} file {str(name)[:64]!r}"
        if name not in plaintext_names:
            raise ManifestError(f"{where}: not one of {sorted(plaintext_names)}")
        if not isinstance(f, dict) or set(f) != {"length", "sha256", "nonce"}:
            raise ManifestError(f"{where}: expected {{length, nonce, sha256}}")
        length = _field(f, "length", int, where)
        sha = _field(f, "sha256", str, where)
        prefix = _field(f, "nonce", str, where)
        if length < 1 or not _SHA256_RE.match(sha) or not _PREFIX_RE.match(prefix):
            raise ManifestError(f"{where}: length >= 1, sha256 64 hex digits and nonce {2 * PREFIX_BYTES} hex digits")
        if -(-length // chunk_size) > MAX_COUNTER:
            raise ManifestError(f"{where}: {length} bytes need more than {MAX_COUNTER} chunks")
        files[name] = SealedFile(name, length, sha, bytes.fromhex(prefix))
    expected = {f.file: ciphertext_length(f.length, chunk_size) for f in files.values()}
    if set(artifact_lengths) != set(expected):
        raise ManifestError(f"{what}: artifacts {sorted(artifact_lengths)} must be exactly {sorted(expected)}")
    for file, want in expected.items():
        if artifact_lengths[file] != want:
            raise ManifestError(f"{what}: {file} is {artifact_lengths[file]} bytes, its plaintext makes {want}")
    if len({f.prefix for f in files.values()}) != len(files):
        raise ManifestError(f"{what}: two files share a nonce prefix")
    return Encryption(chunk_size, tuple(recipients), files)


# -- the content key -----------------------------------------------------------------------


def _kek(shared: bytes, ephemeral: bytes, recipient: bytes) -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    okm = HKDF(hashes.SHA256(), KEY_BYTES + 12, salt=None, info=_WRAP_INFO + ephemeral + recipient).derive(shared)
    return okm[:KEY_BYTES], okm[KEY_BYTES:]


def new_content_key() -> bytes:
    """A fresh random content key."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    return AESGCM.generate_key(bit_length=256)


def wrap_key(content_key: bytes, recipient: X25519PublicKey) -> Recipient:
    """The content key wrapped for ``recipient`` (80 bytes), listed under its key id."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    ephemeral = X25519PrivateKey.generate()
    eph_raw = raw_public(ephemeral)
    kek, nonce = _kek(ephemeral.exchange(recipient), eph_raw, raw_public(recipient))
    return Recipient(device_key_id(recipient), eph_raw + AESGCM(kek).encrypt(nonce, content_key, _WRAP_INFO))


def find_recipient(encryption: Encryption, keyid: str, release: str) -> Recipient:
    """This device's entry, or DecryptionError naming its key id and the recipients'."""
    for r in encryption.recipients:
        if r.keyid == keyid:
            return r
    ids = encryption.keyids()
    listed = ", ".join(ids[:8]) + (f" and {len(ids) - 8} more" if len(ids) > 8 else "")
    raise DecryptionError(f"{release} is encrypted for other devices: this device's key id {keyid} is not among its "
                          f"{len(ids)} recipients ({listed})")


def unwrap_key(encryption: Encryption, key: X25519PrivateKey, release: str) -> bytes:
    """The content key from this device's recipient entry; DecryptionError when there is none
    or it does not authenticate (wrapped for another key, or altered)."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    keyid = device_key_id(key)
    entry = find_recipient(encryption, keyid, release)
    eph_raw, sealed = entry.wrapped[:32], entry.wrapped[32:]
    try:
        shared = key.exchange(X25519PublicKey.from_public_bytes(eph_raw))
        kek, nonce = _kek(shared, eph_raw, raw_public(key))
        return AESGCM(kek).decrypt(nonce, sealed, _WRAP_INFO)
    except (InvalidTag, ValueError) as exc:  # ValueError: a low-order ephemeral point
        raise DecryptionError(f"{release}: the wrapped key for this device's key id {keyid} does not open with "
                              "its private key (wrong recipient entry or altered manifest)") from exc


# -- artifacts -----------------------------------------------------------------------------


def _aad(name: str, index: int, final: bool) -> bytes:
    return _CHUNK_AAD + name.encode("utf-8") + b"\0" + index.to_bytes(4, "big") + (b"\1" if final else b"\0")


def seal_file(content_key: bytes, name: str, data: bytes, chunk_size: int = DEFAULT_CRYPT_CHUNK_BYTES) -> tuple[SealedFile, bytes]:
    """Encrypt one artifact: its manifest entry and its ciphertext."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    if not data:
        raise ValueError(f"{name}: an artifact has at least one byte")
    prefix = os.urandom(PREFIX_BYTES)
    aead = AESGCM(content_key)
    count = -(-len(data) // chunk_size)
    out = bytearray()
    for i in range(count):
        out += aead.encrypt(prefix + i.to_bytes(4, "big"), data[i * chunk_size : (i + 1) * chunk_size],
                            _aad(name, i, i == count - 1))
    return SealedFile(name, len(data), hashlib.sha256(data).hexdigest(), prefix), bytes(out)


def open_file(content_key: bytes, sealed: SealedFile, chunk_size: int, src: IO[bytes], dst: BinaryIO) -> None:
    """Decrypt ``sealed`` from ``src`` into ``dst`` chunk by chunk, then check length and sha256.

    ``dst`` is memory (an ``io.BytesIO``) on a device: nothing decrypted is ever written to a file.
    """
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    aead = AESGCM(content_key)
    count = -(-sealed.length // chunk_size)
    whole = hashlib.sha256()
    seen = 0
    for i in range(count):
        want = min(chunk_size, sealed.length - i * chunk_size) + TAG_BYTES
        block = src.read(want)
        if len(block) != want:
            raise DecryptionError(f"{sealed.file}: chunk {i} is {len(block)} bytes, expected {want}")
        try:
            plain = aead.decrypt(sealed.prefix + i.to_bytes(4, "big"), block, _aad(sealed.name, i, i == count - 1))
        except InvalidTag as exc:
            raise DecryptionError(f"{sealed.file}: chunk {i} does not authenticate under the release's content key") from exc
        whole.update(plain)
        seen += len(plain)
        dst.write(plain)
    if src.read(1):
        raise DecryptionError(f"{sealed.file}: longer than the ciphertext of {sealed.length} bytes")
    if seen != sealed.length or whole.hexdigest() != sealed.sha256:
        raise DecryptionError(f"{sealed.file}: the decrypted {sealed.name} does not match its sha256 in the manifest")


__all__ = [
    "DEFAULT_CRYPT_CHUNK_BYTES",
    "ENC_SUFFIX",
    "MAX_RECIPIENTS",
    "SCHEME",
    "WRAPPED_KEY_BYTES",
    "Encryption",
    "Recipient",
    "SealedFile",
    "ciphertext_length",
    "find_recipient",
    "new_content_key",
    "open_file",
    "parse_encryption",
    "seal_file",
    "unwrap_key",
    "wrap_key",
]
