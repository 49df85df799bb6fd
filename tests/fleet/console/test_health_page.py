"""Device health and a rejected desired state on the console: the device table's health column,
the overview's alerts, the timeline entry when an alert starts and ends, a temperature that
moves without being a change; and the HTTP server's bounds in-process (connection cap, idle
sockets closed)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_runtime.fleet.console.limits import ConsoleLimits
from edge_runtime.fleet.console.overview import compute
from edge_runtime.fleet.console.record import Record
from edge_runtime.fleet.console.server import ConsoleServer
from fleet.console.helpers import HEALTHY, TOPICS, state
from fleet.console.test_record import Clock, feed, render
from harness.http import request
from harness.wait import wait_until


@pytest.fixture
def record(tmp_path: Path) -> Iterator[Record]:
    r = Record(tmp_path / "c.sqlite", TOPICS, clock=Clock())
    yield r
    r.close()


def test_health_in_the_device_table_and_an_alert_for_under_voltage_and_throttling(record: Record) -> None:
    feed(record, (TOPICS.state("pi-ok"), state("pi-ok", 1, health=HEALTHY)))
    feed(record, (TOPICS.state("pi-hot"), state("pi-hot", 1, health={**HEALTHY, "cpu_temp_c": 84.0, "throttled": True,
                                                                       "under_voltage": True, "throttle_flags": "0x50005"})))
    main = render(record, "/").main
    assert '<section id="alerts"' in main and 'data-device="pi-hot"' in main.split('<section id="alerts"')[1].split("</section>")[0]
    assert "under-voltage, throttled (flags 0x50005)" in main
    assert "52.5 C, 1.2 GB free, mem 310 MB/1.9 GB" in main and "UNDER-VOLTAGE" in main
    assert compute(record.now(), None).as_json()["devices"]["alerts"] == 1
    assert "pi-ok" not in main.split('<section id="alerts"')[1].split("</section>")[0]
    device = render(record, "/device/pi-hot").main
    assert "84.0 C" in device and "0x50005" in device
    summaries = [s for _, k, s, _ in record.history("pi-hot").timeline if k == "state"]
    assert "UNDER-VOLTAGE" in summaries[0] and "THROTTLED" in summaries[0]
    feed(record, (TOPICS.state("pi-hot"), state("pi-hot", 1, health={**HEALTHY, "cpu_temp_c": 60.0})))
    assert record.history("pi-hot").timeline[0][2] == "no longer throttled; no longer under-voltage"
    assert '<section id="alerts"' not in render(record, "/").main


def test_a_temperature_that_moves_is_not_a_change_in_the_timeline(record: Record) -> None:
    for t in (50.0, 51.5, 49.0):
        feed(record, (TOPICS.state("pi-1"), state("pi-1", 1, health={**HEALTHY, "cpu_temp_c": t})))
    assert len(record.history("pi-1").timeline) == 1
    d = record.device("pi-1")
    assert d is not None and d.digest is not None and d.digest.health is not None and d.digest.health.cpu_temp_c == 49.0


def test_a_rejected_desired_state_is_shown(record: Record) -> None:
    report = {"seq": 41, "status": "rejected", "reason": "signature does not verify", "sha256": "ab" * 32}
    feed(record, (TOPICS.state("pi-1"), state("pi-1", 1, desired_report=report)))
    main = render(record, "/").main
    assert "desired seq 41 rejected: signature does not verify" in main and "DESIRED REJECTED" in main
    assert "desired seq 41 rejected" in render(record, "/device/pi-1").main
    assert "desired seq 41 rejected: signature does not verify" in record.history("pi-1").timeline[0][2]
    feed(record, (TOPICS.state("pi-1"), state("pi-1", 1, desired_report={"seq": 42, "status": "applied"})))
    assert record.history("pi-1").timeline[0][2] == "desired seq 42 applied"
    assert "DESIRED REJECTED" not in render(record, "/").main


def test_idle_connections_give_way_to_a_request_and_are_closed_at_the_read_timeout(record: Record) -> None:
    server = ConsoleServer(record, "shop-7", port=0, limits=ConsoleLimits(max_connections=4, read_timeout_s=1.0)).start()
    port = int(server.url.rsplit(":", 1)[1])
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(12)]
    try:
        status, body = request(port, "GET", "/api/health")  # every slot was idle: the oldest gave way
        assert status == 200 and json.loads(body)["http_idle_closed"] >= 8
        for s in idle:
            s.settimeout(30)
        assert [s.recv(100) for s in idle] == [b""] * 12  # evicted by a newer one, or closed at the read timeout
    finally:
        for s in idle:
            s.close()
        server.stop()


def test_when_every_slot_is_busy_with_a_request_a_new_connection_gets_503(record: Record) -> None:
    server = ConsoleServer(record, "shop-7", port=0, hold_s=30, limits=ConsoleLimits(max_connections=2, read_timeout_s=5.0)).start()
    port = int(server.url.rsplit(":", 1)[1])
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    try:
        for s in held:  # two live-update requests the console holds until its record changes
            s.sendall(f"GET /api/page?path=/&after={record.change} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        wait_until(lambda: sum(server.waiting().values()) == 2, "both requests held")
        assert request(port, "GET", "/api/health")[0] == 503
    finally:
        for s in held:
            s.close()
        server.stop()
