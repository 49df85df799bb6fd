"""``fleet status``: one row per device from the retained ``state`` and ``online`` topics, and a summary.

:class:`DeviceStates` keeps the newest state of every device from messages (a snapshot, or
a live :meth:`~edge_runtime.fleet.session.FleetSession.watch` for a staged rollout).
:func:`summary_lines` counts the fleet: devices online, versions running, failures, and for
each model of the fleet's desired state where its release stands (:mod:`.rollout`).

Every state is a device's word, so nothing in one may stop the listing: a document that
cannot be read is a ``BAD STATE`` row, a field of the wrong type shows as unknown, and a row
that still fails to render (a case not foreseen) becomes a ``BAD STATE`` row with the reason.
The health columns (temperature, free space, memory, alerts: :mod:`.health`) appear when at
least one device reports health.
"""

from __future__ import annotations

import collections
import json
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edge_runtime import text
from edge_runtime.exceptions import BadDataError
from edge_runtime.fleet.health import desired_report_of, health_of
from edge_runtime.fleet.publish import read_desired_models
from edge_runtime.fleet.rollout import Tally, tally
from edge_runtime.fleet.session import FleetSession
from edge_runtime.updates.mqtt import Message
from edge_runtime.updates.protocol import DeviceTopic, Topics

StateFn = Callable[[str, dict[str, Any]], None]  # on_state(device, state document)
MAX_PROBLEM_CHARS = 60


def _is_version_key(v: Any) -> bool:
    return isinstance(v, str) and v.isascii() and v.isdigit() and len(v) <= 18


def state_problem(state: Any) -> str | None:
    """Why a device's retained state cannot be shown (None when it can): devices are not
    trusted, so one malformed document marks that device bad and never stops the listing."""
    if not isinstance(state, dict):
        return f"state is {type(state).__name__}, not an object"
    models = state.get("models")
    if models is not None and not isinstance(models, dict):
        return f"'models' is {type(models).__name__}, not an object"
    for name, m in (models or {}).items():
        if not isinstance(m, dict):
            return f"model {name[:20]!r} is {type(m).__name__}, not an object"
        failed = m.get("failed")
        if failed is not None and (not isinstance(failed, dict) or not all(_is_version_key(v) for v in failed)):
            return f"model {name[:20]!r}: 'failed' must map version numbers to reasons"
    for key in ("update", "last_error"):
        if state.get(key) is not None and not isinstance(state.get(key), dict):
            return f"{key!r} is {type(state.get(key)).__name__}, not an object"
    return None


class DeviceStates:
    """The newest state document and online flag of each device, fed with messages (thread-safe)."""

    def __init__(self, topics: Topics, on_state: StateFn | None = None) -> None:
        self.topics = topics
        self._on_state = on_state
        self._lock = threading.Lock()
        self._rows: dict[str, dict[str, Any]] = {}

    def on_message(self, msg: Message) -> None:
        """Take one ``devices/<id>/state`` or ``devices/<id>/online`` message (others are ignored)."""
        self.add(msg.topic, msg.payload)

    def add(self, topic: str, payload: bytes) -> None:
        """Take one message by topic and payload; an empty payload (a cleared topic) forgets the value."""
        ref = self.topics.parse(topic)
        if not isinstance(ref, DeviceTopic) or ref.leaf not in ("state", "online"):
            return
        unreadable = None
        try:
            value = json.loads(payload) if payload else None
        except (ValueError, RecursionError):
            value, unreadable = None, "state is not JSON"
        with self._lock:
            row = self._rows.setdefault(ref.device, {"device": ref.device, "online": None, "state": None})
            if ref.leaf == "online":
                row["online"] = value is True if value is not None else None
            else:
                problem = unreadable if value is None else state_problem(value)
                if problem is None:
                    row["state"] = value
                    row.pop("problem", None)
                else:
                    row["state"], row["problem"] = None, problem
                    value = None
        if ref.leaf == "state" and isinstance(value, dict) and self._on_state is not None:
            self._on_state(ref.device, value)

    def devices(self) -> list[dict[str, Any]]:
        """Every device seen, sorted by id (copies)."""
        with self._lock:
            return [dict(self._rows[k]) for k in sorted(self._rows)]


def collect_status(session: FleetSession) -> list[dict[str, Any]]:
    """Every device that left a retained state or online flag, sorted by id."""
    return collect_fleet(session).devices


@dataclass(frozen=True)
class FleetView:
    """What ``fleet status`` shows: the devices and the fleet's desired models (as published, unverified)."""

    devices: list[dict[str, Any]]
    desired: dict[str, Any] = field(default_factory=dict)
    desired_seq: int | None = None
    desired_error: str = ""


def collect_fleet(session: FleetSession) -> FleetView:
    """One snapshot of the devices' state and online topics and the fleet's desired state."""
    topics = session.topics
    retained = session.snapshot([topics.devices_filter("state"), topics.devices_filter("online"), topics.desired])
    states = DeviceStates(topics)
    for topic, payload in retained.items():
        states.add(topic, payload)
    message = retained.get(topics.desired)
    try:
        seq, models = read_desired_models(message)
    except (BadDataError, ValueError, TypeError, RecursionError) as exc:
        return FleetView(states.devices(), desired_error=str(exc))
    return FleetView(states.devices(), models, seq if message else None)


def _models_cell(state: dict[str, Any]) -> str:
    parts = []
    for name, m in sorted((state.get("models") or {}).items()):
        if not isinstance(m, dict):
            continue
        active = m.get("active")
        text = f"{name} v{active}" if active is not None else f"{name} factory"  # nothing in the store
        failed = sorted(m.get("failed") or {}, key=_version_key)
        if failed:
            text += f" (failed v{','.join(str(v) for v in failed)})"
        parts.append(text)
    return "; ".join(parts) or "-"


def _update_cell(state: dict[str, Any]) -> str:
    u = state.get("update")
    if not isinstance(u, dict):
        return "-"
    pct = f" {u['percent']}%" if "percent" in u else ""
    return f"{u.get('model')} v{u.get('version')} {u.get('phase')}{pct}"


def _error_cell(state: dict[str, Any], width: int = 60) -> str:
    e = state.get("last_error")
    if not isinstance(e, dict):
        return "-"
    reason = str(e.get("reason", ""))
    where = f"{e.get('model')} v{e.get('version')}: " if e.get("model") else ""
    text = reason if reason.startswith(where) else f"{where}{reason}"  # self-test reasons already name the version
    return text if len(text) <= width else text[: width - 1] + "…"


def drift_of(m: Any) -> dict[str, Any] | None:
    """A model entry's drift figures when they are well formed (devices are not trusted)."""
    d = m.get("drift") if isinstance(m, dict) else None
    if not isinstance(d, dict):
        return None
    score = d.get("score")
    if score is not None and (not isinstance(score, (int, float)) or isinstance(score, bool)):
        return None
    if isinstance(score, int) and abs(score) > 2**53:
        return None  # float() of a 400-digit int raises
    if isinstance(score, float) and not math.isfinite(score):
        return None
    return d


def _drift_cell(state: dict[str, Any]) -> str:
    parts = []
    for name, m in sorted((state.get("models") or {}).items()):
        d = drift_of(m)
        if d is None or d.get("score") is None:
            continue
        worst = str(d.get("worst_feature") or "?")[:30]
        parts.append(f"{name} {float(d['score']):.2f} {worst}" + (" ALERT" if d.get("alert") is True else ""))
    return "; ".join(parts) or "-"


HEALTH_HEADS = ["TEMP", "FREE", "MEMORY", "ALERTS"]


def health_cells(state: dict[str, Any]) -> list[str]:
    """Temperature, free space in the store, memory available/total, alerts (``UNDER-VOLTAGE``,
    ``THROTTLED``, ``DESIRED REJECTED``)."""
    h = health_of(state)
    alerts = [a.upper() for a in (h.alerts if h else ())]
    if h is not None and alerts and h.throttle_flags:
        alerts[-1] += f" ({h.throttle_flags})"
    report = desired_report_of(state)
    if report is not None and report.rejected:
        alerts.append(f"DESIRED {report.seq if report.seq is not None else '?'} REJECTED")
    if h is None:
        return ["-", "-", "-", ",".join(alerts) or "-"]
    return [h.temp_text(), h.free_text(), h.memory_text(), ",".join(alerts) or "-"]


def _error_or_rejection(state: dict[str, Any]) -> str:
    error = _error_cell(state)
    report = desired_report_of(state)
    if error == "-" and report is not None and report.rejected:
        text = report.describe()
        return text if len(text) <= 60 else text[:59] + "…"
    return error


def _has_health(devices: list[dict[str, Any]]) -> bool:
    return any(health_of(d.get("state")) is not None or desired_report_of(d.get("state")) is not None for d in devices)


def status_rows(devices: list[dict[str, Any]], health: bool | None = None) -> list[list[str]]:
    """Table cells: device, online, active versions, update in progress, drift, [temperature, free space,
    memory, alerts,] last error. ``health``: with the health cells (None: when some device reports health)."""
    health = _has_health(devices) if health is None else health
    rows = []
    for d in devices:
        state = d.get("state") or {}
        online = {True: "yes", False: "no"}.get(d.get("online"), "?")  # type: ignore[arg-type]
        if d.get("problem"):
            rows.append([str(d["device"]), online, "BAD STATE", "-", "-", *(["-"] * 4 if health else []),
                         str(d["problem"])[:MAX_PROBLEM_CHARS]])
            continue
        try:
            cells = [_models_cell(state), _update_cell(state), _drift_cell(state)]
            cells += health_cells(state) if health else []
            rows.append([str(d["device"]), online, *cells, _error_or_rejection(state)])
        except Exception as exc:  # a case the checks did not foresee: this row is bad, the listing goes on
            rows.append([str(d["device"]), online, "BAD STATE", "-", "-", *(["-"] * 4 if health else []),
                         f"state could not be shown ({type(exc).__name__})"])
    return rows


def format_table(devices: list[dict[str, Any]]) -> str:
    """A plain-text table for a terminal."""
    health = _has_health(devices)
    heads = ["DEVICE", "ONLINE", "MODELS", "UPDATE", "DRIFT", *(HEALTH_HEADS if health else []), "LAST ERROR"]
    return text.format_table([heads, *status_rows(devices, health)])


def _version_key(v: Any) -> tuple[int, str]:
    return (int(v), "") if _is_version_key(v) else (-1, str(v))


def desired_tallies(devices: list[dict[str, Any]], desired: Mapping[str, Any]) -> list[Tally]:
    """Where each model of the fleet's desired state stands (see :mod:`edge_runtime.fleet.rollout`)."""
    out = []
    for name, target in sorted(desired.items()):
        if not isinstance(target, Mapping) or not isinstance(target.get("version"), int):
            continue
        rollout = target.get("rollout")
        if isinstance(rollout, Mapping) and isinstance(rollout.get("percent", 100), int):
            percent, salt = int(rollout.get("percent", 100)), str(rollout.get("salt", ""))
        else:
            percent, salt = 100, ""
        out.append(tally(devices, str(name), int(target["version"]), percent, salt))
    return out


def summary_lines(view: FleetView) -> list[str]:
    """Counts under the table: devices, versions per model, failures, the desired release's progress."""
    devices = view.devices
    online = sum(1 for d in devices if d.get("online") is True)
    offline = sum(1 for d in devices if d.get("online") is False)
    states = [d["state"] for d in devices if isinstance(d.get("state"), dict)]
    updating = sum(1 for s in states if isinstance(s.get("update"), dict))
    errors = sum(1 for s in states if isinstance(s.get("last_error"), dict))
    bad = sum(1 for d in devices if d.get("problem"))
    healths = [h for h in (health_of(s) for s in states) if h is not None]
    under_voltage = sum(1 for h in healths if h.under_voltage is True)
    throttled = sum(1 for h in healths if h.throttled is True)
    rejected = sum(1 for s in states if (r := desired_report_of(s)) is not None and r.rejected)
    lines = [
        f"{len(devices)} devices: {online} online, {offline} offline, {len(devices) - online - offline} unknown; "
        f"{updating} updating; {errors} reporting a last error" + (f"; {bad} with a malformed state" if bad else "")
        + (f"; {under_voltage} under-voltage" if under_voltage else "") + (f"; {throttled} throttled" if throttled else "")
        + (f"; {rejected} rejected their desired state" if rejected else "")
    ]
    running: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    failed: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for s in states:
        for name, m in (s.get("models") or {}).items():
            if not isinstance(m, dict):
                continue
            active = m.get("active")
            running[name]["factory" if active is None else f"v{active}"] += 1
            for v in m.get("failed") or {}:
                failed[name][f"v{v}"] += 1
    drifting: dict[str, int] = collections.Counter()
    for s in states:
        for name, m in (s.get("models") or {}).items():
            d = drift_of(m)
            if d is not None and d.get("alert") is True:
                drifting[name] += 1
    for name in sorted(set(running) | set(failed)):
        order = sorted(running[name].items(), key=lambda kv: (-kv[1], kv[0]))
        text = f"{name}: " + ", ".join(f"{v} on {n}" for v, n in order)
        if failed[name]:
            fails = sorted(failed[name].items(), key=lambda kv: _version_key(kv[0][1:]))
            text += "; failed " + ", ".join(f"{v} on {n}" for v, n in fails)
        if drifting[name]:
            text += f"; drift alert on {drifting[name]}"
        lines.append(text)
    if view.desired_error:
        lines.append(f"desired state: {view.desired_error}")
    for t in desired_tallies(devices, view.desired):
        lines.append(f"desired {t.describe()}")
    return lines


__all__ = [
    "DeviceStates",
    "FleetView",
    "collect_fleet",
    "collect_status",
    "desired_tallies",
    "drift_of",
    "format_table",
    "health_cells",
    "state_problem",
    "status_rows",
    "summary_lines",
]
