"""The update machine's steps from a verified manifest on: the byte budget, the download, its
verification and install, the maintenance window, activation and the timers.

A mixin of :class:`~edge_runtime.updates.machine.UpdateMachine`, pure like it (the same
import contract covers it): it reads the machine's state and view and returns effects through
it. Kept apart so that each file stays readable.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from edge_runtime.exceptions import BadDataError
from edge_runtime.spec.window import Window, all_open, next_all_open
from edge_runtime.updates.effects import (
    Activate,
    Activated,
    ActivationFailed,
    ChunkRejected,
    ChunkWritten,
    ClearChunkFilters,
    DeltaFailed,
    DownloadFailed,
    DownloadOpened,
    DownloadRejected,
    DownloadVerified,
    Effect,
    Event,
    FailureRecorded,
    Install,
    Installed,
    Job,
    Now,
    OpenDownload,
    Phase,
    PublishState,
    RecordFailure,
    Report,
    RequestChunks,
    SaveTraffic,
    ServingObserved,
    Subscribe,
    SubscriptionRefused,
    Tick,
    Unsubscribe,
    UpdaterSettings,
    VerifyDownload,
    View,
)
from edge_runtime.updates.policy import Verdict, download_decision
from edge_runtime.updates.protocol import Topics
from edge_runtime.updates.verify import ModelTarget, check_release

log = logging.getLogger("edge_runtime.updates")

PROGRESS_STEP = 10  # percent between "downloading" events


class TransferSteps:
    """Budget, download, install, window, activation and timer steps; mixed into the machine,
    which provides what is declared here."""

    settings: UpdaterSettings
    topics: Topics
    job: Job | None
    _now: Now

    if TYPE_CHECKING:  # the machine's own helpers

        @property
        def view(self) -> View: ...

        def _emit(self, *effects: Effect) -> None: ...

        def _filters(self) -> tuple[str, ...]: ...

        def _has_download(self) -> bool: ...

        def _release_download(self, remove: bool) -> None: ...

        def _current(self, job_id: int, *phases: Phase) -> Job | None: ...

        def _expect(self, job_id: int, event: Event, *phases: Phase) -> Job: ...

        def limits(self) -> dict[str, Any]: ...

        def _target(self, job: Job) -> ModelTarget | None: ...

        def _delta_fallback(self, job: Job, reason: str) -> None: ...

        def _reject(self, name: str | None, version: int | None, reason: str, dedupe: bool = True,
                    persist: bool = True, **fields: Any) -> bool: ...

        def _error(self, name: str | None, version: int | None, reason: str, persist: bool = True) -> None: ...

        def _drop(self, job: Job, refuse: bool) -> None: ...

    # -- windows and budgets -------------------------------------------------------------

    def _windows(self, job: Job) -> list[Window | None]:
        target = self._target(job)
        return [target.window if target is not None else None, self.settings.local_window]

    def _start_download(self, job: Job, delta: Any) -> None:
        """Open the download of the full release or of ``delta``, unless the budget defers it."""
        assert job.release is not None
        need = delta.total_bytes if delta is not None else sum(a.length for a in job.release.manifest.artifacts.values())
        wall, facts = self._now.wall, self.view.facts
        decision = download_decision(need, facts.used_today_bytes(wall), self.settings.budget, metered=facts.metered(),
                                     window_open=all_open(self._windows(job), wall), now=wall)
        if decision.verdict != Verdict.GO:
            first = job.phase != Phase.DEFERRED or job.waiting_reason != decision.reason
            job.phase, job.delta = Phase.DEFERRED, delta
            job.waiting_reason = decision.reason
            job.waiting_until = decision.until.isoformat() if decision.until else ""
            if first:
                fields = {"reason": decision.reason, "until": job.waiting_until or None}
                self._emit(Report("deferred", job.name, job.version, fields), PublishState())
            return
        job.phase = Phase.DOWNLOADING  # a failure to open arrives as DownloadFailed and aborts the job
        self._emit(OpenDownload(job.id, job.release, job.message, delta))

    def _activate_in_window(self, job: Job) -> None:
        """Activate now if every window is open, else wait for it (checked on :class:`Tick`)."""
        wall = self._now.wall
        if all_open(self._windows(job), wall):
            self._emit(Activate(job.id, job.name, job.version))
            return
        opens = next_all_open(self._windows(job), wall)
        job.phase = Phase.WAITING_WINDOW
        job.waiting_until = opens.isoformat() if opens is not None else ""
        job.waiting_reason = "downloaded, waiting for the maintenance window"
        self._emit(Report("waiting_window", job.name, job.version, {"until": job.waiting_until or None}), PublishState())

    # -- the download --------------------------------------------------------------------

    def _on_download_opened(self, event: DownloadOpened) -> None:
        job = self._expect(event.job_id, event, Phase.DOWNLOADING)
        job.delta, job.waiting_reason, job.waiting_until = None, "", ""
        job.last_progress = self._now.monotonic_s
        if self._replan(job, unsubscribe=False):
            self._progress(job)

    def _replan(self, job: Job, unsubscribe: bool) -> bool:
        """Ask for the next window of missing chunks; False when the download was aborted."""
        download = self.view.download
        if download is not None and download.write_error is not None:  # a failed write being handed over
            self._abort_download(job, f"download failed: {download.write_error}")
            return False
        self._emit(RequestChunks(job.id, unsubscribe))
        return True

    def _progress(self, job: Job) -> None:
        download = self.view.download
        if download is None:
            return
        step = download.percent - download.percent % PROGRESS_STEP
        if step > job.reported_percent:
            job.reported_percent = step
            fields = {"percent": download.percent, "have_bytes": download.have_bytes, "total_bytes": download.total_bytes}
            # Traffic saved every 10 %: a restart keeps (almost) all of the day's bytes.
            self._emit(Report("downloading", job.name, job.version, fields), SaveTraffic(), PublishState())

    def _on_chunk_written(self, event: ChunkWritten) -> None:
        job = self._current(event.job_id, Phase.DOWNLOADING)
        download = self.view.download
        if job is None or download is None:
            return
        job.last_progress = self._now.monotonic_s
        if download.complete:
            self._finish(job)
            return
        if download.window_complete and not self._replan(job, unsubscribe=True):
            return
        self._progress(job)

    def _on_chunk_rejected(self, event: ChunkRejected) -> None:
        job = self._current(event.job_id, Phase.DOWNLOADING)
        if job is not None and self.view.download is not None and self.view.download.base:
            self._delta_fallback(job, f"delta chunk dropped: {event.reason}")
            return
        if job is not None:
            self._reject(job.name, job.version, f"chunk dropped: {event.reason}", dedupe=False, persist=False)

    def _on_download_failed(self, event: DownloadFailed) -> None:
        job = self._current(event.job_id, Phase.DOWNLOADING)
        if job is not None:
            self._abort_download(job, event.reason)

    def _on_refused(self, event: SubscriptionRefused) -> None:
        # Reported now, not when the stall timer notices: the broker's ACL will not change by waiting.
        job = self.job
        wanted: set[str] = set(self._filters())
        if job is not None:
            wanted.add(self.topics.manifest(job.name, job.version))
        if job is not None and wanted.intersection(event.filters):
            self._reject(job.name, job.version, event.reason)
        else:
            self._reject(None, None, event.reason)

    def _abort_download(self, job: Job, reason: str) -> None:
        """Give up a download that cannot go on: free its staging space, report, refuse this version."""
        log.warning("aborting %s v%d: %s", job.name, job.version, reason,
                    extra={"model": job.name, "version": job.version, "reason": reason})
        if self._filters():
            self._emit(Unsubscribe(self._filters(), quiet=True))
        self._release_download(remove=True)
        self._reject(job.name, job.version, reason)
        self._drop(job, refuse=True)

    def _finish(self, job: Job) -> None:
        self._progress(job)
        if self._filters():
            self._emit(Unsubscribe(self._filters()), ClearChunkFilters())
        self._emit(SaveTraffic(), VerifyDownload(job.id))

    def _on_verified(self, event: DownloadVerified) -> None:
        job = self._expect(event.job_id, event, Phase.DOWNLOADING)
        assert job.release is not None
        facts = self.view.facts
        try:
            check_release(job.release, facts.model(job.name), facts.installed_manifest(job.name, job.version), **self.limits())
        except BadDataError as exc:
            self._on_rejected(DownloadRejected(job.id, str(exc)))
            return
        download = self.view.download
        counts = {} if download is None else {
            "total_bytes": download.total_bytes, "received_bytes": download.received_bytes,
            "rejected_bytes": download.rejected_bytes,
        }
        self._emit(Report("verified", job.name, job.version, counts), Install(job.id))

    def _on_rejected(self, event: DownloadRejected) -> None:
        job = self._expect(event.job_id, event, Phase.DOWNLOADING)
        self._reject(job.name, job.version, event.reason)
        self._release_download(remove=True)
        self._drop(job, refuse=True)

    def _on_delta_failed(self, event: DeltaFailed) -> None:
        self._delta_fallback(self._expect(event.job_id, event, Phase.DOWNLOADING), event.reason)

    def _on_installed(self, event: Installed) -> None:
        job = self._expect(event.job_id, event, Phase.DOWNLOADING)
        self._release_download(remove=True)
        self._emit(Report("installed", job.name, job.version))
        self._activate_in_window(job)

    # -- activation ----------------------------------------------------------------------

    def _on_activated(self, event: Activated) -> None:
        job = self._expect(event.job_id, event, Phase.MANIFEST, Phase.DOWNLOADING, Phase.WAITING_WINDOW)
        job.previous = event.previous
        if self.view.selftest_in_process:
            self._emit(Report("activated", job.name, job.version, {"previous": job.previous}))
            self._drop(job, refuse=False)
            return
        self._release_download(remove=False)
        job.phase = Phase.ACTIVATING
        job.deadline = self._now.monotonic_s + self.settings.activation_timeout_s
        self._emit(PublishState())

    def _on_activation_failed(self, event: ActivationFailed) -> None:
        job = self._expect(event.job_id, event, Phase.MANIFEST, Phase.DOWNLOADING, Phase.WAITING_WINDOW)
        job.previous = event.previous
        self._failed(job, event.reason)

    def _on_serving(self, event: ServingObserved) -> None:
        job = self.job
        if job is None or job.phase != Phase.ACTIVATING or job.name != event.name:
            return
        if event.serving == job.version:
            self._emit(Report("activated", job.name, job.version, {"previous": job.previous}))
            self._drop(job, refuse=False)
        elif event.failed is not None:
            self._failed(job, event.failed)

    def _on_failure_recorded(self, event: FailureRecorded) -> None:
        self._failed(self._expect(event.job_id, event, Phase.ACTIVATING), event.reason)

    def _failed(self, job: Job, reason: str) -> None:
        active = self.view.facts.model(job.name).active
        self._error(job.name, job.version, reason)
        self._emit(
            Report("failed", job.name, job.version, {"reason": reason}),
            Report("rolled_back", job.name, active, {"from_version": job.version, "reason": reason}),
        )
        self._drop(job, refuse=True)

    # -- timers --------------------------------------------------------------------------

    def _on_tick(self, event: Tick) -> None:
        job = self.job
        if job is None:
            return
        now = self._now.monotonic_s
        download = self.view.download
        if job.phase == Phase.DOWNLOADING and download is not None and download.complete:
            self._finish(job)  # e.g. a resumed download that had every chunk already
            return
        if job.phase in (Phase.WAITING_WINDOW, Phase.DEFERRED):
            minute = self._now.wall.replace(second=0, microsecond=0)
            if minute == job.checked_minute:
                return  # windows and budgets change by the minute: decide once a minute, not every tick
            job.checked_minute = minute
            if job.phase == Phase.DEFERRED:
                self._start_download(job, job.delta)  # decides again: a new day, an unmetered link, the window
            elif all_open(self._windows(job), minute):
                self._emit(Activate(job.id, job.name, job.version))
            return
        if job.phase == Phase.ACTIVATING:
            if now > job.deadline:
                reason = f"the daemon did not confirm serving v{job.version} within {self.settings.activation_timeout_s:g} s"
                self._emit(RecordFailure(job.id, job.name, job.version, reason, job.previous))
            return
        if now - job.last_progress < self.settings.stall_s or not self.view.connected:
            return
        job.last_progress = now
        if job.phase == Phase.MANIFEST:
            topic = (self.topics.manifest(job.name, job.version),)
            self._emit(Unsubscribe(topic), Subscribe(topic))
        elif job.phase == Phase.DELTA_INDEX and not job.index_asked_again:  # ask once more, as for a manifest
            job.index_asked_again = True
            topic = (self.topics.delta_index(job.name, job.version, job.delta_base),)
            self._emit(Unsubscribe(topic), Subscribe(topic))
        elif job.phase == Phase.DELTA_INDEX:  # still no index: the full artifact
            self._delta_fallback(job, f"no delta index within {2 * self.settings.stall_s:g} s")
        elif download is not None:
            log.info("%s v%d stalled: re-requesting its missing chunks", job.name, job.version)
            self._replan(job, unsubscribe=True)


__all__ = ["PROGRESS_STEP", "TransferSteps"]
