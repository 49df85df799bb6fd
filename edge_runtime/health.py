"""Device health: CPU temperature, firmware throttling flags, free store space and memory.

Read from sysfs and procfs only (a few small files), so it is cheap enough to call when the
state document is built and when ``/metrics`` is scraped. Every figure is ``None`` where the
board does not report it (a PC has no firmware flags; a container may have no thermal zone).

The Raspberry Pi firmware reports throttling as the bit field that ``vcgencmd get_throttled``
prints; recent kernels expose the same value in
``/sys/devices/platform/soc/soc:firmware/get_throttled`` (hex digits), which is read first, so
``vcgencmd`` is never required. Bits: 0 under-voltage now, 1 ARM frequency capped now, 2
throttled now, 3 soft temperature limit now; 16-19 the same "since boot".

:func:`read_health` takes the file system root as an argument, so tests build a fake tree.
:func:`alert_started` is pure: it decides when a ``health_alert`` event is due.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

UNDER_VOLTAGE_NOW = 1 << 0
THROTTLED_NOW = 1 << 2

FIRMWARE_THROTTLED = "sys/devices/platform/soc/soc:firmware/get_throttled"
THERMAL_DIR = "sys/class/thermal"
MEMINFO = "proc/meminfo"
CPU_ZONE_TYPES = ("cpu-thermal", "cpu_thermal", "x86_pkg_temp", "soc_thermal")
MAX_FILE_BYTES = 64 * 1024  # a sysfs value or /proc/meminfo; anything longer is not what we expect
VCGENCMD_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Health:
    """One reading; the state document's ``health`` object (docs/updates.md)."""

    cpu_temp_c: float | None = None
    throttled: bool | None = None
    under_voltage: bool | None = None
    throttle_flags: str | None = None  # hex, e.g. "0x50005"
    store_free_bytes: int | None = None
    mem_available_bytes: int | None = None
    mem_total_bytes: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The state document form: exactly these seven keys."""
        return asdict(self)


def _read_text(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read(MAX_FILE_BYTES).decode("ascii", "replace").strip()
    except OSError:
        return None


def parse_throttled(text: str) -> int | None:
    """The flag word from ``throttled=0x50005`` (vcgencmd) or ``50005`` (sysfs); None if unreadable."""
    value = text.strip().rpartition("=")[2].strip()
    try:
        flags = int(value, 16)
    except ValueError:
        return None
    return flags if 0 <= flags < 2**32 else None


def cpu_temperature_c(root: Path) -> float | None:
    """The CPU's thermal zone (by its ``type``) in °C, else the first zone that reads; None if none."""
    base = root / THERMAL_DIR
    try:
        zones = sorted(p for p in base.iterdir() if p.name.startswith("thermal_zone"))
    except OSError:
        return None
    readings: list[tuple[bool, float]] = []
    for zone in zones:
        raw = _read_text(zone / "temp")
        if raw is None:
            continue
        try:
            millidegrees = int(raw)
        except ValueError:
            continue
        if not -100_000 <= millidegrees <= 200_000:  # a sensor error code, not a temperature
            continue
        readings.append(((_read_text(zone / "type") or "") in CPU_ZONE_TYPES, millidegrees / 1000))
    cpu = [t for is_cpu, t in readings if is_cpu]
    if cpu:
        return cpu[0]
    return readings[0][1] if readings else None


def throttle_flags(root: Path, vcgencmd: str | None) -> int | None:
    """The firmware's flag word: sysfs first, then ``vcgencmd get_throttled`` when given; None if neither."""
    raw = _read_text(root / FIRMWARE_THROTTLED)
    if raw is not None:
        return parse_throttled(raw)
    if vcgencmd is None:
        return None
    try:
        out = subprocess.run([vcgencmd, "get_throttled"], capture_output=True, timeout=VCGENCMD_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_throttled(out.stdout[:256].decode("ascii", "replace")) if out.returncode == 0 else None


def memory_bytes(root: Path) -> tuple[int | None, int | None]:
    """``(MemAvailable, MemTotal)`` from /proc/meminfo in bytes."""
    text = _read_text(root / MEMINFO)
    found: dict[str, int] = {}
    for line in (text or "").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if key in ("MemAvailable", "MemTotal") and parts and parts[0].isdigit():
            found[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return found.get("MemAvailable"), found.get("MemTotal")


def free_bytes(path: Path | None) -> int | None:
    """Bytes an unprivileged writer may still use on the file system of ``path``."""
    if path is None:
        return None
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def default_vcgencmd() -> str | None:
    """``vcgencmd`` on PATH (only used where the sysfs file is missing), else None."""
    return shutil.which("vcgencmd")


def read_health(store_path: Path | None, root: Path = Path("/"), vcgencmd: str | None = None) -> Health:
    """One reading of everything; ``root`` is where ``sys/`` and ``proc/`` are (a fake tree in tests)."""
    flags = throttle_flags(root, vcgencmd)
    available, total = memory_bytes(root)
    return Health(
        cpu_temp_c=cpu_temperature_c(root),
        throttled=None if flags is None else bool(flags & THROTTLED_NOW),
        under_voltage=None if flags is None else bool(flags & UNDER_VOLTAGE_NOW),
        throttle_flags=None if flags is None else f"0x{flags:x}",
        store_free_bytes=free_bytes(store_path),
        mem_available_bytes=available,
        mem_total_bytes=total,
    )


def alert_started(previous: Health | None, current: Health) -> list[str]:
    """What started since ``previous``: ``"throttled"`` and/or ``"under_voltage"`` (pure)."""
    started = []
    for key in ("throttled", "under_voltage"):
        was = getattr(previous, key) if previous is not None else None
        if getattr(current, key) and not was:
            started.append(key)
    return started


__all__ = [
    "Health",
    "alert_started",
    "cpu_temperature_c",
    "default_vcgencmd",
    "free_bytes",
    "memory_bytes",
    "parse_throttled",
    "read_health",
    "throttle_flags",
]
