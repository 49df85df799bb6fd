"""``edge-runtime fleet capture pull``: fetch a device's captured requests and answers.

The operator signs a capture request (role ``models``, like a desired state) and publishes
it retained on the device's ``capture/request`` topic; a device that is offline answers when
it next connects. Each request carries a fresh ``nonce`` (the device refuses one it has seen:
a replayed request) and the pull's limits (``max_files``, ``max_bytes``). The answer
(``capture/<req>/index`` and chunks, see :mod:`edge_runtime.updates.capture`) is the device's
claim, checked by :mod:`edge_runtime.fleet.capture_index` before it sizes anything: entries
past the limits or the disk budget, or malformed, are skipped and named. Each chunk is checked
(its exact length, its sha256) before it is written at its offset in a ``.part`` file under
``OUT/.pull-<device>-<req>/``; nothing is preallocated and no file is held in memory whole
while it arrives. When the stream stalls or the connection drops, the pull reconnects and
asks again with ``need`` naming only the chunks it lacks; a pull started again with the same
``--out`` finds what it has by re-hashing its ``.part`` files, so nothing is fetched twice.

Once every accepted file is whole (its sha256 checked as it is read), the records are
decoded into files ready for retraining, per model version (docs/monitoring.md,
:mod:`edge_runtime.fleet.capture_files`)::

    OUT/<device>/<model>/v<version>/inputs.npz     arrays by input name, rows concatenated
    OUT/<device>/<model>/v<version>/outputs.npz    (or "<i>/NAME" per record when shapes differ)
    OUT/<device>/<model>/v<version>/records.jsonl  time, reason, rows, shadow version per record
    OUT/<device>/segments/<model>/seg-*.jsonl      the raw segments, as the device wrote them

Every directory and file name that comes from the device passes
:func:`edge_runtime.fleet.names.contained_path`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import queue
import secrets
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime.atomic import atomic_writer, write_bytes_atomic
from edge_runtime.exceptions import BadDataError, TransportError, UsageError
from edge_runtime.fleet.capture_files import TrainingRecord, decode_record, write_training_files
from edge_runtime.fleet.capture_index import CaptureIndexError, IndexEntry, PullLimits, Skipped, parse_index
from edge_runtime.fleet.names import UnsafeNameError, contained_path, safe_component
from edge_runtime.fleet.session import BrokerOptions, FleetSession
from edge_runtime.monitoring.capture import read_records
from edge_runtime.trust.canonical import canonical_json
from edge_runtime.trust.keys import PrivateKey, sign
from edge_runtime.updates.capture import CHUNK_SIZE
from edge_runtime.updates.mqtt import Message
from edge_runtime.updates.protocol import (
    CAPTURE_TYPE,
    REQUEST_ID_RE,
    CaptureChunkTopic,
    CaptureIndexTopic,
    Topics,
    signed_message,
)

log = logging.getLogger("edge_runtime.fleet")

STATE_FILE = "pull.json"
INDEX_FILE = "index.json"
READ_BYTES = 1024 * 1024  # hashing and copying a file: this much in memory at a time
DISK_COPIES = 3  # a pulled byte lands in its .part, in segments/ and (decoded) in an .npz


def capture_request_message(topics: Topics, device: str, request: str, keys: Sequence[PrivateKey], *,
                            attempt: int = 0, model: str | None = None, since: str | None = None,
                            need: dict[str, list[int]] | None = None, expires_in_s: float = 3600.0,
                            limits: PullLimits | None = None, nonce: str | None = None) -> bytes:
    """A signed capture request, with a fresh nonce unless ``nonce`` is given."""
    expires = (_dt.datetime.now(_dt.UTC) + _dt.timedelta(seconds=expires_in_s)).isoformat(timespec="seconds")
    limits = limits or PullLimits()
    doc: dict[str, Any] = {"_type": CAPTURE_TYPE, "fleet": topics.fleet, "device": device, "request": request,
                           "attempt": attempt, "expires": expires.replace("+00:00", "Z"),
                           "nonce": nonce if nonce is not None else secrets.token_hex(16),
                           "max_files": limits.max_files, "max_bytes": limits.max_bytes}
    if model is not None:
        doc["model"] = model
    if since is not None:
        doc["since"] = since
    if need is not None:
        doc["need"] = need
    payload = canonical_json(doc)
    return signed_message("capture", payload, [sign(k, payload) for k in keys])


@dataclass
class PullResult:
    """What a pull fetched and wrote, and what it did not take."""

    request: str
    files: int
    bytes: int
    records: int
    attempts: int
    written: list[Path]
    missing: list[str]  # files the device no longer had (dropped by its ring meanwhile)
    skipped: list[Skipped] = field(default_factory=list)  # entries, files and records refused
    truncated: int = 0  # files the device held beyond the request's limits

    @property
    def complete(self) -> bool:
        """Everything the device offered was taken (a file its ring dropped meanwhile aside)."""
        return not self.skipped and not self.truncated


class CapturePull:
    """One pull: request, receive, resume, assemble."""

    def __init__(self, options: BrokerOptions, topics: Topics, device: str, keys: Sequence[PrivateKey], out: Path, *,
                 model: str | None = None, since: str | None = None, stall_s: float = 20.0,
                 progress: Callable[[int, int], None] | None = None, timeout_s: float = 30.0,
                 limits: PullLimits | None = None) -> None:
        if not keys:
            raise UsageError("a capture request must be signed: give --sign-key")
        try:
            safe_component(device, "--device")
        except UnsafeNameError as exc:
            raise UsageError(str(exc)) from None
        self.options = options
        self.timeout_s = timeout_s  # each wait for the broker (CONNACK, SUBACK, an ack)
        self.topics = topics
        self.device = device
        self.keys = list(keys)
        self.out = Path(out)
        self.model = model
        self.since = since
        self.since_time = _dt.datetime.fromisoformat(since) if since is not None else None
        self.stall_s = stall_s
        self.progress = progress
        self.limits = limits or PullLimits()
        self.request = self._request_id()
        self.work = self.out / f".pull-{device}-{self.request}"
        self.files: list[IndexEntry] | None = None
        self._by_number: dict[int, IndexEntry] = {}
        self.missing: list[str] = []
        self.skipped: dict[str, Skipped] = {}
        self.truncated = 0
        self.attempts = 0
        self._inbox: queue.Queue[Message] = queue.Queue()

    # -- resumable state -------------------------------------------------------------

    def _request_id(self) -> str:
        """The request id of an unfinished pull of the same device into ``out``, else a new one."""
        for p in sorted(self.out.glob(f".pull-{self.device}-*")) if self.out.is_dir() else []:
            try:
                doc = json.loads((p / STATE_FILE).read_text())
            except (OSError, ValueError):
                continue
            if isinstance(doc, dict) and doc.get("model") == self.model and doc.get("since") == self.since and \
                    REQUEST_ID_RE.match(str(doc.get("request", ""))):
                return str(doc["request"])
        return secrets.token_hex(8)

    def _load_state(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        path = self.work / STATE_FILE
        if not path.exists():
            write_bytes_atomic(path, json.dumps({"request": self.request, "device": self.device, "model": self.model,
                                                 "since": self.since}).encode())
        try:
            index = (self.work / INDEX_FILE).read_bytes()
        except OSError:
            return
        try:
            self._set_index(index, save=False)
        except CaptureIndexError:
            return  # saved by an older version or damaged: the device sends it again

    def _part(self, f: IndexEntry) -> Path:
        model, _, seg = f.name.partition("/")
        return self.work / f"{safe_component(model)}__{safe_component(seg)}.part"

    def _budget(self) -> int:
        """Bytes this pull may still take: ``max_bytes``, and a share of the free disk space."""
        try:
            free = shutil.disk_usage(self.work).free
        except OSError:
            return self.limits.max_bytes
        held = sum(p.stat().st_size for p in self.work.glob("*.part"))
        return max(0, min(self.limits.max_bytes, (free + held) // DISK_COPIES))

    def _set_index(self, payload: bytes, *, save: bool = True) -> None:
        parsed = parse_index(payload, self.limits, self._budget())
        known = {f.name: f for f in self.files or []}
        for f in parsed.files:
            old = known.get(f.name)
            f.have = old.have if old is not None and old.sha256 == f.sha256 else self._rehash(f)
        for s in parsed.skipped:
            self.skipped.setdefault(str(s), s)
        self.files = parsed.files
        self._by_number = {f.number: f for f in parsed.files}
        self.missing = sorted(set(self.missing) | set(parsed.missing))
        self.truncated = max(self.truncated, parsed.truncated)
        if save:
            write_bytes_atomic(self.work / INDEX_FILE, payload)

    def _rehash(self, f: IndexEntry) -> set[int]:
        """The chunks already in a ``.part`` file (after an interrupted pull)."""
        have: set[int] = set()
        try:
            fh = open(self._part(f), "rb")
        except OSError:
            return have
        with fh:
            for i, want in enumerate(f.chunk_sha256):
                fh.seek(i * CHUNK_SIZE)
                data = fh.read(CHUNK_SIZE)
                if len(data) == f.chunk_length(i) and hashlib.sha256(data).hexdigest() == want:
                    have.add(i)
        return have

    def _need(self) -> dict[str, list[int]] | None:
        if self.files is None:
            return None
        return {f.name: sorted(set(range(len(f.chunk_sha256))) - f.have) for f in self.files if not f.complete}

    @property
    def done(self) -> bool:
        """Every accepted file of the answer is here."""
        return self.files is not None and all(f.complete for f in self.files)

    # -- the transfer ----------------------------------------------------------------

    def run(self, timeout_s: float = 600.0) -> PullResult:
        """Pull until complete (reconnecting and resuming as needed) or ``timeout_s`` passes.

        TransportError when it did not finish in time; CaptureIndexError (bad data) when the
        device's index is unusable as a whole."""
        self._load_state()
        deadline = time.monotonic() + timeout_s
        last_error = ""
        while not self.done:
            if time.monotonic() > deadline:
                raise TransportError(f"capture pull from {self.device} did not finish within {timeout_s:g} s"
                                     + (f" ({last_error})" if last_error else ""))
            try:
                with FleetSession(self.options, self.topics, self.timeout_s) as session:
                    self._session(session, deadline)
            except TransportError as exc:
                last_error = str(exc)
                log.info("capture pull interrupted (%s); resuming", exc)
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        self._clear_request()
        return self._assemble()

    def _clear_request(self) -> None:
        try:
            with FleetSession(self.options, self.topics, self.timeout_s) as session:  # the request is done: clear it
                session.publish(self.topics.capture_request(self.device), b"").wait(self.timeout_s)
        except TransportError as exc:
            log.warning("capture request left retained on the broker: %s", exc)

    def _session(self, session: FleetSession, deadline: float) -> None:
        session.watch([self.topics.capture_filter(self.device, self.request)], self._inbox.put)
        self._ask(session)
        last = time.monotonic()
        while not self.done:
            if time.monotonic() > deadline:
                return
            try:
                msg = self._inbox.get(timeout=0.5)
            except queue.Empty:
                if not session.link.connected:
                    raise TransportError("connection lost") from None
                if time.monotonic() - last > self.stall_s:
                    log.info("capture pull stalled for %.0f s; asking again for what is missing", self.stall_s)
                    self._ask(session)
                    last = time.monotonic()
                continue
            try:
                handled = self._handle(msg)
            except CaptureIndexError:
                self._clear_request()
                raise
            if handled:
                last = time.monotonic()

    def _ask(self, session: FleetSession) -> None:
        self.attempts += 1
        message = capture_request_message(self.topics, self.device, self.request, self.keys, attempt=self.attempts,
                                          model=self.model, since=self.since, need=self._need(), limits=self.limits)
        session.publish(self.topics.capture_request(self.device), message).wait(self.timeout_s)

    def _handle(self, msg: Message) -> bool:
        ref = self.topics.parse(msg.topic)
        if not isinstance(ref, CaptureIndexTopic | CaptureChunkTopic) or ref.device != self.device or ref.request != self.request:
            return False
        if isinstance(ref, CaptureIndexTopic):
            self._set_index(msg.payload)
            return True
        if self.files is None:
            return False
        f = self._by_number.get(ref.file)
        if f is None or ref.index >= len(f.chunk_sha256) or ref.index in f.have:
            return f is not None
        if len(msg.payload) != f.chunk_length(ref.index) or \
                hashlib.sha256(msg.payload).hexdigest() != f.chunk_sha256[ref.index]:
            log.warning("capture chunk %s/%d failed its length or sha256; it will be asked for again", f.name, ref.index)
            return False
        fd = os.open(self._part(f), os.O_WRONLY | os.O_CREAT, 0o666)
        try:
            os.pwrite(fd, msg.payload, ref.index * CHUNK_SIZE)
        finally:
            os.close(fd)
        f.have.add(ref.index)
        if self.progress is not None:
            total = sum(len(x.chunk_sha256) for x in self.files)
            self.progress(sum(len(x.have) for x in self.files), total)
        return True

    # -- assembling ------------------------------------------------------------------

    def _assemble(self) -> PullResult:
        assert self.files is not None
        base = contained_path(self.out, self.device, what="device")
        records: list[TrainingRecord] = []
        nbytes = 0
        files = 0
        for f in self.files:
            model, _, seg = f.name.partition("/")
            part = self._part(f)
            if f.length == 0:
                part.touch()  # no chunk to wait for
            if _sha256_file(part) != f.sha256:
                self._skip(f.name, "the assembled file fails its sha256")
                continue
            target = contained_path(base, "segments", model, seg, what="capture file")
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(part, "rb") as src, atomic_writer(target) as dst:
                shutil.copyfileobj(src, dst, READ_BYTES)
            nbytes += f.length
            files += 1
            recs, _ = read_records(part.read_bytes())  # one file: at most MAX_FILE_BYTES
            for i, rec in enumerate(recs):
                try:
                    checked = decode_record(rec, model, self.since_time)
                except BadDataError as exc:
                    self._skip(f"{f.name} record {i}", str(exc))
                    continue
                if checked is not None:
                    records.append(checked)
        written = write_training_files(base, records)
        shutil.rmtree(self.work, ignore_errors=True)
        return PullResult(self.request, files, nbytes, len(records), self.attempts, written, self.missing,
                          list(self.skipped.values()), self.truncated)

    def _skip(self, name: str, reason: str) -> None:
        s = Skipped(repr(name), reason)
        log.debug("capture pull skipped %s", s)  # the CLI names it once, on stderr
        self.skipped.setdefault(str(s), s)


def _sha256_file(path: Path) -> str:
    """The file's sha256, read a block at a time (an empty file for a missing one)."""
    h = hashlib.sha256()
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return h.hexdigest()
    with fh:
        while block := fh.read(READ_BYTES):
            h.update(block)
    return h.hexdigest()


__all__ = ["CapturePull", "PullLimits", "PullResult", "Skipped", "capture_request_message", "write_training_files"]
