"""The device's update decisions as a pure state machine: desired -> manifest -> chunks ->
verify -> install -> activate -> report.

``UpdateMachine.handle(event, view, now) -> list[Effect]``: no file, socket or broker here (an
import-linter contract in ``.importlinter`` keeps it so). The machine owns the update state (seq
floors, the desired states followed, what was refused or reported, the job and its phase) and
moves it; :class:`~edge_runtime.updates.updater.Updater` builds the :class:`~.effects.View`,
runs the effects and feeds back their outcomes. Every step of an update, attack or not, is
then a table test of events -> effects (``tests/updates/test_machine.py``).

Checks that need modules which also write files (a delta index's verification, the encryption
recipient check with the device key) are handed in as :class:`Checks`, plain functions.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from edge_runtime.bundle.manifest import Manifest
from edge_runtime.exceptions import BadDataError, DecryptionError, RollbackError, StoreError
from edge_runtime.trust.root import TrustRoot, check_root_expiry
from edge_runtime.updates.effects import (
    Activate,
    Activated,
    ActivationFailed,
    Announce,
    ChunkRejected,
    ChunkWritten,
    Connected,
    DeltaFailed,
    DeltaIndexReceived,
    DesiredReceived,
    DownloadFailed,
    DownloadOpened,
    DownloadRejected,
    DownloadVerified,
    DropDownload,
    Effect,
    Event,
    FailureRecorded,
    Install,
    Installed,
    Job,
    ManifestReceived,
    Now,
    OpenDownload,
    Phase,
    PublishState,
    RecordFailure,
    Report,
    RootReceived,
    SaveRoot,
    SaveState,
    ServingObserved,
    Subscribe,
    SubscriptionRefused,
    Tick,
    Unsubscribe,
    UpdaterSettings,
    VerifyDownload,
    View,
)
from edge_runtime.updates.exceptions import ImpossibleEventError, IncompatibleError
from edge_runtime.updates.transfer import TransferSteps
from edge_runtime.updates.verify import (
    Desired,
    ModelTarget,
    PendingRoots,
    Plan,
    Release,
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

MAX_PENDING_ROOTS = 16  # trust roots waiting for an earlier version
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


def _no_delta(*_: Any) -> Any:
    raise BadDataError("deltas are not supported here")


@dataclass(frozen=True)
class Checks:
    """Pure checks the driver supplies (their modules also hold file code the machine must not import).

    ``recipient``: raise DecryptionError unless this device can open an encrypted manifest;
    ``verify_delta(payload, root, manifest, base, max_bytes)``: the verified delta index;
    ``check_bases(index, base_manifest_bytes)``: raise unless the index fits the installed base;
    ``choose_base(offered, installed, active, excluded)``: the version to fetch a delta from.
    """

    recipient: Callable[[Manifest], None] = lambda manifest: None
    verify_delta: Callable[[bytes, TrustRoot, Manifest, int, int], Any] = _no_delta
    check_bases: Callable[[Any, bytes | None], None] = _no_delta
    choose_base: Callable[[Collection[int], Collection[int], int | None, Collection[int]], int | None] = (
        lambda offered, installed, active, excluded: None
    )


DESIRED_KINDS = ("desired", "device_desired")
# Effects whose outcome comes back as an event; the driver handles it before anything else, so
# each ends its batch. (RequestChunks reports only a failure, which skips the rest of the batch.)
FINAL_EFFECTS = (OpenDownload, VerifyDownload, Install, Activate, RecordFailure)


class UpdateMachine(TransferSteps):
    """One device's update state and every decision on it; see the module docstring (the
    download, install and activation steps are :class:`~edge_runtime.updates.transfer.TransferSteps`)."""

    def __init__(self, settings: UpdaterSettings, *, max_bundle_bytes: int, checks: Checks = Checks()) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.device_id = settings.device_id
        self.max_bytes = min(settings.max_download_bytes, max_bundle_bytes)
        self.checks = checks
        self.desired: dict[str, Desired | None] = {k: None for k in DESIRED_KINDS}
        self.floors: dict[str, SeqFloor] = {}
        self.last_error: dict[str, Any] | None = None
        # What became of the last desired-state message (the state document's ``desired``): the
        # operator matches its sha256 with what it published to count a rejection as one.
        self.desired_status: dict[str, Any] | None = None
        self.pending_roots = PendingRoots(MAX_PENDING_ROOTS)
        self.job: Job | None = None
        self._raw_desired: dict[str, bytes] = {}
        self._reported = ReportedOnce()
        self._refused: set[tuple[str, int]] = set()
        self._last_id = 0
        # One handle() call: its view, clocks, root (a rotation changes it mid-call) and effects.
        self._v: View | None = None
        self._now = Now(0.0, _dt.datetime.min.replace(tzinfo=_dt.UTC), "")
        self._root: TrustRoot | None = None
        self._out: list[Effect] = []
        self._download_gone = False

    # -- entry points --------------------------------------------------------------------

    def handle(self, event: Event, view: View, now: Now) -> list[Effect]:
        """Move the state for ``event``; returns what the driver must do, in order.

        Raises ImpossibleEventError for an outcome of an effect the machine did not ask for."""
        self._v, self._now, self._root, self._out, self._download_gone = view, now, view.root, [], False
        handler = _HANDLERS.get(type(event))
        if handler is None:
            raise ImpossibleEventError(f"not an update event: {event!r}")
        handler(self, event)
        last = [i for i, e in enumerate(self._out) if isinstance(e, FINAL_EFFECTS)]
        if last and last != [len(self._out) - 1]:  # the driver stops at an outcome: nothing may follow one
            names = [type(e).__name__ for e in self._out]
            raise ImpossibleEventError(f"an effect with an outcome must end its batch: {names}")
        return self._out

    def restore(self, floors: dict[str, SeqFloor], last_error: dict[str, Any] | None) -> None:
        """The floors and last error saved by an earlier process."""
        self.floors = dict(floors)
        if last_error is not None and isinstance(last_error.get("reason"), str):
            self.last_error = {**last_error, "reason": bounded_reason(last_error["reason"])}

    def resume(self, name: str, version: int, release: Release, message: bytes, base: int, now: float) -> Job:
        """Adopt a staged download the driver reopened at start (before any event)."""
        if self.job is not None:
            raise ImpossibleEventError(f"resuming {name} v{version} while {self.job.name} v{self.job.version} runs")
        job = self._new_job(name, version, Phase.DOWNLOADING, now)
        job.message, job.release, job.delta_base = message, release, base
        return job

    def check_staged(self, name: str, version: int, message: bytes, view: View) -> Release:
        """The release of a download an earlier process staged, checked as a new manifest would be
        (BadDataError: the driver discards it)."""
        release = verify_manifest_message(message, view.root, name=name, version=version)
        check_release(release, view.facts.model(name), view.facts.installed_manifest(name, version), **self.limits())
        return release

    def seqs(self) -> dict[str, int | None]:
        """The seq of each desired state followed (the state document's ``desired_seq``)."""
        return {k: (d.seq if d is not None else None) for k, d in self.desired.items()}

    # -- shorthands ----------------------------------------------------------------------

    @property
    def view(self) -> View:
        assert self._v is not None, "only inside handle()"
        return self._v

    def _emit(self, *effects: Effect) -> None:
        self._out.extend(effects)

    def _filters(self) -> tuple[str, ...]:
        d = self.view.download
        return () if d is None or self._download_gone else d.filters

    def _has_download(self) -> bool:
        return self.view.download is not None and not self._download_gone

    def _release_download(self, remove: bool) -> None:
        if self._has_download():
            self._emit(DropDownload(remove))
            self._download_gone = True

    def _new_job(self, name: str, version: int, phase: Phase, now: float) -> Job:
        self._last_id += 1
        self.job = Job(name, version, phase, now, id=self._last_id, last_progress=now)
        return self.job

    def _current(self, job_id: int, *phases: Phase) -> Job | None:
        """The job a network-thread result is for; None when it has ended (the result is stale)."""
        job = self.job
        return job if job is not None and job.id == job_id and job.phase in phases else None

    def _expect(self, job_id: int, event: Event, *phases: Phase) -> Job:
        """The job an outcome is for: it always follows its effect, so anything else is a bug."""
        job = self._current(job_id, *phases)
        if job is None:
            now = "no job" if self.job is None else f"job {self.job.id} in phase {self.job.phase}"
            raise ImpossibleEventError(f"{type(event).__name__} for job {job_id} with {now}")
        return job

    def limits(self) -> dict[str, Any]:
        """The release limits of :func:`~edge_runtime.updates.verify.check_release`."""
        return {"runtime_major": self.settings.runtime_major, "machine": self.settings.machine, "max_bytes": self.max_bytes}

    # -- connection ----------------------------------------------------------------------

    def _on_connected(self, event: Connected) -> None:
        t = self.topics
        self._emit(Subscribe((t.roots_filter,)), Subscribe((t.desired, t.device_desired(self.device_id))), Announce())
        job = self.job
        if job is not None and job.phase == Phase.MANIFEST:
            self._emit(Subscribe((t.manifest(job.name, job.version),)))
        elif job is not None and job.phase == Phase.DOWNLOADING and self._has_download():
            job.last_progress = self._now.monotonic_s
            if not event.session_present or not self._filters():
                self._emit(PublishState())
                self._replan(job, unsubscribe=False)  # a failed re-plan aborts and reports the job
                return
            # The broker kept our subscriptions and their queue: same filters, no retained resend.
            self._emit(Subscribe(self._filters(), new_only=True))
        self._emit(PublishState())

    # -- desired states and roots --------------------------------------------------------

    def _on_desired_received(self, event: DesiredReceived) -> None:
        kind = "device_desired" if event.device else "desired"
        self._raw_desired[kind] = event.payload
        if self._on_desired(kind, event.payload):
            self._evaluate()

    def _on_desired(self, kind: str, payload: bytes) -> bool:
        device = self.device_id if kind == "device_desired" else None
        scope = "device" if device is not None else "fleet"
        assert self._root is not None
        try:
            desired = verify_desired(payload, self._root, fleet=self.topics.fleet, device=device)
            fresh = check_seq(desired, self.floors.get(kind))
            now = self._now.wall if self.view.facts.clock_trusted() else None
            check_expiry(desired, now)
            check_root_expiry(self._root, now)  # nothing new under an expired root; a rotation re-runs this
        except BadDataError as exc:
            reason = bounded_reason(str(exc))
            report = desired_report(payload, scope, claimed_seq(payload), reason)
            changed = self._set_desired_status(report)
            reported = self._reject(None, None, reason, scope=scope, seq=report["seq"], sha256=report["sha256"])
            if changed and not reported:  # the same reason for other bytes: the state must still say so
                self._emit(PublishState())
            return False
        if not fresh:
            if self.desired[kind] is None:  # after a restart: the floor was saved, the document was not
                self.desired[kind] = desired
                if self._set_desired_status(desired_report(payload, scope, desired.seq)):
                    self._emit(PublishState())
                return True
            return False
        self.floors[kind] = SeqFloor(desired.seq, desired.digest)
        self.desired[kind] = desired
        self._set_desired_status(desired_report(payload, scope, desired.seq))
        self._reported.clear()
        self._refused.clear()
        self._emit(SaveState(dict(self.floors), self.last_error), PublishState())
        return True

    def _set_desired_status(self, report: dict[str, Any]) -> bool:
        changed = report != self.desired_status
        self.desired_status = report
        return changed

    def _on_root(self, event: RootReceived) -> None:
        assert self._root is not None
        rotated, problems = self.pending_roots.offer(self._root, event.version, event.payload)
        for reason in problems:
            self._reject(None, None, reason)
        for new in rotated:
            self._root = new
            self._emit(SaveRoot(new), Report("root_updated", fields={"root_version": new.version}))
        if rotated:
            # Keys changed: messages refused under the old root may verify now, and vice versa.
            for kind, raw in list(self._raw_desired.items()):
                self._on_desired(kind, raw)
            self._evaluate()
            self._emit(PublishState())

    def _evaluate(self) -> None:
        """Compare the desired versions with the store and start the next job."""
        entries = target_entries(self.device_id, self.desired["desired"], self.desired["device_desired"])
        targets = {name: t.version for name, t in entries.items()}
        job = self.job
        if job is not None:
            if job.phase == Phase.ACTIVATING or targets.get(job.name) == job.version:
                return
            self._abandon(job, f"the desired state now asks for {targets.get(job.name, 'no version')}")
        facts = self.view.facts
        for name, version in sorted(targets.items()):
            if (name, version) in self._refused:
                continue
            try:
                plan = plan_target(name, version, facts.model(name), rollback=entries[name].rollback)
            except (RollbackError, StoreError) as exc:
                self._reject(name, version, str(exc))
                self._refused.add((name, version))
                continue
            if plan == Plan.NOTHING:
                continue
            if plan == Plan.FAILED:
                key = ("failed", name, version)
                if key not in self._reported:
                    self._reported.add(key)
                    reason = facts.failed_reasons(name).get(version, "")
                    self._emit(Report("failed", name, version, {"reason": bounded_reason(f"failed before, not retried: {reason}")}))
                continue
            job = self._new_job(name, version, Phase.MANIFEST, self._now.monotonic_s)
            job.plan = plan
            self._emit(
                Report("notified", name, version, {"seq": self.seqs()}),
                Subscribe((self.topics.manifest(name, version),)),
                PublishState(),
            )
            return

    def _abandon(self, job: Job, why: str) -> None:
        log.info("abandoning %s v%d: %s", job.name, job.version, why)
        if job.phase == Phase.MANIFEST:
            self._emit(Unsubscribe((self.topics.manifest(job.name, job.version),), quiet=True))
        elif job.phase == Phase.DELTA_INDEX:
            self._emit(Unsubscribe((self.topics.delta_index(job.name, job.version, job.delta_base),), quiet=True))
        elif self._filters():
            self._emit(Unsubscribe(self._filters(), quiet=True))
        self._release_download(remove=True)
        self.job = None

    # -- manifest and delta index --------------------------------------------------------

    def _on_manifest(self, event: ManifestReceived) -> None:
        job, name, version = self.job, event.name, event.version
        if job is None or job.phase != Phase.MANIFEST or (job.name, job.version) != (name, version):
            return
        assert self._root is not None
        try:
            release = verify_manifest_message(event.payload, self._root, name=name, version=version)
            installed = self.view.facts.installed_manifest(name, version)
            check_release(release, self.view.facts.model(name), installed, **self.limits())
            if release.manifest.encryption is not None:  # not a recipient: refused before any chunk
                self.checks.recipient(release.manifest)
        except (RollbackError, BadDataError) as exc:
            self._reject(name, version, str(exc))
            if isinstance(exc, (RollbackError, IncompatibleError, DecryptionError)):
                self._drop(job, refuse=True)  # a valid release this device must never take
            return  # bad bytes: keep waiting, a corrected manifest may be republished
        # Quiet: with the link down the download must still open (a reconnect then re-plans it);
        # a failed unsubscribe would stop the batch and leave the job downloading nothing.
        self._emit(Unsubscribe((self.topics.manifest(name, version),), quiet=True))
        if job.plan == Plan.ACTIVATE:
            model = self.view.facts.model(name)
            if installed is not None and version in model.installed and version not in model.quarantined:
                self._activate_in_window(job)  # already here (installed, never activated): nothing to fetch
                return
            job.plan = Plan.FETCH  # pruned or quarantined since the plan was made: fetched again
        job.release, job.message = release, event.payload
        base = self._delta_base(job)
        if base:  # a delta from a version this device has: its signed index first (updates/delta.py)
            job.delta_base, job.phase = base, Phase.DELTA_INDEX
            job.last_progress = self._now.monotonic_s
            self._emit(Subscribe((self.topics.delta_index(name, version, base),)), PublishState())
            return
        self._start_download(job, None)

    def _target(self, job: Job) -> ModelTarget | None:
        entries = target_entries(self.device_id, self.desired["desired"], self.desired["device_desired"])
        target = entries.get(job.name)
        return target if target is not None and target.version == job.version else None

    def _delta_base(self, job: Job) -> int:
        target = self._target(job)
        if target is None or not target.deltas or job.delta_failed:
            return 0
        view = self.view.facts.model(job.name)
        return self.checks.choose_base(target.deltas, view.installed, view.active, view.quarantined | view.failed) or 0

    def _on_delta_index(self, event: DeltaIndexReceived) -> None:
        job = self.job
        if job is None or job.phase != Phase.DELTA_INDEX or job.release is None:
            return
        if (event.name, event.version, event.base) != (job.name, job.version, job.delta_base):
            return
        assert self._root is not None
        try:
            index = self.checks.verify_delta(event.payload, self._root, job.release.manifest, job.delta_base, self.max_bytes)
            self.checks.check_bases(index, self.view.facts.installed_manifest(job.name, job.delta_base))
        except BadDataError as exc:
            self._delta_fallback(job, str(exc))
            return
        self._emit(Unsubscribe((self.topics.delta_index(job.name, job.version, job.delta_base),), quiet=True))
        self._start_download(job, index)

    def _delta_fallback(self, job: Job, reason: str) -> None:
        """Any trouble with a delta: fetch the full artifact instead (never retry the delta)."""
        reason = bounded_reason(reason)
        log.warning("%s v%d: delta from v%d not used, fetching the full artifact: %s", job.name, job.version,
                    job.delta_base, reason)
        self._emit(Unsubscribe((self.topics.delta_index(job.name, job.version, job.delta_base),), quiet=True))
        if self._filters():
            self._emit(Unsubscribe(self._filters(), quiet=True))
        self._release_download(remove=True)
        self._emit(Report("delta_fallback", job.name, job.version, {"base": job.delta_base, "reason": reason}))
        job.delta, job.delta_failed, job.delta_base = None, reason, 0
        self._start_download(job, None)

    # -- ending a job, refusing, reporting -----------------------------------------------

    def _drop(self, job: Job, refuse: bool) -> None:
        if refuse:
            self._refused.add((job.name, job.version))
        self._release_download(remove=False)
        self.job = None
        self._emit(PublishState())
        self._evaluate()

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
        self._emit(Report("rejected", name, version, {"reason": reason, **fields}), PublishState())
        return True

    def _error(self, name: str | None, version: int | None, reason: str, persist: bool = True) -> None:
        self.last_error = {"time": self._now.stamp, "model": name, "version": version, "reason": bounded_reason(reason)}
        if persist:
            self._emit(SaveState(dict(self.floors), self.last_error, quiet=True))


_HANDLERS: dict[type, Callable[[UpdateMachine, Any], None]] = {
    Connected: UpdateMachine._on_connected,
    DesiredReceived: UpdateMachine._on_desired_received,
    RootReceived: UpdateMachine._on_root,
    ManifestReceived: UpdateMachine._on_manifest,
    DeltaIndexReceived: UpdateMachine._on_delta_index,
    ChunkWritten: UpdateMachine._on_chunk_written,
    ChunkRejected: UpdateMachine._on_chunk_rejected,
    DownloadFailed: UpdateMachine._on_download_failed,
    SubscriptionRefused: UpdateMachine._on_refused,
    Tick: UpdateMachine._on_tick,
    ServingObserved: UpdateMachine._on_serving,
    DownloadOpened: UpdateMachine._on_download_opened,
    DownloadVerified: UpdateMachine._on_verified,
    DownloadRejected: UpdateMachine._on_rejected,
    DeltaFailed: UpdateMachine._on_delta_failed,
    Installed: UpdateMachine._on_installed,
    Activated: UpdateMachine._on_activated,
    ActivationFailed: UpdateMachine._on_activation_failed,
    FailureRecorded: UpdateMachine._on_failure_recorded,
}


__all__ = ["MAX_PENDING_ROOTS", "MAX_REASON_CHARS", "Checks", "ReportedOnce", "UpdateMachine", "bounded_reason"]
