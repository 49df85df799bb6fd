"""The one way tests wait: poll a condition until it holds, with a deadline meant never to be hit.

Tests never sleep for a fixed time and never assert how long something took; they wait for
the state or event they need. The deadline only turns a hang into a failure that says what
was awaited, so it is generous (a busy 2-core machine may be many times slower than an idle one).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 120.0
POLL_S = 0.02


def wait_until(predicate: Callable[[], T], what: str, timeout: float = DEFAULT_TIMEOUT_S) -> T:
    """Return the first truthy value of ``predicate()``; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(POLL_S)
