"""The console's record: every device state change and event of one fleet, in SQLite.

Messages arrive on the MQTT thread and go into a bounded queue (:meth:`Record.submit`,
:mod:`.inbox`: per-device rate, latest-wins states, drop and count); one writer thread
(``console-record``) applies what has queued up in one transaction, so 10,000 retained states
at start-up cost a handful of commits, not 10,000. The database runs in WAL mode: the web
pages read history over their own connections while the writer writes. The writer prunes
the history by age and by size (:mod:`.limits`).

No one message can stop the writer: each is applied inside its own savepoint, and one that
raises anything but a database error is rolled back and recorded as malformed instead.

What is current (each device's newest state digest, online flag, last seen, the fleet's
desired state) is also kept in memory, loaded from the database at start: the overview is
computed from it without touching the disk. History (timelines, versions over time, drift,
failures, rollout steps) is read from SQLite.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from edge_runtime.fleet.console.changes import describe_change
from edge_runtime.fleet.console.digest import (
    MAX_DESIRED_BYTES,
    MAX_EVENT_BYTES,
    MAX_STATE_BYTES,
    DesiredDigest,
    StateDigest,
    Target,
    digest_desired,
    digest_event,
    digest_state,
    parse_payload,
    raw_text,
)
from edge_runtime.fleet.console.history import DeviceHistory, ReleaseHistory, device_history, release_history
from edge_runtime.fleet.console.inbox import Inbox, InboxCounts, Incoming
from edge_runtime.fleet.console.limits import MIB, ConsoleLimits, prune_by_age, prune_by_size, used_bytes
from edge_runtime.fleet.console.schema import migrate
from edge_runtime.fleet.console.view import DeviceNow, FleetNow
from edge_runtime.updates.protocol import DesiredTopic, DeviceTopic, ManifestTopic, Topics, device_of

log = logging.getLogger("edge_runtime.fleet.console")

FLEET_SCOPE = "fleet"
MAX_BATCH = 5000
# Cut every payload to this before it is queued: a device cannot make the console hold a
# huge message (the digest still sees the original length).
MAX_QUEUED_BYTES = max(MAX_STATE_BYTES, MAX_EVENT_BYTES, MAX_DESIRED_BYTES) + 1

DesiredVerifier = Callable[[bytes, str | None], bool]  # (message, device or None) -> verified
SIZE_CHECK_S = 1.0


class Record:
    """The fleet's record in SQLite at ``path`` (created, or migrated, on open)."""

    def __init__(
        self,
        path: Path,
        topics: Topics,
        *,
        clock: Callable[[], float] = time.time,
        verifier: DesiredVerifier | None = None,
        limits: ConsoleLimits | None = None,
    ) -> None:
        self.path = path
        self.limits = limits or ConsoleLimits()
        self.topics = topics
        self.clock = clock
        self.verifier = verifier
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")  # WAL: a power cut may lose the last commits, never corrupts
        self._db.execute("PRAGMA busy_timeout = 10000")
        self._db.execute(f"PRAGMA journal_size_limit = {16 * MIB}")  # the WAL shrinks back after a checkpoint
        migrate(self._db)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._change = 0
        self._devices: dict[str, DeviceNow] = {}
        self._desired: DesiredDigest | None = None
        self._desired_verified: bool | None = None
        self._inbox = Inbox(self.limits)
        self.unreadable = 0  # messages whose recording raised (recorded as malformed instead)
        self.lost = 0  # messages of batches the database refused (logged)
        self.pruned = 0
        self._last_prune = float("-inf")
        self._last_size_check = float("-inf")
        self._writer: threading.Thread | None = None
        self._may_write = threading.Event()
        self._may_write.set()
        self._load()

    # ---- start-up and shutdown

    def _load(self) -> None:
        for device, online, last_seen, state_time, digest in self._db.execute(
            "SELECT device, online, last_seen, state_time, digest FROM devices"
        ):
            try:
                dg = StateDigest.from_json(digest) if digest else None
            except (ValueError, TypeError, KeyError):
                dg = None  # not written by this code: the next state from the device replaces it
            # the tally fields come from the digest: the state column of an older console held the raw document
            self._devices[device] = DeviceNow(
                device, None if online is None else bool(online), last_seen, state_time, dg, dg.tally_state() if dg else None
            )
        row = self._db.execute("SELECT digest, verified FROM desired WHERE scope = ?", (FLEET_SCOPE,)).fetchone()
        if row:
            self._desired = _desired_from_json(row[0])
            self._desired_verified = None if row[1] is None else bool(row[1])

    def start(self) -> Record:
        """Start the writer thread."""
        self._writer = threading.Thread(target=self._write_loop, name="console-record", daemon=True)
        self._writer.start()
        return self

    def close(self) -> None:
        """Apply what is queued within the close budget (the rest is dropped and counted), stop the writer,
        close the database: a SIGTERM is answered in seconds whatever the devices sent."""
        self._may_write.set()
        self._inbox.close(self.limits.close_budget_s)
        if self._writer is not None:
            self._writer.join(self.limits.close_budget_s + 30.0)
        self._db.close()

    def submit(self, topic: str, payload: bytes) -> bool:
        """Queue one message (any thread; never blocks); False when it was dropped (rate, queue full)."""
        ref = self.topics.parse(topic)
        msg = Incoming(topic, payload[:MAX_QUEUED_BYTES], len(payload), self.clock())
        return self._inbox.put(msg, ref.kind if ref else None, device_of(ref))

    def counts(self) -> InboxCounts:
        """What the queue dropped, merged and holds."""
        return self._inbox.counts()

    def pause(self) -> None:
        """Queue messages without applying them, until :meth:`resume`.

        While the broker sends a big fleet's retained messages, the writer's CPU-bound work
        would take the GIL from the network thread at every packet (a 5 ms switch interval
        each): 20,000 retained messages took minutes to arrive instead of a second.
        """
        self._may_write.clear()

    def resume(self) -> None:
        """Apply what queued up, and everything after it, again."""
        self._may_write.set()

    def _write_loop(self) -> None:
        while True:
            self._may_write.wait()
            items = self._inbox.take(MAX_BATCH, min(1.0, self.limits.prune_interval_s))
            if items is None:
                return
            if items:
                try:
                    self.apply(items)
                except Exception:  # the database refused the batch (disk full...): log, count, go on
                    self.lost += len(items)
                    log.exception("the console could not record %d messages", len(items))
            try:
                self.prune()
            except Exception:
                log.exception("the console could not prune its record")

    def prune(self, force: bool = False) -> int:
        """Delete history past ``retain_days`` (every ``prune_interval_s``) and the oldest rows while the
        database is over ``max_db_mb`` (checked every second); returns rows deleted."""
        now = time.monotonic()
        n = 0
        if force or now - self._last_prune >= self.limits.prune_interval_s:
            self._last_prune = now
            n += self._in_transaction(lambda: prune_by_age(self._db, self.clock() - self.limits.retain_days * 86400.0))
        if force or now - self._last_size_check >= SIZE_CHECK_S:
            self._last_size_check = now
            max_bytes = int(self.limits.max_db_mb * MIB)
            if used_bytes(self._db) > max_bytes:
                n += self._in_transaction(lambda: prune_by_size(self._db, max_bytes))
        self.pruned += n
        return n

    def _in_transaction(self, work: Callable[[], int]) -> int:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            n = work()
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return n

    # ---- writing

    def apply(self, messages: Iterable[Incoming]) -> int:
        """Record messages in one transaction (the writer thread, or a test directly); returns how many changed something."""
        changed = 0
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for msg in messages:
                db.execute("SAVEPOINT one")
                try:
                    changed += self._apply_one(msg)
                except sqlite3.Error:
                    raise  # the database itself: the batch fails
                except Exception as exc:  # this message: rolled back, recorded as malformed, the rest goes on
                    db.execute("ROLLBACK TO one")
                    changed += self._unreadable(msg, exc)
                db.execute("RELEASE one")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            with self._lock:
                self._devices.clear()
                self._load()  # back to what the database holds
            raise
        if changed:
            with self._changed:
                self._change += 1
                self._changed.notify_all()
        return changed

    def _apply_one(self, msg: Incoming) -> int:
        ref = self.topics.parse(msg.topic)
        if ref is None:
            return 0
        payload = msg.payload
        if isinstance(ref, DeviceTopic) and ref.leaf == "state":
            return self._state(ref.device, msg, payload)
        if isinstance(ref, DeviceTopic) and ref.leaf == "online":
            return self._online(ref.device, msg, payload)
        if isinstance(ref, DeviceTopic) and ref.leaf == "events":
            return self._event(ref.device, msg, payload)
        if isinstance(ref, DesiredTopic) or (isinstance(ref, DeviceTopic) and ref.leaf == "desired"):
            return self._desired_message(device_of(ref) or None, msg, payload)
        if isinstance(ref, ManifestTopic) and payload:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO releases (model, version, first_seen) VALUES (?, ?, ?)", (ref.name, ref.version, msg.time)
            )
            return cur.rowcount
        return 0

    def _unreadable(self, msg: Incoming, exc: Exception) -> int:
        self.unreadable += 1
        log.warning("the console could not record a message on %s (%s); recorded as malformed", msg.topic[:200], type(exc).__name__)
        ref = self.topics.parse(msg.topic)
        device = device_of(ref)
        if not device:
            return 0
        self._timeline(device, msg.time, "malformed", f"the console could not record this message ({type(exc).__name__})", raw_text(msg.payload))
        return 1

    def _device(self, device: str) -> DeviceNow:
        with self._lock:
            return self._devices.setdefault(device, DeviceNow(device))

    def _save_device(self, d: DeviceNow) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO devices (device, online, last_seen, state_time, digest, state) VALUES (?, ?, ?, ?, ?, ?)",
            (
                d.device,
                None if d.online is None else int(d.online),
                d.last_seen,
                d.state_time,
                d.digest.to_json() if d.digest else None,
                json.dumps(d.state) if d.state is not None else None,  # bounded: built from the digest
            ),
        )

    def _timeline(self, device: str, when: float, kind: str, summary: str, raw: str | None = None) -> None:
        self._db.execute(
            "INSERT INTO timeline (device, time, kind, summary, raw) VALUES (?, ?, ?, ?, ?)", (device, when, kind, summary, raw)
        )

    def _failure(self, device: str, model: str, version: int | None, source: str, reason: str, when: float) -> None:
        if model and version is not None:
            self._db.execute(
                "INSERT OR IGNORE INTO failures (device, model, version, source, reason, time) VALUES (?, ?, ?, ?, ?, ?)",
                (device, model, version, source, reason or "no reason given", when),
            )

    def _state(self, device: str, msg: Incoming, payload: bytes) -> int:
        d = self._device(device)
        changed = True
        if not payload:  # the retained state was cleared
            if d.digest is None:
                return 0
            new_digest, new_state = None, None
            self._timeline(device, msg.time, "state", "retained state cleared")
        else:
            new_digest = digest_state(payload, msg.size)
            changed = d.digest is None or d.digest.change_key() != new_digest.change_key()
            if new_digest.problem:
                new_state = None
                if changed:
                    self._timeline(device, msg.time, "malformed", describe_change(d.digest, new_digest), raw_text(payload))
            else:
                new_state = new_digest.tally_state()
                if changed:
                    self._timeline(device, msg.time, "state", describe_change(d.digest, new_digest))
                    self._history(device, d.digest, new_digest, msg.time)
        with self._lock:
            d.digest, d.state, d.state_time, d.last_seen = new_digest, new_state, msg.time, msg.time
        self._save_device(d)
        return int(changed)  # a republished state only moves "last seen": no live update for it

    def _history(self, device: str, prev: StateDigest | None, new: StateDigest, when: float) -> None:
        before = {m.name: m for m in (prev.models if prev and not prev.problem else ())}
        for m in new.models:
            if m.error:
                continue
            old = before.get(m.name)
            if old is None or old.error or old.active != m.active:
                self._db.execute(
                    "INSERT INTO versions (device, model, version, time) VALUES (?, ?, ?, ?)", (device, m.name, m.active, when)
                )
            for v, reason in m.failed.items():
                if v.isdigit():
                    self._failure(device, m.name, int(v), "state.failed", reason, when)
            if m.drift is not None and (old is None or old.drift != m.drift):
                self._db.execute(
                    "INSERT INTO drift (device, model, time, score, alert) VALUES (?, ?, ?, ?, ?)",
                    (device, m.name, when, m.drift.score, int(m.drift.alert)),
                )
        if new.last_error:
            self._failure(device, new.error_model, new.error_version, "state.last_error", new.last_error, when)

    def _online(self, device: str, msg: Incoming, payload: bytes) -> int:
        value, _ = parse_payload(payload, 64, "online flag") if payload else (None, None)
        online = value if isinstance(value, bool) else None
        d = self._device(device)
        changed = online != d.online
        if changed:
            self._timeline(device, msg.time, "online", {True: "online", False: "offline", None: "online flag cleared or unreadable"}[online])
        with self._lock:
            d.online = online
            if online is not None:
                d.last_seen = msg.time
        self._save_device(d)
        return int(changed)

    def _event(self, device: str, msg: Incoming, payload: bytes) -> int:
        e = digest_event(payload, msg.size)
        self._timeline(device, msg.time, "malformed" if e.problem else "event", e.summary(), raw_text(payload) if e.problem else None)
        if e.kind in ("failed", "rejected", "rolled_back"):
            version = e.from_version if e.kind == "rolled_back" else e.version
            self._failure(device, e.model, version, f"event.{e.kind}", e.reason, msg.time)
        d = self._device(device)
        with self._lock:
            d.last_seen = msg.time
        self._save_device(d)
        return 1

    def _desired_message(self, device: str | None, msg: Incoming, payload: bytes) -> int:
        scope = f"device:{device}" if device else FLEET_SCOPE
        if not payload:
            self._db.execute("DELETE FROM desired WHERE scope = ?", (scope,))
            if device is None:
                with self._lock:
                    self._desired, self._desired_verified = None, None
            return 1
        dd = digest_desired(payload, msg.size)
        verified = None
        if self.verifier is not None:
            verified = False if dd.problem else self.verifier(payload, device)
        self._db.execute(
            "INSERT OR REPLACE INTO desired (scope, seq, digest, verified, time) VALUES (?, ?, ?, ?, ?)",
            (scope, dd.seq, _desired_to_json(dd), None if verified is None else int(verified), msg.time),
        )
        for t in dd.targets:
            last = self._db.execute(
                "SELECT version, percent FROM rollout_steps WHERE scope = ? AND model = ? ORDER BY id DESC LIMIT 1", (scope, t.model)
            ).fetchone()
            if last != (t.version, t.percent):
                self._db.execute(
                    "INSERT INTO rollout_steps (scope, seq, model, version, percent, salt, verified, time) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (scope, dd.seq, t.model, t.version, t.percent, t.salt, None if verified is None else int(verified), msg.time),
                )
        if device is None:
            with self._lock:
                self._desired, self._desired_verified = dd, verified
        return 1

    # ---- reading

    @property
    def change(self) -> int:
        """Bumped after every applied batch."""
        with self._lock:
            return self._change

    def wait_change(self, after: int, timeout_s: float) -> int:
        """Block until the change counter passes ``after`` (or ``timeout_s``); returns it."""
        with self._changed:
            self._changed.wait_for(lambda: self._change != after, timeout_s)
            return self._change

    def now(self) -> FleetNow:
        """A copy of the current view, with the rollout steps and releases from the database."""
        with self._lock:
            devices = [DeviceNow(d.device, d.online, d.last_seen, d.state_time, d.digest, d.state) for d in self._devices.values()]
            desired, verified, change = self._desired, self._desired_verified, self._change
        with self.reader() as db:
            steps = [
                dict(zip(("scope", "seq", "model", "version", "percent", "salt", "verified", "time"), row))
                for row in db.execute(
                    "SELECT scope, seq, model, version, percent, salt, verified, time FROM rollout_steps WHERE scope = ? ORDER BY id",
                    (FLEET_SCOPE,),
                )
            ]
            releases = [(str(m), int(v)) for m, v in db.execute("SELECT model, version FROM releases ORDER BY model, version")]
        return FleetNow(devices, desired, verified, steps, releases, change)

    def device(self, device: str) -> DeviceNow | None:
        """The current view of one device."""
        with self._lock:
            d = self._devices.get(device)
            return None if d is None else DeviceNow(d.device, d.online, d.last_seen, d.state_time, d.digest, d.state)

    def reader(self) -> _Closing:
        """A new read-only connection, closed at the end of the ``with`` block."""
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        db.execute("PRAGMA busy_timeout = 10000")
        return _Closing(db)


    def history(self, device: str, limit: int = 500) -> DeviceHistory:
        """A device's timeline (newest first, at most ``limit``), versions and drift over time."""
        with self.reader() as db:
            return device_history(db, device, limit)

    def release(self, model: str, version: int) -> ReleaseHistory:
        """A release's steps (every scope), its failures, and the devices that ever ran it."""
        with self.reader() as db:
            return release_history(db, model, version)


class _Closing:
    """A connection that closes at the end of its ``with`` block (sqlite3's only ends the transaction)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        return self.db

    def __exit__(self, *exc: object) -> None:
        self.db.close()


def _desired_to_json(dd: DesiredDigest) -> str:
    return json.dumps({"seq": dd.seq, "problem": dd.problem, "targets": [t.__dict__ for t in dd.targets]})


def _desired_from_json(text: str) -> DesiredDigest:
    d = json.loads(text)
    return DesiredDigest(d["seq"], tuple(Target(**t) for t in d["targets"]), d["problem"])


__all__ = ["FLEET_SCOPE", "DeviceNow", "FleetNow", "Incoming", "Record", "describe_change"]
