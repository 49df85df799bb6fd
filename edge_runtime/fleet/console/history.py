"""Reading the console's history: the rows behind the device and release pages."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DeviceHistory:
    """Rows for the device page: ``timeline`` (time, kind, summary, raw), ``versions`` (model,
    version, time), ``drift`` (model, time, score, alert), ``failures`` (model, version, source, reason, time)."""

    timeline: list[tuple[Any, ...]]
    versions: list[tuple[Any, ...]]
    drift: list[tuple[Any, ...]]
    failures: list[tuple[Any, ...]]


@dataclass(frozen=True)
class ReleaseHistory:
    """Rows for the release page: ``steps`` (scope, seq, percent, salt, verified, time), ``failures``
    (device, source, reason, time), ``ran`` (device, since), and when its manifest first appeared."""

    steps: list[tuple[Any, ...]]
    failures: list[tuple[Any, ...]]
    ran: list[tuple[Any, ...]]
    first_seen: float | None


def device_history(db: sqlite3.Connection, device: str, limit: int = 500) -> DeviceHistory:
    """A device's timeline (newest first, at most ``limit``), versions and drift over time."""
    timeline = db.execute(
        "SELECT time, kind, summary, raw FROM timeline WHERE device = ? ORDER BY id DESC LIMIT ?", (device, limit)
    ).fetchall()
    versions = db.execute(
        "SELECT model, version, time FROM versions WHERE device = ? ORDER BY id", (device,)
    ).fetchall()
    drift = db.execute(
        "SELECT model, time, score, alert FROM drift WHERE device = ? ORDER BY id DESC LIMIT ?", (device, limit)
    ).fetchall()
    failures = db.execute(
        "SELECT model, version, source, reason, time FROM failures WHERE device = ? ORDER BY time", (device,)
    ).fetchall()
    return DeviceHistory(timeline, versions, drift[::-1], failures)


def release_history(db: sqlite3.Connection, model: str, version: int) -> ReleaseHistory:
    """A release's steps (every scope), its failures, and the devices that ever ran it."""
    steps = db.execute(
        "SELECT scope, seq, percent, salt, verified, time FROM rollout_steps WHERE model = ? AND version = ? ORDER BY id",
        (model, version),
    ).fetchall()
    failures = db.execute(
        "SELECT device, source, reason, time FROM failures WHERE model = ? AND version = ? ORDER BY device, time",
        (model, version),
    ).fetchall()
    ran = db.execute(
        "SELECT device, MIN(time) FROM versions WHERE model = ? AND version = ? GROUP BY device ORDER BY device",
        (model, version),
    ).fetchall()
    first = db.execute("SELECT first_seen FROM releases WHERE model = ? AND version = ?", (model, version)).fetchone()
    return ReleaseHistory(steps, failures, ran, first[0] if first else None)


__all__ = ["DeviceHistory", "ReleaseHistory", "device_history", "release_history"]
