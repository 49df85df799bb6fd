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
        }

    @classmethod
    def from_json(cls, obj: Any, where: str) -> ModelState:
        """Parse the on-disk form."""
        try:
            return cls(
                active=obj.get("active"),
                last_known_good=obj.get("last_known_good"),
                highest_seen=int(obj.get("highest_seen", 0)),
                serving_factory=bool(obj.get("serving_factory", False)),
                serving=obj.get("serving"),
                quarantined={int(k): str(v) for k, v in obj.get("quarantined", {}).items()},
                failed={int(k): str(v) for k, v in obj.get("failed", {}).items()},
                history=list(obj.get("history", [])),
            )
        except (AttributeError, TypeError, ValueError) as exc:
            raise StoreError(f"{where}: unreadable state ({exc})") from exc


def read_state(path: Path) -> ModelState:
    """Load a state file; a missing file is an empty state."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return ModelState()
    try:
        obj = json.loads(data)
    except ValueError as exc:
        raise StoreError(f"{path}: state file is not JSON ({exc})") from exc
    return ModelState.from_json(obj, str(path))


def write_state(path: Path, state: ModelState) -> None:
    """Atomically write a state file."""
    write_bytes_atomic(path, json.dumps(state.to_json(), indent=1, sort_keys=True).encode() + b"\n")
