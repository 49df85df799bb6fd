"""Device health read from a fake sysfs/procfs tree (edge_runtime/health.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_runtime.health import (
    FIRMWARE_THROTTLED,
    Health,
    alert_started,
    cpu_temperature_c,
    parse_throttled,
    read_health,
)


def _zone(root: Path, n: int, kind: str, millidegrees: str) -> None:
    zone = root / "sys/class/thermal" / f"thermal_zone{n}"
    zone.mkdir(parents=True)
    (zone / "type").write_text(kind + "\n")
    (zone / "temp").write_text(millidegrees + "\n")


def _pi(root: Path, flags: str = "0") -> Path:
    """A Raspberry Pi as sysfs shows it: a GPU zone first, the CPU zone second, the firmware flags."""
    _zone(root, 0, "gpu-thermal", "41000")
    _zone(root, 1, "cpu-thermal", "56950")
    fw = root / FIRMWARE_THROTTLED
    fw.parent.mkdir(parents=True)
    fw.write_text(flags + "\n")
    (root / "proc").mkdir()
    (root / "proc/meminfo").write_text("MemTotal:        3884836 kB\nMemFree:  100 kB\nMemAvailable:    2919416 kB\n")
    return root


def test_a_pi_reports_every_figure(tmp_path: Path) -> None:
    h = read_health(tmp_path, _pi(tmp_path / "root", "50005"))
    assert h.cpu_temp_c == pytest.approx(56.95)  # the cpu-thermal zone, not the first one
    assert h.throttled is True and h.under_voltage is True and h.throttle_flags == "0x50005"
    assert h.mem_total_bytes == 3884836 * 1024 and h.mem_available_bytes == 2919416 * 1024
    assert isinstance(h.store_free_bytes, int) and h.store_free_bytes > 0
    assert list(h.to_json()) == ["cpu_temp_c", "throttled", "under_voltage", "throttle_flags", "store_free_bytes",
                                 "mem_available_bytes", "mem_total_bytes"]


def test_flags_since_boot_only_are_not_throttling_now(tmp_path: Path) -> None:
    h = read_health(None, _pi(tmp_path, "50000"))
    assert h.throttled is False and h.under_voltage is False and h.throttle_flags == "0x50000"


@pytest.mark.parametrize(("text", "flags"), [("throttled=0x50005", 0x50005), ("0x0", 0), ("4", 4), ("", None),
                                              ("throttled=zz", None), ("1" * 20, None)])
def test_throttled_parses_vcgencmd_and_sysfs_forms(text: str, flags: int | None) -> None:
    assert parse_throttled(text) == flags


def test_a_board_without_sensors_reports_nulls(tmp_path: Path) -> None:
    h = read_health(tmp_path / "no-such-store", tmp_path)
    assert h == Health()


def test_vcgencmd_is_used_only_without_the_sysfs_file(tmp_path: Path) -> None:
    tool = tmp_path / "vcgencmd"
    tool.write_text("#!/bin/sh\necho throttled=0x4\n")
    tool.chmod(0o755)
    assert read_health(None, tmp_path, str(tool)).throttle_flags == "0x4"
    assert read_health(None, _pi(tmp_path / "pi", "0"), str(tool)).throttle_flags == "0x0"


def test_a_zone_with_an_error_value_is_skipped(tmp_path: Path) -> None:
    _zone(tmp_path, 0, "cpu-thermal", "-274000000")
    _zone(tmp_path, 1, "acpitz", "45500")
    assert cpu_temperature_c(tmp_path) == 45.5


def test_an_alert_is_due_when_throttling_or_under_voltage_starts() -> None:
    calm = Health(throttled=False, under_voltage=False)
    hot = Health(throttled=True, under_voltage=False)
    assert alert_started(None, calm) == []
    assert alert_started(calm, hot) == ["throttled"]
    assert alert_started(hot, hot) == []  # still throttled: no second alert
    assert alert_started(hot, Health(throttled=True, under_voltage=True)) == ["under_voltage"]
    assert alert_started(None, hot) == ["throttled"]


def test_metrics_show_the_health_and_leave_out_what_is_not_reported() -> None:
    from edge_runtime.serving.metrics import Metrics

    m = Metrics(health=lambda: Health(cpu_temp_c=61.5, throttled=True, under_voltage=False, throttle_flags="0x4",
                                      store_free_bytes=1234))
    text = m.exposition().decode()
    assert "edge_cpu_temperature_celsius 61.5" in text and "edge_throttled 1.0" in text
    assert "edge_under_voltage 0.0" in text and "edge_store_free_bytes 1234.0" in text
    assert "edge_memory_available_bytes" not in text  # None: not reported, not 0
