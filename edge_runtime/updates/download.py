"""Chunk assembly with resume: a staging file written at offsets and a persisted have-set.

One directory per release under the staging root::

    <name>-<version>/manifest.msg   the manifest message exactly as received (re-verified on resume)
    <name>-<version>/<file>.part    the artifact, each chunk written at index * chunk_size
    <name>-<version>/have.bin       16-byte header (bytes received, bytes rejected; little-endian
                                    u64) then one byte per chunk: 1 = written and hash-checked
    <name>-<version>/filters.json   the chunk subscriptions in force (so a restarted process
                                    with a persistent session knows what the broker still sends)
    <name>-<version>/delta.msg      only for a delta download: the signed delta index as received;
                                    the ``.part`` files then hold the deltas, and
                                    :meth:`Download.rebuild` writes the artifacts to ``<file>.full``

A chunk is written, then its have byte, with ``pwrite`` and no fsync: a killed process keeps
both in the page cache, and after a power cut :meth:`Download.open` re-hashes every chunk the
have-set claims, so the have-set is only ever a hint and a torn write costs one re-fetch.
Nothing here is trusted until :meth:`Download.verify_complete` has checked whole-file hashes.

A staging directory is removed by renaming it to ``.trash-<name>-<version>-<random>`` first,
then deleting that: a process killed while deleting never leaves a release directory
without its ``manifest.msg``. :func:`sweep_staging` (run when the updater starts) deletes
``.trash-*`` leftovers and release directories that have no ``manifest.msg``.

A write that fails (``ENOSPC``, ``EDQUOT``, ``EIO``, ...) makes :meth:`Download.offer`
raise that OSError once; the download then takes no more chunks and the
updater aborts it. :func:`space_problem` tells beforehand whether a download fits.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from edge_runtime.atomic import write_bytes_atomic
from edge_runtime.bundle.manifest import NAME_RE, Artifact
from edge_runtime.bundle.reader import Bundle, stream_verify
from edge_runtime.updates.delta import DeltaIndex, apply_delta
from edge_runtime.updates.protocol import Topics
from edge_runtime.updates.verify import Release, check_chunk

log = logging.getLogger("edge_runtime.updates")

MESSAGE_FILE = "manifest.msg"
DELTA_FILE = "delta.msg"
HAVE_FILE = "have.bin"
FILTERS_FILE = "filters.json"
HEADER = struct.Struct("<QQ")
TRASH_PREFIX = ".trash-"
SPACE_MARGIN_BYTES = 64 * 1024  # file system metadata, the have-set, manifest.msg, filters.json


@dataclass(frozen=True)
class Progress:
    """Counters of one download."""

    have_bytes: int
    total_bytes: int
    received_bytes: int  # every chunk byte that arrived, duplicates and rejected ones included
    rejected_bytes: int

    @property
    def percent(self) -> int:
        """Whole percent of the artifact bytes written and checked."""
        return 100 if self.total_bytes == 0 else int(100 * self.have_bytes // self.total_bytes)


def release_dir(staging_root: Path, name: str, version: int) -> Path:
    """The staging directory of one release."""
    return Path(staging_root) / f"{name}-{version}"


def remove_dir(directory: Path) -> None:
    """Delete a staging directory atomically: rename it to a ``.trash-*`` name, then delete that.

    A process killed part-way leaves a ``.trash-*`` directory (removed by
    :func:`sweep_staging`), never a release directory with only part of its files.
    """
    directory = Path(directory)
    if not directory.exists():
        return
    try:
        trash = Path(tempfile.mkdtemp(prefix=f"{TRASH_PREFIX}{directory.name}-", dir=directory.parent))
    except OSError:  # not even room for a directory entry: delete in place
        shutil.rmtree(directory, ignore_errors=True)
        return
    try:
        os.replace(directory, trash)  # over the empty directory mkdtemp made
    except OSError:
        with contextlib.suppress(OSError):
            os.rmdir(trash)
        shutil.rmtree(directory, ignore_errors=True)
        return
    shutil.rmtree(trash, ignore_errors=True)


def sweep_staging(staging_root: Path) -> list[Path]:
    """Delete ``.trash-*`` leftovers and release directories without ``manifest.msg``; returns them.

    Only names this module makes are touched (``.trash-*`` and ``<model name>-<version>``),
    so a staging directory shared with other files is safe.
    """
    root = Path(staging_root)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for d in sorted(root.iterdir()):
        name, _, version = d.name.rpartition("-")
        if d.name.startswith(TRASH_PREFIX):
            pass
        elif not (d.is_dir() and version.isascii() and version.isdigit() and NAME_RE.fullmatch(name)) or (d / MESSAGE_FILE).is_file():
            continue
        if d.is_dir() and not d.is_symlink():
            shutil.rmtree(d, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                d.unlink()
        removed.append(d)
        log.info("removed %s from the staging directory (left by an interrupted download)", d.name)
    return removed


def space_problem(staging_root: Path, need_bytes: int) -> str | None:
    """Why ``need_bytes`` more bytes (plus a margin) do not fit in the staging directory, or None."""
    probe = Path(staging_root)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError as exc:
        return f"cannot read the free space of {probe}: {exc}"
    wanted = max(0, need_bytes) + SPACE_MARGIN_BYTES
    if wanted <= free:
        return None
    return (
        f"[Errno {errno.ENOSPC}] {os.strerror(errno.ENOSPC)}: the download needs {wanted} bytes "
        f"({need_bytes} of artifacts and a {SPACE_MARGIN_BYTES}-byte margin), found {free} free in the staging directory"
    )


class StagedBundle(Bundle):
    """A completed download seen through the :class:`Bundle` interface the store installs from.

    It has no tar: the artifacts are the staging files, re-verified chunk by chunk while the
    store copies them.
    """

    def __init__(self, release: Release, parts: dict[str, Path]) -> None:  # Bundle.__init__ reads a tar: not called
        self.path = Path(next(iter(parts.values()))).parent
        self.manifest = release.manifest
        self.manifest_bytes = release.manifest_bytes
        self.signature_bytes = release.signature_bytes
        self._parts = parts

    def copy_artifact(self, name: str, dst: BinaryIO | None) -> None:
        """Stream a staged artifact into ``dst``, verifying every chunk and the whole-file hash."""
        with open(self._parts[name], "rb") as fh:
            stream_verify(self.manifest.artifacts[name], fh, dst)

    def close(self) -> None:
        """Nothing to close: files are opened per copy."""


class Download:
    """The transfer of one release's artifacts. Thread-safe: chunks arrive on the network thread."""

    def __init__(self, directory: Path, release: Release, delta: DeltaIndex | None = None) -> None:
        self.dir = Path(directory)
        self.release = release
        self.name = release.manifest.name
        self.version = release.manifest.version
        self.delta = delta  # set: the chunks are those of this delta, rebuilt by rebuild()
        self.base = delta.base if delta is not None else 0
        self.artifacts: dict[str, Artifact] = dict(delta.artifacts if delta is not None else release.manifest.artifacts)
        self._files = sorted(self.artifacts)
        self._offsets: dict[str, int] = {}
        offset = HEADER.size
        for f in self._files:
            self._offsets[f] = offset
            offset += self.artifacts[f].chunk_count
        self._have_size = offset
        self._lock = threading.Lock()
        self._have: dict[str, bytearray] = {}
        self._fds: dict[str, int] = {}
        self._have_fd = -1
        self._received = 0
        self._rejected = 0
        self.total_bytes = sum(a.length for a in self.artifacts.values())
        self._have_bytes = 0
        self.filters: list[str] = []
        self.write_error: str | None = None  # set when a write failed: no more chunks are taken

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, staging_root: Path, release: Release, message: bytes, delta: DeltaIndex | None = None) -> Download:
        """Resume the download of ``release`` (of its ``delta`` when given) if its directory
        matches, else start afresh."""
        directory = release_dir(staging_root, release.manifest.name, release.manifest.version)
        self = cls(directory, release, delta)
        try:
            same = (directory / MESSAGE_FILE).read_bytes() == message
            same = same and cls.staged_delta(directory) == (delta.message if delta is not None else None)
        except OSError:
            same = False
        if not same:
            remove_dir(directory)
            directory.mkdir(parents=True, exist_ok=True)
            if delta is not None:
                write_bytes_atomic(directory / DELTA_FILE, delta.message)
            write_bytes_atomic(directory / MESSAGE_FILE, message)
        self._open_files(resume=same)
        return self

    def _open_files(self, resume: bool) -> None:
        for f in self._files:
            art = self.artifacts[f]
            fd = os.open(self.dir / f"{f}.part", os.O_RDWR | os.O_CREAT, 0o600)
            if os.fstat(fd).st_size != art.length:
                os.ftruncate(fd, art.length)  # sparse; chunks fill it at their offsets
            self._fds[f] = fd
        self._have_fd = os.open(self.dir / HAVE_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        raw = os.pread(self._have_fd, self._have_size, 0) if resume else b""
        if len(raw) != self._have_size:
            raw = bytes(self._have_size)
            os.ftruncate(self._have_fd, 0)
            os.pwrite(self._have_fd, raw, 0)
        self._received, self._rejected = HEADER.unpack_from(raw, 0)
        for f in self._files:
            art = self.artifacts[f]
            start = self._offsets[f]
            flags = bytearray(raw[start : start + art.chunk_count])
            for i, flag in enumerate(flags):
                if flag and not self._chunk_on_disk(f, i):
                    flags[i] = 0  # the have-set is a hint: a claimed chunk must still hash right
                    os.pwrite(self._have_fd, b"\x00", start + i)
                elif flag:
                    self._have_bytes += art.chunk_length(i)
            self._have[f] = flags
        if resume:
            try:
                loaded = json.loads((self.dir / FILTERS_FILE).read_bytes())
                self.filters = [t for t in loaded if isinstance(t, str)] if isinstance(loaded, list) else []
            except (OSError, ValueError):
                self.filters = []

    def _chunk_on_disk(self, file: str, index: int) -> bool:
        art = self.artifacts[file]
        data = os.pread(self._fds[file], art.chunk_length(index), index * art.chunk_size)
        return hashlib.sha256(data).hexdigest() == art.chunk_sha256[index]

    @staticmethod
    def staged_delta(directory: Path) -> bytes | None:
        """The delta index message a staging directory was downloading, None for a full download."""
        try:
            return (Path(directory) / DELTA_FILE).read_bytes()
        except FileNotFoundError:
            return None

    @staticmethod
    def pending(staging_root: Path) -> list[tuple[str, int, bytes]]:
        """``(name, version, manifest message)`` of every staging directory (not yet verified)."""
        out: list[tuple[str, int, bytes]] = []
        root = Path(staging_root)
        if not root.is_dir():
            return out
        for d in sorted(root.iterdir()):
            name, _, version = d.name.rpartition("-")
            if not d.is_dir() or not (version.isascii() and version.isdigit() and len(version) <= 18):
                continue
            try:
                out.append((name, int(version), (d / MESSAGE_FILE).read_bytes()))
            except OSError:
                continue
        return out

    # -- receiving ---------------------------------------------------------------------

    def offer(self, file: str, index: int, data: bytes) -> bool:
        """Take one chunk: True when written, False for a duplicate or after a failed write.

        Raises ChunkError when the chunk is dropped, and OSError (once) when a staging write
        fails (``write_error`` keeps why); from then on every chunk is ignored.
        """
        with self._lock:
            if self._have_fd < 0 or self.write_error is not None:
                return False
            try:
                return self._offer(file, index, data)
            except OSError as exc:
                self.write_error = str(exc)
                raise

    def _offer(self, file: str, index: int, data: bytes) -> bool:
        self._received += len(data)
        try:
            check_chunk(self.artifacts, file, index, data)
        except Exception:
            self._rejected += len(data)
            self._write_header()
            raise
        if self._have[file][index]:
            self._write_header()
            return False
        art = self.artifacts[file]
        os.pwrite(self._fds[file], data, index * art.chunk_size)
        os.pwrite(self._have_fd, b"\x01", self._offsets[file] + index)
        self._have[file][index] = 1
        self._have_bytes += len(data)
        self._write_header()
        return True

    def _write_header(self) -> None:
        os.pwrite(self._have_fd, HEADER.pack(self._received, self._rejected), 0)

    def progress(self) -> Progress:
        """Current counters."""
        with self._lock:
            return Progress(self._have_bytes, self.total_bytes, self._received, self._rejected)

    @property
    def complete(self) -> bool:
        """Every chunk of every artifact written and hash-checked."""
        with self._lock:
            return self._have_bytes == self.total_bytes

    def missing(self) -> list[tuple[str, int]]:
        """``(file, index)`` of every chunk not yet written, in order."""
        with self._lock:
            return [(f, i) for f in self._files for i, flag in enumerate(self._have[f]) if not flag]

    def has(self, file: str, index: int) -> bool:
        """Whether chunk ``index`` of ``file`` is written."""
        with self._lock:
            flags = self._have.get(file)
            return flags is not None and 0 <= index < len(flags) and bool(flags[index])

    def chunk_count(self) -> int:
        """Chunks of all artifacts together."""
        return sum(a.chunk_count for a in self.artifacts.values())

    def set_filters(self, filters: list[str]) -> None:
        """Record the chunk subscriptions in force."""
        self.filters = list(filters)
        write_bytes_atomic(self.dir / FILTERS_FILE, json.dumps(self.filters).encode())

    # -- finishing ---------------------------------------------------------------------

    def verify_complete(self) -> None:
        """Re-read every staged artifact: length, chunk hashes and whole-file sha256."""
        for f in self._files:  # no fsync: the store fsyncs its own copy, staging is only re-fetched
            with open(self.dir / f"{f}.part", "rb") as fh:
                stream_verify(self.artifacts[f], fh)

    def rebuild(self, base_dir: Path) -> None:
        """Patch each delta against the base version's artifact in ``base_dir`` into ``<file>.full``
        and check it against the release's signed artifact (DeltaError on any failure)."""
        assert self.delta is not None
        for f in self._files:
            base = base_dir / f if self.delta.base_sha256[f] else None
            apply_delta(base, self.dir / f"{f}.part", self.dir / f"{f}.full", self.release.manifest.artifacts[f])

    def bundle(self) -> StagedBundle:
        """The staged release as a bundle for :meth:`ModelStore.install_bundle`."""
        suffix = ".full" if self.delta is not None else ".part"
        return StagedBundle(self.release, {f: self.dir / f"{f}{suffix}" for f in self._files})

    def close(self) -> None:
        """Close the files (the directory stays for a later resume)."""
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            if self._have_fd >= 0:
                os.close(self._have_fd)
            self._have_fd = -1

    def remove(self) -> None:
        """Close and delete the staging directory (atomically: see :func:`remove_dir`)."""
        self.close()
        remove_dir(self.dir)


class Throttle:
    """Keeps a stream of chunks under ``bytes_per_s`` (0 = unlimited) by sleeping after each."""

    def __init__(self, bytes_per_s: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.bytes_per_s = bytes_per_s
        self._clock = clock
        self._next = 0.0

    def wait(self, nbytes: int) -> None:
        """Account for ``nbytes`` just taken; sleep until the stream is back under the rate."""
        if self.bytes_per_s <= 0:
            return
        now = self._clock()
        self._next = max(now, self._next) + nbytes / self.bytes_per_s
        if self._next > now:
            time.sleep(self._next - now)


def plan_filters(topics: Topics, download: Download, window: int) -> list[str]:
    """The chunk subscriptions for what is missing.

    A fresh download of at most ``window`` chunks takes one wildcard per artifact (one
    SUBSCRIBE, the broker streams every retained chunk). Otherwise the device subscribes to
    the topics of the first ``window`` missing chunks only, so a resume fetches only what it
    lacks and a huge model never floods the broker's per-client queue.
    """
    missing = download.missing()
    if not missing:
        return []
    if len(missing) == download.chunk_count() and len(missing) <= window:
        return [topics.chunks_filter(download.name, download.version, f, download.base) for f in sorted(download.artifacts)]
    if download.base:
        return [topics.delta_chunk(download.name, download.version, download.base, f, i) for f, i in missing[:window]]
    return [topics.chunk(download.name, download.version, f, i) for f, i in missing[:window]]


__all__ = [
    "Download",
    "Progress",
    "StagedBundle",
    "Throttle",
    "plan_filters",
    "release_dir",
    "remove_dir",
    "space_problem",
    "sweep_staging",
]
