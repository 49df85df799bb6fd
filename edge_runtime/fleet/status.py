"""``fleet status``: one row per device from the retained ``state`` and ``online`` topics."""

from __future__ import annotations

import json
from typing import Any

from edge_runtime.fleet.session import FleetSession


def collect_status(session: FleetSession) -> list[dict[str, Any]]:
    """Every device that left a retained state or online flag, sorted by id."""
    topics = session.topics
    retained = session.snapshot([topics.devices_filter("state"), topics.devices_filter("online")])
    devices: dict[str, dict[str, Any]] = {}
    for topic, payload in retained.items():
        ref = topics.parse(topic)
        if ref is None or not ref.device:
            continue
        row = devices.setdefault(ref.device, {"device": ref.device, "online": None, "state": None})
        try:
            value = json.loads(payload)
        except ValueError:
            value = None
        if ref.kind == "device_online":
            row["online"] = value is True
        elif ref.kind == "device_state" and isinstance(value, dict):
            row["state"] = value
    return [devices[k] for k in sorted(devices)]


def _models_cell(state: dict[str, Any]) -> str:
    parts = []
    for name, m in sorted((state.get("models") or {}).items()):
        if not isinstance(m, dict):
            continue
        active = m.get("active")
        text = f"{name} v{active}" if active is not None else f"{name} factory"  # nothing in the store
        failed = sorted(m.get("failed") or {}, key=lambda v: int(v) if str(v).isdigit() else 0)
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
    where = f"{e.get('model')} v{e.get('version')}: " if e.get("model") else ""
    text = f"{where}{e.get('reason', '')}"
    return text if len(text) <= width else text[: width - 1] + "…"


def status_rows(devices: list[dict[str, Any]]) -> list[list[str]]:
    """Table cells: device, online, active versions, update in progress, last error."""
    rows = []
    for d in devices:
        state = d.get("state") or {}
        online = {True: "yes", False: "no", None: "?"}[d.get("online")]
        rows.append([d["device"], online, _models_cell(state), _update_cell(state), _error_cell(state)])
    return rows


def format_table(devices: list[dict[str, Any]]) -> str:
    """A plain-text table for a terminal."""
    header = ["DEVICE", "ONLINE", "MODELS", "UPDATE", "LAST ERROR"]
    rows = [header, *status_rows(devices)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


__all__ = ["collect_status", "format_table", "status_rows"]
