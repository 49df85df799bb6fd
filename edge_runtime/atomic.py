"""Crash-safe file writes: temp file in the same directory, fsync, os.replace, fsync dir.

Every file this project writes goes through here, so a power cut leaves either the old
file or the new one, never half of either. (It sits at the bottom layer rather than under
``store/`` because bundle writing and update staging use it too.)
"""

from __future__ import annotations

import contextlib
import os
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


def write_bytes_atomic(path: Path, data: bytes, mode: int = 0o666) -> None:
    """Atomically replace ``path`` with ``data`` (``mode`` masked by the umask)."""
    with atomic_writer(path, mode) as fh:
        fh.write(data)
