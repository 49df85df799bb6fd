"""``edge-runtime fleet capture pull``: fetch a device's captured requests and answers.

The operator signs a capture request (role ``models``, like a desired state) and publishes
it retained on the device's ``capture/request`` topic; a device that is offline answers when
it next connects. The answer (``capture/<req>/index`` and chunks, see
:mod:`edge_runtime.updates.capture`) is written chunk by chunk into ``.part`` files under
``OUT/.pull-<device>-<req>/``, each chunk checked against its sha256 before it is written.
When the stream stalls or the connection drops, the pull reconnects and asks again with
``need`` naming only the chunks it lacks; a pull started again with the same ``--out``
finds what it has by re-hashing its ``.part`` files, so nothing is fetched twice.

Once every file is whole (its sha256 checked), the records are decoded into files ready
for retraining, per model version (docs/monitoring.md)::

    OUT/<device>/<model>/v<version>/inputs.npz     arrays by input name, rows concatenated
    OUT/<device>/<model>/v<version>/outputs.npz    (or "<i>/NAME" per record when shapes differ)
    OUT/<device>/<model>/v<version>/records.jsonl  time, reason, rows, shadow version per record
    OUT/<device>/segments/<model>/seg-*.jsonl      the raw segments, as the device wrote them
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

import numpy as np

from edge_runtime.atomic import write_bytes_atomic
from edge_runtime.exceptions import TransportError, UsageError
from edge_runtime.fleet.session import BrokerOptions, FleetSession
from edge_runtime.monitoring.capture import decode_array, read_records
from edge_runtime.trust.canonical import canonical_json
from edge_runtime.trust.keys import PrivateKey, sign
from edge_runtime.updates.capture import CHUNK_SIZE, capture_file_name_ok
from edge_runtime.updates.mqtt import Message
from edge_runtime.updates.protocol import CAPTURE_TYPE, REQUEST_ID_RE, Topics, signed_message

log = logging.getLogger("edge_runtime.fleet")

STATE_FILE = "pull.json"
MAX_INDEX_BYTES = 16 * 1024 * 1024


def capture_request_message(topics: Topics, device: str, request: str, keys: Sequence[PrivateKey], *,
                            attempt: int = 0, model: str | None = None, since: str | None = None,
                            need: dict[str, list[int]] | None = None, expires_in_s: float = 3600.0) -> bytes:
    """A signed capture request."""
    expires = (_dt.datetime.now(_dt.UTC) + _dt.timedelta(seconds=expires_in_s)).isoformat(timespec="seconds")
    doc: dict[str, Any] = {"_type": CAPTURE_TYPE, "fleet": topics.fleet, "device": device, "request": request,
                           "attempt": attempt, "expires": expires.replace("+00:00", "Z")}
    if model is not None:
        doc["model"] = model
    if since is not None:
        doc["since"] = since
    if need is not None:
        doc["need"] = need
    payload = canonical_json(doc)
    return signed_message("capture", payload, [sign(k, payload) for k in keys])


@dataclass
class _File:
    name: str
    length: int
    sha256: str
    chunk_sha256: list[str]
    have: set[int] = field(default_factory=set)

    @property
    def complete(self) -> bool:
        return len(self.have) == len(self.chunk_sha256)


@dataclass
class PullResult:
    """What a pull fetched and wrote."""

    request: str
    files: int
    bytes: int
    records: int
    attempts: int
    written: list[Path]
    missing: list[str]  # files the device no longer had (dropped by its ring meanwhile)


class CapturePull:
    """One pull: request, receive, resume, assemble."""

    def __init__(self, options: BrokerOptions, topics: Topics, device: str, keys: Sequence[PrivateKey], out: Path, *,
                 model: str | None = None, since: str | None = None, stall_s: float = 20.0,
                 progress: Callable[[int, int], None] | None = None, timeout_s: float = 30.0) -> None:
        if not keys:
            raise UsageError("a capture request must be signed: give --sign-key")
        self.options = options
        self.timeout_s = timeout_s  # each wait for the broker (CONNACK, SUBACK, an ack)
        self.topics = topics
        self.device = device
        self.keys = list(keys)
        self.out = Path(out)
        self.model = model
        self.since = since
        self.stall_s = stall_s
        self.progress = progress
        self.request = self._request_id()
        self.work = self.out / f".pull-{device}-{self.request}"
        self.files: list[_File] | None = None
        self.missing: list[str] = []
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
            if doc.get("model") == self.model and doc.get("since") == self.since and REQUEST_ID_RE.match(
                    str(doc.get("request", ""))):
                return str(doc["request"])
        return secrets.token_hex(8)

    def _load_state(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        path = self.work / STATE_FILE
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            doc = None
        if doc is None:
            write_bytes_atomic(path, json.dumps({"request": self.request, "device": self.device, "model": self.model,
                                                 "since": self.since}).encode())
            return
        if doc.get("files"):
            self._set_index(doc["files"], doc.get("missing", []), save=False)

    def _part(self, f: _File) -> Path:
        return self.work / (f.name.replace("/", "__") + ".part")

    def _set_index(self, entries: list[dict[str, Any]], missing: list[str], *, save: bool = True) -> None:
        files = []
        for e in entries:
            name = str(e["name"])
            if not capture_file_name_ok(name) or int(e.get("chunk_size", CHUNK_SIZE)) != CHUNK_SIZE:
                raise TransportError(f"capture index names a bad file {name!r}")
            files.append(_File(name, int(e["length"]), str(e["sha256"]), [str(c) for c in e["chunk_sha256"]]))
        known = {f.name: f for f in self.files or []}
        for f in files:
            old = known.get(f.name)
            if old is not None and old.sha256 == f.sha256:
                f.have = old.have
            else:
                f.have = self._rehash(f)
        self.files = files
        self.missing = sorted(set(self.missing) | set(missing))
        if save:
            write_bytes_atomic(self.work / STATE_FILE, json.dumps({
                "request": self.request, "device": self.device, "model": self.model, "since": self.since,
                "files": entries, "missing": self.missing}).encode())

    def _rehash(self, f: _File) -> set[int]:
        """The chunks already in a ``.part`` file (after an interrupted pull)."""
        have: set[int] = set()
        part = self._part(f)
        if not part.exists():
            with open(part, "wb") as fh:
                fh.truncate(f.length)
            return have
        with open(part, "rb") as fh:
            for i, want in enumerate(f.chunk_sha256):
                fh.seek(i * CHUNK_SIZE)
                if hashlib.sha256(fh.read(CHUNK_SIZE)).hexdigest() == want:
                    have.add(i)
        return have

    def _need(self) -> dict[str, list[int]] | None:
        if self.files is None:
            return None
        return {f.name: sorted(set(range(len(f.chunk_sha256))) - f.have) for f in self.files if not f.complete}

    @property
    def done(self) -> bool:
        """Every file of the answer is here."""
        return self.files is not None and all(f.complete for f in self.files)

    # -- the transfer ----------------------------------------------------------------

    def run(self, timeout_s: float = 600.0) -> PullResult:
        """Pull until complete (reconnecting and resuming as needed) or ``timeout_s`` passes."""
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
        try:
            with FleetSession(self.options, self.topics, self.timeout_s) as session:  # the request is done: clear it
                session.publish(self.topics.capture_request(self.device), b"").wait(self.timeout_s)
        except TransportError as exc:
            log.warning("capture request left retained on the broker: %s", exc)
        return self._assemble()

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
            if self._handle(msg):
                last = time.monotonic()

    def _ask(self, session: FleetSession) -> None:
        self.attempts += 1
        message = capture_request_message(self.topics, self.device, self.request, self.keys, attempt=self.attempts,
                                          model=self.model, since=self.since, need=self._need())
        session.publish(self.topics.capture_request(self.device), message).wait(self.timeout_s)

    def _handle(self, msg: Message) -> bool:
        ref = self.topics.parse(msg.topic)
        if ref is None or ref.device != self.device or ref.name != self.request:
            return False
        if ref.kind == "capture_index":
            if len(msg.payload) > MAX_INDEX_BYTES:
                return False
            try:
                doc = json.loads(msg.payload)
                self._set_index(doc["files"], list(doc.get("missing", [])))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("capture index from %s ignored: %s", self.device, exc)
                return False
            return True
        if ref.kind == "capture_chunk" and self.files is not None and 0 <= ref.version < len(self.files):
            f = self.files[ref.version]
            if ref.index >= len(f.chunk_sha256) or ref.index in f.have:
                return True
            if hashlib.sha256(msg.payload).hexdigest() != f.chunk_sha256[ref.index]:
                log.warning("capture chunk %s/%d failed its sha256; it will be asked for again", f.name, ref.index)
                return False
            fd = os.open(self._part(f), os.O_WRONLY)
            try:
                os.pwrite(fd, msg.payload, ref.index * CHUNK_SIZE)
            finally:
                os.close(fd)
            f.have.add(ref.index)
            if self.progress is not None:
                total = sum(len(x.chunk_sha256) for x in self.files)
                self.progress(sum(len(x.have) for x in self.files), total)
            return True
        return False

    # -- assembling ------------------------------------------------------------------

    def _assemble(self) -> PullResult:
        assert self.files is not None
        seg_root = self.out / self.device / "segments"
        records: list[dict[str, Any]] = []
        nbytes = 0
        for f in self.files:
            data = self._part(f).read_bytes()
            if hashlib.sha256(data).hexdigest() != f.sha256:
                raise TransportError(f"capture file {f.name}: the assembled file fails its sha256")
            target = seg_root / f.name
            target.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(target, data)
            nbytes += len(data)
            recs, _ = read_records(data)
            records.extend(recs)
        written = write_training_files(self.out / self.device, records, self.since)
        shutil.rmtree(self.work, ignore_errors=True)
        return PullResult(self.request, len(self.files), nbytes, len(records), self.attempts, written, self.missing)


def _after(record: dict[str, Any], since: str | None) -> bool:
    if since is None:
        return True
    try:
        return _dt.datetime.fromisoformat(str(record["time"])) >= _dt.datetime.fromisoformat(since)
    except (KeyError, ValueError):
        return True


def write_training_files(base: Path, records: list[dict[str, Any]], since: str | None = None) -> list[Path]:
    """``inputs.npz``, ``outputs.npz`` and ``records.jsonl`` per model version (module docstring)."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for rec in records:
        if _after(rec, since):
            groups.setdefault((str(rec.get("model")), int(rec.get("version", 0))), []).append(rec)
    written: list[Path] = []
    for (model, version), recs in sorted(groups.items()):
        recs.sort(key=lambda r: str(r.get("time", "")))
        d = base / model / f"v{version}"
        d.mkdir(parents=True, exist_ok=True)
        for side in ("inputs", "outputs"):
            arrays = [{k: decode_array(v) for k, v in r[side].items()} for r in recs]
            path = d / f"{side}.npz"
            _write_npz(path, _join(arrays))
            written.append(path)
        lines = []
        for r in recs:
            meta: dict[str, Any] = {k: r[k] for k in ("time", "model", "version", "reason") if k in r}
            first = next(iter(r["inputs"].values()), None)
            meta["rows"] = int(first["shape"][0]) if first and first["shape"] else 1
            if "shadow" in r:
                meta["shadow_version"] = r["shadow"].get("version")
                meta["shadow_rows_differing"] = r["shadow"].get("rows_differing")
                meta["shadow_outputs"] = {k: decode_array(v).tolist() for k, v in r["shadow"].get("outputs", {}).items()}
            lines.append(json.dumps(meta, sort_keys=True))
        path = d / "records.jsonl"
        write_bytes_atomic(path, ("\n".join(lines) + "\n").encode())
        written.append(path)
    return written


def _join(per_record: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Rows of every record concatenated per tensor, when they line up; else ``"<i>/NAME"`` per record
    (the converter's whole-call form, so the files feed ``edge-convert --validation`` as they are)."""
    if not per_record:
        return {}
    names = list(per_record[0])
    joinable = all(list(r) == names for r in per_record) and all(
        len({(r[n].dtype.str, r[n].shape[1:]) for r in per_record}) == 1 and per_record[0][n].ndim >= 1
        for n in names)
    if joinable:
        return {n: np.concatenate([r[n] for r in per_record]) for n in names}
    return {f"{i}/{n}": a for i, r in enumerate(per_record) for n, a in r.items()}


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    write_bytes_atomic(path, buf.getvalue())


__all__ = ["CapturePull", "PullResult", "capture_request_message", "write_training_files"]
