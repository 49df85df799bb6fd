"""The updater's steps for deltas, maintenance windows and byte budgets (docs/updates.md).

A mixin of :class:`~edge_runtime.updates.updater.Updater`: the decisions are pure
(:mod:`edge_runtime.updates.delta`, :mod:`edge_runtime.updates.policy`); these methods do the
I/O around them on the updater thread, with the updater's own state and helpers. Kept apart so
that the state machine's file stays readable.

The flow they add: a verified manifest whose desired-state entry offers a delta from a version
this device has -> ``delta_index`` (the signed index) -> the delta's chunks -> rebuild and check
against the signed full hash; any failure -> the full release. Before a download starts, the
byte budget may defer it (``deferred``); after install, a closed window holds the activation
(``waiting_window``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edge_runtime.bundle.manifest import parse_manifest
from edge_runtime.exceptions import BadDataError, TransportError
from edge_runtime.spec.window import Window, all_open, next_all_open
from edge_runtime.store.store import ModelStore
from edge_runtime.updates.delta import DeltaError, DeltaIndex, check_bases, choose_base, verify_delta_message
from edge_runtime.updates.download import Download, release_dir, remove_dir, space_problem
from edge_runtime.updates.job import Job, Phase, UpdaterSettings
from edge_runtime.updates.policy import Verdict
from edge_runtime.updates.protocol import TopicRef, Topics
from edge_runtime.updates.report import Reporter, Transport
from edge_runtime.updates.traffic import Traffic
from edge_runtime.updates.verify import Desired, ModelTarget, ModelView, Release, target_entries

log = logging.getLogger("edge_runtime.updates")


class PolicySteps:
    """Delta, window and budget steps; mixed into the Updater, which provides what is declared here."""

    settings: UpdaterSettings
    store: ModelStore
    transport: Transport
    topics: Topics
    reporter: Reporter
    traffic: Traffic
    device_id: str
    desired: dict[str, Desired | None]
    wall: Callable[[], _dt.datetime]
    monotonic: Callable[[], float]
    _job: Job | None
    _job_lock: threading.Lock

    if TYPE_CHECKING:  # the Updater's own helpers

        def _reject(self, name: str | None, version: int | None, reason: str, dedupe: bool = True,
                    persist: bool = True, **fields: Any) -> bool: ...

        def _drop(self, job: Job, refuse: bool) -> None: ...

        def _replan(self, job: Job, unsubscribe: bool) -> bool: ...

        def _progress(self, job: Job) -> None: ...

        def _activate(self, job: Job) -> None: ...

        def _view(self, name: str) -> ModelView: ...

        def _installed_manifest(self, name: str, version: int) -> bytes | None: ...

        def _limits(self) -> dict[str, Any]: ...

        def publish_state(self) -> None: ...

    def _staged_delta(self, release: Release, name: str, version: int) -> DeltaIndex | None:
        """The verified delta index of an interrupted delta download; None: resume in full."""
        raw = Download.staged_delta(release_dir(self.settings.staging_dir, name, version))
        if raw is None:
            return None
        try:
            outer = json.loads(json.loads(raw)["delta"])
            base = int(outer["base"])
            return verify_delta_message(raw, self.store.root, release.manifest, base, self._limits()["max_bytes"])
        except (BadDataError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s v%d: staged delta unusable (%s), the full artifact is fetched", name, version, exc)
            return None

    def _start_download(self, job: Job, delta: DeltaIndex | None) -> None:
        """Open the download of the full release or of ``delta``, unless the budget defers it."""
        name, version, release, payload = job.name, job.version, job.release, job.message
        need = delta.total_bytes if delta is not None else sum(a.length for a in release.manifest.artifacts.values())
        now = self.wall()
        decision = self.traffic.decide(need, self.settings.budget, window_open=self._windows_open(job, now), now=now)
        if decision.verdict != Verdict.GO:
            first = job.phase != Phase.DEFERRED or job.waiting_reason != decision.reason
            with self._job_lock:
                job.phase, job.delta = Phase.DEFERRED, delta
            job.waiting_reason = decision.reason
            job.waiting_until = decision.until.isoformat() if decision.until else ""
            if first:
                self.reporter.event("deferred", name, version, reason=decision.reason, until=job.waiting_until or None)
                self.publish_state()
            return
        try:
            download = Download.open(self.settings.staging_dir, release, payload, delta)
        except OSError as exc:
            remove_dir(release_dir(self.settings.staging_dir, name, version))
            self._reject(name, version, f"download failed: {exc}")
            self._drop(job, refuse=True)
            return
        problem = space_problem(self.settings.staging_dir, download.total_bytes - download.progress().have_bytes)
        if problem is not None:
            download.remove()
            self._reject(name, version, f"download refused: {problem}")
            self._drop(job, refuse=True)
            return
        with self._job_lock:
            job.download, job.phase, job.delta = download, Phase.DOWNLOADING, None
        job.waiting_reason = job.waiting_until = ""
        job.last_progress = self.monotonic()
        if self._replan(job, unsubscribe=False):
            self._progress(job)

    def _target(self, job: Job) -> ModelTarget | None:
        entries = target_entries(self.device_id, self.desired["desired"], self.desired["device_desired"])
        target = entries.get(job.name)
        return target if target is not None and target.version == job.version else None

    def _delta_base(self, job: Job) -> int:
        target = self._target(job)
        if target is None or not target.deltas or job.delta_failed:
            return 0
        view = self._view(job.name)
        return choose_base(target.deltas, view.installed, view.active, view.quarantined | view.failed) or 0

    def _on_delta_index(self, ref: TopicRef, payload: bytes) -> None:
        job = self._job
        if job is None or job.phase != Phase.DELTA_INDEX or (ref.name, ref.version, ref.base) != (job.name, job.version, job.delta_base):
            return
        try:
            index = verify_delta_message(payload, self.store.root, job.release.manifest, job.delta_base,
                                         self._limits()["max_bytes"])
            base_manifest = self._installed_manifest(job.name, job.delta_base)
            if base_manifest is None:
                raise DeltaError(f"v{job.delta_base} is no longer installed")
            check_bases(index, parse_manifest(base_manifest))
        except BadDataError as exc:
            self._delta_fallback(job, str(exc))
            return
        self.transport.unsubscribe([self.topics.delta_index(job.name, job.version, job.delta_base)])
        self._start_download(job, index)

    def _delta_fallback(self, job: Job, reason: str) -> None:
        """Any trouble with a delta: fetch the full artifact instead (never retry the delta)."""
        reason = bounded_reason(reason)
        log.warning("%s v%d: delta from v%d not used, fetching the full artifact: %s", job.name, job.version,
                    job.delta_base, reason)
        with contextlib.suppress(TransportError):
            self.transport.unsubscribe([self.topics.delta_index(job.name, job.version, job.delta_base)])
            if job.download is not None and job.download.filters:
                self.transport.unsubscribe(job.download.filters)
        if job.download is not None:
            job.download.remove()
        self.reporter.event("delta_fallback", job.name, job.version, base=job.delta_base, reason=reason)
        with self._job_lock:
            job.download, job.delta, job.window = None, None, set()
            job.delta_failed, job.delta_base = reason, 0
        self._start_download(job, None)

    def _windows(self, job: Job) -> list[Window | None]:
        target = self._target(job)
        return [target.window if target is not None else None, self.settings.local_window]

    def _windows_open(self, job: Job, now: _dt.datetime) -> bool:
        return all_open(self._windows(job), now)

    def _activate_in_window(self, job: Job) -> None:
        """Activate now if every window is open, else wait for it (checked by :meth:`tick`)."""
        now = self.wall()
        if self._windows_open(job, now):
            self._activate(job)
            return
        opens = next_all_open(self._windows(job), now)
        with self._job_lock:
            job.phase, job.download = Phase.WAITING_WINDOW, None
        job.waiting_until = opens.isoformat() if opens is not None else ""
        job.waiting_reason = "downloaded, waiting for the maintenance window"
        self.reporter.event("waiting_window", job.name, job.version, until=job.waiting_until or None)
        self.publish_state()


def bounded_reason(reason: str) -> str:
    """The updater's ``bounded_reason`` (imported here, at call time: updater.py imports this module)."""
    from edge_runtime.updates.updater import bounded_reason as bound

    return bound(reason)


__all__ = ["PolicySteps"]
