"""``<store>/<name>/state.json``: active, last known good, anti-rollback floor and history.

Tentative activation, as A/B bootloaders count boots: a version that has never loaded and
passed its self-test in a serving process is not *confirmed*. Before the daemon creates an
interpreter for it, ``trying`` names it (written atomically); once it is loaded and
self-tested, it is confirmed and ``trying`` is cleared. A serving process that dies in
between (a delegate whose create segfaults) leaves ``trying`` set, and the next start
(:meth:`ModelState.crashed_while_trying`) records that version failed and reverts to the
previous one. A confirmed version is never marked this way: a power cut while it loads
does not demote it.

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
MAX_CONFIRMED = 64  # the newest confirmed versions remembered; retention keeps far fewer installed
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
    report = {"delegate": value["delegate"], "skipped": [{k: s[k] for k in ("delegate", "kind", "reason")} for s in skipped]}
    if value.get("variant") is not None:
        report["variant"] = _variant_report(value["variant"], where)
    return report


def _variant_report(value: Any, where: str) -> dict[str, Any]:
    """The served variant and each variant's figure (inference/variant_choice.py ``Choice.to_json``)."""
    rows = value.get("variants") if isinstance(value, dict) else None
    if not isinstance(value, dict) or not isinstance(value.get("variant"), str) or not isinstance(
            value.get("pinned"), bool) or not isinstance(rows, list) or not all(
            isinstance(r, dict) and all(isinstance(r.get(k), str) for k in ("variant", "outcome", "reason"))
            and (r.get("ms_per_row") is None or isinstance(r.get("ms_per_row"), (int, float))) for r in rows):
        raise StoreError(f"{where}: unreadable state (serving_delegate.variant must be {{variant, pinned, variants}})")
    return {"variant": value["variant"], "pinned": value["pinned"],
            "variants": [{k: r.get(k) for k in ("variant", "ms_per_row", "outcome", "reason")} for r in rows]}


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
    # Tentative activation (see the module docstring): the version a serving process is loading
    # for the first time, and the versions that have loaded and passed their self-test in one.
    trying: int | None = None
    confirmed: set[int] = field(default_factory=set)

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

    def protected(self) -> set[int]:
        """Versions that must stay installed: active, last known good, the one being tried and
        the one the daemon answers with."""
        return {v for v in (self.active, self.last_known_good, self.trying, self.serving) if v is not None}

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
        if self.trying == version:
            self.trying = None
        if revert_to is not None and self.active == version:
            self.active = revert_to
            if self.last_known_good == revert_to:
                self.last_known_good = self.older_good(revert_to, installed)
        self.event("failed", version=version, reason=reason, reverted_to=revert_to)

    def set_serving(self, version: int | None, delegate: dict[str, Any] | None = None, factory: bool = False) -> bool:
        """Record the version the daemon answers with, what runs it (``{"delegate": ...,
        "skipped": [...]}``) and whether it is the factory bundle's; False when all already were."""
        if self.serving == version and self.serving_delegate == delegate and self.serving_factory == factory:
            return False
        self.serving = version
        self.serving_delegate = delegate
        self.serving_factory = factory
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
        if self.trying == version:
            self.trying = None
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

    def begin_trying(self, version: int) -> bool:
        """A serving process is about to load ``version``: mark it ``trying`` unless it is
        confirmed; False when no marker is needed (nothing to write)."""
        if version in self.confirmed:
            return False
        self.trying = version
        self.event("trying", version=version)
        return True

    def end_trying(self, version: int, *, confirmed: bool) -> bool:
        """The load of ``version`` ended in this process: loaded and self-tested (``confirmed``)
        or raised (the caller records why). False when nothing changed."""
        changed = self.trying == version
        if changed:
            self.trying = None
        if confirmed and version not in self.confirmed:
            self.confirmed.add(version)
            while len(self.confirmed) > MAX_CONFIRMED:
                self.confirmed.discard(min(self.confirmed))
            self.event("confirmed", version=version)
            changed = True
        return changed

    def crashed_while_trying(self, installed: Iterable[int]) -> int | None:
        """Start-up: a ``trying`` marker left means the previous serving process died while it
        loaded that version. Record it failed (never retried); when it is active, revert to the
        last known good, else the newest older usable version (None: the factory). Returns the
        failed version, or None when no marker was left."""
        version = self.trying
        if version is None:
            return None
        self.trying = None
        installed = list(installed)
        revert: int | None = None
        if self.active == version:
            lkg = self.last_known_good
            revert = lkg if lkg != version and self.usable(lkg) and lkg in installed else None
            if revert is None:
                revert = self.older_good(version, installed)
        self.fail(version, f"the serving process died while trying v{version}", installed, revert)
        if self.active == version:  # nothing older to serve: the factory bundle is next
            self.active = None
            self.serving_factory = True
        return version

    def remove(self, version: int, why: str) -> None:
        """``version`` is being deleted from the store (``why``: retention or the operator);
        StoreError when it must stay (active, last known good, being tried, serving)."""
        roles = [
            role for role, v in (("active", self.active), ("the last known good", self.last_known_good),
                                 ("being tried", self.trying), ("serving", self.serving)) if v == version
        ]
        if roles:
            raise StoreError(f"v{version} is {' and '.join(dict.fromkeys(roles))}: it cannot be removed")
        self.confirmed.discard(version)
        self.event("removed", version=version, reason=why)

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
            "trying": self.trying,
            "confirmed": sorted(self.confirmed),
        }

    @classmethod
    def from_json(cls, obj: Any, where: str) -> ModelState:
        """Parse the on-disk form; StoreError for anything but the shapes :meth:`to_json` writes."""
        if not isinstance(obj, dict):
            raise StoreError(f"{where}: unreadable state (expected an object, found {type(obj).__name__})")
        history = obj.get("history", [])
        if not isinstance(history, list):
            raise StoreError(f"{where}: unreadable state (history must be a list)")
        active = _version(obj.get("active"), "active", where)
        lkg = _version(obj.get("last_known_good"), "last_known_good", where)
        serving = _version(obj.get("serving"), "serving", where)
        if "confirmed" in obj:
            listed = obj["confirmed"]
            if not isinstance(listed, list):
                raise StoreError(f"{where}: unreadable state (confirmed must be a list)")
            confirmed = {v for v in (_version(x, "confirmed", where, allow_none=False) for x in listed) if v is not None}
        else:  # written before tentative activation: what it served was confirmed then
            confirmed = {v for v in (active, lkg, serving) if v is not None}
        return cls(
            active=active,
            last_known_good=lkg,
            highest_seen=_version(obj.get("highest_seen", 0), "highest_seen", where, allow_none=False) or 0,
            serving_factory=obj.get("serving_factory", False) is True,
            serving=serving,
            quarantined=_versions(obj.get("quarantined", {}), "quarantined", where),
            failed=_versions(obj.get("failed", {}), "failed", where),
            history=history[-MAX_HISTORY:],
            serving_delegate=_delegate_report(obj.get("serving_delegate"), where),
            trying=_version(obj.get("trying"), "trying", where),
            confirmed=set(sorted(confirmed)[-MAX_CONFIRMED:]),
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
