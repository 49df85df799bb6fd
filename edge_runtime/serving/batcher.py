"""Dynamic batching: a bounded, thread-safe queue that hands worker threads merged batches.

The rules, in the order they apply when a worker asks for work:

1. A request that arrived while a worker was idle and the queue was empty is taken at
   once, together with whatever else is already waiting: no request waits for company
   when there is a free interpreter. Under light load batching therefore adds no latency.
2. Otherwise (every worker was busy when it arrived) requests are merged in arrival order
   up to ``max_batch_size`` rows. If a prefix of the queue adds up to one of
   ``preferred_batch_sizes`` the largest such prefix goes at once; if the queue holds a
   full batch it goes at once; if another worker is idle the batch goes at once (two
   interpreters waiting for company would only add latency); else the worker waits until
   the oldest request has waited ``max_queue_delay_us`` for more to arrive, then takes
   what there is.
3. A request with more rows than ``max_batch_size`` runs alone; a model that cannot be
   merged (no dynamic first dimension, or ``max_batch_size`` 0) runs one request per batch.

``put`` raises :class:`UnavailableError` when ``max_queue_size`` requests are waiting
(the HTTP layer answers 503 at once). Only the waiting requests count, not those running.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge_runtime.exceptions import UnavailableError


@dataclass(frozen=True)
class BatchPolicy:
    """How requests are merged; ``max_batch_size`` 1 means no merging."""

    max_batch_size: int = 8
    max_queue_delay_us: int = 500
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 256


@dataclass(slots=True, eq=False)
class Pending:
    """One queued request: its rows and an opaque payload for the worker."""

    rows: int
    payload: Any
    enqueued_ns: int = field(default_factory=time.perf_counter_ns)
    immediate: bool = False


class BatchQueue:
    """The queue shared by the worker threads of one loaded version."""

    def __init__(self, policy: BatchPolicy, model: str = "", clock_ns: Callable[[], int] = time.perf_counter_ns) -> None:
        self.policy = policy
        self.model = model
        self._clock_ns = clock_ns  # the clock of Pending.enqueued_ns; a parameter so tests can step it
        self._items: deque[Pending] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._idle = 0
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def set_policy(self, policy: BatchPolicy) -> None:
        """Change the batching parameters (SIGHUP); waiting workers pick them up at once."""
        with self._cond:
            self.policy = policy
            self._cond.notify_all()

    def put(self, item: Pending) -> None:
        """Queue a request; raise UnavailableError when the queue is full or closed."""
        with self._cond:
            if self._closed:
                raise UnavailableError(f"model {self.model!r}: this version is being unloaded; retry")
            n = len(self._items)
            if n >= self.policy.max_queue_size:
                raise UnavailableError(
                    f"model {self.model!r}: queue full ({n} of max_queue_size {self.policy.max_queue_size} waiting)"
                )
            item.immediate = n == 0 and self._idle > 0
            self._items.append(item)
            if n == 0 or item.immediate:
                self._cond.notify()
            else:
                self._cond.notify_all()  # a worker may be waiting to fill a batch

    def close(self) -> None:
        """Refuse new requests; workers finish what is queued, then ``take`` returns None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def fail_all(self) -> list[Pending]:
        """Remove and return everything still queued (after a drain timeout)."""
        with self._cond:
            items = list(self._items)
            self._items.clear()
            return items

    def _ready(self, now_ns: int) -> tuple[int, float | None]:
        """How many items to take now (0 = wait), and how long to wait in seconds (None = no limit)."""
        items = self._items
        p = self.policy
        first = items[0]
        cap = max(p.max_batch_size, 1)
        if first.rows >= cap or cap == 1:
            return 1, None
        rows = 0
        count = 0
        preferred = 0
        for item in items:
            if rows + item.rows > cap:
                break
            rows += item.rows
            count += 1
            if rows in p.preferred_batch_sizes:
                preferred = count
        if preferred:
            return preferred, None
        # Waiting for company only pays while every other interpreter is busy too.
        if rows == cap or count < len(items) or first.immediate or self._idle:
            return count, None
        deadline_ns = first.enqueued_ns + p.max_queue_delay_us * 1000
        if now_ns >= deadline_ns:
            return count, None
        return 0, (deadline_ns - now_ns) / 1e9

    def take(self) -> list[Pending] | None:
        """Block until a batch is ready and return it; None once closed and empty."""
        with self._cond:
            while True:
                if not self._items:
                    if self._closed:
                        return None
                    self._idle += 1
                    try:
                        self._cond.wait()
                    finally:
                        self._idle -= 1
                    continue
                # Once closed nothing more will arrive: stop waiting for company.
                count, wait_s = self._ready(1 << 62 if self._closed else self._clock_ns())
                if count:
                    return [self._items.popleft() for _ in range(count)]
                self._cond.wait(wait_s)
