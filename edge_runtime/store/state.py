"""``<store>/<name>/state.json``: active, last known good, anti-rollback floor and history.

:class:`ModelState` owns its transitions (:meth:`~ModelState.activate`, :meth:`~ModelState.fail`,
:meth:`~ModelState.rollback`, :meth:`~ModelState.fall_back` ...): pure methods that take what
they need to know about the disk (the installed versions) as arguments. The store does
lock -> read -> apply -> write around them, so every transition is a plain unit test.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime.atomic import write_bytes_atomic
from edge_runtime.exceptions import StoreError

MAX_HISTORY = 50
MAX_VERSION = 2**63 - 1


def _version(value: Any, key: str, where: str, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_VERSION:
        raise StoreError(f"{where}: unreadable state ({key} must be a version number, found {repr(value)[:40]})")
    return value


def _versions(value: Any, key: str, where: str) -> dict[int, str]:
    if not isinstance(value, dict):
        raise StoreError(f"{where}: unreadable state ({key} must be an object)")
    out: dict[int, str] = {}
    for k, v in value.items():
        if not (isinstance(k, str) and k.isascii() and k.isdigit() and len(k) <= 19):
            raise StoreError(f"{where}: unreadable state ({key} keys must be version numbers, found {k[:20]!r})")
        out[int(k)] = str(v)
    return out


def _delegate_report(value: Any, where: str) -> dict[str, Any] | None:
    if value is None:
        return None
    skipped = value.get("skipped") if isinstance(value, dict) else None
    if not isinstance(value, dict) or not isinstance(value.get("delegate"), str) or not isinstance(skipped, list) or not all(
        isinstance(s, dict) and all(isinstance(s.get(k), str) for k in ("delegate", "kind", "reason")) for s in skipped
    ):
        raise StoreError(f"{where}: unreadable state (serving_delegate must be {{delegate, skipped: [...]}})")
    return {"delegate": value["delegate"], "skipped": [{k: s[k] for k in ("delegate", "kind", "reason")} for s in skipped]}


def now_iso() -> str:
    """The current UTC time, ISO 8601."""
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass
class ModelState:
    """What the store knows about one model name."""

    active: int | None = None
    last_known_good: int | None = None
    highest_seen: int = 0
    serving_factory: bool = False
    serving: int | None = None
    quarantined: dict[int, str] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    # What runs the serving version: {"delegate": NAME, "skipped": [{"delegate", "kind", "reason"}]}.
    serving_delegate: dict[str, Any] | None = None

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Append a history entry (bounded) and return it."""
        entry = {"time": now_iso(), "event": kind, **fields}
        self.history.append(entry)
        del self.history[:-MAX_HISTORY]
        return entry

    # -- queries -----------------------------------------------------------------------

    def usable(self, version: int | None) -> bool:
        """True when ``version`` may be loaded: neither recorded as failed nor quarantined."""
        return version is not None and version not in self.failed and version not in self.quarantined

    def older_good(self, below: int, installed: Iterable[int]) -> int | None:
        """The newest usable installed version below ``below`` (the next last known good)."""
        for v in sorted(installed, reverse=True):
            if v < below and self.usable(v):
                return v
        return None

    # -- transitions (pure: the caller holds the lock, reads, applies, writes) ------------

    def record_install(self, version: int, repair: str | None = None) -> None:
        """``version`` was written to the store (over a damaged copy when ``repair`` says why)."""
        self.highest_seen = max(self.highest_seen, version)
        self.quarantined.pop(version, None)
        if repair is not None:
            self.event("repaired", version=version, reason=repair)
        self.event("installed", version=version)

    def raise_floor(self, top: int) -> bool:
        """Raise ``highest_seen`` to an installed but unrecorded ``top``; False when already there."""
        if self.highest_seen >= top:
            return False
        self.highest_seen = top
        self.event("installed", version=top, recovered=True)
        return True

    def activate(self, version: int, installed: Iterable[int], *, only_if_newer: bool = False) -> bool:
        """Make ``version`` (just re-verified) active; False when ``only_if_newer`` leaves a newer one.

        The previous active version becomes the last known good unless it failed; a version
        that was the last known good is replaced by the next older usable one.
        """
        previous = self.active
        if only_if_newer and previous is not None and previous > version and not self.serving_factory:
            return False
        if previous is not None and previous != version and self.usable(previous):
            self.last_known_good = previous
        if self.last_known_good == version:
            self.last_known_good = self.older_good(version, installed)
        self.active = version
        self.serving_factory = False
        self.failed.pop(version, None)
        # It has just been re-verified, so an old quarantine no longer applies.
        if self.quarantined.pop(version, None) is not None:
            self.event("unquarantined", version=version)
        self.event("activated", version=version, previous=previous)
        return True

    def fail(self, version: int, reason: str, installed: Iterable[int], revert_to: int | None = None) -> None:
        """Record that ``version`` failed; if it is active and ``revert_to`` is given, revert to that."""
        self.failed[version] = reason
        if revert_to is not None and self.active == version:
            self.active = revert_to
            if self.last_known_good == revert_to:
                self.last_known_good = self.older_good(revert_to, installed)
        self.event("failed", version=version, reason=reason, reverted_to=revert_to)

    def set_serving(self, version: int | None, delegate: dict[str, Any] | None = None) -> bool:
        """Record the version the daemon answers with and what runs it (``{"delegate": ...,
        "skipped": [...]}``); False when both already were."""
        if self.serving == version and self.serving_delegate == delegate:
            return False
        self.serving = version
        self.serving_delegate = delegate
        self.event("serving", version=version, delegate=delegate["delegate"] if delegate else None)
        return True

    def rollback(self, installed: Iterable[int]) -> int:
        """Make the last known good active again (the current one is marked failed); return it."""
        target = self.last_known_good
        if target is None:
            raise StoreError("no last known good version to roll back to")
        current = self.active
        if current is not None:
            self.failed[current] = "rolled back"
        self.active = target
        self.last_known_good = self.older_good(target, installed)
        self.event("rolled_back", version=target, previous=current)
        return target

    def quarantine(self, version: int, reason: str) -> None:
        """Mark ``version`` as failing verification: it is never loaded again until re-verified."""
        self.quarantined[version] = reason
        self.event("quarantined", version=version, reason=reason)

    def fall_back(
        self, from_version: int | None, to_version: int | None, reason: str, installed: Iterable[int]
    ) -> None:
        """Start-up could not serve ``from_version``: record serving ``to_version`` (None: the factory)."""
        if to_version is None:
            self.serving_factory = True
            if self.active is not None and self.active in self.quarantined:
                self.active = None
            if self.last_known_good in self.quarantined:
                self.last_known_good = None
        else:
            self.serving_factory = False
            self.active = to_version
            if self.last_known_good == to_version:
                self.last_known_good = self.older_good(to_version, installed)
        target = "factory" if to_version is None else f"v{to_version}"
        self.event("fallback", previous=from_version, to=target, reason=reason)

    # -- the on-disk form ---------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The on-disk form."""
        return {
            "active": self.active,
            "last_known_good": self.last_known_good,
            "highest_seen": self.highest_seen,
            "serving_factory": self.serving_factory,
            "serving": self.serving,
            "quarantined": {str(k): v for k, v in sorted(self.quarantined.items())},
            "failed": {str(k): v for k, v in sorted(self.failed.items())},
            "history": self.history,
            "serving_delegate": self.serving_delegate,
        }

    @classmethod
    def from_json(cls, obj: Any, where: str) -> ModelState:
        """Parse the on-disk form; StoreError for anything but the shapes :meth:`to_json` writes."""
        if not isinstance(obj, dict):
            raise StoreError(f"{where}: unreadable state (expected an object, found {type(obj).__name__})")
        history = obj.get("history", [])
        if not isinstance(history, list):
            raise StoreError(f"{where}: unreadable state (history must be a list)")
        return cls(
            active=_version(obj.get("active"), "active", where),
            last_known_good=_version(obj.get("last_known_good"), "last_known_good", where),
            highest_seen=_version(obj.get("highest_seen", 0), "highest_seen", where, allow_none=False) or 0,
            serving_factory=obj.get("serving_factory", False) is True,
            serving=_version(obj.get("serving"), "serving", where),
            quarantined=_versions(obj.get("quarantined", {}), "quarantined", where),
            failed=_versions(obj.get("failed", {}), "failed", where),
            history=history[-MAX_HISTORY:],
            serving_delegate=_delegate_report(obj.get("serving_delegate"), where),
        )


def read_state(path: Path) -> ModelState:
    """Load a state file; a missing file is an empty state."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return ModelState()
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise StoreError(f"{path}: state file is not JSON ({str(exc)[:80]})") from exc
    return ModelState.from_json(obj, str(path))


def write_state(path: Path, state: ModelState) -> None:
    """Atomically write a state file."""
    write_bytes_atomic(path, json.dumps(state.to_json(), indent=1, sort_keys=True).encode() + b"\n")
