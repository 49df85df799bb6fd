"""Read-only views of the store for the updater, the job's summary in the state document, and
the delta checks the updater hands the machine (they import the delta code when first called).

The settings, the job and its phases live in :mod:`edge_runtime.updates.effects` (pure); they
are re-exported here for the modules that knew them from here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edge_runtime.bundle.manifest import MANIFEST_FILE, Manifest, parse_manifest
from edge_runtime.exceptions import StoreError
from edge_runtime.store.store import ModelStore
from edge_runtime.updates.effects import Job, Phase, UpdaterSettings
from edge_runtime.updates.verify import ModelView

if TYPE_CHECKING:
    from collections.abc import Collection

    from edge_runtime.trust.root import TrustRoot
    from edge_runtime.updates.delta import DeltaIndex
    from edge_runtime.updates.download import Download


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


def job_summary(job: Job | None, download: Download | None = None) -> dict[str, Any] | None:
    """The state document's ``update``: the job in progress and the progress of its ``download``."""
    if job is None:
        return None
    update: dict[str, Any] = {"model": job.name, "version": job.version, "phase": job.phase.value}
    if download is not None:
        p = download.progress()
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
    "Job",
    "Phase",
    "UpdaterSettings",
    "installed_manifest",
    "job_summary",
    "model_view",
    "models_summary",
]


# The delta checks of machine.Checks: a device that is never offered a delta does not import its code.
def verify_delta(payload: bytes, root: TrustRoot, manifest: Manifest, base: int, max_bytes: int) -> DeltaIndex:
    """:func:`edge_runtime.updates.delta.verify_delta_message`."""
    from edge_runtime.updates.delta import verify_delta_message

    return verify_delta_message(payload, root, manifest, base, max_bytes)


def choose_base(offered: Collection[int], installed: Collection[int], active: int | None,
                excluded: Collection[int]) -> int | None:
    """:func:`edge_runtime.updates.delta.choose_base`."""
    from edge_runtime.updates.delta import choose_base as choose

    return choose(offered, installed, active, excluded)


def check_bases(index: DeltaIndex, base_manifest: bytes | None) -> None:
    """Raise DeltaError unless the installed base (its manifest bytes; None: gone) fits the index."""
    from edge_runtime.updates.delta import DeltaError
    from edge_runtime.updates.delta import check_bases as check

    if base_manifest is None:
        raise DeltaError(f"v{index.base} is no longer installed")
    check(index, parse_manifest(base_manifest))
