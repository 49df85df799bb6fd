"""What the console knows now: each device's newest state digest and the fleet's desired state.

Plain data, no I/O: :mod:`.record` keeps these in memory (loaded from SQLite at start, updated
by its writer) and hands out copies; :mod:`.overview` and :mod:`.pages` compute and render from
them without importing the record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edge_runtime.fleet.console.digest import DesiredDigest, StateDigest


@dataclass
class DeviceNow:
    """What is known of a device now."""

    device: str
    online: bool | None = None
    last_seen: float | None = None
    state_time: float | None = None
    digest: StateDigest | None = None
    state: dict[str, Any] | None = None  # the digest's few fields rollout tallies read (never the raw document)

    @property
    def status(self) -> str:
        """``no state`` before the first state, else the digest's status."""
        return self.digest.status if self.digest is not None else "no state"


@dataclass
class FleetNow:
    """A consistent copy of the current view (what the overview shows)."""

    devices: list[DeviceNow]
    desired: DesiredDigest | None
    desired_verified: bool | None
    steps: list[dict[str, Any]] = field(default_factory=list)
    releases: list[tuple[str, int]] = field(default_factory=list)
    change: int = 0


__all__ = ["DeviceNow", "FleetNow"]
