"""The store's I/O for start-up repair, tentative activation and deleting versions.

Each function is lock -> read -> apply a pure transition of :class:`~.state.ModelState` (or the
pure :func:`~.retention.expired`) -> write, like the rest of :class:`~.store.ModelStore`, whose
methods of the same names call these. Deleting is crash-safe: under the lock the version
directory is renamed to ``<name>/.trash-<v>-XXXX`` (from then on it is no version) and the
state written; the directory is deleted after the lock is released. A process killed in
between leaves a ``.trash-*`` directory that :meth:`~.store.ModelStore.cleanup_partial` removes.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from edge_runtime.bundle.manifest import NAME_RE
from edge_runtime.exceptions import NotFoundError, StoreError
from edge_runtime.store.retention import expired
from edge_runtime.store.state import ModelState

if TYPE_CHECKING:
    from edge_runtime.store.store import ModelStore

log = logging.getLogger("edge_runtime.store")


# -- start-up repair -------------------------------------------------------------------------


def cleanup_partial(store: ModelStore) -> list[Path]:
    """Repair what interrupted installs and removals left; returns the paths removed.

    Removes ``.install-*`` and ``.trash-*`` directories, and raises ``highest_seen`` of a
    model to its highest installed version when an install was killed between the rename
    of its directory and the update of ``state.json`` (recorded as a recovered
    ``installed`` event). Takes the store lock, so it must not be called while holding it:
    an install in progress in another process holds the lock while its ``.install-*``
    directory exists, so only dead leftovers are removed.
    """
    removed: list[Path] = []
    if not store.path.is_dir():
        return removed
    with store.lock():
        for d in sorted(store.path.iterdir()):
            if not d.is_dir() or not NAME_RE.fullmatch(d.name):
                continue
            for p in [*d.glob(".install-*"), *d.glob(".trash-*")]:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
                log.info("removed %s, left by an interrupted install", p, extra={"model": d.name})
            _reconcile_floor(store, d.name)
    return removed


def _reconcile_floor(store: ModelStore, name: str) -> None:
    """Raise ``highest_seen`` to the highest installed version (caller holds the lock)."""
    installed = store.versions(name)
    if not installed:
        return
    try:
        state = store.state(name)
    except StoreError as exc:
        log.error("%s: cannot reconcile the anti-rollback floor: %s", name, exc, extra={"model": name})
        return
    top = installed[-1]
    if not state.raise_floor(top):
        return
    try:
        store.write_state(name, state)
    except OSError as exc:  # e.g. a full disk: the floor still holds (it counts directories)
        log.error("%s: cannot record v%d as installed: %s", name, top, exc, extra={"model": name, "version": top})
        return
    log.warning(
        "%s: v%d was installed but not recorded (interrupted install): anti-rollback floor raised to v%d",
        name, top, top, extra={"model": name, "version": top},
    )


# -- tentative activation (state.py's module docstring) ------------------------------------


def begin_trying(store: ModelStore, name: str, version: int) -> None:
    """Persist ``trying`` before a serving process creates the first interpreter of ``version``."""
    with store.recording(name, f"trying v{version}"), store.lock():
        state = store.state(name)
        if state.begin_trying(version):
            store.write_state(name, state)


def end_trying(store: ModelStore, name: str, version: int, *, confirmed: bool) -> None:
    """Clear ``trying`` for ``version``; ``confirmed`` when it loaded and passed its self-test."""
    with store.recording(name, f"the outcome of trying v{version}"), store.lock():
        state = store.state(name)
        if state.end_trying(version, confirmed=confirmed):
            store.write_state(name, state)


def recover_trying(store: ModelStore, name: str) -> int | None:
    """Fail the version a dead serving process left ``trying`` and revert to the previous one."""
    with store.lock():
        try:
            state = store.state(name)
        except (StoreError, OSError):
            return None  # resolve() serves the factory bundle and reports the unreadable state
        failed = state.crashed_while_trying(store.versions(name))
        if failed is not None:
            with store.recording(name, f"the failure of v{failed}"):
                store.write_state(name, state)
    if failed is not None:
        log.error(
            "%s: the serving process died while trying v%d: recorded as failed, not retried; serving %s",
            name, failed, f"v{state.active}" if state.active is not None else "the factory bundle",
            extra={"model": name, "version": failed, "reason": state.failed.get(failed, "")},
        )
    return failed


# -- retention and removal (retention.py) ----------------------------------------------------


def prune(store: ModelStore, name: str, keep_versions: int) -> list[int]:
    """Delete versions beyond the ``keep_versions`` newest, except protected and pinned ones."""
    pinned = store.pins(name) if store.pins is not None else set()
    with store.lock():
        state = store.state(name)
        doomed = expired(store.versions(name), keep_versions, state.protected() | pinned)
        trash = [_to_trash(store, name, v, state, f"retention: keep_versions = {keep_versions}") for v in doomed]
        if doomed:
            store.write_state(name, state)
    empty_trash(trash)
    if doomed:
        log.info("%s: removed %s (keep_versions = %d)", name, ", ".join(f"v{v}" for v in doomed), keep_versions,
                 extra={"model": name})
    return doomed


def remove(store: ModelStore, name: str, version: int) -> ModelState:
    """Delete one installed version, refusing protected and config-pinned ones."""
    pinned = store.pins(name) if store.pins is not None else set()
    with store.lock():
        installed = store.versions(name)
        if version not in installed:
            raise NotFoundError(f"{name} v{version} is not installed (installed: {installed})")
        state = store.state(name)
        if version in pinned and version not in state.protected():
            raise StoreError(f"{name} v{version} is named by [models.{name}] (traffic, shadow or versions): "
                             "it cannot be removed while the config serves it")
        try:
            trash = _to_trash(store, name, version, state, "removed by the operator")
        except StoreError as exc:
            raise StoreError(f"{name} {exc}") from exc
        store.write_state(name, state)
    empty_trash([trash])
    log.info("%s: v%d removed", name, version, extra={"model": name, "version": version})
    return state


def _to_trash(store: ModelStore, name: str, version: int, state: ModelState, why: str) -> Path:
    """Record the removal in ``state`` (raises when the version must stay), then rename its
    directory out of the listing; the caller holds the lock and writes ``state``."""
    state.remove(version, why)
    trash = store.model_dir(name) / f".trash-{version}-{uuid.uuid4().hex[:8]}"
    os.rename(store.version_dir(name, version), trash)
    return trash


def empty_trash(trash: list[Path]) -> None:
    """Delete renamed-away version directories (after the lock is released)."""
    for t in trash:
        shutil.rmtree(t, ignore_errors=True)
