"""The updater's plain data: its settings, the job in progress and its phases, the events the
network thread hands to the updater thread, and read-only views of the store."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime import RUNTIME_MAJOR
from edge_runtime.bundle.manifest import MANIFEST_FILE
from edge_runtime.exceptions import StoreError
from edge_runtime.spec.window import Window
from edge_runtime.store.store import ModelStore
from edge_runtime.updates.download import Download
from edge_runtime.updates.policy import Budget
from edge_runtime.updates.protocol import Topics
from edge_runtime.updates.verify import ModelView


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
    """The update in progress."""

    name: str
    version: int
    phase: Phase
    since: float
    previous: int | None = None
    download: Download | None = None
    message: bytes = b""
    last_progress: float = 0.0
    reported_percent: int = -1
    window: set[tuple[str, int]] = field(default_factory=set)
    deadline: float = 0.0
    delta: Any = None  # a verified DeltaIndex while a budget defers its download
    release: Any = None  # the verified Release while the delta index or a budget is awaited
    delta_base: int = 0  # the version a delta is being fetched from (0: the full artifact)
    delta_failed: str = ""  # why the delta was given up (then the full artifact is fetched)
    index_asked_again: bool = False  # the delta index was re-requested once after a stall
    waiting_until: str = ""  # ISO time: when the window opens / the deferral ends ("" unknown)
    waiting_reason: str = ""
    checked_minute: Any = None  # the wall-clock minute windows and budgets were last decided in


@dataclass(frozen=True)
class ChunkWritten:
    """A chunk of ``job`` was checked and written (network thread -> updater thread)."""

    job: Job


@dataclass(frozen=True)
class ChunkRejected:
    """A chunk of ``job`` failed its checks and was dropped."""

    job: Job
    reason: str


@dataclass(frozen=True)
class DownloadFailed:
    """A chunk of ``job`` could not be written (disk full, I/O error): the download is aborted."""

    job: Job
    reason: str


@dataclass(frozen=True)
class SubscriptionRefused:
    """The broker refused to subscribe us to ``filters`` (its SUBACK said so, e.g. an ACL)."""

    filters: tuple[str, ...]
    reason: str


UpdaterEvent = ChunkWritten | ChunkRejected | DownloadFailed | SubscriptionRefused


def model_view(store: ModelStore, name: str) -> ModelView:
    """What the store holds for ``name``, as the pure checks take it."""
    state = store.state(name)
    installed = store.versions(name)
    return ModelView(
        active=state.active,
        highest_seen=max([state.highest_seen, *installed]),
        installed=frozenset(installed),
        failed=frozenset(state.failed),
        quarantined=frozenset(state.quarantined),
    )


def installed_manifest(store: ModelStore, name: str, version: int) -> bytes | None:
    """The manifest bytes of an installed version, None when it is not installed."""
    try:
        return (store.version_dir(name, version) / MANIFEST_FILE).read_bytes()
    except OSError:
        return None


def models_summary(store: ModelStore) -> dict[str, Any]:
    """Per model: active, last known good, floor, serving, failed versions and the delegate running
    the serving version (the state document's ``models``)."""
    models: dict[str, Any] = {}
    for name in store.models():
        try:
            st = store.state(name)
        except StoreError as exc:
            models[name] = {"error": str(exc)}
            continue
        models[name] = {
            "active": st.active,
            "last_known_good": st.last_known_good,
            "highest_seen": st.highest_seen,
            "serving": st.serving,
            "serving_factory": st.serving_factory,
            "failed": {str(k): v for k, v in sorted(st.failed.items())},
            # What runs the serving version and which delegates were skipped, with why.
            "delegate": st.serving_delegate,
        }
    return models


def job_summary(job: Job | None) -> dict[str, Any] | None:
    """The state document's ``update``: the job in progress and its progress."""
    if job is None:
        return None
    update: dict[str, Any] = {"model": job.name, "version": job.version, "phase": job.phase.value}
    if job.download is not None:
        p = job.download.progress()
        update.update(percent=p.percent, have_bytes=p.have_bytes, total_bytes=p.total_bytes, received_bytes=p.received_bytes)
    if job.delta_base:
        update["delta_from"] = job.delta_base
    if job.delta_failed:
        update["delta_failed"] = job.delta_failed
    if job.phase in (Phase.WAITING_WINDOW, Phase.DEFERRED):
        # "downloaded, waiting for window until T" / "deferred: <why> until T"
        update["until"] = job.waiting_until or None
        update["reason"] = job.waiting_reason
    return update


__all__ = [
    "ChunkRejected",
    "ChunkWritten",
    "DownloadFailed",
    "Job",
    "Phase",
    "SubscriptionRefused",
    "UpdaterEvent",
    "UpdaterSettings",
     "installed_manifest",
    "job_summary",
    "model_view",
    "models_summary",
]
