"""The device's update state machine: desired -> manifest -> chunks -> verify -> install -> activate -> report.

Every check is a pure function of :mod:`edge_runtime.updates.verify`; this module only
decides what to do next and does the I/O around it. It runs on one thread (the service's
``edge-updates`` thread), except :meth:`Updater.on_chunk`, which the network thread calls
so that a chunk is on disk before the broker gets its PUBACK (a killed process then loses
nothing it acknowledged). One update runs at a time: a job for one model version.

Phases of a job (:class:`~edge_runtime.updates.job.Phase`): ``manifest`` (waiting for the signed manifest), ``downloading``,
``activating`` (waiting for the daemon to confirm the swap). Verification and install run
inside one step. A download that does not fit the staging directory is refused before it
starts, and one whose writes fail (disk full, quota, I/O error) is aborted: its staging
files are deleted, a ``rejected`` event and ``last_error`` say why, and the old version
keeps serving. With ``selftest`` given (no daemon serving, e.g. the fleet simulator) the
self-test runs in-process and activation is immediate.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from edge_runtime import __version__
from edge_runtime.atomic import write_bytes_atomic
from edge_runtime.bundle.reader import verify_manifest_signature
from edge_runtime.bundle.sealed import DecryptionError, content_key
from edge_runtime.exceptions import BadDataError, EdgeRuntimeError, RollbackError, StoreError, TransportError
from edge_runtime.store.store import ModelStore, Resolved
from edge_runtime.trust.root import check_root_expiry
from edge_runtime.updates.download import (
    Download,
    Throttle,
    plan_filters,
    release_dir,
    remove_dir,
    sweep_staging,
)
from edge_runtime.updates.exceptions import ChunkError, IncompatibleError
from edge_runtime.updates.job import (
    ChunkRejected,
    ChunkWritten,
    DownloadFailed,
    Job,
    Phase,
    SubscriptionRefused,
    UpdaterEvent,
    UpdaterSettings,
    installed_manifest,
    job_summary,
    model_view,
    models_summary,
)
from edge_runtime.updates.policy_steps import PolicySteps
from edge_runtime.updates.protocol import TopicRef
from edge_runtime.updates.report import Reporter, Transport
from edge_runtime.updates.roots import PendingRoots, save_root
from edge_runtime.updates.traffic import TRAFFIC_FILE, Traffic
from edge_runtime.updates.verify import (
    Desired,
    ModelView,
    SeqFloor,
    check_expiry,
    check_release,
    check_seq,
    claimed_seq,
    desired_report,
    plan_target,
    target_entries,
    verify_desired,
    verify_manifest_message,
)

log = logging.getLogger("edge_runtime.updates")

STATE_FILE = "updater.json"
MAX_PENDING_ROOTS = 16  # trust roots waiting for an earlier version
PROGRESS_STEP = 10  # percent between "downloading" events
TICK_S = 0.2  # timers: stall detection
ACTIVATION_POLL_S = 0.02  # how often the store is read while the daemon swaps
# Reasons quote what a message held (field names, values): an attacker chooses them. Each is
# cut to this length before it is kept, reported or saved, and only this many distinct ones
# are remembered to report each once.
MAX_REASON_CHARS = 400
MAX_REPORTED = 128


def bounded_reason(reason: str) -> str:
    """``reason`` cut to :data:`MAX_REASON_CHARS` (what is kept, published and saved)."""
    if len(reason) <= MAX_REASON_CHARS:
        return reason
    return reason[: MAX_REASON_CHARS - 20] + f"... ({len(reason)} chars)"


class ReportedOnce:
    """The last :data:`MAX_REPORTED` things reported, oldest forgotten first: a flood of
    distinct reasons costs a bounded set, at worst an old one is reported again."""

    def __init__(self, limit: int = MAX_REPORTED) -> None:
        self.limit = limit
        self._keys: dict[tuple[Any, ...], None] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: tuple[Any, ...]) -> None:
        """Remember ``key``; forget the oldest past the limit."""
        self._keys[key] = None
        while len(self._keys) > self.limit:
            del self._keys[next(iter(self._keys))]

    def clear(self) -> None:
        """Forget everything (a new desired state: report afresh)."""
        self._keys.clear()


class Updater(PolicySteps):
    """One device's update logic. Call :meth:`load` once, then feed it connection events and messages."""

    def __init__(
        self,
        settings: UpdaterSettings,
        store: ModelStore,
        transport: Transport,
        *,
        wake: Callable[[], None] = lambda: None,
        selftest: Callable[[Resolved], None] | None = None,
        clock_trusted: Callable[[], bool] = lambda: False,
        monotonic: Callable[[], float] = time.monotonic,
        post: Callable[[UpdaterEvent], None] | None = None,
        wall: Callable[[], _dt.datetime] = lambda: _dt.datetime.now(_dt.UTC),
    ) -> None:
        self.settings = settings
        self.store = store
        self.transport = transport
        self.topics = settings.topics
        self.device_id = settings.device_id
        self.wake = wake
        self.selftest = selftest
        self.clock_trusted = clock_trusted
        self.monotonic = monotonic
        self.post = post  # hands network-thread results to the updater thread; None: handle inline
        self.reporter = Reporter(transport, self.topics, self.device_id, settings.max_events)
        self.amend_state: Callable[[dict[str, Any]], None] | None = None  # adds to the state document
        self.desired: dict[str, Desired | None] = {"desired": None, "device_desired": None}
        self.floors: dict[str, SeqFloor] = {}
        self.last_error: dict[str, Any] | None = None
        # What became of the last desired-state message (the state document's ``desired``): the
        # operator matches its sha256 with what it published to count a rejection as one.
        self.desired_status: dict[str, Any] | None = None
        self._raw_desired: dict[str, bytes] = {}
        self._pending_roots = PendingRoots(MAX_PENDING_ROOTS)
        self._reported = ReportedOnce()
        self._refused: set[tuple[str, int]] = set()
        self._job: Job | None = None
        self._job_lock = threading.Lock()
        self._throttle = Throttle(settings.max_download_bytes_per_s, monotonic)
        self.wall = wall  # windows and budgets: injected by tests and the simulator
        self.traffic = Traffic(settings.state_dir / TRAFFIC_FILE, settings.nm_metered_file)

    # -- persistence ---------------------------------------------------------------------

    def load(self) -> None:
        """Read seq floors and the last error; clean the staging directory; reopen an interrupted download."""
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        sweep_staging(self.settings.staging_dir)  # .trash-* and directories without manifest.msg
        try:
            saved = json.loads((self.settings.state_dir / STATE_FILE).read_bytes())
            self.floors = {k: SeqFloor(int(v["seq"]), str(v["digest"])) for k, v in saved.get("floors", {}).items()}
            last = saved.get("last_error")
            if isinstance(last, dict) and isinstance(last.get("reason"), str):
                self.last_error = {**last, "reason": bounded_reason(last["reason"])}
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
            log.error("unreadable %s, starting with empty seq floors: %s", STATE_FILE, exc)
        for name, version, message in Download.pending(self.settings.staging_dir):
            if self._job is None:
                try:
                    release = verify_manifest_message(message, self.store.root, name=name, version=version)
                    check_release(release, self._view(name), self._installed_manifest(name, version), **self._limits())
                    delta = self._staged_delta(release, name, version)
                    download = Download.open(self.settings.staging_dir, release, message, delta)
                except (BadDataError, StoreError, OSError) as exc:
                    log.warning("discarding staged %s v%d: %s", name, version, exc)
                else:
                    now = self.monotonic()
                    job = Job(name, version, Phase.DOWNLOADING, now, download=download, message=message, last_progress=now,
                              release=release, delta_base=download.base)
                    self._set_job(job)
                    self._set_window(job, download.filters)
                    log.info("resuming %s v%d at %d%%", name, version, download.progress().percent)
                    continue
            remove_dir(release_dir(self.settings.staging_dir, name, version))

    def _save(self) -> None:
        doc = {"floors": {k: {"seq": f.seq, "digest": f.digest} for k, f in self.floors.items()}, "last_error": self.last_error}
        write_bytes_atomic(self.settings.state_dir / STATE_FILE, json.dumps(doc, sort_keys=True).encode())

    # -- connection ----------------------------------------------------------------------

    def on_connect(self, session_present: bool) -> None:
        """(Re)subscribe, announce ourselves, flush what waited for the connection."""
        t = self.topics
        self.transport.subscribe([t.roots_filter])
        self.transport.subscribe([t.desired, t.device_desired(self.device_id)])
        job = self._job
        if job is not None and job.phase == Phase.MANIFEST:
            self.transport.subscribe([t.manifest(job.name, job.version)])
        elif job is not None and job.download is not None and job.phase == Phase.DOWNLOADING:
            if not session_present or not job.download.filters:
                self._replan(job, unsubscribe=False)  # on a failed write the job is aborted and reported
            else:  # the broker kept our subscriptions and their queue: same filters, no retained resend
                self.transport.subscribe(job.download.filters, new_only=True)
            job.last_progress = self.monotonic()
        self.reporter.online(True)
        self.reporter.flush()
        self.publish_state()

    # -- messages (updater thread) -------------------------------------------------------

    def on_message(self, ref: TopicRef, payload: bytes) -> None:
        """A control message: desired state, manifest or trust root."""
        if not payload:
            return  # a cleared retained topic carries no instruction
        if ref.kind == "root":
            self._on_root(ref.root_version, payload)
        elif ref.kind == "desired" or (ref.kind == "device_desired" and ref.device == self.device_id):
            self._raw_desired[ref.kind] = payload
            if self._on_desired(ref.kind, payload):
                self._evaluate()
        elif ref.kind == "manifest":
            self._on_manifest(ref.name, ref.version, payload)
        elif ref.kind == "delta_index":
            self._on_delta_index(ref, payload)

    def _on_root(self, version: int, payload: bytes) -> None:
        rotated, problems = self._pending_roots.offer(self.store.root, version, payload)
        for reason in problems:
            self._reject(None, None, reason)
        for new in rotated:
            save_root(self.settings.state_dir, new)
            self.store.root = new
            self.reporter.event("root_updated", root_version=new.version)
        if rotated:
            # Keys changed: messages refused under the old root may verify now, and vice versa.
            for kind, raw in list(self._raw_desired.items()):
                self._on_desired(kind, raw)
            self._evaluate()
            self.publish_state()

    def _on_desired(self, kind: str, payload: bytes) -> bool:
        device = self.device_id if kind == "device_desired" else None
        scope = "device" if device is not None else "fleet"
        try:
            desired = verify_desired(payload, self.store.root, fleet=self.topics.fleet, device=device)
            fresh = check_seq(desired, self.floors.get(kind))
            now = _dt.datetime.now(_dt.UTC) if self.clock_trusted() else None
            check_expiry(desired, now)
            check_root_expiry(self.store.root, now)  # nothing new under an expired root; a rotation re-runs this
        except BadDataError as exc:
            reason = bounded_reason(str(exc))
            report = desired_report(payload, scope, claimed_seq(payload), reason)
            changed = self._set_desired_status(report)
            reported = self._reject(None, None, reason, scope=scope, seq=report["seq"], sha256=report["sha256"])
            if changed and not reported:  # the same reason for other bytes: the state must still say so
                self.publish_state()
            return False
        if not fresh:
            if self.desired[kind] is None:  # after a restart: the floor was saved, the document was not
                self.desired[kind] = desired
                if self._set_desired_status(desired_report(payload, scope, desired.seq)):
                    self.publish_state()
                return True
            return False
        self.floors[kind] = SeqFloor(desired.seq, desired.digest)
        self.desired[kind] = desired
        self._set_desired_status(desired_report(payload, scope, desired.seq))
        self._reported.clear()
        self._refused.clear()
        self._save()
        self.publish_state()
        return True

    def _set_desired_status(self, report: dict[str, Any]) -> bool:
        """Keep ``report`` as the state's ``desired``; True when it changed."""
        changed = report != self.desired_status
        self.desired_status = report
        return changed

    def _evaluate(self) -> None:
        """Compare the desired versions with the store and start the next job."""
        entries = target_entries(self.device_id, self.desired["desired"], self.desired["device_desired"])
        targets = {name: t.version for name, t in entries.items()}
        job = self._job
        if job is not None:
            if job.phase == Phase.ACTIVATING or targets.get(job.name) == job.version:
                return
            self._abandon(job, f"the desired state now asks for {targets.get(job.name, 'no version')}")
        for name, version in sorted(targets.items()):
            if (name, version) in self._refused:
                continue
            try:
                action = plan_target(name, version, self._view(name), rollback=entries[name].rollback)
            except (RollbackError, StoreError) as exc:
                self._reject(name, version, str(exc))
                self._refused.add((name, version))
                continue
            if action == "none":
                continue
            if action == "failed":
                key = ("failed", name, version)
                if key not in self._reported:
                    self._reported.add(key)
                    reason = self.store.state(name).failed.get(version, "")
                    self.reporter.event("failed", name, version, reason=bounded_reason(f"failed before, not retried: {reason}"))
                continue
            self.reporter.event("notified", name, version, seq=self._seqs())
            now = self.monotonic()
            self._set_job(Job(name, version, Phase.MANIFEST, now, last_progress=now))
            self.transport.subscribe([self.topics.manifest(name, version)])
            self.publish_state()
            return

    def _on_manifest(self, name: str, version: int, payload: bytes) -> None:
        job = self._job
        if job is None or job.phase != Phase.MANIFEST or (job.name, job.version) != (name, version):
            return
        try:
            release = verify_manifest_message(payload, self.store.root, name=name, version=version)
            installed = self._installed_manifest(name, version)
            check_release(release, self._view(name), installed, **self._limits())
            if release.manifest.encryption is not None:  # not a recipient: refused before any chunk
                content_key(release.manifest, self.store.device_key)
        except (RollbackError, BadDataError) as exc:
            self._reject(name, version, str(exc))
            if isinstance(exc, (RollbackError, IncompatibleError, DecryptionError)):
                self._drop(job, refuse=True)  # a valid release this device must never take
            return  # bad bytes: keep waiting, a corrected manifest may be republished
        self.transport.unsubscribe([self.topics.manifest(name, version)])
        if installed is not None and version not in self.store.state(name).quarantined:
            self._activate_in_window(job)  # already here (installed, never activated): nothing to fetch
            return
        job.release, job.message = release, payload
        base = self._delta_base(job)
        if base:  # a delta from a version this device has: its signed index first (updates/delta.py)
            with self._job_lock:
                job.delta_base, job.phase = base, Phase.DELTA_INDEX
            job.last_progress = self.monotonic()
            self.transport.subscribe([self.topics.delta_index(name, version, base)])
            self.publish_state()
            return
        self._start_download(job, None)

    # -- chunks ----------------------------------------------------------------------------

    def on_chunk(self, ref: TopicRef, payload: bytes) -> None:
        """A chunk (network thread): checked and written before the broker gets its acknowledgement."""
        with self._job_lock:
            job = self._job
            download = job.download if job is not None and job.phase == Phase.DOWNLOADING else None
        if job is None or download is None or (ref.name, ref.version, ref.base) != (job.name, job.version, download.base):
            return
        self.traffic.add(job.name, job.version, len(payload), self.wall())
        try:
            written = download.offer(ref.file, ref.index, payload)
        except ChunkError as exc:
            self._handoff(ChunkRejected(job, str(exc)))
            return
        except OSError as exc:  # disk full, quota, I/O error: never raised into the network thread
            log.error("%s v%d: cannot write a chunk: %s", job.name, job.version, exc,
                      extra={"model": job.name, "version": job.version, "reason": str(exc)})
            self._handoff(DownloadFailed(job, f"download failed: {exc}"))
            return
        self._throttle.wait(len(payload))
        if not written:
            log.debug("duplicate chunk %s %d of %s v%d", ref.file, ref.index, ref.name, ref.version)
        if written:
            self._handoff(ChunkWritten(job))

    def _handoff(self, event: UpdaterEvent) -> None:
        if self.post is not None:
            self.post(event)
        else:
            self.on_internal(event)

    def on_internal(self, event: UpdaterEvent) -> None:
        """Results handed over from the network thread."""
        if isinstance(event, ChunkRejected):
            job = event.job
            if job is self._job and job.phase == Phase.DOWNLOADING and job.download is not None and job.download.base:
                self._delta_fallback(job, f"delta chunk dropped: {event.reason}")
                return
            self._reject(job.name, job.version, f"chunk dropped: {event.reason}", dedupe=False, persist=False)
        elif isinstance(event, DownloadFailed):
            if event.job is self._job and event.job.phase == Phase.DOWNLOADING:
                self._abort_download(event.job, event.reason)
        elif isinstance(event, SubscriptionRefused):
            # Reported now, not when the stall timer notices: the broker's ACL will not change by waiting.
            current = self._job
            wanted: set[str] = set()
            if current is not None:
                wanted.add(self.topics.manifest(current.name, current.version))
                if current.download is not None:
                    wanted.update(current.download.filters)
            if current is not None and wanted.intersection(event.filters):
                self._reject(current.name, current.version, event.reason)
            else:
                self._reject(None, None, event.reason)
        elif isinstance(event, ChunkWritten):
            job = event.job
            if job is not self._job or job.download is None or job.phase != Phase.DOWNLOADING:
                return
            job.last_progress = self.monotonic()
            if job.download.complete:
                self._finish(job)
                return
            if job.window and all(job.download.has(f, i) for f, i in job.window):
                if not self._replan(job, unsubscribe=True):
                    return
            self._progress(job)

    def _replan(self, job: Job, unsubscribe: bool) -> bool:
        """Subscribe to the next window of missing chunks; False when the download was aborted."""
        download = job.download
        assert download is not None
        if download.write_error is not None:  # a failed write is being handed over: abort now
            self._abort_download(job, f"download failed: {download.write_error}")
            return False
        if unsubscribe and download.filters:
            self.transport.unsubscribe(download.filters)
        filters = plan_filters(self.topics, download, self.settings.window_chunks)
        try:
            download.set_filters(filters)
        except OSError as exc:
            self._abort_download(job, f"download failed: {exc}")
            return False
        self._set_window(job, filters)
        self.transport.subscribe(filters, new_only=True)
        return True

    def _set_window(self, job: Job, filters: list[str]) -> None:
        refs = [self.topics.parse(f) for f in filters]
        job.window = {(r.file, r.index) for r in refs if r is not None and r.kind == "chunk"}

    def _progress(self, job: Job) -> None:
        assert job.download is not None
        p = job.download.progress()
        step = p.percent - p.percent % PROGRESS_STEP
        if step > job.reported_percent:
            job.reported_percent = step
            self.reporter.event("downloading", job.name, job.version, percent=p.percent, have_bytes=p.have_bytes, total_bytes=p.total_bytes)
            self.traffic.save()  # every 10 %: a restart keeps (almost) all of the day's bytes
            self.publish_state()

    # -- completion --------------------------------------------------------------------------

    def _finish(self, job: Job) -> None:
        download = job.download
        assert download is not None
        self._progress(job)
        if download.filters:
            self.transport.unsubscribe(download.filters)
            with contextlib.suppress(OSError):  # only a hint for a restart; the directory goes soon
                download.set_filters([])
        self.traffic.save()
        if download.delta is not None:
            try:  # the deltas' own hashes, then the rebuilt artifacts against the signed full hashes
                download.verify_complete()
                download.rebuild(self.store.version_dir(job.name, download.base))
            except (BadDataError, OSError) as exc:
                self._delta_fallback(job, str(exc))
                return
        try:
            download.verify_complete()
            verify_manifest_signature(self.store.root, download.release.manifest_bytes, download.release.signature_bytes)
            check_release(
                download.release, self._view(job.name), self._installed_manifest(job.name, job.version), **self._limits()
            )
        except BadDataError as exc:
            self._reject(job.name, job.version, str(exc))
            download.remove()
            self._drop(job, refuse=True)
            return
        except OSError as exc:
            self._abort_download(job, f"download failed: {exc}")
            return
        p = download.progress()
        self.reporter.event(
            "verified",
            job.name,
            job.version,
            total_bytes=p.total_bytes,
            received_bytes=p.received_bytes,
            rejected_bytes=p.rejected_bytes,
        )
        try:
            self.store.install_bundle(download.bundle())
        except (BadDataError, StoreError, OSError) as exc:
            self._reject(job.name, job.version, f"install failed: {exc}")
            download.remove()
            self._drop(job, refuse=True)
            return
        download.remove()
        self.reporter.event("installed", job.name, job.version)
        self._activate_in_window(job)

    def _activate(self, job: Job) -> None:
        name, version = job.name, job.version
        job.previous = self.store.state(name).active
        try:
            self.store.activate(name, version, selftest=self.selftest)
        except EdgeRuntimeError as exc:
            self._failed(job, str(exc))
            return
        self.wake()
        if self.selftest is not None:
            self.reporter.event("activated", name, version, previous=job.previous)
            self._drop(job, refuse=False)
            return
        with self._job_lock:
            job.phase = Phase.ACTIVATING
            job.download = None
        job.deadline = self.monotonic() + self.settings.activation_timeout_s
        self.publish_state()

    def _failed(self, job: Job, reason: str) -> None:
        state = self.store.state(job.name)
        self._error(job.name, job.version, reason)
        self.reporter.event("failed", job.name, job.version, reason=reason)
        self.reporter.event("rolled_back", job.name, state.active, from_version=job.version, reason=reason)
        self._drop(job, refuse=True)

    # -- timers --------------------------------------------------------------------------

    def tick_interval_s(self) -> float:
        """How soon :meth:`tick` wants to run again: often while waiting for the daemon's swap."""
        job = self._job
        return ACTIVATION_POLL_S if job is not None and job.phase == Phase.ACTIVATING else TICK_S

    def tick(self) -> None:
        """Called a few times a second: stalled downloads, daemon confirmation."""
        job = self._job
        if job is None:
            return
        now = self.monotonic()
        if job.phase == Phase.DOWNLOADING and job.download is not None and job.download.complete:
            self._finish(job)  # e.g. a resumed download that had every chunk already
            return
        if job.phase in (Phase.WAITING_WINDOW, Phase.DEFERRED):
            minute = self.wall().replace(second=0, microsecond=0)
            if minute == job.checked_minute:
                return  # windows and budgets change by the minute: decide once a minute, not every tick
            job.checked_minute = minute
            if job.phase == Phase.DEFERRED:
                self._start_download(job, job.delta)  # decides again: a new day, an unmetered link, the window
            elif self._windows_open(job, minute):
                self._activate(job)
            return
        if job.phase == Phase.ACTIVATING:
            state = self.store.state(job.name)
            if state.serving == job.version:
                self.reporter.event("activated", job.name, job.version, previous=job.previous)
                self._drop(job, refuse=False)
            elif job.version in state.failed:
                self._failed(job, state.failed[job.version])
            elif now > job.deadline:
                reason = f"the daemon did not confirm serving v{job.version} within {self.settings.activation_timeout_s:g} s"
                self.store.record_failure(job.name, job.version, reason, revert_to=job.previous)
                self.wake()
                self._failed(job, reason)
            return
        if now - job.last_progress < self.settings.stall_s or not self.transport.connected:
            return
        job.last_progress = now
        try:
            if job.phase == Phase.MANIFEST:
                topic = self.topics.manifest(job.name, job.version)
                self.transport.unsubscribe([topic])
                self.transport.subscribe([topic])
            elif job.phase == Phase.DELTA_INDEX and not job.index_asked_again:  # ask once more, as for a manifest
                job.index_asked_again = True
                topic = self.topics.delta_index(job.name, job.version, job.delta_base)
                self.transport.unsubscribe([topic])
                self.transport.subscribe([topic])
            elif job.phase == Phase.DELTA_INDEX:  # still no index: the full artifact
                self._delta_fallback(job, f"no delta index within {2 * self.settings.stall_s:g} s")
            elif job.download is not None:
                log.info("%s v%d stalled: re-requesting %d chunks", job.name, job.version, len(job.download.missing()))
                self._replan(job, unsubscribe=True)
        except TransportError as exc:
            log.debug("re-request failed: %s", exc)

    # -- helpers -------------------------------------------------------------------------

    def _set_job(self, job: Job | None) -> None:
        with self._job_lock:
            self._job = job

    def _drop(self, job: Job, refuse: bool) -> None:
        if refuse:
            self._refused.add((job.name, job.version))
        if job.download is not None:
            job.download.close()
        self._set_job(None)
        self.publish_state()
        self._evaluate()

    def _abort_download(self, job: Job, reason: str) -> None:
        """Give up a download that cannot go on: free its staging space, report, refuse this version."""
        log.warning("aborting %s v%d: %s", job.name, job.version, reason,
                    extra={"model": job.name, "version": job.version, "reason": reason})
        download = job.download
        if download is not None:
            if download.filters:
                with contextlib.suppress(TransportError):
                    self.transport.unsubscribe(download.filters)
            download.remove()
        self._reject(job.name, job.version, reason)
        self._drop(job, refuse=True)

    def _abandon(self, job: Job, why: str) -> None:
        log.info("abandoning %s v%d: %s", job.name, job.version, why)
        try:
            if job.phase == Phase.MANIFEST:
                self.transport.unsubscribe([self.topics.manifest(job.name, job.version)])
            elif job.phase == Phase.DELTA_INDEX:
                self.transport.unsubscribe([self.topics.delta_index(job.name, job.version, job.delta_base)])
            elif job.download is not None and job.download.filters:
                self.transport.unsubscribe(job.download.filters)
        except TransportError:
            pass
        if job.download is not None:
            job.download.remove()
        self._set_job(None)

    def _reject(
        self, name: str | None, version: int | None, reason: str, dedupe: bool = True, persist: bool = True,
        **fields: Any,
    ) -> bool:
        """Report a refusal (event, ``last_error``, state) once per reason; False when it was a repeat."""
        reason = bounded_reason(reason)
        key = ("rejected", name, version, reason)
        if dedupe:
            if key in self._reported:
                return False
            self._reported.add(key)
        self._error(name, version, reason, persist)  # a flood of bad chunks must not mean a flood of fsyncs
        self.reporter.event("rejected", name, version, reason=reason, **fields)
        self.publish_state()
        return True

    def _error(self, name: str | None, version: int | None, reason: str, persist: bool = True) -> None:
        reason = bounded_reason(reason)
        self.last_error = {"time": self.reporter.now(), "model": name, "version": version, "reason": reason}
        if not persist:
            return
        try:
            self._save()
        except OSError as exc:
            log.error("cannot save updater state: %s", exc)

    def _view(self, name: str) -> ModelView:
        return model_view(self.store, name)

    def _installed_manifest(self, name: str, version: int) -> bytes | None:
        return installed_manifest(self.store, name, version)

    def _limits(self) -> dict[str, Any]:
        return {
            "runtime_major": self.settings.runtime_major,
            "machine": self.settings.machine,
            "max_bytes": min(self.settings.max_download_bytes, self.store.limits.max_bundle_bytes),
        }

    def _seqs(self) -> dict[str, int | None]:
        return {k: (d.seq if d is not None else None) for k, d in self.desired.items()}

    # -- state document ------------------------------------------------------------------

    def state_document(self) -> dict[str, Any]:
        """The retained ``state`` message (see docs/updates.md)."""
        doc = {
            "device": self.device_id,
            "fleet": self.topics.fleet,
            "time": self.reporter.now(),
            "runtime": __version__,
            "runtime_major": self.settings.runtime_major,
            "machine": self.settings.machine,
            "trust_root_version": self.store.root.version,
            "desired_seq": self._seqs(),
            "desired": self.desired_status,
            "models": models_summary(self.store),
            "update": job_summary(self._job),
            "last_error": self.last_error,
            "store_fault": self.store.write_fault,
            "downloaded_bytes": self.traffic.summary(),  # per model and version, every byte received
        }
        if self.amend_state is not None:  # field monitoring adds each model's drift (docs/monitoring.md)
            self.amend_state(doc)
        return doc

    def publish_state(self) -> None:
        """Publish the state document (no-op while offline)."""
        if self.transport.connected:
            self.reporter.publish_state(self.state_document())

    @property
    def job(self) -> Job | None:
        """The update in progress, if any."""
        return self._job


__all__ = ["Job", "Updater", "UpdaterSettings"]
