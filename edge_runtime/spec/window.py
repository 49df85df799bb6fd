"""PURE: maintenance windows, the grammar a device's ``[updates] window`` and a rollout's signed
window share (docs/updates.md). Here, below the config, so that the config check at start-up and
on SIGHUP and the updater reading a desired state run the one parser with the one set of limits.

A maintenance window is a 5-field cron expression (minute hour day-of-month month day-of-week,
as in crontab(5): ``*``, ``a-b``, ``*/n``, ``a-b/n`` and lists; day-of-week 0-7, 0 and 7 are
Sunday; when both day fields are restricted either may match) that marks when the window
*opens*, a length in minutes, and an IANA time zone the cron is read in. The window is open at
``t`` when some minute ``s`` in ``(t - minutes, t]`` matches the cron. Every function takes the
time (an aware ``datetime``), so a test moves the clock instead of waiting for it.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from edge_runtime.exceptions import UpdateMessageError

FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))
MAX_CRON_CHARS = 200
MAX_WINDOW_MINUTES = 24 * 60
MAX_TZ_CHARS = 64
NEXT_OPEN_HORIZON_MINUTES = 8 * 24 * 60 + 60  # a weekly window plus a DST hour
MINUTE = _dt.timedelta(minutes=1)


def _field(text: str, what: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        rng, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isascii() or not step_text.isdigit() or not 0 < int(step_text) <= high:
                raise UpdateMessageError(f"cron {what}: bad step {step_text!r}")
            step = int(step_text)
        if rng == "*":
            start, end = low, high
        else:
            lo, dash, hi = rng.partition("-")
            if not (lo.isascii() and lo.isdigit() and (not dash or (hi.isascii() and hi.isdigit()))):
                raise UpdateMessageError(f"cron {what}: {part!r} is not a number, range or '*'")
            start, end = int(lo), int(hi) if dash else int(lo)
            if step_text and not dash:
                end = high  # "5/15" means 5-<high>/15, as in cronie
        if not low <= start <= end <= high:
            raise UpdateMessageError(f"cron {what}: {part!r} is outside [{low}, {high}]")
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class Cron:
    """A parsed 5-field cron expression (see the module docstring)."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool
    any_weekday: bool

    @classmethod
    def parse(cls, text: str) -> Cron:
        """Parse ``text``; UpdateMessageError naming the bad field otherwise."""
        if not isinstance(text, str) or len(text) > MAX_CRON_CHARS:
            raise UpdateMessageError(f"a cron expression must be a string of at most {MAX_CRON_CHARS} characters")
        parts = text.split()
        if len(parts) != 5:
            raise UpdateMessageError(f"cron {text!r}: expected 5 fields (minute hour day month weekday), found {len(parts)}")
        sets = [_field(p, what, lo, hi) for p, (what, lo, hi) in zip(parts, FIELDS, strict=True)]
        weekdays = frozenset(d % 7 for d in sets[4])
        return cls(text, sets[0], sets[1], sets[2], sets[3], weekdays, parts[2] == "*", parts[4] == "*")

    def matches(self, t: _dt.datetime) -> bool:
        """Whether the wall-clock minute ``t`` (in the cron's zone) matches."""
        if t.minute not in self.minutes or t.hour not in self.hours or t.month not in self.months:
            return False
        day = t.day in self.days
        weekday = (t.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return day and weekday
        return day or weekday  # crontab(5): both restricted, either matches


@dataclass(frozen=True)
class Window:
    """A recurring maintenance window."""

    cron: Cron
    minutes: int
    tz: str = "UTC"

    def to_json(self) -> dict[str, Any]:
        """The desired-state form."""
        return {"cron": self.cron.text, "minutes": self.minutes, "tz": self.tz}

    def _zone(self) -> _dt.tzinfo:
        if self.tz == "UTC":
            return _dt.UTC
        # zoneinfo reads sysconfig for its search path (about 0.8 MB of RSS): only for a named zone.
        from zoneinfo import ZoneInfo

        return ZoneInfo(self.tz)

    def is_open(self, now: _dt.datetime) -> bool:
        """Whether the window is open at the aware time ``now``."""
        local = now.astimezone(self._zone()).replace(second=0, microsecond=0)
        return any(self.cron.matches(local - k * MINUTE) for k in range(self.minutes))


def parse_window(cron: Any, minutes: Any, tz: Any = "UTC", what: str = "window") -> Window:
    """A window from untrusted values; UpdateMessageError naming the bad one."""
    if not isinstance(minutes, int) or isinstance(minutes, bool) or not 1 <= minutes <= MAX_WINDOW_MINUTES:
        raise UpdateMessageError(f"{what}: minutes must be an integer in [1, {MAX_WINDOW_MINUTES}], found {minutes!r:.40}")
    if not isinstance(tz, str) or not 0 < len(tz) <= MAX_TZ_CHARS:
        raise UpdateMessageError(f"{what}: tz must be an IANA time zone name, found {tz!r:.40}")
    if tz != "UTC":
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise UpdateMessageError(f"{what}: unknown time zone {tz!r}") from exc
    try:
        parsed = Cron.parse(cron)
    except UpdateMessageError as exc:
        raise UpdateMessageError(f"{what}: {exc}") from exc
    return Window(parsed, minutes, tz)


def window_from_json(obj: Any, what: str) -> Window:
    """A window from a desired-state entry's ``window`` object."""
    if not isinstance(obj, dict) or not {"cron", "minutes"} <= set(obj) <= {"cron", "minutes", "tz"}:
        raise UpdateMessageError(f"{what}: window must be {{cron, minutes, tz}}")
    return parse_window(obj["cron"], obj["minutes"], obj.get("tz", "UTC"), what)


def all_open(windows: Iterable[Window | None], now: _dt.datetime) -> bool:
    """True when every window given is open (None: no window, always open)."""
    return all(w is None or w.is_open(now) for w in windows)


def next_all_open(windows: Sequence[Window | None], now: _dt.datetime) -> _dt.datetime | None:
    """The first minute at or after ``now`` when every window is open, None past the horizon."""
    live = [w for w in windows if w is not None]
    if all_open(live, now):
        return now.astimezone(_dt.UTC)
    # All are first open at a minute when the last of them opens, i.e. when one of their crons
    # matches: test only those minutes (one cron match per window and minute, not a window's
    # whole length per minute: the latter took seconds of CPU per device in a simulated fleet).
    zones = [w._zone() for w in live]
    t = now.astimezone(_dt.UTC).replace(second=0, microsecond=0)
    for _ in range(NEXT_OPEN_HORIZON_MINUTES):
        t += MINUTE
        if any(w.cron.matches(t.astimezone(z)) for w, z in zip(live, zones, strict=True)) and all_open(live, t):
            return t
    return None


__all__ = ["Cron", "Window", "all_open", "next_all_open", "parse_window", "window_from_json"]
