"""The numbers behind the console's pages, from the record's current view. Pure code.

Rollout progress uses :func:`edge_runtime.fleet.rollout.tally`, the same count ``fleet
status`` and staged rollouts use, so the page and a halted ``fleet publish --steps`` agree
on who updated, failed, was rejected or is still pending.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

from edge_runtime.fleet.console.view import DeviceNow, FleetNow
from edge_runtime.fleet.rollout import Tally, over_limit, tally

PAGE_ROWS = 100
SORT_KEYS = ("device", "online", "models", "status", "seen", "drift", "health", "error")


@dataclass(frozen=True)
class ReleaseProgress:
    """One release the fleet's desired state has named, with its steps and where it stands."""

    model: str
    version: int
    tally: Tally
    steps: list[dict[str, Any]]
    current: bool  # named by the fleet's desired state now
    over_limit: bool


@dataclass(frozen=True)
class Overview:
    """Counts, versions in service, rollouts."""

    devices: int
    online: int
    offline: int
    unknown: int
    malformed: int
    updating: int
    errors: int
    versions: dict[str, list[tuple[str, int]]]
    releases: list[ReleaseProgress]
    max_failures: float | None
    desired_seq: int | None
    desired_problem: str
    desired_verified: bool | None
    change: int = 0
    alerting: int = 0  # devices reporting under-voltage, throttling or a rejected desired state

    def as_json(self) -> dict[str, Any]:
        """For ``/api/overview``."""
        return {
            "change": self.change,
            "devices": {
                "total": self.devices, "online": self.online, "offline": self.offline, "unknown": self.unknown,
                "malformed": self.malformed, "updating": self.updating, "errors": self.errors,
                "alerts": self.alerting,
            },
            "versions": {m: dict(v) for m, v in self.versions.items()},
            "desired": {"seq": self.desired_seq, "problem": self.desired_problem, "verified": self.desired_verified},
            "max_failures": self.max_failures,
            "releases": [
                {
                    "model": r.model, "version": r.version, "current": r.current, "percent": r.tally.percent,
                    "updated": r.tally.updated, "failed": r.tally.failed, "rejected": r.tally.rejected,
                    "pending": r.tally.pending, "in_rollout": r.tally.in_rollout,
                    "failure_percent": round(r.tally.failure_percent, 2), "over_limit": r.over_limit,
                    "steps": [{"seq": s["seq"], "percent": s["percent"], "time": s["time"]} for s in r.steps],
                }
                for r in self.releases
            ],
        }


def version_label(version: int | None) -> str:
    """``v2``, or ``factory`` for the factory bundle."""
    return "factory" if version is None else f"v{version}"


def compute(now: FleetNow, max_failures: float | None) -> Overview:
    """The overview of the current view."""
    devices = now.devices
    online = sum(1 for d in devices if d.online is True)
    offline = sum(1 for d in devices if d.online is False)
    statuses = collections.Counter(d.status for d in devices)
    running: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for d in devices:
        if d.digest is not None and not d.digest.problem:
            for name, v in d.digest.versions().items():
                running[name][version_label(v)] += 1
    versions = {name: sorted(c.items(), key=lambda kv: (-kv[1], kv[0])) for name, c in sorted(running.items())}
    rows = [{"device": d.device, "state": d.state} for d in devices if d.state is not None]
    by_release: dict[tuple[str, int], list[dict[str, Any]]] = collections.defaultdict(list)
    for s in now.steps:
        by_release[(s["model"], s["version"])].append(s)
    targets = {(t.model, t.version) for t in (now.desired.targets if now.desired else ())}
    releases = []
    for (model, version), steps in sorted(by_release.items(), key=lambda kv: -kv[1][-1]["time"]):
        last = steps[-1]
        t = tally(rows, model, version, int(last["percent"]), str(last["salt"]))
        limited = max_failures is not None and over_limit(t, max_failures)
        releases.append(ReleaseProgress(model, version, t, steps, (model, version) in targets, limited))
    desired = now.desired
    return Overview(
        devices=len(devices),
        online=online,
        offline=offline,
        unknown=len(devices) - online - offline,
        malformed=statuses["malformed"],
        updating=statuses["updating"],
        errors=statuses["error"],
        versions=versions,
        releases=releases,
        max_failures=max_failures,
        desired_seq=desired.seq if desired else None,
        desired_problem=desired.problem if desired else "",
        desired_verified=now.desired_verified,
        change=now.change,
        alerting=sum(1 for d in devices if alerts_of(d)),
    )


def drift_score(d: DeviceNow) -> tuple[float, str] | None:
    """The highest drift score over the device's models, and that model's name; None: n/a."""
    if d.digest is None or d.digest.problem:
        return None
    scores = [(m.drift.score, m.name) for m in d.digest.models if m.drift is not None]
    return max(scores) if scores else None


def models_text(d: DeviceNow) -> str:
    """``fraud v2; ocr factory`` (failed versions after each)."""
    if d.digest is None or d.digest.problem:
        return ""
    parts = []
    for m in d.digest.models:
        text = f"{m.name} (unreadable)" if m.error else f"{m.name} {version_label(m.active)}"
        if m.failed:
            text += f" (failed v{','.join(m.failed)})"
        parts.append(text)
    return "; ".join(parts)


def error_text(d: DeviceNow) -> str:
    """The last error, or why the state is malformed."""
    if d.digest is None:
        return ""
    if d.digest.problem:
        return d.digest.problem
    e = d.digest
    where = f"{e.error_model} v{e.error_version}: " if e.error_model else ""
    where = "" if e.last_error.startswith(where) else where  # self-test reasons already name the version
    return f"{where}{e.last_error}" if e.last_error else ""


def alerts_of(d: DeviceNow) -> tuple[str, ...]:
    """``under-voltage``, ``throttled``, ``desired rejected`` as the device's state reports them."""
    return d.digest.alerts if d.digest is not None and not d.digest.problem else ()


def _sort_value(d: DeviceNow, key: str) -> Any:
    if key == "online":
        return {True: 0, False: 1, None: 2}[d.online]
    if key == "models":
        return models_text(d)
    if key == "status":
        return d.status
    if key == "seen":
        return -(d.last_seen or 0.0)
    if key == "drift":
        score = drift_score(d)
        return -score[0] if score else float("inf")
    if key == "error":
        return (not error_text(d), error_text(d))
    if key == "health":  # devices with an alert first, then the hottest
        h = d.digest.health if d.digest is not None else None
        temp = h.cpu_temp_c if h is not None and h.cpu_temp_c is not None else float("-inf")
        return (not alerts_of(d), -temp)
    return d.device


def device_table(devices: list[DeviceNow], query: str, sort: str, desc: bool, page: int) -> tuple[list[DeviceNow], int]:
    """The rows of one page (filtered by ``query`` in id, models, status or error; sorted), and how many matched."""
    q = query.strip().lower()
    if q:
        devices = [
            d for d in devices
            if q in d.device.lower() or q in models_text(d).lower() or q in d.status or q in error_text(d).lower()
            or any(q in a for a in alerts_of(d))
        ]
    key = sort if sort in SORT_KEYS else "device"
    rows = sorted(devices, key=lambda d: (_sort_value(d, key), d.device), reverse=desc)
    start = max(0, page) * PAGE_ROWS
    return rows[start : start + PAGE_ROWS], len(rows)


__all__ = [
    "PAGE_ROWS", "SORT_KEYS", "Overview", "ReleaseProgress", "alerts_of", "compute", "device_table", "drift_score", "error_text",
    "models_text", "version_label",
]
