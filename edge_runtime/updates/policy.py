"""When a device may download and when it may activate: maintenance windows and byte budgets.

Pure code: every function takes the time (an aware ``datetime``) and the counters it decides
on, so a test moves the clock instead of waiting for it.

The windows themselves (a cron that marks when a window opens, its length and time zone) are
parsed and evaluated by :mod:`edge_runtime.spec.window`. A rollout's window travels in the
signed desired state; a device's own ``[updates] window`` applies on top: a release is
activated only when every window that applies is open.

Byte budgets: a device with ``daily_budget_bytes`` never starts a download that would take the
day's bytes (UTC day) over it; on a metered link a download above ``metered_max_bytes`` waits for
an unmetered link or the open window.
"""

from __future__ import annotations

import datetime as _dt
import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.spec.window import parse_window

# -- byte budgets ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """A device's download limits (``[updates]``); 0 = no limit."""

    daily_budget_bytes: int = 0
    metered: bool = False
    metered_max_bytes: int = 0  # on a metered link, larger downloads wait (0: every download waits)


class Verdict(enum.StrEnum):
    """What to do with a download."""

    GO = "go"
    BUDGET = "daily budget"  # wait for the next UTC day
    METERED = "metered link"  # wait for an unmetered link or the window


@dataclass(frozen=True)
class Decision:
    """A download decision and why."""

    verdict: Verdict
    reason: str = ""
    until: _dt.datetime | None = None  # when to look again (None: on a change of link or window)


def next_utc_day(now: _dt.datetime) -> _dt.datetime:
    """Midnight UTC after ``now``: when the daily budget starts again."""
    day = now.astimezone(_dt.UTC).date() + _dt.timedelta(days=1)
    return _dt.datetime(day.year, day.month, day.day, tzinfo=_dt.UTC)


def download_decision(need_bytes: int, used_today_bytes: int, budget: Budget, *, metered: bool,
                      window_open: bool, now: _dt.datetime) -> Decision:
    """May a download of ``need_bytes`` start now? ``metered``: the link is metered now (the
    config's flag or NetworkManager's); ``window_open``: every applicable window is open."""
    if metered and need_bytes > budget.metered_max_bytes and not window_open:
        return Decision(Verdict.METERED, f"{need_bytes} bytes on a metered link (limit {budget.metered_max_bytes} "
                                         "outside the window): waiting for an unmetered link or the window")
    if budget.daily_budget_bytes and used_today_bytes + need_bytes > budget.daily_budget_bytes:
        return Decision(Verdict.BUDGET, f"{need_bytes} bytes would take today's {used_today_bytes} over the daily "
                                        f"budget of {budget.daily_budget_bytes}", next_utc_day(now))
    return Decision(Verdict.GO)


NM_METERED = {"1": True, "3": True, "2": False, "4": False}  # NMMetered: yes, guess-yes, no, guess-no


def read_nm_metered(path: Path | None) -> bool | None:
    """NetworkManager's metered flag from a file holding its ``Metered`` property (``nmcli -g
    GENERAL.METERED``-style digits or words); None when unreadable or unknown."""
    if path is None:
        return None
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip().lower()[:32]
    except OSError:
        return None
    if text in NM_METERED:
        return NM_METERED[text]
    if text.startswith("yes"):
        return True
    if text.startswith("no"):
        return False
    return None


def policy_settings(cfg: Any) -> dict[str, Any]:
    """The :class:`~edge_runtime.updates.job.UpdaterSettings` fields of an ``[updates]`` table
    (already validated by the config loader)."""
    window = parse_window(cfg.window, cfg.window_minutes, cfg.window_tz, "updates.window") if cfg.window else None
    return {
        "budget": Budget(cfg.daily_budget_bytes, cfg.metered, cfg.metered_max_bytes),
        "local_window": window,
        "nm_metered_file": Path(cfg.nm_metered_file) if cfg.nm_metered_file else None,
    }


__all__ = [
    "Budget",
    "Decision",
    "Verdict",
    "download_decision",
    "next_utc_day",
    "policy_settings",
    "read_nm_metered",
]
