"""A device's health and its answer to a desired state, read from its retained state. Pure code.

Devices publish in their state a ``health`` object (CPU temperature, throttling and
under-voltage flags of the Raspberry Pi firmware, free space in the store, memory) and a
``desired`` object (the seq of the last desired state, ``applied`` or ``rejected``, and why).
Both are optional and, like everything a device sends, hostile: every field is checked for
its type and range and cut to a bound; a field of the wrong type is treated as absent, so a
device can make its own row say "unknown" but never break the listing that shows it.
``fleet status`` and the console read both through this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MAX_BYTES = 2**63 - 1
MAX_FLAGS_CHARS = 18  # "0x" and 16 hex digits
MAX_REASON_CHARS = 300
TEMP_RANGE_C = (-100.0, 250.0)  # a reading outside is no reading


def _text(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else ""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _bytes(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_BYTES:
        return value
    return None


def _temp(value: Any) -> float | None:
    # a float, or an int small enough to be one (a 400-digit int is no temperature: float() would raise)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int) and not TEMP_RANGE_C[0] <= value <= TEMP_RANGE_C[1]:
        return None
    t = float(value)
    return t if math.isfinite(t) and TEMP_RANGE_C[0] <= t <= TEMP_RANGE_C[1] else None


def _flags(value: Any) -> str | None:
    if not isinstance(value, str) or not value.isascii() or len(value) > MAX_FLAGS_CHARS:
        return None
    body = value[2:] if value[:2].lower() == "0x" else value
    return value if body and all(c in "0123456789abcdefABCDEF" for c in body) else None


@dataclass(frozen=True)
class Health:
    """``state.health``, every field checked (None: absent, null or unusable)."""

    cpu_temp_c: float | None = None
    throttled: bool | None = None
    under_voltage: bool | None = None
    throttle_flags: str | None = None
    store_free_bytes: int | None = None
    mem_available_bytes: int | None = None
    mem_total_bytes: int | None = None

    @property
    def alerts(self) -> tuple[str, ...]:
        """``under-voltage`` and/or ``throttled`` when the device says so."""
        return tuple(a for a, on in (("under-voltage", self.under_voltage), ("throttled", self.throttled)) if on is True)

    def temp_text(self) -> str:
        """``61.2 C`` or ``-``."""
        return "-" if self.cpu_temp_c is None else f"{self.cpu_temp_c:.1f} C"

    def free_text(self) -> str:
        """Free space in the store: ``1.2 GB`` or ``-``."""
        return size_text(self.store_free_bytes)

    def memory_text(self) -> str:
        """``310 MB/1.9 GB`` available of total, or ``-``."""
        if self.mem_available_bytes is None and self.mem_total_bytes is None:
            return "-"
        return f"{size_text(self.mem_available_bytes)}/{size_text(self.mem_total_bytes)}"


def size_text(n: int | None) -> str:
    """``512 KB``, ``1.2 GB``; ``-`` for None."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if value < 1000 or unit == "PB":
            return f"{value:.1f} {unit}" if unit != "B" and value < 10 else f"{value:.0f} {unit}"
        value /= 1000
    return "-"  # unreachable


def health_of(state: Any) -> Health | None:
    """The health object of a state document, checked; None when absent or not an object."""
    h = state.get("health") if isinstance(state, dict) else None
    if not isinstance(h, dict):
        return None
    return Health(
        cpu_temp_c=_temp(h.get("cpu_temp_c")),
        throttled=_bool(h.get("throttled")),
        under_voltage=_bool(h.get("under_voltage")),
        throttle_flags=_flags(h.get("throttle_flags")),
        store_free_bytes=_bytes(h.get("store_free_bytes")),
        mem_available_bytes=_bytes(h.get("mem_available_bytes")),
        mem_total_bytes=_bytes(h.get("mem_total_bytes")),
    )


@dataclass(frozen=True)
class DesiredReport:
    """``state.desired``: what the device did with the last desired state it read."""

    seq: int | None
    status: str  # applied, rejected, or "" when the device said something else
    reason: str = ""
    sha256: str = ""

    @property
    def rejected(self) -> bool:
        """The device refused the desired state."""
        return self.status == "rejected"

    def describe(self) -> str:
        """``desired seq 12 rejected: signature does not verify``."""
        seq = "?" if self.seq is None else str(self.seq)
        return f"desired seq {seq} {self.status or 'unknown status'}" + (f": {self.reason}" if self.reason else "")


def desired_report_of(state: Any) -> DesiredReport | None:
    """The device's report on its desired state, checked; None when absent or not an object."""
    d = state.get("desired") if isinstance(state, dict) else None
    if not isinstance(d, dict):
        return None
    seq = d.get("seq")
    status = d.get("status")
    sha = d.get("sha256")
    return DesiredReport(
        seq=seq if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq <= MAX_BYTES else None,
        status=status if status in ("applied", "rejected") else "",
        reason=_text(d.get("reason"), MAX_REASON_CHARS) if isinstance(d.get("reason"), str) else "",
        sha256=sha if isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha) else "",
    )


def health_from_dict(d: Any) -> Health | None:
    """Back from ``asdict`` of a :class:`Health` (a record written by this code; checked again all the same)."""
    return health_of({"health": d}) if isinstance(d, dict) else None


def desired_report_from_dict(d: Any) -> DesiredReport | None:
    """Back from a record's copy of a :class:`DesiredReport`."""
    return desired_report_of({"desired": d}) if isinstance(d, dict) else None


__all__ = [
    "DesiredReport",
    "Health",
    "desired_report_from_dict",
    "desired_report_of",
    "health_from_dict",
    "health_of",
    "size_text",
]
