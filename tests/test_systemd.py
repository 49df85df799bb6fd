"""sd_notify and the watchdog, against a real AF_UNIX datagram socket per test."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_runtime import systemd
from harness.wait import wait_until

WATCHDOG_USEC = 200_000  # WatchdogSec=200ms -> one ping every 100 ms
PING_INTERVAL_S = WATCHDOG_USEC / 2_000_000


class NotifyReceiver:
    """The systemd side of the protocol: a bound datagram socket that reads messages."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def recv(self, timeout_s: float = 2.0) -> str:
        """Return the next datagram as text; fail the test if none arrives in time."""
        self.sock.settimeout(timeout_s)
        data = self.sock.recv(4096)
        return data.decode("utf-8")

    def collect(self, duration_s: float) -> list[tuple[float, str]]:
        """Every message, with its monotonic arrival time, for ``duration_s``."""
        out: list[tuple[float, str]] = []
        end = time.monotonic() + duration_s
        while (left := end - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            out.append((time.monotonic(), data.decode("utf-8")))
        return out

    def queued(self) -> list[str]:
        """Every message already received and not read yet, in order."""
        out: list[str] = []
        self.sock.setblocking(False)
        try:
            while True:
                out.append(self.sock.recv(4096).decode("utf-8"))
        except BlockingIOError:
            return out
        finally:
            self.sock.setblocking(True)

    def drain(self) -> None:
        """Drop anything already queued."""
        self.sock.setblocking(False)
        try:
            while True:
                self.sock.recv(4096)
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # sun_path holds 108 bytes; pytest's tmp_path can be longer than that.
    path = Path(tempfile.mkdtemp(prefix="sdn-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def receiver(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifyReceiver]:
    """Bind a filesystem notify socket and point NOTIFY_SOCKET at it."""
    path = short_dir / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    try:
        yield NotifyReceiver(sock)
    finally:
        sock.close()


@pytest.fixture
def watchdog_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))


# --- plain notifications -------------------------------------------------------------


def test_ready_status_and_stopping_arrive_as_sent(receiver: NotifyReceiver) -> None:
    assert systemd.ready("serving fraud:3")
    assert receiver.recv() == "READY=1\nSTATUS=serving fraud:3"
    assert systemd.status("updating fraud to 4")
    assert receiver.recv() == "STATUS=updating fraud to 4"
    assert systemd.stopping()
    assert receiver.recv() == "STOPPING=1"


def test_notify_sends_all_lines_in_one_datagram(receiver: NotifyReceiver) -> None:
    assert systemd.notify("STATUS=x", "EXTEND_TIMEOUT_USEC=5000000")
    assert receiver.recv() == "STATUS=x\nEXTEND_TIMEOUT_USEC=5000000"


def test_status_text_is_flattened_to_one_line(receiver: NotifyReceiver) -> None:
    assert systemd.status("line one\nREADY=1")
    # The injected newline must not become a second assignment.
    assert receiver.recv() == "STATUS=line one READY=1"


@pytest.mark.parametrize("bad", ["READY=1\nSTOPPING=1", "no-equals-sign"])
def test_notify_rejects_malformed_lines(receiver: NotifyReceiver, bad: str) -> None:
    with pytest.raises(ValueError, match="KEY=VALUE"):
        systemd.notify(bad)
    assert receiver.queued() == []  # notify() sends synchronously: anything sent is queued by now


def test_ready_without_status_is_just_ready(receiver: NotifyReceiver) -> None:
    assert systemd.ready()
    assert receiver.recv() == "READY=1"


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"edge-runtime-test-{secrets.token_hex(8)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.ready("abstract")
        sock.settimeout(2.0)
        assert sock.recv(4096) == b"READY=1\nSTATUS=abstract"


def test_unset_socket_is_a_noop(receiver: NotifyReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert systemd.notify("READY=1") is False
    assert systemd.ready("x") is False
    assert systemd.status("x") is False
    assert systemd.stopping() is False
    assert receiver.queued() == []


def test_missing_socket_returns_false_and_warns(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(short_dir / "nobody-listens"))
    with caplog.at_level(logging.WARNING, logger="edge_runtime.systemd"):
        assert systemd.ready() is False
    assert any("sd_notify" in r.getMessage() for r in caplog.records)


def test_relative_socket_path_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/notify")
    assert systemd.notify("READY=1") is False


def test_status_line_lists_models_sorted() -> None:
    assert systemd.status_line({"fraud": 3, "cnn": None}) == "serving cnn:- fraud:3"
    assert systemd.status_line({}) == "serving no models"


# --- watchdog interval ---------------------------------------------------------------


def test_watchdog_interval_is_half_of_watchdog_usec(watchdog_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert systemd.watchdog_interval_s() == pytest.approx(PING_INTERVAL_S)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert systemd.watchdog_interval_s() == pytest.approx(15.0)


def test_watchdog_interval_without_pid_still_applies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert systemd.watchdog_interval_s() == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("usec", "pid"),
    [
        (None, None),  # no WatchdogSec=
        ("200000", "1"),  # meant for another process
        ("not-a-number", None),
        ("0", None),
        ("200000", "abc"),
    ],
)
def test_watchdog_interval_none_when_not_for_us(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None
) -> None:
    for key, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    assert systemd.watchdog_interval_s() is None


# --- the watchdog thread -------------------------------------------------------------


class Script:
    """Drives a watchdog step by step: a fake clock, a wait that only records how long the
    watchdog asked to wait (and moves the clock), and a health check that answers from a
    script. Once the script is spent the check answers False (no more pings) and ``spent`` is
    set; every ping the scripted checks earned has been sent by then."""

    def __init__(self, answers: list[bool | Exception], check_costs_s: dict[int, float] | None = None) -> None:
        self.answers = list(answers)
        self.costs = check_costs_s or {}
        self.now = 1000.0
        self.waits: list[float] = []
        self.calls = 0
        self.spent = threading.Event()

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        if self.spent.is_set():
            time.sleep(0.001)  # only until the test stops the watchdog
            return
        self.waits.append(seconds)
        self.now += seconds

    def health(self) -> bool:
        if self.calls >= len(self.answers):
            self.spent.set()
            return False
        self.now += self.costs.get(self.calls, 0.0)
        answer = self.answers[self.calls]
        self.calls += 1
        if isinstance(answer, Exception):
            raise answer
        return answer

    def run(self, receiver: NotifyReceiver) -> list[str]:
        """Run the watchdog through the script; the notifications it sent."""
        dog = systemd.Watchdog(self.health, clock=self.clock, sleep=self.sleep)
        assert dog.start()
        try:
            assert dog.running
            assert any(t.name == "edge-runtime-watchdog" for t in threading.enumerate())
            wait_until(self.spent.is_set, "the watchdog to run through its script")
        finally:
            dog.stop()
        assert not dog.running
        return receiver.queued()


def test_watchdog_pings_after_each_healthy_check_on_a_grid_of_half_watchdog_usec(
    receiver: NotifyReceiver, watchdog_env: None
) -> None:
    script = Script([True] * 6)
    assert script.run(receiver) == ["WATCHDOG=1"] * 6
    # One ping at once, then one every 100 ms: well inside the 200 ms WatchdogSec.
    assert script.waits[:5] == [pytest.approx(PING_INTERVAL_S)] * 5


def test_watchdog_skips_the_slots_a_slow_check_overran_instead_of_bursting(
    receiver: NotifyReceiver, watchdog_env: None
) -> None:
    script = Script([True, True, True], check_costs_s={1: 2.5 * PING_INTERVAL_S})
    assert script.run(receiver) == ["WATCHDOG=1"] * 3
    # The second check ends half-way into the third slot: the next ping waits for the fourth.
    assert script.waits[:3] == [pytest.approx(PING_INTERVAL_S), pytest.approx(0.5 * PING_INTERVAL_S),
                                pytest.approx(PING_INTERVAL_S)]


def test_watchdog_stops_pinging_when_stopped(receiver: NotifyReceiver, watchdog_env: None) -> None:
    dog = systemd.Watchdog(lambda: True)
    dog.start()
    assert receiver.recv() == "WATCHDOG=1"
    dog.stop()
    receiver.drain()
    assert receiver.collect(3 * PING_INTERVAL_S) == []


def test_watchdog_not_started_without_watchdog_usec(receiver: NotifyReceiver) -> None:
    calls: list[int] = []

    def health() -> bool:
        calls.append(1)
        return True

    dog = systemd.Watchdog(health)
    assert dog.start() is False
    assert not dog.running
    assert receiver.collect(3 * PING_INTERVAL_S) == []
    assert calls == []


def test_watchdog_withholds_pings_while_unhealthy(
    receiver: NotifyReceiver, watchdog_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="edge_runtime.systemd"):
        sent = Script([True, True, False, False, False, True, True]).run(receiver)
    assert sent == ["WATCHDOG=1"] * 4
    messages = [r.getMessage() for r in caplog.records]
    # Each change is logged once; the third line is the end of the script (a failed check too).
    assert ["failed its health check" in m for m in messages] == [True, False, True], messages
    assert "healthy again" in messages[1]


def test_watchdog_treats_an_exception_as_unhealthy(receiver: NotifyReceiver, watchdog_env: None) -> None:
    script = Script([RuntimeError("boom"), RuntimeError("boom"), True])
    assert script.run(receiver) == ["WATCHDOG=1"]  # the thread survived the exceptions and pinged again
    assert script.calls == 3


def test_event_loop_health_check_fails_while_the_loop_is_wedged() -> None:
    loop = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=loop.run_forever, name="test-serving-loop", daemon=True)
    loop_thread.start()
    release = threading.Event()
    blocked = threading.Event()
    check = systemd.event_loop_responsive(loop, timeout_s=0.05)
    try:
        assert check() is True
        # A handler that blocks the loop, as a hung request would.
        loop.call_soon_threadsafe(lambda: (blocked.set(), release.wait()))
        wait_until(blocked.is_set, "the loop to be blocked")
        assert check() is False
        release.set()
        wait_until(check, "the loop to answer again")
    finally:
        release.set()
        loop.call_soon_threadsafe(loop.stop)
        loop_thread.join()
        loop.close()


def test_event_loop_health_check_fails_on_closed_loop() -> None:
    loop = asyncio.new_event_loop()
    loop.close()
    assert systemd.event_loop_responsive(loop, timeout_s=0.05)() is False


def test_event_loop_health_check_passes_on_running_loop() -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        assert systemd.event_loop_responsive(loop, timeout_s=1.0)() is True
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(2.0)
        loop.close()
