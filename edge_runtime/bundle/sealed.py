"""Encrypted bundles: making one from a plaintext bundle, and opening one in memory.

The envelope format is :mod:`edge_runtime.bundle.crypto` (pure). This module does the file
work around it: :func:`encrypt_bundle` reads a verified plaintext bundle and writes its
encrypted, re-signed twin; :func:`open_sealed` decrypts the artifacts of an installed or
factory release into ``bytes`` for the backends. It never writes a decrypted byte anywhere:
the store keeps ciphertext, and LiteRT and onnxruntime load the model from a buffer.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from edge_runtime.bundle.crypto import (
    DEFAULT_CRYPT_CHUNK_BYTES,
    MAX_RECIPIENTS,
    Encryption,
    new_content_key,
    open_file,
    seal_file,
    unwrap_key,
    wrap_key,
)
from edge_runtime.bundle.manifest import Manifest
from edge_runtime.bundle.reader import BundleLimits, open_bundle
from edge_runtime.exceptions import DecryptionError, UsageError
from edge_runtime.trust.device_keys import DeviceKey, DevicePublicKey, device_key_id
from edge_runtime.trust.root import TrustRoot

if TYPE_CHECKING:
    from edge_runtime.trust.keys import PrivateKey

Opener = Callable[[str], IO[bytes]]


@dataclass(frozen=True)
class Opened:
    """The decrypted artifacts of one release, in memory only."""

    model: bytes
    golden: bytes | None
    profile: bytes | None


def release_name(manifest: Manifest) -> str:
    """How errors name a release."""
    return f"{manifest.name} v{manifest.version}"


def _encryption(manifest: Manifest) -> Encryption:
    if manifest.encryption is None:
        raise ValueError(f"{release_name(manifest)} is not encrypted")
    return manifest.encryption


def content_key(manifest: Manifest, key: DeviceKey | None) -> bytes:
    """The release's content key, unwrapped with this device's key.

    DecryptionError, naming this device's key id and the recipients', when the device has no
    key, is not a recipient, or its entry does not open (what install checks first).
    """
    enc = _encryption(manifest)
    if key is None:
        raise DecryptionError(
            f"{release_name(manifest)} is encrypted for {len(enc.recipients)} device(s) and this device has no "
            "key: set [trust] device_key (edge-runtime keys device)"
        )
    return unwrap_key(enc, key, release_name(manifest))


def open_sealed(manifest: Manifest, key: DeviceKey | None, opener: Opener) -> Opened:
    """Decrypt the model, golden data and profile of ``manifest`` from the ciphertext files
    ``opener`` opens. The caller has verified the signature and ciphertext hashes already;
    every chunk authenticates again here, and each plaintext must match its sha256."""
    enc = _encryption(manifest)
    ckey = content_key(manifest, key)

    def read(name: str | None) -> bytes | None:
        if name is None or name not in enc.files:
            return None
        sealed = enc.files[name]
        buf = io.BytesIO()
        with opener(sealed.file) as src:
            open_file(ckey, sealed, enc.chunk_size, src, buf)
        return buf.getvalue()

    model = read(manifest.model_file)
    assert model is not None  # the manifest validation requires the model file
    return Opened(model, read(manifest.golden.file if manifest.golden else None), read(manifest.profile_file))


def encrypt_bundle(
    src: Path,
    recipients: Sequence[DevicePublicKey],
    keys: Iterable[PrivateKey],
    out: Path,
    *,
    root: TrustRoot | None = None,
    limits: BundleLimits | None = None,
    crypt_chunk_bytes: int = DEFAULT_CRYPT_CHUNK_BYTES,
) -> Manifest:
    """Write ``out``: the bundle ``src`` with every artifact encrypted to ``recipients``, signed by ``keys``.

    The manifest keeps its name, version, interface and golden/profile references; its
    artifacts become the ciphertexts (hashed in the same transfer chunks as before) and it
    gains the ``encryption`` field. ``src`` is verified first (against ``root`` when given).
    """
    # the writer (and cryptography, to sign) only where a bundle is made, never on a serving device
    from edge_runtime.bundle.writer import build_manifest, hash_artifact, write_bundle

    keys = list(keys)
    if not keys:
        raise UsageError("at least one --sign-key is needed: encrypting changes the manifest, which must be signed again")
    ids = [device_key_id(r) for r in recipients]
    if not ids:
        raise UsageError("at least one recipient (--to) is needed")
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise UsageError(f"the recipient with key id {dup} is given twice")
    if len(ids) > MAX_RECIPIENTS:
        raise UsageError(f"{len(ids)} recipients; a release is encrypted to at most {MAX_RECIPIENTS}")
    with open_bundle(Path(src), root, limits) as bundle:
        plain = bundle.manifest
        if plain.encryption is not None:
            raise UsageError(f"{src} is already encrypted; encrypt the plaintext bundle")
        data = {name: bundle.read_artifact(name) for name in sorted(plain.artifacts)}
    ckey = new_content_key()
    fields = plain.to_json()
    artifacts: dict[str, bytes] = {}
    sealed = {}
    for name, blob in data.items():
        entry, ciphertext = seal_file(ckey, name, blob, crypt_chunk_bytes)
        sealed[name] = entry
        artifacts[entry.file] = ciphertext
    fields["artifacts"] = {
        f: hash_artifact(f, ct, plain.artifacts[sealed_name].chunk_size).to_json()
        for sealed_name, f, ct in ((n, s.file, artifacts[s.file]) for n, s in sealed.items())
    }
    fields["encryption"] = Encryption(
        crypt_chunk_bytes, tuple(wrap_key(ckey, r) for r in recipients), sealed
    ).to_json()
    manifest = build_manifest(fields)
    write_bundle(Path(out), manifest, artifacts, keys, limits)
    return manifest


__all__ = ["DecryptionError", "Opened", "Opener", "content_key", "encrypt_bundle", "open_sealed", "release_name"]
