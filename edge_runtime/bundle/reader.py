"""Safe bundle reading and verification. Writes nothing.

A bundle is an uncompressed tar holding exactly ``manifest.json``, ``manifest.sig`` and
the artifacts the manifest names. Layout, links, paths and sizes are checked from the tar
headers before any member is read; the manifest signature is checked before any artifact
byte is hashed; every chunk hash is checked while streaming.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO

from edge_runtime.bundle.manifest import (
    MANIFEST_FILE,
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_BYTES,
    MAX_VARIANTS,
    SIGNATURE_FILE,
    Artifact,
    Manifest,
    parse_manifest,
)
from edge_runtime.exceptions import BundleError, CanonicalJSONError, SignatureError
from edge_runtime.trust.canonical import parse_json_object
from edge_runtime.trust.root import TrustRoot, parse_signatures, verify_signed

# tarfile is imported by open_bundle: a daemon that serves an installed store never opens a
# bundle file (docs/serving.md, memory).
if TYPE_CHECKING:
    import tarfile

DEFAULT_MAX_BUNDLE_BYTES = 1024 * 1024 * 1024
# manifest.json, manifest.sig, profile.json, and a model file and a golden.npz per variant.
MAX_MEMBERS = 3 + 2 * (1 + MAX_VARIANTS)
# pax and GNU long-name headers are read whole by tarfile: cap them before it sees them.
MAX_EXTENDED_HEADER_BYTES = 64 * 1024
_EXTENDED_HEADERS = {b"x": "pax", b"g": "pax global", b"L": "GNU long name", b"K": "GNU long link name"}


@dataclass(frozen=True)
class BundleLimits:
    """Caps enforced while reading a bundle (and, by the packer, before writing one)."""

    max_bundle_bytes: int = DEFAULT_MAX_BUNDLE_BYTES


def limit_violation(
    manifest_bytes: int, signature_bytes: int, artifact_bytes: dict[str, int], limits: BundleLimits
) -> str | None:
    """Why a bundle of these sizes would be refused by a device, or None. One definition for both sides:
    :func:`open_bundle` applies it on install, :func:`~edge_runtime.bundle.writer.write_bundle` before writing."""
    if manifest_bytes > MAX_MANIFEST_BYTES:
        return f"{MANIFEST_FILE} is {manifest_bytes} bytes, the limit is {MAX_MANIFEST_BYTES}"
    if signature_bytes > MAX_SIGNATURE_BYTES:
        return f"{SIGNATURE_FILE} is {signature_bytes} bytes, the limit is {MAX_SIGNATURE_BYTES}"
    if len(artifact_bytes) + 2 > MAX_MEMBERS:
        return f"bundle has more than {MAX_MEMBERS} members"
    total = sum(artifact_bytes.values())
    if total > limits.max_bundle_bytes:
        return f"bundle artifacts total {total} bytes, the limit is {limits.max_bundle_bytes}"
    return None


def parse_signature_file(data: bytes) -> list[tuple[str, bytes]]:
    """Parse ``manifest.sig``: ``{"signatures": [{"keyid", "sig"}]}``."""
    try:
        obj = parse_json_object(data, SIGNATURE_FILE)
    except CanonicalJSONError as exc:
        raise SignatureError(str(exc)) from exc
    if set(obj) != {"signatures"}:
        raise SignatureError(f"{SIGNATURE_FILE}: expected exactly the field 'signatures', found {sorted(obj)}")
    return parse_signatures(obj["signatures"], SIGNATURE_FILE)


def verify_manifest_signature(root: TrustRoot, manifest_bytes: bytes, signature_bytes: bytes) -> None:
    """Raise SignatureError unless a threshold of ``models`` keys signed the manifest."""
    verify_signed(root, "models", manifest_bytes, parse_signature_file(signature_bytes), "manifest")


def _check_member(member: tarfile.TarInfo) -> None:
    name = member.name
    if name.startswith("/"):
        raise BundleError(f"bundle member {name!r} has an absolute path")
    if ".." in name.split("/"):
        raise BundleError(f"bundle member {name!r} escapes the bundle with '..'")
    if member.issym() or member.islnk():
        raise BundleError(f"bundle member {name!r} is a link (to {member.linkname!r})")
    if not member.isreg() or member.issparse():
        raise BundleError(f"bundle member {name!r} is not a regular file")
    if "/" in name:
        raise BundleError(f"bundle member {name!r} is in a subdirectory; bundles are flat")


def _header_size(field: bytes) -> int | None:
    if field[:1] and field[0] & 0x80:  # GNU base-256
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" ")
    try:
        return int(text or b"0", 8)
    except ValueError:
        return None  # not a tar header: tarfile says so in its own words


def check_tar_headers(fh: BinaryIO) -> None:
    """Walk the raw 512-byte tar headers before :mod:`tarfile` parses them: an extended header
    (pax, GNU long name) over :data:`MAX_EXTENDED_HEADER_BYTES`, a GNU sparse member or more
    headers than a bundle can have is refused without reading the data behind it."""
    offset = 0
    for _ in range(2 * MAX_MEMBERS + 2):  # each member may carry one extended header
        fh.seek(offset)
        block = fh.read(512)
        if len(block) < 512 or block == bytes(512):
            return  # the end (tarfile reports a truncated archive itself)
        size = _header_size(block[124:136])
        if size is None:
            return
        kind = block[156:157]
        if kind in _EXTENDED_HEADERS and size > MAX_EXTENDED_HEADER_BYTES:
            raise BundleError(
                f"bundle has a {_EXTENDED_HEADERS[kind]} header of {size} bytes at byte {offset}, "
                f"the limit is {MAX_EXTENDED_HEADER_BYTES}"
            )
        if kind == b"S":
            raise BundleError(f"bundle has a GNU sparse member at byte {offset}; bundles hold regular files only")
        offset += 512 + (size + 511) // 512 * 512
    raise BundleError(f"bundle has more than {2 * MAX_MEMBERS + 2} tar headers")


class ArtifactHasher:
    """Checks an artifact's length, chunk hashes and whole-file hash as bytes stream past."""

    def __init__(self, artifact: Artifact) -> None:
        self.artifact = artifact
        self._whole = hashlib.sha256()
        self._index = 0
        self._seen = 0

    def feed_chunk(self, data: bytes) -> None:
        """Feed the next whole chunk (the last may be short)."""
        art = self.artifact
        if self._index >= art.chunk_count:
            raise BundleError(f"{art.file}: more data than the {art.length} bytes the manifest states")
        want_len = art.chunk_length(self._index)
        if len(data) != want_len:
            raise BundleError(f"{art.file}: chunk {self._index} is {len(data)} bytes, expected {want_len}")
        if hashlib.sha256(data).hexdigest() != art.chunk_sha256[self._index]:
            raise BundleError(f"{art.file}: chunk {self._index} does not match its sha256 in the manifest")
        self._whole.update(data)
        self._index += 1
        self._seen += len(data)

    def finish(self) -> None:
        """Raise unless every byte arrived and the whole-file hash matches."""
        art = self.artifact
        if self._seen != art.length:
            raise BundleError(f"{art.file}: {self._seen} bytes, manifest states {art.length}")
        if self._whole.hexdigest() != art.sha256:
            raise BundleError(f"{art.file}: sha256 does not match the manifest")


def stream_verify(artifact: Artifact, src: IO[bytes], dst: BinaryIO | None = None) -> None:
    """Read ``artifact`` from ``src`` chunk by chunk, verifying; optionally copy to ``dst``."""
    hasher = ArtifactHasher(artifact)
    for index in range(artifact.chunk_count):
        data = src.read(artifact.chunk_length(index))
        hasher.feed_chunk(data)
        if dst is not None:
            dst.write(data)
    if src.read(1):
        raise BundleError(f"{artifact.file}: longer than the {artifact.length} bytes the manifest states")
    hasher.finish()


class Bundle:
    """An opened bundle whose layout, manifest and signature have been checked.

    Use :func:`open_bundle`. Artifacts are verified by :meth:`verify_artifacts` (done by
    ``open_bundle``) and again while copying with :meth:`copy_artifact`, so a file that
    changes between the two reads is still caught.
    """

    def __init__(self, path: Path, tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo]) -> None:
        self.path = path
        self._tar = tar
        self._members = members
        self.manifest_bytes = self._read_small(MANIFEST_FILE, MAX_MANIFEST_BYTES)
        self.signature_bytes = self._read_small(SIGNATURE_FILE, MAX_SIGNATURE_BYTES)
        self.manifest: Manifest = parse_manifest(self.manifest_bytes)

    def _read_small(self, name: str, cap: int) -> bytes:
        member = self._members.get(name)
        if member is None:
            raise BundleError(f"bundle is missing {name}")
        if member.size > cap:
            raise BundleError(f"{name} is {member.size} bytes, the limit is {cap}")
        fh = self._tar.extractfile(member)
        assert fh is not None  # regular files always have a file object
        return fh.read()

    def check_layout(self, limits: BundleLimits) -> None:
        """Members must be exactly the manifest, its signature and the named artifacts."""
        expected = {MANIFEST_FILE, SIGNATURE_FILE, *self.manifest.artifacts}
        present = set(self._members)
        if present - expected:
            raise BundleError(f"bundle has unexpected members {sorted(present - expected)}")
        if expected - present:
            raise BundleError(f"bundle is missing members {sorted(expected - present)}")
        for name, art in self.manifest.artifacts.items():
            size = self._members[name].size
            if size != art.length:
                raise BundleError(f"{name} is {size} bytes in the bundle, the manifest states {art.length}")
        sizes = {name: art.length for name, art in self.manifest.artifacts.items()}
        problem = limit_violation(len(self.manifest_bytes), len(self.signature_bytes), sizes, limits)
        if problem:
            raise BundleError(problem)

    def copy_artifact(self, name: str, dst: BinaryIO | None) -> None:
        """Stream artifact ``name`` into ``dst`` (or nowhere), verifying every chunk."""
        fh = self._tar.extractfile(self._members[name])
        assert fh is not None
        stream_verify(self.manifest.artifacts[name], fh, dst)

    def read_artifact(self, name: str) -> bytes:
        """The verified bytes of artifact ``name``."""
        buf = io.BytesIO()
        self.copy_artifact(name, buf)
        return buf.getvalue()

    def verify_artifacts(self) -> None:
        """Hash every artifact against the manifest."""
        for name in sorted(self.manifest.artifacts):
            self.copy_artifact(name, None)

    def close(self) -> None:
        """Close the underlying file."""
        self._tar.close()

    def __enter__(self) -> Bundle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_bundle(path: Path, root: TrustRoot | None, limits: BundleLimits | None = None) -> Bundle:
    """Open and fully verify a bundle; ``root=None`` skips the signature (inspect only)."""
    import tarfile

    limits = limits or BundleLimits()
    path = Path(path)
    try:
        file_size = path.stat().st_size
    except OSError as exc:
        raise BundleError(f"cannot read bundle {path}: {exc.strerror}") from exc
    if file_size > limits.max_bundle_bytes + 1024 * 1024:
        raise BundleError(f"bundle file is {file_size} bytes, the limit is {limits.max_bundle_bytes}")
    try:
        with open(path, "rb") as raw:
            check_tar_headers(raw)
        tar = tarfile.open(path, mode="r:")
    except (tarfile.TarError, OSError, ValueError) as exc:  # ValueError: e.g. a bad GNU sparse map
        raise BundleError(f"not an uncompressed tar file: {exc}") from exc
    try:
        members: dict[str, tarfile.TarInfo] = {}
        while True:
            member = tar.next()
            if member is None:
                break
            _check_member(member)
            if member.name in members:
                raise BundleError(f"bundle member {member.name!r} appears twice")
            members[member.name] = member
            if len(members) > MAX_MEMBERS:
                raise BundleError(f"bundle has more than {MAX_MEMBERS} members")
        bundle = Bundle(path, tar, members)
        bundle.check_layout(limits)
        if root is not None:
            verify_manifest_signature(root, bundle.manifest_bytes, bundle.signature_bytes)
        bundle.verify_artifacts()
    except (tarfile.TarError, EOFError, ValueError) as exc:  # tarfile raises ValueError for bad sparse maps
        tar.close()
        raise BundleError(f"corrupt tar: {str(exc)[:200]}") from exc
    except BaseException:
        tar.close()
        raise
    return bundle
