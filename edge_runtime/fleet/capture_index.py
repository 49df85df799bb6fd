"""A device's capture index, checked against what the operator asked for: pure, no I/O.

The index (``capture/<req>/index``, see :mod:`edge_runtime.updates.capture`) is the device's
claim: file names, lengths, hashes. Nothing in it may size the operator's memory or disk, or
name a path, before it is checked here against :class:`PullLimits` (which the request also
states, so a truthful device never passes them) and the disk budget of the pull:

* the payload itself is bounded by the limits before it is parsed (:meth:`PullLimits.index_bytes`);
* one bad entry (a name that is not ``<model>/seg-<n>.jsonl``, a negative or non-integer
  length, hashes that do not fit the length, a duplicate, a file past ``max_files`` or past
  the byte budget) is skipped and named; the other entries are pulled.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from edge_runtime.exceptions import BadDataError
from edge_runtime.fleet.names import UnsafeNameError, safe_component
from edge_runtime.updates.capture import CHUNK_SIZE, MAX_NEED_FILES, capture_file_name_ok
from edge_runtime.updates.verify import echo

DEFAULT_MAX_FILES = 1000
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
MAX_PULL_BYTES = 2**40
MAX_FILE_BYTES = 64 * 1024 * 1024  # a sealed segment is about 1 MiB (monitoring/capture.py)
SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")


@dataclass(frozen=True)
class PullLimits:
    """What one pull may fetch; sent in the request, enforced again on the answer."""

    max_files: int = DEFAULT_MAX_FILES
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self) -> None:
        if not 1 <= self.max_files <= MAX_NEED_FILES:
            raise ValueError(f"max_files: expected 1 to {MAX_NEED_FILES}, found {self.max_files}")
        if not 1 <= self.max_bytes <= MAX_PULL_BYTES:
            raise ValueError(f"max_bytes: expected 1 to {MAX_PULL_BYTES}, found {self.max_bytes}")

    def index_bytes(self) -> int:
        """The largest index a truthful device sends for these limits: per file its entry and a
        possible ``missing`` name, per chunk of the byte budget one quoted hash (generously)."""
        chunks = self.max_bytes // CHUNK_SIZE + self.max_files
        return 64 * 1024 + self.max_files * 768 + chunks * 72


class CaptureIndexError(BadDataError):
    """An index that cannot be used at all (not JSON, too large, no file list)."""


@dataclass
class IndexEntry:
    """One accepted file of the answer."""

    number: int  # its position in the device's index: chunk topics name it
    name: str  # <model>/seg-<n>.jsonl, checked
    length: int
    sha256: str
    chunk_sha256: list[str]
    have: set[int] = field(default_factory=set)

    @property
    def model(self) -> str:
        """The model the file belongs to (its directory on the device)."""
        return self.name.partition("/")[0]

    @property
    def complete(self) -> bool:
        """Every chunk is on disk and verified."""
        return len(self.have) == len(self.chunk_sha256)

    def chunk_length(self, i: int) -> int:
        """The exact length chunk ``i`` must have."""
        return min(CHUNK_SIZE, self.length - i * CHUNK_SIZE)

    def to_json(self) -> dict[str, Any]:
        """The entry as the device sent it (for the pull's saved state)."""
        return {"name": self.name, "length": self.length, "sha256": self.sha256, "chunk_size": CHUNK_SIZE,
                "chunk_sha256": self.chunk_sha256}


@dataclass(frozen=True)
class Skipped:
    """A file (or record) the pull did not take, and why."""

    name: str  # already quoted and cut short: safe to print
    reason: str

    def __str__(self) -> str:
        return f"{self.name}: {self.reason}"


@dataclass
class ParsedIndex:
    """The usable part of an index."""

    files: list[IndexEntry]
    skipped: list[Skipped]
    missing: list[str]  # files the device no longer had (checked names)
    truncated: int  # files the device held beyond the request's limits (its own count)


def parse_index(payload: bytes, limits: PullLimits, budget_bytes: int | None = None) -> ParsedIndex:
    """The accepted entries of a capture index; :class:`CaptureIndexError` if it is unusable as a whole.

    ``budget_bytes`` (default ``limits.max_bytes``) is the byte budget left for this pull, e.g.
    reduced by the free disk space."""
    bound = limits.index_bytes()
    if len(payload) > bound:
        raise CaptureIndexError(f"capture index of {len(payload)} bytes: expected at most {bound} for "
                          f"{limits.max_files} file(s) and {limits.max_bytes} bytes")
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise CaptureIndexError(f"capture index: expected JSON, found {echo(payload[:40])}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
        raise CaptureIndexError("capture index: expected an object with a 'files' list")
    budget = limits.max_bytes if budget_bytes is None else min(budget_bytes, limits.max_bytes)
    out = ParsedIndex([], [], [], 0)
    seen: set[str] = set()
    total = 0
    for number, entry in enumerate(doc["files"]):
        label = echo(entry.get("name") if isinstance(entry, dict) else entry)
        if len(out.files) >= limits.max_files:
            out.skipped.append(Skipped(label, f"past --max-files {limits.max_files}"))
            continue
        try:
            f = _entry(number, entry)
        except BadDataError as exc:
            out.skipped.append(Skipped(label, str(exc)))
            continue
        if f.name in seen:
            out.skipped.append(Skipped(label, "named twice in the index"))
            continue
        if f.length > min(MAX_FILE_BYTES, budget):
            out.skipped.append(Skipped(label, f"claims {f.length} bytes, more than one file may have "
                                              f"({min(MAX_FILE_BYTES, budget)})"))
            continue
        if total + f.length > budget:
            out.skipped.append(Skipped(label, f"claims {f.length} bytes, past the byte budget of {budget} "
                                              f"({total} taken)"))
            continue
        seen.add(f.name)
        total += f.length
        out.files.append(f)
    missing = doc.get("missing", [])
    for name in missing[: limits.max_files] if isinstance(missing, list) else []:
        if isinstance(name, str) and _name_ok(name):
            out.missing.append(name)
    truncated = doc.get("truncated", 0)
    if isinstance(truncated, int) and not isinstance(truncated, bool) and 0 < truncated < 2**31:
        out.truncated = truncated
    return out


def _name_ok(name: str) -> bool:
    if not capture_file_name_ok(name):
        return False
    try:
        for part in name.split("/"):
            safe_component(part)
    except UnsafeNameError:
        return False
    return True


def _entry(number: int, entry: Any) -> IndexEntry:
    """One index entry, checked; BadDataError says what is wrong with it."""
    if not isinstance(entry, dict):
        raise BadDataError("expected an object")
    name = entry.get("name")
    if not isinstance(name, str) or not _name_ok(name):
        raise BadDataError("expected a name <model>/seg-<12 digits>.jsonl")
    length = entry.get("length")
    if not isinstance(length, int) or isinstance(length, bool) or length < 0:
        raise BadDataError(f"expected a non-negative integer length, found {echo(length)}")
    if entry.get("chunk_size", CHUNK_SIZE) != CHUNK_SIZE:
        raise BadDataError(f"expected chunk_size {CHUNK_SIZE}, found {echo(entry.get('chunk_size'))}")
    sha = entry.get("sha256")
    if not isinstance(sha, str) or not SHA256_RE.match(sha):
        raise BadDataError("expected a sha256 of 64 lower-case hex digits")
    chunks = entry.get("chunk_sha256")
    want = math.ceil(length / CHUNK_SIZE)
    if not isinstance(chunks, list) or len(chunks) != want:
        found = len(chunks) if isinstance(chunks, list) else echo(chunks)
        raise BadDataError(f"expected {want} chunk hash(es) for {length} bytes, found {found}")
    if not all(isinstance(c, str) and SHA256_RE.match(c) for c in chunks):
        raise BadDataError("expected chunk hashes of 64 lower-case hex digits")
    return IndexEntry(number, name, length, sha, list(chunks))


__all__ = [
    "DEFAULT_MAX_BYTES", "DEFAULT_MAX_FILES", "MAX_FILE_BYTES", "IndexEntry", "CaptureIndexError", "ParsedIndex",
    "PullLimits", "Skipped", "parse_index",
]
