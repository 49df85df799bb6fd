"""The driver of the update machine: it turns messages and timers into events, hands them with a
:class:`~edge_runtime.updates.effects.View` of the device to
:class:`~edge_runtime.updates.machine.UpdateMachine`, and carries out the effects it returns
(subscribe, report, save, open a download, install, activate, ...).

Every decision is in the machine (pure, table-tested); what is here is I/O. It runs on one
thread (the service's ``edge-updates`` thread), except :meth:`Updater.on_chunk`, which the
network thread calls so that a chunk is on disk before the broker gets its PUBACK (a killed
process then loses nothing it acknowledged); its results reach the machine as events through
``post``.

Effects run in order. One that fails (a download that does not open or fit the disk, a failed
write of the chunk subscriptions, verification, install, activation) ends its batch and comes
back as an event, so the machine hears of every outcome the same way. With ``selftest`` given
(no daemon serving, e.g. the fleet simulator) the self-test runs in-process and activation is
immediate.

The download and delta code (:mod:`~edge_runtime.updates.download`,
:mod:`~edge_runtime.updates.delta`) is imported by the first update that needs it, or at
start-up when something is staged: a device that only waits for its next update does not
hold it (docs/updates.md, "Memory: what the client loads").
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_runtime import __version__
from edge_runtime.atomic import write_bytes_atomic
from edge_runtime.bundle.manifest import Manifest
from edge_runtime.bundle.reader import verify_manifest_signature
from edge_runtime.bundle.sealed import content_key
from edge_runtime.exceptions import BadDataError, EdgeRuntimeError, StoreError, TransportError
from edge_runtime.store.store import ModelStore, Resolved
from edge_runtime.updates import effects as fx
from edge_runtime.updates.effects import Job, Phase, UpdaterSettings
from edge_runtime.updates.exceptions import ChunkError
from edge_runtime.updates.job import (
    check_bases,
    choose_base,
    installed_manifest,
    job_summary,
    model_view,
    models_summary,
    verify_delta,
)
from edge_runtime.updates.machine import MAX_PENDING_ROOTS, MAX_REASON_CHARS, Checks, UpdateMachine, bounded_reason
from edge_runtime.updates.protocol import (
    ChunkTopic,
    DeltaIndexTopic,
    DesiredTopic,
    DeviceTopic,
    ManifestTopic,
    RootTopic,
    Topic,
)
from edge_runtime.updates.report import Reporter, Transport
from edge_runtime.updates.roots import save_root
from edge_runtime.updates.traffic import TRAFFIC_FILE, Traffic
from edge_runtime.updates.verify import ModelView, Release, SeqFloor

if TYPE_CHECKING:
    from edge_runtime.updates.delta import DeltaIndex
    from edge_runtime.updates.download import Download, Throttle

log = logging.getLogger("edge_runtime.updates")

STATE_FILE = "updater.json"
TICK_S = 0.2  # timers: stall detection
ACTIVATION_POLL_S = 0.02  # how often the store is read while the daemon swaps
UpdaterEvent = fx.NetworkEvent  # what the network thread hands over


class StoreFacts:
    """:class:`~edge_runtime.updates.effects.DeviceFacts` read from the store and the byte counters."""

    def __init__(self, store: ModelStore, traffic: Traffic, settings: UpdaterSettings,
                 clock_trusted: Callable[[], bool]) -> None:
        self.store, self.traffic, self.settings, self._clock_trusted = store, traffic, settings, clock_trusted

    def model(self, name: str) -> ModelView:
        """See DeviceFacts."""
        return model_view(self.store, name)

    def failed_reasons(self, name: str) -> Mapping[int, str]:
        """See DeviceFacts."""
        return self.store.state(name).failed

    def installed_manifest(self, name: str, version: int) -> bytes | None:
        """See DeviceFacts."""
        return installed_manifest(self.store, name, version)

    def used_today_bytes(self, now: _dt.datetime) -> int:
        """See DeviceFacts."""
        return self.traffic.today(now)

    def metered(self) -> bool:
        """See DeviceFacts."""
        return self.traffic.metered(self.settings.budget)

    def clock_trusted(self) -> bool:
        """See DeviceFacts."""
        return self._clock_trusted()


class Updater:
    """One device's update driver. Call :meth:`load` once, then feed it connection events and messages."""

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
        amend_state: Callable[[dict[str, Any]], None] | None = None,
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
        self.wall = wall  # windows and budgets: injected by tests and the simulator
        self.amend_state = amend_state  # adds to the state document (health, drift)
        self.reporter = Reporter(transport, self.topics, self.device_id, settings.max_events)
        self.traffic = Traffic(settings.state_dir / TRAFFIC_FILE, settings.nm_metered_file)
        self.machine = UpdateMachine(
            settings,
            max_bundle_bytes=store.limits.max_bundle_bytes,
            checks=Checks(recipient=self._recipient, verify_delta=verify_delta, check_bases=check_bases,
                          choose_base=choose_base),
        )
        self._facts = StoreFacts(store, self.traffic, settings, lambda: self.clock_trusted())
        self._throttle: Throttle | None = None  # made by the first chunk (network thread)
        # The open download (the network thread writes its chunks), its job and the chunks its
        # current subscriptions name.
        self._lock = threading.Lock()
        self._download: Download | None = None
        self._download_job = 0
        self._window: set[tuple[str, int]] = set()

    def _recipient(self, manifest: Manifest) -> None:
        content_key(manifest, self.store.device_key)  # DecryptionError: not a recipient

    # -- what the machine holds, for the state document and tests ------------------------

    @property
    def job(self) -> Job | None:
        """The update in progress, if any."""
        return self.machine.job

    @property
    def download(self) -> Download | None:
        """The open download, if any."""
        return self._download

    @property
    def floors(self) -> dict[str, SeqFloor]:
        """The newest desired state followed on each topic."""
        return self.machine.floors

    @property
    def last_error(self) -> dict[str, Any] | None:
        """The last refusal or failure (the state document's ``last_error``)."""
        return self.machine.last_error

    @last_error.setter
    def last_error(self, value: dict[str, Any] | None) -> None:
        self.machine.last_error = value

    # -- persistence ---------------------------------------------------------------------

    def load(self) -> None:
        """Read seq floors and the last error; clean the staging directory; reopen an interrupted download."""
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(self.settings.staging_dir)
        staged = staging.is_dir() and any(staging.iterdir())
        if staged:
            from edge_runtime.updates.download import sweep_staging

            sweep_staging(self.settings.staging_dir)  # .trash-* and directories without manifest.msg
        try:
            saved = json.loads((self.settings.state_dir / STATE_FILE).read_bytes())
            floors = {k: SeqFloor(int(v["seq"]), str(v["digest"])) for k, v in saved.get("floors", {}).items()}
            last = saved.get("last_error")
            self.machine.restore(floors, last if isinstance(last, dict) else None)
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
            log.error("unreadable %s, starting with empty seq floors: %s", STATE_FILE, exc)
        if not staged:
            return  # nothing to resume or clean: the download code is not imported
        from edge_runtime.updates.download import Download, release_dir, remove_dir

        for name, version, message in Download.pending(self.settings.staging_dir):
            if self.machine.job is None:
                try:
                    release = self.machine.check_staged(name, version, message, self._view())
                    delta = self._staged_delta(release, name, version)
                    download = Download.open(self.settings.staging_dir, release, message, delta)
                except (BadDataError, StoreError, OSError) as exc:
                    log.warning("discarding staged %s v%d: %s", name, version, exc)
                else:
                    job = self.machine.resume(name, version, release, message, download.base, self.monotonic())
                    self._set_download(job.id, download)
                    log.info("resuming %s v%d at %d%%", name, version, download.progress().percent)
                    continue
            remove_dir(release_dir(self.settings.staging_dir, name, version))

    def _staged_delta(self, release: Release, name: str, version: int) -> DeltaIndex | None:
        """The verified delta index of an interrupted delta download; None: resume in full."""
        from edge_runtime.updates.delta import verify_delta_message
        from edge_runtime.updates.download import Download, release_dir

        raw = Download.staged_delta(release_dir(self.settings.staging_dir, name, version))
        if raw is None:
            return None
        try:
            base = int(json.loads(json.loads(raw)["delta"])["base"])
            return verify_delta_message(raw, self.store.root, release.manifest, base, self.machine.max_bytes)
        except (BadDataError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s v%d: staged delta unusable (%s), the full artifact is fetched", name, version, exc)
            return None

    def _save(self, floors: Mapping[str, SeqFloor], last_error: Mapping[str, Any] | None) -> None:
        doc = {"floors": {k: {"seq": f.seq, "digest": f.digest} for k, f in floors.items()}, "last_error": last_error}
        write_bytes_atomic(self.settings.state_dir / STATE_FILE, json.dumps(doc, sort_keys=True).encode())

    # -- inputs --------------------------------------------------------------------------

    def on_connect(self, session_present: bool) -> None:
        """(Re)subscribe, announce ourselves, flush what waited for the connection."""
        self.run(fx.Connected(session_present))

    def on_message(self, ref: Topic, payload: bytes) -> None:
        """A control message: desired state, manifest, delta index or trust root."""
        if not payload:
            return  # a cleared retained topic carries no instruction
        event: fx.Event
        match ref:
            case RootTopic(version=version):
                event = fx.RootReceived(version, payload)
            case DesiredTopic():
                event = fx.DesiredReceived(payload)
            case DeviceTopic(device=device, leaf="desired") if device == self.device_id:
                event = fx.DesiredReceived(payload, device=True)
            case ManifestTopic(name=name, version=version):
                event = fx.ManifestReceived(name, version, payload)
            case DeltaIndexTopic(name=name, version=version, base=base):
                event = fx.DeltaIndexReceived(name, version, base, payload)
            case _:
                return
        self.run(event)

    def on_chunk(self, ref: ChunkTopic, payload: bytes) -> None:
        """A chunk (network thread): checked and written before the broker gets its acknowledgement."""
        with self._lock:
            download, job_id = self._download, self._download_job
        if download is None:
            return
        release = download.release.manifest
        if (ref.name, ref.version, ref.base) != (release.name, release.version, download.base):
            return
        self.traffic.add(ref.name, ref.version, len(payload), self.wall())
        try:
            written = download.offer(ref.file, ref.index, payload)
        except ChunkError as exc:
            self._handoff(fx.ChunkRejected(job_id, str(exc)))
            return
        except OSError as exc:  # disk full, quota, I/O error: never raised into the network thread
            log.error("%s v%d: cannot write a chunk: %s", ref.name, ref.version, exc,
                      extra={"model": ref.name, "version": ref.version, "reason": str(exc)})
            self._handoff(fx.DownloadFailed(job_id, f"download failed: {exc}"))
            return
        if self._throttle is None:
            from edge_runtime.updates.download import Throttle

            self._throttle = Throttle(self.settings.max_download_bytes_per_s, self.monotonic)
        self._throttle.wait(len(payload))
        if written:
            self._handoff(fx.ChunkWritten(job_id))
        else:
            log.debug("duplicate chunk %s %d of %s v%d", ref.file, ref.index, ref.name, ref.version)

    def _handoff(self, event: UpdaterEvent) -> None:
        if self.post is not None:
            self.post(event)
        else:
            self.on_internal(event)

    def on_internal(self, event: UpdaterEvent) -> None:
        """Results handed over from the network thread (and the broker's refusals)."""
        self.run(event)

    def tick_interval_s(self) -> float:
        """How soon :meth:`tick` wants to run again: often while waiting for the daemon's swap."""
        job = self.machine.job
        return ACTIVATION_POLL_S if job is not None and job.phase == Phase.ACTIVATING else TICK_S

    def tick(self) -> None:
        """Called a few times a second: what the daemon serves, then the machine's timers."""
        job = self.machine.job
        if job is None:
            return
        if job.phase == Phase.ACTIVATING:
            state = self.store.state(job.name)
            self.run(fx.ServingObserved(job.name, state.serving, state.failed.get(job.version)))
        self.run(fx.Tick())

    # -- the loop ------------------------------------------------------------------------

    def run(self, event: fx.Event) -> None:
        """Hand ``event`` to the machine and carry out its effects, then those of their outcomes."""
        pending: list[fx.Event] = [event]
        while pending:
            effects = self.machine.handle(pending.pop(0), self._view(), self._now())
            for effect in effects:
                outcome = self._do(effect)
                if outcome is not None:  # the machine decides what follows (a failure skips the rest)
                    pending.append(outcome)
                    break

    def _now(self) -> fx.Now:
        return fx.Now(self.monotonic(), self.wall(), self.reporter.now())

    def _view(self) -> fx.View:
        download = self._download
        facts = None
        if download is not None:
            p = download.progress()
            window = self._window
            facts = fx.DownloadFacts(
                base=download.base, filters=tuple(download.filters), complete=download.complete, percent=p.percent,
                have_bytes=p.have_bytes, total_bytes=p.total_bytes, received_bytes=p.received_bytes,
                rejected_bytes=p.rejected_bytes, write_error=download.write_error,
                window_complete=bool(window) and all(download.has(f, i) for f, i in window),
            )
        return fx.View(self.store.root, self._facts, connected=self.transport.connected, download=facts,
                       selftest_in_process=self.selftest is not None)

    def _set_download(self, job_id: int, download: Download | None) -> None:
        with self._lock:
            self._download, self._download_job = download, job_id
        self._set_window(download.filters if download is not None else [])

    def _set_window(self, filters: list[str]) -> None:
        refs = [self.topics.parse(f) for f in filters]
        self._window = {(r.file, r.index) for r in refs if isinstance(r, ChunkTopic)}

    def _do(self, effect: fx.Effect) -> fx.Event | None:  # noqa: C901 - one case per effect
        """Carry out one effect; an event when the machine must hear how it went."""
        match effect:
            case fx.Subscribe(filters=filters, new_only=new_only):
                self.transport.subscribe(list(filters), new_only=new_only)
            case fx.Unsubscribe(filters=filters, quiet=quiet):
                with contextlib.suppress(*((TransportError,) if quiet else ())):
                    self.transport.unsubscribe(list(filters))
            case fx.Announce():
                self.reporter.online(True)
                self.reporter.flush()
            case fx.Report(kind=kind, name=name, version=version, fields=fields):
                self.reporter.event(kind, name, version, **fields)
            case fx.PublishState():
                self.publish_state()
            case fx.SaveState(floors=floors, last_error=last_error, quiet=quiet):
                try:
                    self._save(floors, last_error)
                except OSError as exc:
                    if not quiet:
                        raise
                    log.error("cannot save updater state: %s", exc)
            case fx.SaveRoot(root=root):
                save_root(self.settings.state_dir, root)
                self.store.root = root
            case fx.SaveTraffic():
                self.traffic.save()
            case fx.OpenDownload():
                return self._open(effect)
            case fx.RequestChunks(job_id=job_id, unsubscribe=unsubscribe):
                return self._request_chunks(job_id, unsubscribe)
            case fx.ClearChunkFilters():
                if self._download is not None:
                    with contextlib.suppress(OSError):  # only a hint for a restart; the directory goes soon
                        self._download.set_filters([])
            case fx.DropDownload(remove=remove):
                download = self._download
                self._set_download(0, None)
                if download is not None:
                    download.remove() if remove else download.close()
            case fx.VerifyDownload(job_id=job_id):
                return self._verify(job_id)
            case fx.Install(job_id=job_id):
                assert self._download is not None
                try:
                    self.store.install_bundle(self._download.bundle())
                except (BadDataError, StoreError, OSError) as exc:
                    return fx.DownloadRejected(job_id, f"install failed: {exc}")
                return fx.Installed(job_id)
            case fx.Activate(job_id=job_id, name=name, version=version):
                previous = self.store.state(name).active
                try:
                    self.store.activate(name, version, selftest=self.selftest)
                except EdgeRuntimeError as exc:
                    return fx.ActivationFailed(job_id, str(exc), previous)
                self.wake()
                return fx.Activated(job_id, previous)
            case fx.RecordFailure(job_id=job_id, name=name, version=version, reason=reason, revert_to=revert_to):
                self.store.record_failure(name, version, reason, revert_to=revert_to)
                self.wake()
                return fx.FailureRecorded(job_id, reason)
        return None

    def _open(self, effect: fx.OpenDownload) -> fx.Event:
        from edge_runtime.updates.download import Download, release_dir, remove_dir, space_problem

        name, version = effect.release.manifest.name, effect.release.manifest.version
        try:
            download = Download.open(self.settings.staging_dir, effect.release, effect.message, effect.delta)
        except OSError as exc:
            remove_dir(release_dir(self.settings.staging_dir, name, version))
            return fx.DownloadFailed(effect.job_id, f"download failed: {exc}")
        problem = space_problem(self.settings.staging_dir, download.total_bytes - download.progress().have_bytes)
        if problem is not None:
            download.remove()
            return fx.DownloadFailed(effect.job_id, f"download refused: {problem}")
        self._set_download(effect.job_id, download)
        return fx.DownloadOpened(effect.job_id)

    def _request_chunks(self, job_id: int, unsubscribe: bool) -> fx.Event | None:
        download = self._download
        assert download is not None
        if unsubscribe and download.filters:
            self.transport.unsubscribe(download.filters)
        from edge_runtime.updates.download import plan_filters

        filters = plan_filters(self.topics, download, self.settings.window_chunks)
        try:
            download.set_filters(filters)
        except OSError as exc:
            return fx.DownloadFailed(job_id, f"download failed: {exc}")
        self._set_window(filters)
        self.transport.subscribe(filters, new_only=True)
        return None

    def _verify(self, job_id: int) -> fx.Event:
        download = self._download
        assert download is not None
        if download.delta is not None:
            try:  # the deltas' own hashes, then the rebuilt artifacts against the signed full hashes
                download.verify_complete()
                download.rebuild(self.store.version_dir(download.release.manifest.name, download.base))
            except (BadDataError, OSError) as exc:
                return fx.DeltaFailed(job_id, str(exc))
        try:
            download.verify_complete()
            verify_manifest_signature(self.store.root, download.release.manifest_bytes, download.release.signature_bytes)
        except BadDataError as exc:
            return fx.DownloadRejected(job_id, str(exc))
        except OSError as exc:
            return fx.DownloadFailed(job_id, f"download failed: {exc}")
        return fx.DownloadVerified(job_id)

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
            "desired_seq": self.machine.seqs(),
            "desired": self.machine.desired_status,
            "models": models_summary(self.store),
            "update": job_summary(self.machine.job, self._download),
            "last_error": self.machine.last_error,
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


__all__ = ["MAX_PENDING_ROOTS", "MAX_REASON_CHARS", "STATE_FILE", "Job", "Updater", "UpdaterSettings", "bounded_reason"]
