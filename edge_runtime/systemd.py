"""systemd service notifications (``sd_notify``) and the service watchdog.

The notify protocol is a handful of ``KEY=VALUE`` lines sent as one datagram to
the ``AF_UNIX`` socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the
abstract namespace). It is small enough to speak directly, so there is no
dependency on libsystemd or a Python binding. When the variable is unset (not
started by systemd, or ``Type=simple``) every call is a no-op returning False.

How the daemon uses it::

    ready(status_line(active))            # after HTTP answers and a model is loaded
    status(status_line(active))           # whenever the active versions change
    dog = Watchdog(event_loop_responsive(loop, timeout_s=5.0))
    dog.start()                           # no-op unless WatchdogSec= is set
    ...
    stopping()                            # on SIGTERM, before draining
    dog.stop()

The watchdog thread only says ``WATCHDOG=1`` when its health check passes, so a
wedged serving loop stops the pings and systemd restarts the service after
``WatchdogSec``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

__all__ = [
    "Watchdog",
    "event_loop_responsive",
    "notify",
    "ready",
    "status",
    "status_line",
    "stopping",
    "watchdog_interval_s",
]

logger = logging.getLogger("edge_runtime.systemd")

HealthCheck = Callable[[], bool]


def _socket_address(raw: str) -> bytes | None:
    """Turn ``$NOTIFY_SOCKET`` into a ``sendto`` address, or None if unusable."""
    if raw.startswith("@"):
        # Abstract namespace: a leading NUL byte instead of '@', no terminator.
        return b"\0" + os.fsencode(raw[1:])
    if raw.startswith("/"):
        return os.fsencode(raw)
    # systemd also knows vsock: addresses; we have no use for them on a device.
    logger.warning("NOTIFY_SOCKET=%r is neither an absolute path nor @abstract; ignored", raw)
    return None


def notify(*lines: str) -> bool:
    """Send ``KEY=VALUE`` lines to systemd as one notification datagram.

    Returns True when the datagram was sent, False when ``$NOTIFY_SOCKET`` is
    unset or unusable or the send failed (logged as a warning: a lost
    notification must never take the daemon down). A line that contains a
    newline is a programming error and raises ValueError, because it would
    smuggle in a second assignment.
    """
    for line in lines:
        if "\n" in line or "=" not in line:
            raise ValueError(f"notify line must be one KEY=VALUE without newlines, got {line!r}")
    raw = os.environ.get("NOTIFY_SOCKET")
    if not raw:
        return False
    address = _socket_address(raw)
    if address is None:
        return False
    payload = "\n".join(lines).encode("utf-8")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(payload, address)
    except OSError as exc:
        logger.warning("sd_notify to %s failed: %s", raw, exc)
        return False
    return True


def _one_line(text: str) -> str:
    """Flatten free text so it fits a single ``STATUS=`` line."""
    return " ".join(text.split())


def ready(status: str | None = None) -> bool:
    """Tell systemd start-up is complete (``READY=1``), optionally with a status line.

    Call it only once the HTTP API answers and a model is loaded: with
    ``Type=notify`` systemd holds dependent units until this arrives.
    """
    lines = ["READY=1"]
    if status is not None:
        lines.append("STATUS=" + _one_line(status))
    return notify(*lines)


def status(text: str) -> bool:
    """Set the one-line status shown by ``systemctl status`` (``STATUS=``)."""
    return notify("STATUS=" + _one_line(text))


def stopping() -> bool:
    """Tell systemd the service is shutting down (``STOPPING=1``)."""
    return notify("STOPPING=1")


def status_line(active: Mapping[str, int | None]) -> str:
    """Format the active version of each model for ``STATUS=``.

    For example ``serving cnn:7 fraud:3``.
    A model without an active version shows as ``name:-``.
    """
    if not active:
        return "serving no models"
    parts = [f"{name}:{'-' if version is None else version}" for name, version in sorted(active.items())]
    return "serving " + " ".join(parts)


def watchdog_interval_s() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings, or None when systemd expects none.

    That is half of ``$WATCHDOG_USEC`` (``WatchdogSec=``), as sd_watchdog_enabled(3)
    recommends. None when the variable is unset, not a positive integer, or when
    ``$WATCHDOG_PID`` names another process (the watchdog is for the main PID).
    """
    raw_usec = os.environ.get("WATCHDOG_USEC")
    if not raw_usec:
        return None
    raw_pid = os.environ.get("WATCHDOG_PID")
    if raw_pid:
        try:
            pid = int(raw_pid)
        except ValueError:
            logger.warning("WATCHDOG_PID=%r is not an integer; watchdog disabled", raw_pid)
            return None
        if pid != os.getpid():
            return None
    try:
        usec = int(raw_usec)
    except ValueError:
        logger.warning("WATCHDOG_USEC=%r is not an integer; watchdog disabled", raw_usec)
        return None
    if usec <= 0:
        return None
    return usec / 2_000_000


def event_loop_responsive(loop: asyncio.AbstractEventLoop, timeout_s: float) -> HealthCheck:
    """Build a health check that ``loop`` runs a callback within ``timeout_s``.

    The check schedules a no-op on the loop from the watchdog thread and waits
    for it. A loop blocked by a stuck handler, a deadlock or a closed loop fails
    it. Keep ``timeout_s`` below the watchdog's ping interval.
    """

    def check() -> bool:
        answered = threading.Event()
        try:
            loop.call_soon_threadsafe(answered.set)
        except RuntimeError:  # the loop is closed
            return False
        return answered.wait(timeout_s)

    return check


class Watchdog:
    """A named daemon thread that sends ``WATCHDOG=1`` while a health check passes.

    Every ``interval_s`` (default: :func:`watchdog_interval_s`) it calls
    ``health``; only a True result sends a ping. False, an exception or a call
    that blocks means no ping, so systemd's ``WatchdogSec`` expires and the
    service is restarted. Pings are scheduled on a fixed monotonic grid so a
    slow check does not make them drift.
    """

    def __init__(
        self,
        health: HealthCheck,
        interval_s: float | None = None,
        *,
        name: str = "edge-runtime-watchdog",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        self._health = health
        self._interval_s = interval_s
        self._name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # The clock and the wait between slots are parameters so that the schedule can be
        # tested step by step; the wait defaults to one that stop() interrupts.
        self._clock = clock
        self._sleep = sleep if sleep is not None else self._stop.wait

    @property
    def interval_s(self) -> float | None:
        """The ping interval in use, or None when the watchdog is off."""
        return self._interval_s if self._interval_s is not None else watchdog_interval_s()

    @property
    def running(self) -> bool:
        """True while the watchdog thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> bool:
        """Start the thread; False, and nothing started, if no watchdog is expected."""
        if self.running:
            return True
        interval = self.interval_s
        if interval is None:
            logger.debug("no systemd watchdog requested; not starting %s", self._name)
            return False
        if interval <= 0:
            raise ValueError(f"watchdog interval must be positive seconds, got {interval}")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(interval,), name=self._name, daemon=True)
        self._thread.start()
        logger.info("systemd watchdog started, ping every %.3f s", interval)
        return True

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop pinging and wait up to ``timeout_s`` for the thread to end.

        A thread stuck inside a blocking health check is left behind (it is a
        daemon thread); it sends nothing once stopped.
        """
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
        self._thread = None

    def _healthy(self) -> bool:
        try:
            return bool(self._health())
        except Exception:
            logger.exception("watchdog health check raised; withholding WATCHDOG=1")
            return False

    def _run(self, interval: float) -> None:
        was_healthy = True
        next_at = self._clock()
        while not self._stop.is_set():
            healthy = self._healthy()
            if self._stop.is_set():
                break
            if healthy:
                notify("WATCHDOG=1")
                if not was_healthy:
                    logger.warning("serving loop healthy again; watchdog pings resumed")
            elif was_healthy:
                logger.error("serving loop failed its health check; withholding WATCHDOG=1")
            was_healthy = healthy
            next_at += interval
            now = self._clock()
            if next_at <= now:
                # The check overran one or more slots: skip them rather than burst.
                next_at = now + interval - ((now - next_at) % interval)
            self._sleep(next_at - now)
