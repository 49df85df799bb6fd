"""Capture upload, device side: answer a signed capture request with the captured segments.

The operator (``edge-runtime fleet capture pull``) publishes a signed request, retained, on
``devices/<id>/capture/request``; the device answers on its own ``devices/<id>/capture/<req>/``
topics: first an ``index`` (every file, its length, sha256 and per-chunk sha256), then the
chunks, QoS 1, paced to ``[monitoring] capture_max_kbps`` with one chunk in flight. A resumed
pull is a new signed request with the same request id and ``need`` naming the chunks still
missing; the device sends only those. Sealed segments never change, so a file name names
its bytes for as long as the ring keeps it (docs/monitoring.md).

Every request carries a fresh ``nonce``; the device answers a nonce once and remembers it
until the request expires (:mod:`edge_runtime.updates.nonces`, kept across restarts), so a
copy of a signed request sent again within its hour is refused with a ``capture_refused``
event (reason ``replay``). The request's ``max_files`` and ``max_bytes`` bound the answer;
the index says how many files were left out (``truncated``).

:func:`parse_capture_request` is pure; :class:`CaptureResponder` does the I/O.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime.bundle.manifest import NAME_RE
from edge_runtime.exceptions import EdgeRuntimeError, TransportError
from edge_runtime.monitoring.capture import SEGMENT_RE
from edge_runtime.trust.root import TrustRoot
from edge_runtime.updates.exceptions import UpdateMessageError
from edge_runtime.updates.nonces import MAX_NONCES, NONCE_RE, load_book, save_book
from edge_runtime.updates.protocol import CAPTURE_TYPE, REQUEST_ID_RE, Topics
from edge_runtime.updates.verify import echo, open_signed_document, parse_utc_time

log = logging.getLogger("edge_runtime.updates")

CAPTURE_FIELDS = frozenset({"_type", "fleet", "device", "request", "attempt", "model", "since", "need", "expires",
                            "nonce", "max_files", "max_bytes"})
CHUNK_SIZE = 32 * 1024
MAX_NEED_FILES = 10_000
MAX_REQUEST_BYTES = 2**62
ACK_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class CaptureRequest:
    """A verified capture request."""

    request: str
    attempt: int
    model: str | None
    since: _dt.datetime | None
    need: dict[str, tuple[int, ...]] | None  # file -> chunk indices still missing; None = everything
    expires: _dt.datetime
    nonce: str = ""
    max_files: int = MAX_NEED_FILES
    max_bytes: int = MAX_REQUEST_BYTES


def parse_capture_request(message: bytes, root: TrustRoot, *, fleet: str, device: str) -> CaptureRequest:
    """Verify a capture request for ``device`` of ``fleet`` (signed by the ``models`` role)."""
    what = f"capture request for device {device}"
    doc, _ = open_signed_document(message, "capture", root, what, CAPTURE_TYPE, CAPTURE_FIELDS)
    if doc.get("fleet") != fleet or doc.get("device") != device:
        raise UpdateMessageError(f"{what}: signed for fleet {echo(doc.get('fleet'))} device {echo(doc.get('device'))}")
    request = doc.get("request")
    if not isinstance(request, str) or not REQUEST_ID_RE.match(request):
        raise UpdateMessageError(f"{what}: 'request' must be 8 to 32 lower-case hex digits, found {echo(request)}")
    attempt = doc.get("attempt", 0)
    if not isinstance(attempt, int) or isinstance(attempt, bool) or not 0 <= attempt < 2**31:
        raise UpdateMessageError(f"{what}: 'attempt' must be a non-negative integer")
    model = doc.get("model")
    if model is not None and (not isinstance(model, str) or not NAME_RE.match(model)):
        raise UpdateMessageError(f"{what}: 'model' must be a model name, found {echo(model)}")
    since = None if doc.get("since") is None else parse_utc_time(doc["since"], what, "since")
    need_raw = doc.get("need")
    need: dict[str, tuple[int, ...]] | None = None
    if need_raw is not None:
        if not isinstance(need_raw, dict) or len(need_raw) > MAX_NEED_FILES:
            raise UpdateMessageError(f"{what}: 'need' must map at most {MAX_NEED_FILES} files to chunk lists")
        need = {}
        for name, chunks in need_raw.items():
            if not capture_file_name_ok(name) or not isinstance(chunks, list) or not all(
                    isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 2**31 for c in chunks):
                raise UpdateMessageError(f"{what}: 'need' entry {echo(name)} must be a capture file and chunk numbers")
            need[name] = tuple(sorted(set(chunks)))
    expires = parse_utc_time(doc.get("expires"), what)
    nonce = doc.get("nonce")
    if not isinstance(nonce, str) or not NONCE_RE.match(nonce):
        raise UpdateMessageError(f"{what}: 'nonce' must be 32 lower-case hex digits, found {echo(nonce)}")
    max_files = _bound(doc.get("max_files", MAX_NEED_FILES), MAX_NEED_FILES, what, "max_files")
    max_bytes = _bound(doc.get("max_bytes", MAX_REQUEST_BYTES), MAX_REQUEST_BYTES, what, "max_bytes")
    return CaptureRequest(request, attempt, model, since, need, expires, nonce, max_files, max_bytes)


def _bound(value: Any, high: int, what: str, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= high:
        raise UpdateMessageError(f"{what}: {name!r} must be an integer in [1, {high}], found {echo(value)}")
    return value


def capture_file_name_ok(name: str) -> bool:
    model, _, seg = name.partition("/")
    return bool(NAME_RE.match(model)) and bool(SEGMENT_RE.match(seg))


@dataclass(frozen=True)
class CaptureFile:
    """One file of an answer."""

    name: str  # <model>/seg-<n>.jsonl
    path: Path
    length: int
    sha256: str
    chunk_sha256: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """The index entry."""
        return {"name": self.name, "length": self.length, "sha256": self.sha256, "chunk_size": CHUNK_SIZE,
                "chunk_sha256": list(self.chunk_sha256)}


def describe_file(name: str, path: Path) -> CaptureFile:
    """Hash a sealed segment for the index."""
    data = path.read_bytes()
    chunks = tuple(hashlib.sha256(data[i:i + CHUNK_SIZE]).hexdigest() for i in range(0, len(data), CHUNK_SIZE))
    return CaptureFile(name, path, len(data), hashlib.sha256(data).hexdigest(), chunks)


@dataclass
class _Plan:
    files: list[CaptureFile]
    missing: list[str] = field(default_factory=list)
    truncated: int = 0  # files left out by the request's max_files / max_bytes


class CaptureResponder:
    """Answers capture requests on a thread of its own (one answer at a time; a newer request
    cancels the one being sent)."""

    def __init__(
        self,
        topics: Topics,
        device_id: str,
        root: Callable[[], TrustRoot],
        transport: Any,
        *,
        capture_dir: Path | None,
        seal: Callable[[], None] = lambda: None,
        max_kbps: float = 256.0,
        clock_trusted: Callable[[], bool] = lambda: False,
        on_done: Callable[[str, dict[str, Any]], None] = lambda kind, fields: None,
        nonce_file: Path | None = None,
    ) -> None:
        self.topics = topics
        self.device_id = device_id
        self.root = root
        self.transport = transport
        self.capture_dir = capture_dir
        self.seal = seal
        self.max_kbps = max_kbps
        self.clock_trusted = clock_trusted
        self.on_done = on_done
        self._plans: dict[str, _Plan] = {}
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self.nonce_file = nonce_file
        self._nonces = load_book(nonce_file)
        self._replays_reported: set[str] = set()

    def on_request(self, message: bytes) -> None:
        """A message on ``capture/request`` (the updates thread): verify it and start the answer."""
        if not message:
            return  # the operator cleared its retained request
        try:
            req = parse_capture_request(message, self.root(), fleet=self.topics.fleet, device=self.device_id)
        except EdgeRuntimeError as exc:
            log.warning("capture request rejected: %s", exc)
            return
        now = _dt.datetime.now(_dt.UTC) if self.clock_trusted() else None
        if now is not None and req.expires <= now:
            log.warning("capture request %s rejected: it expired at %s", req.request, req.expires.isoformat())
            return
        if not self._nonces.admit(req.nonce, req.expires, now):
            self._refuse_replay(req)
            return
        try:
            save_book(self.nonce_file, self._nonces)
        except OSError as exc:  # answered anyway; a restart before the next save forgets this nonce
            log.warning("capture nonces not saved (%s)", exc)
        plan = self._plans.get(req.request) if req.need is not None else None
        if plan is None:
            plan = self._plan(req)
            self._plans = {k: v for k, v in list(self._plans.items())[-3:]}
            self._plans[req.request] = plan
        self._cancel.set()  # the answer being sent stops after its current chunk (not waited for here)
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._send, args=(req, plan, self._cancel), name="edge-capture-send",
                                        daemon=True)
        self._thread.start()

    def _refuse_replay(self, req: CaptureRequest) -> None:
        """A nonce answered before: a copy of an earlier request (one event per nonce per run)."""
        log.warning("capture request %s refused: its nonce was answered before (a replay)", req.request)
        if req.nonce not in self._replays_reported:
            if len(self._replays_reported) >= MAX_NONCES:
                self._replays_reported.clear()
            self._replays_reported.add(req.nonce)
            self.on_done("capture_refused", {"request": req.request, "reason": "replay"})

    def stop(self, timeout_s: float = 5.0) -> None:
        """Cancel the answer being sent and wait up to ``timeout_s`` for its thread (shutdown)."""
        self._cancel.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
        self._thread = None

    def _plan(self, req: CaptureRequest) -> _Plan:
        """The files of the answer: every sealed segment of the model(s), newer than ``since``."""
        if req.need is None:
            self.seal()  # what was captured up to now goes with this answer
        plan = _Plan([])
        base = self.capture_dir
        if base is None or not base.is_dir():
            return plan
        since = req.since.timestamp() if req.since is not None else None
        nbytes = 0
        for model_dir in sorted(p for p in base.iterdir() if p.is_dir() and NAME_RE.match(p.name)):
            if req.model is not None and model_dir.name != req.model:
                continue
            for seg in sorted(model_dir.iterdir()):
                if not SEGMENT_RE.match(seg.name):
                    continue
                try:
                    st = seg.stat()
                    if since is not None and st.st_mtime < since:
                        continue
                    if len(plan.files) >= req.max_files or nbytes + st.st_size > req.max_bytes:
                        plan.truncated += 1  # past the operator's limits: named by count in the index
                        continue
                    plan.files.append(describe_file(f"{model_dir.name}/{seg.name}", seg))
                    nbytes += plan.files[-1].length
                except OSError:
                    continue  # dropped by the ring meanwhile
        return plan

    def _send(self, req: CaptureRequest, plan: _Plan, cancel: threading.Event) -> None:
        files = plan.files
        missing = list(plan.missing)
        if req.need is not None:
            known = {f.name for f in files}
            missing += sorted(n for n in req.need if n not in known)
        index = {
            "request": req.request, "attempt": req.attempt, "device": self.device_id,
            "files": [f.to_json() for f in files], "missing": missing, "truncated": plan.truncated,
        }
        sent = 0
        nbytes = 0
        try:
            self._publish(self.topics.capture_index(self.device_id, req.request), json.dumps(index).encode())
            for number, f in enumerate(files):
                wanted = range(len(f.chunk_sha256)) if req.need is None else req.need.get(f.name, ())
                if not wanted:
                    continue
                try:
                    fh = open(f.path, "rb")
                except OSError:
                    log.warning("capture %s: %s was dropped before it was sent", req.request, f.name)
                    continue
                with fh:
                    for i in wanted:
                        if cancel.is_set():
                            return
                        if i >= len(f.chunk_sha256):
                            continue
                        fh.seek(i * CHUNK_SIZE)
                        data = fh.read(CHUNK_SIZE)
                        t0 = time.monotonic()
                        self._publish(self.topics.capture_chunk(self.device_id, req.request, number, i), data)
                        sent += 1
                        nbytes += len(data)
                        pause = len(data) * 8 / (self.max_kbps * 1000) - (time.monotonic() - t0)
                        if pause > 0 and cancel.wait(pause):
                            return
        except TransportError as exc:
            log.info("capture %s: answer interrupted (%s); the operator resumes it", req.request, exc)
            return
        log.info("capture %s: sent %d chunk(s), %d bytes, of %d file(s)", req.request, sent, nbytes, len(files))
        self.on_done("capture_sent", {"request": req.request, "chunks": sent, "bytes": nbytes, "files": len(files)})

    def _publish(self, topic: str, payload: bytes) -> None:
        if not self.transport.connected:
            raise TransportError("not connected")
        pub = self.transport.publish(topic, payload, qos=1)
        pub.wait(ACK_TIMEOUT_S)


__all__ = ["CHUNK_SIZE", "CaptureRequest", "CaptureResponder", "describe_file", "parse_capture_request"]
