"""Messages as devices and the operator send them, for the console's tests and bench."""

from __future__ import annotations

import json
from typing import Any

from edge_runtime.updates.protocol import Topics

TOPICS = Topics("edge", "shop-7")


def state(
    device: str,
    active: int | None = 1,
    *,
    failed: dict[str, str] | None = None,
    update: dict[str, Any] | None = None,
    last_error: dict[str, Any] | None = None,
    drift: dict[str, Any] | None = None,
    model: str = "fraud",
    seq: int | None = None,
    time: str = "2026-12-03T12:00:00Z",
    health: dict[str, Any] | None = None,
    desired_report: dict[str, Any] | None = None,
) -> bytes:
    """A device state document as the update client publishes it (docs/updates.md)."""
    entry: dict[str, Any] = {"active": active, "last_known_good": active, "highest_seen": active, "failed": failed or {}}
    if drift is not None:
        entry["drift"] = drift
    doc = {
        "device": device, "fleet": TOPICS.fleet, "time": time, "runtime": "0.1.0", "runtime_major": 0,
        "machine": "aarch64", "trust_root_version": 1, "desired_seq": {"desired": seq, "device_desired": None},
        "models": {model: entry}, "update": update, "last_error": last_error, "store_fault": None,
    }
    if health is not None:
        doc["health"] = health
    if desired_report is not None:
        doc["desired"] = desired_report
    return json.dumps(doc).encode()


def event(device: str, kind: str, version: int, **extra: Any) -> bytes:
    """One event line."""
    return json.dumps({"time": "2026-12-03T12:00:00Z", "device": device, "event": kind, "model": "fraud", "version": version, **extra}).encode()


HEALTHY = {"cpu_temp_c": 52.5, "throttled": False, "under_voltage": False, "throttle_flags": "0x0",
           "store_free_bytes": 1_200_000_000, "mem_available_bytes": 310_000_000, "mem_total_bytes": 1_900_000_000}


def desired(seq: int, percent: int, version: int = 2, model: str = "fraud") -> bytes:
    """A fleet desired-state message (unsigned: the console shows it as published)."""
    doc = {"seq": seq, "models": {model: {"version": version, "rollout": {"percent": percent, "salt": f"{model}-{version}"}}}}
    return json.dumps({"desired": json.dumps(doc), "signatures": []}).encode()
