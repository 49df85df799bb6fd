"""Crash-safe writes: temp file (or directory) in the same directory, fsync, os.replace, fsync dir.

A power cut leaves either the old file or the new one, never half of either. What must
survive one goes through here: state files (:func:`write_bytes_atomic`), bundles and keys
(:func:`atomic_writer`) and installed model versions (:func:`atomic_dir`). Two writers do the
same steps themselves because their data does not fit one call: ``scoring.OutputWriter``
(an output streamed into a temporary file first) and ``updates/download.py``, whose staging
files are deliberately never fsynced (a chunk lost in a crash is fetched again; the store
fsyncs its own copy). It sits at the bottom layer rather than under ``store/`` because
bundle writing and update state use it too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename inside it survives a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process umask, read without changing it (Linux ``/proc/self/status``); setting and
    restoring it instead would race with other threads creating files."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


@contextlib.contextmanager
def atomic_writer(path: Path, mode: int = 0o666) -> Iterator[BinaryIO]:
    """Yield a file object; on clean exit the data replaces ``path`` atomically.

    ``mode`` is masked by the process umask, as ``open()`` does: under the unit's
    ``UMask=0077`` the store's files are the service's alone.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fchmod(fh.fileno(), mode & ~current_umask())
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_dir(target: Path, *, prefix: str = ".tmp-", trash_prefix: str = ".trash-") -> Iterator[Path]:
    """Yield an empty directory beside ``target`` to write files into; on clean exit it becomes ``target``.

    Every file written into it is fsynced, then the directory itself (its mode set by the
    umask, as for files), then it is renamed to ``target`` and the parent is fsynced. An
    existing ``target`` is first renamed to ``<trash_prefix><name>`` and removed afterwards:
    a crash between the two renames leaves no ``target`` but both copies on disk, so callers
    that replace (the store repairing a damaged version) remove or restore those leftovers
    at start-up by their prefixes. On an error the temporary directory is removed.
    """
    target = Path(target)
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}{target.name}-", dir=parent))
    try:
        yield tmp
        for p in sorted(tmp.rglob("*")):
            if p.is_file() and not p.is_symlink():
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp made it 0700
        fsync_dir(tmp)
        if target.exists():
            trash = parent / f"{trash_prefix}{target.name}"
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(target, trash)
            os.replace(tmp, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, target)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes_atomic(path: Path, data: bytes, mode: int = 0o666) -> None:
    """Atomically replace ``path`` with ``data`` (``mode`` masked by the umask)."""
    with atomic_writer(path, mode) as fh:
        fh.write(data)
