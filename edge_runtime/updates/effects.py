"""The vocabulary of the update machine: its settings, the job and its phases, the events it
takes, the view of the device it decides on and the effects it returns. Plain data only.

:class:`~edge_runtime.updates.machine.UpdateMachine` turns ``(event, view, now)`` into a list
of effects; :class:`~edge_runtime.updates.updater.Updater` (the driver) builds the view, runs
the effects in order and feeds back what they produced. Three kinds of events:

- **inputs** from the broker and the clock (:class:`Connected`, :class:`DesiredReceived`, ...);
- **network-thread results** (:class:`ChunkWritten`, :class:`ChunkRejected`,
  :class:`DownloadFailed`), tagged with the job they were for: one for a job that has since
  ended is ignored;
- **outcomes** of an effect the driver ran (:class:`DownloadOpened`, :class:`Installed`, ...):
  they only ever follow their effect, so one for any other job is a bug and the machine raises.

An effect that can fail is the last of its batch; when it fails the driver skips the rest of
the batch and reports the failure as an event instead.
"""

from __future__ import annotations

import datetime as _dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edge_runtime import RUNTIME_MAJOR
from edge_runtime.spec.window import Window
from edge_runtime.trust.root import TrustRoot
from edge_runtime.updates.policy import Budget
from edge_runtime.updates.protocol import Topics
from edge_runtime.updates.verify import ModelView, Plan, Release, SeqFloor


@dataclass(frozen=True)
class UpdaterSettings:
    """Limits and identity of one device's updater."""

    device_id: str
    topics: Topics
    state_dir: Path
    staging_dir: Path
    runtime_major: int = RUNTIME_MAJOR
    machine: str = ""
    max_download_bytes: int = 512 * 1024 * 1024
    window_chunks: int = 256
    stall_s: float = 30.0
    activation_timeout_s: float = 120.0
    max_download_bytes_per_s: int = 0
    max_events: int = 1000
    budget: Budget = Budget()  # daily byte budget and metered link ([updates])
    local_window: Window | None = None  # the device's own maintenance window ([updates] window)
    nm_metered_file: Path | None = None  # NetworkManager's metered flag, when exposed


class Phase(enum.StrEnum):
    """Where the update in progress is; the value is what the state document reports."""

    MANIFEST = "manifest"  # notified: waiting for the signed manifest
    DELTA_INDEX = "delta_index"  # the manifest verified: waiting for the signed delta index
    DEFERRED = "deferred"  # the manifest verified: the download waits for a budget or link
    DOWNLOADING = "downloading"  # the manifest verified: collecting chunks
    WAITING_WINDOW = "waiting_window"  # downloaded and installed: activation waits for the window
    ACTIVATING = "activating"  # installed and activated: waiting for the daemon to serve it


@dataclass
class Job:
    """The update in progress, as the machine knows it (the driver holds its open download)."""

    name: str
    version: int
    phase: Phase
    since: float
    id: int = 0  # tells a network-thread result for this job from one for an earlier job
    plan: Plan = Plan.FETCH  # decided once, when the job starts: fetch it, or activate what is installed
    previous: int | None = None
    message: bytes = b""
    last_progress: float = 0.0
    reported_percent: int = -1
    deadline: float = 0.0
    delta: Any = None  # a verified DeltaIndex while a budget defers its download
    release: Release | None = None  # the verified Release while the delta index or a budget is awaited
    delta_base: int = 0  # the version a delta is being fetched from (0: the full artifact)
    delta_failed: str = ""  # why the delta was given up (then the full artifact is fetched)
    index_asked_again: bool = False  # the delta index was re-requested once after a stall
    waiting_until: str = ""  # ISO time: when the window opens / the deferral ends ("" unknown)
    waiting_reason: str = ""
    checked_minute: Any = None  # the wall-clock minute windows and budgets were last decided in


# -- the view: what the driver knows when an event is handled ---------------------------------


@dataclass(frozen=True)
class DownloadFacts:
    """The open download's counters and subscriptions."""

    base: int  # the delta's from-version, 0 for the full artifact
    filters: tuple[str, ...]
    complete: bool
    percent: int
    have_bytes: int
    total_bytes: int
    received_bytes: int
    rejected_bytes: int
    write_error: str | None = None  # a failed write the network thread is handing over
    window_complete: bool = False  # every chunk named by the current filters is written


class DeviceFacts(Protocol):
    """What the store and the link hold, read only when the machine asks (a chunk event must not
    cost a read of every model's state)."""

    def model(self, name: str) -> ModelView:
        """The store's view of ``name`` (StoreError when unreadable)."""
        ...

    def failed_reasons(self, name: str) -> Mapping[int, str]:
        """Why each failed version of ``name`` failed."""
        ...

    def installed_manifest(self, name: str, version: int) -> bytes | None:
        """The manifest bytes of an installed version; None when it is not installed."""
        ...

    def used_today_bytes(self, now: _dt.datetime) -> int:
        """Bytes downloaded today (UTC day)."""
        ...

    def metered(self) -> bool:
        """Whether the link is metered now."""
        ...

    def clock_trusted(self) -> bool:
        """Whether the wall clock can be trusted for expiry checks (it may be a ``stat``)."""
        ...


@dataclass(frozen=True)
class StaticFacts:
    """:class:`DeviceFacts` from plain values (the machine's table tests)."""

    models: Mapping[str, ModelView] = field(default_factory=dict)
    reasons: Mapping[str, Mapping[int, str]] = field(default_factory=dict)
    manifests: Mapping[tuple[str, int], bytes] = field(default_factory=dict)
    today_bytes: int = 0
    is_metered: bool = False
    trusted_clock: bool = False

    def model(self, name: str) -> ModelView:
        """See :class:`DeviceFacts`."""
        return self.models.get(name) or ModelView(None, 0, frozenset(), frozenset(), frozenset())

    def failed_reasons(self, name: str) -> Mapping[int, str]:
        """See :class:`DeviceFacts`."""
        return self.reasons.get(name, {})

    def installed_manifest(self, name: str, version: int) -> bytes | None:
        """See :class:`DeviceFacts`."""
        return self.manifests.get((name, version))

    def used_today_bytes(self, now: _dt.datetime) -> int:
        """See :class:`DeviceFacts`."""
        return self.today_bytes

    def metered(self) -> bool:
        """See :class:`DeviceFacts`."""
        return self.is_metered

    def clock_trusted(self) -> bool:
        """See :class:`DeviceFacts`."""
        return self.trusted_clock


@dataclass(frozen=True)
class View:
    """The device as the driver sees it when it hands the machine an event."""

    root: TrustRoot
    facts: DeviceFacts
    connected: bool = True
    download: DownloadFacts | None = None
    selftest_in_process: bool = False  # no daemon: activation (and its self-test) is immediate


@dataclass(frozen=True)
class Now:
    """The clocks at one event: monotonic for timers, wall for windows, budgets and expiry."""

    monotonic_s: float
    wall: _dt.datetime
    stamp: str  # the timestamp put on events (and on ``last_error``)


# -- events ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Connected:
    """A (re)connection; ``session_present``: the broker kept our subscriptions and queue."""

    session_present: bool


@dataclass(frozen=True)
class DesiredReceived:
    """A desired-state message: the fleet's (``device=False``) or this device's override."""

    payload: bytes
    device: bool = False


@dataclass(frozen=True)
class ManifestReceived:
    """A release's manifest message."""

    name: str
    version: int
    payload: bytes


@dataclass(frozen=True)
class DeltaIndexReceived:
    """A release's signed delta index from version ``base``."""

    name: str
    version: int
    base: int
    payload: bytes


@dataclass(frozen=True)
class RootReceived:
    """``trust/root/<version>``."""

    version: int
    payload: bytes


@dataclass(frozen=True)
class ChunkWritten:
    """A chunk of job ``job_id`` was checked and written (network thread)."""

    job_id: int


@dataclass(frozen=True)
class ChunkRejected:
    """A chunk of job ``job_id`` failed its checks and was dropped (network thread)."""

    job_id: int
    reason: str


@dataclass(frozen=True)
class DownloadFailed:
    """The download of job ``job_id`` cannot go on: a failed write (network thread), or opening,
    re-planning or verifying it failed on disk (an outcome). The job is aborted."""

    job_id: int
    reason: str


@dataclass(frozen=True)
class SubscriptionRefused:
    """The broker refused to subscribe us to ``filters`` (its SUBACK said so, e.g. an ACL)."""

    filters: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Tick:
    """Timers: stalled downloads, windows and budgets, the activation deadline."""


@dataclass(frozen=True)
class ServingObserved:
    """What the store says of the model being activated: the version served, and why the job's
    version failed if it did (the daemon's self-test)."""

    name: str
    serving: int | None
    failed: str | None = None


@dataclass(frozen=True)
class DownloadOpened:
    """Outcome of :class:`OpenDownload`: staged and fits the disk."""

    job_id: int


@dataclass(frozen=True)
class DownloadVerified:
    """Outcome of :class:`VerifyDownload`: every artifact matches its signed hash."""

    job_id: int


@dataclass(frozen=True)
class DownloadRejected:
    """Outcome of :class:`VerifyDownload` or :class:`Install`: the bytes are not a release this
    device can take. Refused for good."""

    job_id: int
    reason: str


@dataclass(frozen=True)
class DeltaFailed:
    """Outcome of :class:`VerifyDownload`: the delta did not rebuild the signed artifacts."""

    job_id: int
    reason: str


@dataclass(frozen=True)
class Installed:
    """Outcome of :class:`Install`."""

    job_id: int


@dataclass(frozen=True)
class Activated:
    """Outcome of :class:`Activate`: the store points at the version (``previous`` was active)."""

    job_id: int
    previous: int | None


@dataclass(frozen=True)
class ActivationFailed:
    """Outcome of :class:`Activate`: the store refused, or the in-process self-test failed."""

    job_id: int
    reason: str
    previous: int | None


@dataclass(frozen=True)
class FailureRecorded:
    """Outcome of :class:`RecordFailure`."""

    job_id: int
    reason: str


Event = (
    Connected | DesiredReceived | ManifestReceived | DeltaIndexReceived | RootReceived | ChunkWritten | ChunkRejected
    | DownloadFailed | SubscriptionRefused | Tick | ServingObserved | DownloadOpened | DownloadVerified
    | DownloadRejected | DeltaFailed | Installed | Activated | ActivationFailed | FailureRecorded
)
NetworkEvent = ChunkWritten | ChunkRejected | DownloadFailed | SubscriptionRefused  # handed from the network thread


# -- effects -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Subscribe:
    """Subscribe to ``filters``; ``new_only``: no retained resend for filters already held."""

    filters: tuple[str, ...]
    new_only: bool = False


@dataclass(frozen=True)
class Unsubscribe:
    """Unsubscribe from ``filters``; ``quiet``: a broker error is not worth stopping for."""

    filters: tuple[str, ...]
    quiet: bool = False


@dataclass(frozen=True)
class Announce:
    """Say ``online: true`` and send the events queued while offline."""


@dataclass(frozen=True)
class Report:
    """Publish event ``kind`` (or queue it while offline)."""

    kind: str
    name: str | None = None
    version: int | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PublishState:
    """Publish the retained state document."""


@dataclass(frozen=True)
class SaveState:
    """Write the seq floors and the last error; ``quiet``: a failed write is only logged."""

    floors: Mapping[str, SeqFloor]
    last_error: Mapping[str, Any] | None
    quiet: bool = False


@dataclass(frozen=True)
class SaveRoot:
    """Keep a rotated trust root and verify with it from now on."""

    root: TrustRoot


@dataclass(frozen=True)
class SaveTraffic:
    """Write the byte counters (a restart keeps the day's bytes)."""


@dataclass(frozen=True)
class OpenDownload:
    """Stage ``release`` (or its ``delta``) and check it fits. Outcome: :class:`DownloadOpened`
    or :class:`DownloadFailed`."""

    job_id: int
    release: Release
    message: bytes
    delta: Any = None


@dataclass(frozen=True)
class RequestChunks:
    """Subscribe to the next window of missing chunks (after unsubscribing the current one when
    ``unsubscribe``). Fails as :class:`DownloadFailed`."""

    job_id: int
    unsubscribe: bool


@dataclass(frozen=True)
class ClearChunkFilters:
    """Forget the saved chunk subscriptions (the download is complete)."""


@dataclass(frozen=True)
class DropDownload:
    """Close the open download; ``remove``: delete its staging files too."""

    remove: bool


@dataclass(frozen=True)
class VerifyDownload:
    """Check every artifact (rebuilding a delta first) and the manifest's signature. Outcome:
    :class:`DownloadVerified`, :class:`DownloadRejected`, :class:`DeltaFailed` or :class:`DownloadFailed`."""

    job_id: int


@dataclass(frozen=True)
class Install:
    """Install the verified download in the store. Outcome: :class:`Installed` or :class:`DownloadRejected`."""

    job_id: int


@dataclass(frozen=True)
class Activate:
    """Point the store at ``version`` and wake the daemon. Outcome: :class:`Activated` or :class:`ActivationFailed`."""

    job_id: int
    name: str
    version: int


@dataclass(frozen=True)
class RecordFailure:
    """Mark ``version`` failed (reverting to ``revert_to``) and wake the daemon. Outcome: :class:`FailureRecorded`."""

    job_id: int
    name: str
    version: int
    reason: str
    revert_to: int | None


Effect = (
    Subscribe | Unsubscribe | Announce | Report | PublishState | SaveState | SaveRoot | SaveTraffic | OpenDownload
    | RequestChunks | ClearChunkFilters | DropDownload | VerifyDownload | Install | Activate | RecordFailure
)
OUTCOME_EFFECTS = (OpenDownload, RequestChunks, VerifyDownload, Install, Activate, RecordFailure)


__all__ = [
    "OUTCOME_EFFECTS",
    "Activate",
    "Activated",
    "ActivationFailed",
    "Announce",
    "ChunkRejected",
    "ChunkWritten",
    "ClearChunkFilters",
    "Connected",
    "DeltaFailed",
    "DeltaIndexReceived",
    "DesiredReceived",
    "DeviceFacts",
    "DownloadFacts",
    "DownloadFailed",
    "DownloadOpened",
    "DownloadRejected",
    "DownloadVerified",
    "DropDownload",
    "Effect",
    "Event",
    "FailureRecorded",
    "Install",
    "Installed",
    "Job",
    "ManifestReceived",
    "NetworkEvent",
    "Now",
    "OpenDownload",
    "Phase",
    "PublishState",
    "RecordFailure",
    "Report",
    "RequestChunks",
    "RootReceived",
    "SaveRoot",
    "SaveState",
    "SaveTraffic",
    "ServingObserved",
    "StaticFacts",
    "Subscribe",
    "SubscriptionRefused",
    "Tick",
    "Unsubscribe",
    "UpdaterSettings",
    "VerifyDownload",
    "View",
]
