"""Test-only hooks; inert in production.

``EDGE_TEST_HOLD_WORKERS=PATH``: while the file ``PATH`` exists, the worker threads of
threaded executors take no work from their queues. A test creates the file, sends
concurrent requests, waits until the ``edge_queue_depth`` metric shows them all waiting,
then removes the file: the workers find a full queue and merge it, whatever the speed of
the CPU (docs/testing.md). Nothing sets the variable outside the tests, and it is ignored
under systemd (``INVOCATION_ID`` is set for every unit), so a device never holds requests.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger("edge_runtime.serving")

HOLD_WORKERS_ENV = "EDGE_TEST_HOLD_WORKERS"
HOLD_POLL_S = 0.005


def hold_workers_file() -> Path | None:
    """The file that holds the workers while it exists; None (always, under systemd) when unset."""
    value = os.environ.get(HOLD_WORKERS_ENV)
    if not value or os.environ.get("INVOCATION_ID"):
        return None
    return Path(value)


def wait_while_held(hold: Path | None) -> None:
    """Return once ``hold`` does not exist (at once when it is None)."""
    if hold is None:
        return
    while hold.exists():
        time.sleep(HOLD_POLL_S)


def warn_if_enabled() -> None:
    """Log once at start-up that the test hook is on, so that it is never on unnoticed."""
    hold = hold_workers_file()
    if hold is not None:
        log.warning("test hook %s is set: workers take no work while %s exists", HOLD_WORKERS_ENV, hold)
