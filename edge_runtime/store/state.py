"""``<store>/<name>/state.json``: active, last known good, anti-rollback floor and history."""

from __future__ import annotations

import datetime as _dt
import json
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
