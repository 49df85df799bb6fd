"""Captured requests and answers: a bounded ring of segment files on local disk.

Layout, one directory per model under the capture directory (docs/monitoring.md)::

    <capture_dir>/<model>/seg-<first record number, 12 digits>.jsonl        sealed segments
    <capture_dir>/<model>/seg-<first record number, 12 digits>.jsonl.open   the one being written

A record is one line: ``<crc32 of the JSON, 8 hex digits> <JSON>\\n``. The open segment is
appended to and flushed record by record; it is sealed (fsync, rename) when it reaches
``segment_bytes`` and when the daemon stops. After a kill -9 the open segment may end in
a torn record: on start the ring keeps its intact records (truncating the tail after
the last good one) and seals it, so no sealed segment is ever corrupt. A sealed segment
is never written again; a reader can trust its bytes.

The ring never holds more than ``max_bytes``: before a segment is sealed, the oldest
sealed segments are deleted until it fits, and each deletion is counted
(``dropped_segments``, ``dropped_records``, persisted in ``ring.json``). It also stops
writing (and counts) while the file system has less than ``min_free_bytes`` free.

:class:`CaptureWriter` writes records in batches from a bounded waiting list (a full list
drops the record, counted).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import shutil
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

try:  # in the device extra; the operator's tools read records with json alone
    import orjson
except ImportError:  # pragma: no cover - depends on the install
    orjson = None  # type: ignore[assignment]

from edge_runtime.atomic import fsync_dir, write_bytes_atomic

log = logging.getLogger("edge_runtime.monitoring")

SEGMENT_RE = re.compile(r"^seg-(\d{12})\.jsonl\Z")
OPEN_SUFFIX = ".open"
RING_FILE = "ring.json"
DEFAULT_SEGMENT_BYTES = 1024 * 1024
QUEUE_RECORDS = 256
QUEUE_BYTES = 64 * 1024 * 1024  # tensors the writer's queue may keep alive
BATCH_S = 0.25  # records wait at most about this long before they are written ...
FLUSH_BYTES = 256 * 1024  # ... or until this many bytes of tensors wait


def encode_array(a: np.ndarray) -> dict[str, Any]:
    """A tensor as JSON: dtype, shape and the little-endian bytes in base64."""
    arr = np.ascontiguousarray(a)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    if arr.dtype.kind in "OSU":
        return {"dtype": "str", "shape": list(arr.shape), "values": [str(v) for v in arr.reshape(-1)]}
    return {"dtype": arr.dtype.str, "shape": list(arr.shape), "b64": base64.b64encode(arr.tobytes()).decode()}


def decode_array(obj: dict[str, Any]) -> np.ndarray:
    """The inverse of :func:`encode_array`."""
    shape = tuple(int(d) for d in obj["shape"])
    if obj["dtype"] == "str":
        return np.array(obj["values"], dtype=object).reshape(shape)
    return np.frombuffer(base64.b64decode(obj["b64"]), dtype=np.dtype(obj["dtype"])).reshape(shape).copy()


def _dumps(record: dict[str, Any]) -> bytes:
    if orjson is not None:
        return bytes(orjson.dumps(record, option=orjson.OPT_SORT_KEYS))
    return json.dumps(record, separators=(",", ":"), sort_keys=True).encode()


def record_line(record: dict[str, Any]) -> bytes:
    """One framed record: crc32, space, JSON, newline."""
    body = _dumps(record)
    return b"%08x " % zlib.crc32(body) + body + b"\n"


def read_records(data: bytes) -> tuple[list[dict[str, Any]], int]:
    """The intact records at the start of ``data`` and how many bytes they span (a torn or
    corrupt record ends the read)."""
    out: list[dict[str, Any]] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:
            break
        line = data[pos:end]
        if len(line) < 10 or line[8:9] != b" ":
            break
        try:
            crc = int(line[:8], 16)
        except ValueError:
            break
        body = line[9:]
        if zlib.crc32(body) != crc:
            break
        try:
            rec = json.loads(body)
        except ValueError:
            break
        if not isinstance(rec, dict):
            break
        out.append(rec)
        pos = end + 1
    return out, pos


@dataclass(frozen=True)
class Segment:
    """A sealed segment file."""

    path: Path
    first: int  # record number of its first record
    size: int

    @property
    def name(self) -> str:
        """The file name."""
        return self.path.name


class CaptureRing:
    """The ring of one model."""

    def __init__(self, directory: Path, max_bytes: int, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
                 min_free_bytes: int = 64 * 1024 * 1024) -> None:
        self.dir = Path(directory)
        self.max_bytes = max(1024, int(max_bytes))
        self.segment_bytes = max(512, min(segment_bytes, self.max_bytes // 4 or 512))
        self.min_free_bytes = min_free_bytes
        self._lock = threading.Lock()
        self._fh: Any = None
        self._open_path: Path | None = None
        self._open_size = 0
        self._next = 0  # number of the next record
        self.dropped_segments = 0
        self.dropped_records = 0
        self.skipped_records = 0  # not written: disk nearly full, queue full or a write error
        self.written_records = 0
        self._sealed_bytes = 0  # bytes of the sealed segments, kept up to date without listing the directory
        self._free_checked = -1.0
        self._free_ok = True
        self.dir.mkdir(parents=True, exist_ok=True)
        self._load_counters()
        self._recover()
        self._sealed_bytes = sum(seg.size for seg in self.segments())

    # -- start-up ----------------------------------------------------------------------

    def _load_counters(self) -> None:
        try:
            doc = json.loads((self.dir / RING_FILE).read_text())
            self.dropped_segments = int(doc.get("dropped_segments", 0))
            self.dropped_records = int(doc.get("dropped_records", 0))
            self._next = int(doc.get("next", 0))
        except (OSError, ValueError, TypeError, AttributeError):
            pass

    def _save_counters(self) -> None:
        doc = {"dropped_segments": self.dropped_segments, "dropped_records": self.dropped_records, "next": self._next}
        write_bytes_atomic(self.dir / RING_FILE, json.dumps(doc, sort_keys=True).encode())

    def _recover(self) -> None:
        """Seal what a previous run left open, keeping only its intact records."""
        for p in sorted(self.dir.glob("seg-*.jsonl" + OPEN_SUFFIX)):
            data = p.read_bytes()
            records, good = read_records(data)
            if good < len(data):
                log.warning("capture %s: dropped a torn record at the end of %s (%d bytes kept of %d)",
                            self.dir.name, p.name, good, len(data))
            if not records:
                p.unlink()
                continue
            with open(p, "r+b") as fh:
                fh.truncate(good)
                fh.flush()
                os.fsync(fh.fileno())
            sealed = p.with_name(p.name[: -len(OPEN_SUFFIX)])
            os.replace(p, sealed)
            fsync_dir(self.dir)
            first = int(SEGMENT_RE.match(sealed.name).group(1))  # type: ignore[union-attr]
            self._next = max(self._next, first + len(records))
        for seg in self.segments():
            self._next = max(self._next, seg.first + _count_lines(seg.path))

    # -- reading -----------------------------------------------------------------------

    def segments(self) -> list[Segment]:
        """Sealed segments, oldest first."""
        out = []
        for p in self.dir.iterdir():
            m = SEGMENT_RE.match(p.name)
            if m:
                try:
                    out.append(Segment(p, int(m.group(1)), p.stat().st_size))
                except FileNotFoundError:
                    continue
        return sorted(out, key=lambda s: s.first)

    # -- writing -----------------------------------------------------------------------

    def append(self, record: dict[str, Any] | bytes) -> bool:
        """Write one record (or its :func:`record_line`) to the open segment, sealing and dropping
        as needed; False when skipped."""
        line = record if isinstance(record, bytes) else record_line(record)
        with self._lock:
            try:
                if not self._disk_has_room(len(line)) or len(line) > self.max_bytes // 2:
                    self.skipped_records += 1
                    return False
                if self._fh is None:
                    self._open_path = self.dir / f"seg-{self._next:012d}.jsonl{OPEN_SUFFIX}"
                    self._fh = open(self._open_path, "ab")
                    self._open_size = 0
                if self._sealed_bytes + self._open_size + len(line) > self.max_bytes:
                    self._make_room(len(line))
                self._fh.write(line)
                self._fh.flush()
                self._open_size += len(line)
                self._next += 1
                self.written_records += 1
                if self._open_size >= self.segment_bytes:
                    self._seal()
                return True
            except OSError as exc:
                self.skipped_records += 1
                log.warning("capture %s: record not written: %s", self.dir.name, exc.strerror or exc)
                self._close_quietly()
                return False

    def _disk_has_room(self, nbytes: int) -> bool:
        """More than ``min_free_bytes`` free (looked at once a second, not per record)."""
        now = time.monotonic()
        if now - self._free_checked >= 1.0:
            self._free_checked = now
            self._free_ok = shutil.disk_usage(self.dir).free >= self.min_free_bytes + 16 * nbytes
        return self._free_ok

    def _make_room(self, extra: int) -> None:
        """Drop the oldest sealed segments until the ring plus ``extra`` bytes fits."""
        segs = self.segments()  # listed again: the directory is the truth (someone may have deleted files)
        self._sealed_bytes = sum(s.size for s in segs)
        changed = False
        while segs and self._sealed_bytes + self._open_size + extra > self.max_bytes:
            old = segs.pop(0)
            n = _count_lines(old.path)
            old.path.unlink(missing_ok=True)
            self._sealed_bytes -= old.size
            self.dropped_segments += 1
            self.dropped_records += n
            changed = True
        if changed:
            fsync_dir(self.dir)
            self._save_counters()

    def _seal(self) -> None:
        fh, path = self._fh, self._open_path
        if fh is None or path is None:
            return
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()
        self._fh = None
        self._open_path = None
        self._sealed_bytes += self._open_size
        self._open_size = 0
        os.replace(path, path.with_name(path.name[: -len(OPEN_SUFFIX)]))
        fsync_dir(self.dir)
        self._save_counters()

    def seal(self) -> None:
        """Seal the open segment now (before an export, and at shutdown)."""
        with self._lock:
            try:
                self._seal()
            except OSError as exc:
                log.warning("capture %s: segment not sealed: %s", self.dir.name, exc.strerror or exc)
                self._close_quietly()

    def _close_quietly(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                pass
        self._fh = None

    def stats(self) -> dict[str, Any]:
        """Counters for metrics and the device state."""
        segs = self.segments()
        return {
            "segments": len(segs),
            "bytes": sum(s.size for s in segs) + self._open_size,
            "max_bytes": self.max_bytes,
            "written_records": self.written_records,
            "dropped_segments": self.dropped_segments,
            "dropped_records": self.dropped_records,
            "skipped_records": self.skipped_records,
        }


def _count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 16), b""))
    except OSError:
        return 0


def capture_record(model: str, version: int, reason: str, time: str, input_names: Sequence[str],
                   inputs: Sequence[np.ndarray], output_names: Sequence[str], outputs: Sequence[np.ndarray],
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record of one scored request."""
    rec: dict[str, Any] = {
        "time": time, "model": model, "version": version, "reason": reason,
        "inputs": {n: encode_array(a) for n, a in zip(input_names, inputs)},
        "outputs": {n: encode_array(a) for n, a in zip(output_names, outputs)},
    }
    if extra:
        rec.update(extra)
    return rec


class CaptureWriter:
    """Writes captured records in batches: they wait, then are written together.

    Records wait in a bounded list (:data:`QUEUE_RECORDS` records, :data:`QUEUE_BYTES`; more
    are dropped and counted). The :meth:`offer` that finds :data:`FLUSH_BYTES` waiting or
    :data:`BATCH_S` passed since the last batch writes the whole batch itself, on the thread
    that captures (the event loop); a timer thread, which runs Python once a second at most,
    writes what waits once traffic stops. A batch is one ``write`` and ``flush`` per record
    (:meth:`CaptureRing.append`; no fsync), so the JSON encoding and the system calls happen a
    few times a second instead of after every request. The fsyncs happen when a segment reaches
    ``segment_bytes`` and is sealed (the file, the directory, ``ring.json``), inside the batch
    that fills it: on the event loop when an ``offer`` wrote that batch. (A thread writing every
    record made the event loop wait for the GIL after its socket calls: far dearer than the
    writes themselves.)
    """

    def __init__(self, max_records: int = QUEUE_RECORDS, max_bytes: int = QUEUE_BYTES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self._clock = clock
        self._pending: list[tuple[CaptureRing, Any, int]] = []
        self._pending_bytes = 0
        self._last_write = clock()
        self._lock = threading.Lock()  # the pending list
        self._write_lock = threading.Lock()  # one batch written at a time, in order
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edge-capture", daemon=True)
        self._started = False

    def offer(self, ring: CaptureRing, record: dict[str, Any] | bytes | Callable[[], dict[str, Any]],
              nbytes: int = 0) -> bool:
        """Add a record (its :func:`record_line` bytes, a dict, or a function that builds it)
        keeping ``nbytes`` alive; False (counted on the ring) when the waiting list is full, in
        records or in bytes (bounded whatever the requests' size)."""
        if not self._started:
            self._started = True
            self._thread.start()
        with self._lock:
            if len(self._pending) >= self.max_records or (
                    self._pending and self._pending_bytes + nbytes > self.max_bytes):
                ring.skipped_records += 1
                return False
            self._pending.append((ring, record, nbytes))
            self._pending_bytes += nbytes
            due = self._pending_bytes >= FLUSH_BYTES or self._clock() - self._last_write >= BATCH_S
        if due:
            self.flush()
        return True

    def flush(self) -> None:
        """Write every waiting record now, in order."""
        with self._write_lock:
            with self._lock:
                batch, self._pending, self._pending_bytes = self._pending, [], 0
                self._last_write = self._clock()
            for ring, record, _ in batch:
                try:
                    ring.append(record() if callable(record) else record)
                except Exception:  # a bad record must not stop the others
                    log.exception("capture record not written")
                    ring.skipped_records += 1

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                due = bool(self._pending) and self._clock() - self._last_write >= BATCH_S
            if due:
                self.flush()

    def stop(self) -> None:
        """Write what waits and stop the timer."""
        self._stop.set()
        if self._started:
            self._thread.join(10)
        self.flush()


__all__ = [
    "CaptureRing", "CaptureWriter", "Segment", "capture_record", "decode_array",
    "encode_array", "read_records", "record_line",
]
