"""Bundle creation: artifact hashing, manifest assembly, signing, tar writing."""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_runtime.atomic import atomic_writer
from edge_runtime.bundle.manifest import (
    DEFAULT_CHUNK_SIZE,
    MANIFEST_FILE,
    SIGNATURE_FILE,
    Artifact,
    Manifest,
    manifest_from_json,
)
from edge_runtime.bundle.reader import BundleLimits, limit_violation
from edge_runtime.exceptions import BundleError
from edge_runtime.trust.canonical import canonical_json

# Signing needs cryptography (about 6 MB of RSS): imported by the functions that sign, so a device
# that only hashes artifacts (updates/delta.py) never loads it (docs/serving.md, memory).
if TYPE_CHECKING:
    import tarfile

    from edge_runtime.trust.keys import PrivateKey


def hash_artifact(file: str, data: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Artifact:
    """The manifest entry of an artifact's bytes."""
    chunks = tuple(
        hashlib.sha256(data[i : i + chunk_size]).hexdigest() for i in range(0, len(data), chunk_size)
    )
    return Artifact(file, len(data), hashlib.sha256(data).hexdigest(), chunk_size, chunks)


def utc_now() -> str:
    """The current time in ISO 8601, UTC, seconds."""
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def signature_file(manifest_bytes: bytes, keys: Iterable[PrivateKey]) -> bytes:
    """The ``manifest.sig`` bytes for ``manifest_bytes`` signed by ``keys``."""
    from edge_runtime.trust.keys import sign

    return canonical_json({"signatures": [sign(k, manifest_bytes) for k in keys]})


def build_manifest(fields: dict[str, Any]) -> Manifest:
    """Validate manifest fields (``created`` defaults to now)."""
    fields = dict(fields)
    fields.setdefault("created", utc_now())
    return manifest_from_json(fields)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    import tarfile

    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def write_bundle(
    out: Path, manifest: Manifest, artifacts: dict[str, bytes], keys: Iterable[PrivateKey],
    limits: BundleLimits | None = None,
) -> bytes:
    """Sign ``manifest`` and write the bundle atomically to ``out``; returns the manifest bytes.

    A bundle a device would refuse (the limits ``models install`` applies) is refused here,
    before anything is written.
    """
    manifest_bytes = manifest.canonical()
    sig = signature_file(manifest_bytes, keys)
    problem = limit_violation(len(manifest_bytes), len(sig), {k: len(v) for k, v in artifacts.items()},
                              limits or BundleLimits())
    if problem:
        raise BundleError(f"a device would refuse this bundle: {problem}")
    import tarfile  # here: a device that only hashes artifacts (updates/delta.py) writes no bundle

    with atomic_writer(Path(out)) as fh:
        with tarfile.open(fileobj=fh, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            _add(tar, MANIFEST_FILE, manifest_bytes)
            _add(tar, SIGNATURE_FILE, sig)
            for name in sorted(artifacts):
                _add(tar, name, artifacts[name])
    return manifest_bytes
