"""Attacks on the console as a real process (``edge-runtime fleet console``) through real
mosquitto, from a device that writes only its own topics (issue 22, findings 3 and 4).

* A 400-digit number in an event and in the retained state: recording goes on (a later normal
  event is recorded), a restart with the bad state still retained works, ``fleet status`` exits 0.
* A chatty device: its events over its rate are dropped and counted for it, another device's
  event is still recorded, and SIGTERM ends the console with exit code 0.
* Idle sockets beyond the connection cap: each gives way to a newer connection or is closed at the
  read timeout, and the page answers at once.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.fleet.session import BrokerOptions, FleetSession
from fleet.conftest import FLEET, TOPICS, Mosquitto, cli
from fleet.console.conftest import ConsoleProcess
from fleet.console.helpers import event, state
from harness.http import request
from harness.wait import wait_until

pytestmark = pytest.mark.integration

HUGE = str(10**400).encode()
BAD_STATE = b'{"models": {"fraud": {"active": 1, "drift": {"score": ' + HUGE + b', "alert": true}}}, "health": {"cpu_temp_c": ' + HUGE + b"}}"
BAD_EVENT = b'{"event": "rolled_back", "model": "fraud", "version": 1, "from_version": ' + HUGE + b', "percent": ' + HUGE + b"}"


def send(url: str, messages: list[tuple[str, bytes, bool]]) -> None:
    """Publish as a device would (topic, payload, retained), each acknowledged by the broker."""
    with FleetSession(BrokerOptions(url=url), TOPICS, timeout_s=20) as session:
        pubs = [session.publish(topic, payload, retain=retain) for topic, payload, retain in messages]
        for p in pubs:
            p.wait(20)


def page(console: ConsoleProcess, path: str) -> str:
    status, body = request(console.port, "GET", path + "?live=0")
    return body.decode() if status == 200 else ""


def test_a_400_digit_number_does_not_stop_recording_nor_a_restart_nor_fleet_status(
    mosquitto: Mosquitto, console: Any
) -> None:
    send(mosquitto.url, [(TOPICS.state("pi-big"), BAD_STATE, True)])
    c = console(mosquitto.url)
    wait_until(lambda: "pi-big" in page(c, "/"), "the device with the bad state listed")
    send(mosquitto.url, [(TOPICS.events("pi-big"), BAD_EVENT, False), (TOPICS.events("pi-big"), event("pi-big", "activated", 7), False)])
    wait_until(lambda: "activated fraud v7" in page(c, "/device/pi-big"), "the normal event after the bad one recorded")
    health = c.get_json("/api/health")
    assert health["unreadable"] == 0 and health["lost"] == 0
    assert c.stop() == 0
    again = console(mosquitto.url)  # the bad state is still retained: it comes again at start-up
    send(mosquitto.url, [(TOPICS.events("pi-big"), event("pi-big", "activated", 8), False)])
    wait_until(lambda: "activated fraud v8" in page(again, "/device/pi-big"), "recording after the restart")
    out = cli("fleet", "status", "--fleet", FLEET, "--broker", mosquitto.url)
    assert out.returncode == 0 and "pi-big" in out.stdout and "fraud v1" in out.stdout, out.stderr


def test_a_chatty_device_is_rate_limited_and_the_rest_of_the_fleet_is_recorded(mosquitto: Mosquitto, console: Any) -> None:
    c = console(mosquitto.url, "--device-rate", "2")
    wait_until(lambda: c.get_json("/api/health")["change"] >= 0, "the console up")
    chatter = [(TOPICS.events("chatty"), event("chatty", "downloading", 2, percent=i % 100), False) for i in range(1500)]
    chatter += [(TOPICS.state("chatty"), state("chatty", 1, time=f"2026-12-03T12:{i // 60:02d}:{i % 60:02d}Z",
                                                  update={"model": "fraud", "version": 2, "phase": "downloading", "percent": i}), True)
                for i in range(300)]
    send(mosquitto.url, [*chatter, (TOPICS.events("quiet"), event("quiet", "activated", 5), False)])
    wait_until(lambda: "activated fraud v5" in page(c, "/device/quiet"), "the quiet device's event recorded")
    # The count grows while the inbox works through the chatter (the quiet event may overtake it):
    # wait for it to pass 1,000, then check it never counts more than the chatty device sent.
    dropped = wait_until(lambda: (n := c.get_json("/api/health")["dropped"]["rate_limited_by_device"].get("chatty", 0))
                         >= 1000 and n, "1,000 drops counted")
    assert dropped < 1500
    wait_until(lambda: "fraud v2 downloading 299%" in page(c, "/device/chatty"), "the chatty device's newest state recorded")
    assert "events of devices over their rate (chatty" in page(c, "/")
    assert c.stop() == 0


def test_idle_sockets_beyond_the_cap_give_way_and_are_closed_and_the_page_answers(mosquitto: Mosquitto, console: Any) -> None:
    c = console(mosquitto.url, "--max-connections", "8", "--read-timeout", "1")
    idle = [socket.create_connection(("127.0.0.1", c.port)) for _ in range(60)]
    try:
        assert request(c.port, "GET", "/")[0] == 200  # at once: the idle sockets hold no slot a request needs
        for s in idle:
            s.settimeout(60)
        assert [s.recv(100) for s in idle] == [b""] * 60  # each closed: evicted by a newer one, or at the read timeout
        status, body = request(c.port, "GET", "/api/health")
        assert status == 200 and json.loads(body)["http_idle_closed"] >= 52
    finally:
        for s in idle:
            s.close()
    assert c.stop() == 0


def test_console_options_out_of_range_are_usage_errors(tmp_path: Path) -> None:
    for flag, value in (("--max-db-mb", "-1"), ("--device-rate", "nan")):
        out = cli("fleet", "console", "--fleet", FLEET, "--db", tmp_path / "c.sqlite", flag, value)
        assert out.returncode == 2 and flag in out.stderr, out.stderr
