"""What a SIGHUP can apply: the difference between the running config and the new one.

Pure: two :class:`~edge_runtime.config.Config` values in, the keys that changed and need a
restart out. The daemon applies the rest live (serving parameters through the model
manager, ``[monitoring] state_interval_s`` and ``health_interval_s`` through the update
client) and logs one warning naming each key that waits for a restart, so an edit that
looks applied never silently is not. docs/serving.md has the table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from edge_runtime.config import Config

# Keys applied by a SIGHUP without a restart, by table. Every other key of these tables, and
# every key of the tables not named here, needs a restart.
LIVE_KEYS: dict[str, frozenset[str]] = {
    "server": frozenset({"drain_timeout_s"}),
    "monitoring": frozenset({"state_interval_s", "health_interval_s"}),
}
RESTART_TABLES = ("device", "store", "trust", "server", "mqtt", "logging", "monitoring")


def _fields(value: Any) -> dict[str, Any]:
    return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)} if value is not None else {}


def restart_needed(old: Config, new: Config) -> list[str]:
    """What changed and takes effect only after a restart, one phrase per key (``[server] port
    changed``, or ``[mqtt] added`` / ``[mqtt] removed`` for a whole table). ``[models.*]`` apply live."""
    changed: list[str] = []
    for table in RESTART_TABLES:
        before, after = getattr(old, table), getattr(new, table)
        if before == after:
            continue
        if before is None or after is None:
            changed.append(f"[{table}] {'added' if before is None else 'removed'}")
            continue
        live = LIVE_KEYS.get(table, frozenset())
        a, b = _fields(before), _fields(after)
        changed += [f"[{table}] {k} changed" for k in a if a[k] != b[k] and k not in live]
    return changed


def applied_live(old: Config, new: Config) -> list[str]:
    """Changed keys outside ``[models.*]`` that a SIGHUP applies, as ``[table] key``."""
    out: list[str] = []
    for table, keys in LIVE_KEYS.items():
        a, b = _fields(getattr(old, table)), _fields(getattr(new, table))
        out += [f"[{table}] {k}" for k in sorted(keys) if a.get(k) != b.get(k)]
    return out


def unknown_models(cfg: Config, installed: Iterable[str]) -> list[str]:
    """``[models.X]`` tables naming a model that is neither installed nor a factory model."""
    known = set(installed)
    return sorted(name for name in cfg.models if name not in known)


__all__ = ["LIVE_KEYS", "applied_live", "restart_needed", "unknown_models"]
