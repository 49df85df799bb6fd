"""The bounded queue between the console's MQTT thread and its writer.

``put`` never blocks the MQTT thread and never lets the queue grow past its bounds:

* a device's events each spend a token of that device's bucket; without one the event is
  dropped and counted for the device (``dropped_rate``);
* a device's state or online flag is "latest wins" per topic: a newer one replaces the
  one still queued (``replaced``), and a device's state or flag over its rate is held aside,
  one per topic, until the device has a token again, so the newest always ends up recorded;
* anything else over ``max_queue_messages`` or ``max_queue_bytes`` is dropped (``dropped_full``).

So one chatty device costs at most its held-aside latest messages, and the rest of the fleet
keeps its place in the record.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge_runtime.fleet.console.limits import ConsoleLimits, TokenBucket

LATEST_WINS = ("device_state", "device_online")  # not desired states: each is a rollout step to record
DEFERRED_POLL_S = 0.2


@dataclass(frozen=True)
class Incoming:
    """One message as received: topic, payload (cut to the largest a digest reads), its full size, when."""

    topic: str
    payload: bytes
    size: int
    time: float


@dataclass(frozen=True)
class InboxCounts:
    """What the inbox dropped or merged since the start (``/api/health`` and the overview show them)."""

    queued: int
    queued_bytes: int
    dropped_full: int
    dropped_rate: dict[str, int]
    dropped_at_close: int
    replaced: int
    held: int


class Inbox:
    """See the module docstring. ``clock``: monotonic seconds, for the buckets."""

    def __init__(self, limits: ConsoleLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._order: collections.deque[str] = collections.deque()
        self._items: dict[str, Incoming] = {}
        self._held: dict[str, tuple[str, Incoming]] = {}  # topic -> (device, newest message over its rate)
        self._buckets: dict[str, TokenBucket] = {}
        self._bytes = 0
        self._ids = itertools.count()
        self._closed = False
        self._deadline: float | None = None
        self.dropped_full = 0
        self.dropped_rate: collections.Counter[str] = collections.Counter()
        self.dropped_at_close = 0
        self.replaced = 0

    def _bucket(self, device: str, now: float) -> TokenBucket:
        b = self._buckets.get(device)
        if b is None:
            b = self._buckets[device] = TokenBucket(self.limits.device_messages_per_s, self.limits.device_message_burst, now)
        return b

    def put(self, msg: Incoming, kind: str | None, device: str) -> bool:
        """Queue ``msg`` (``kind``: its topic's, None for a topic the console ignores); False if dropped."""
        if kind is None:
            return False
        now = self.clock()
        with self._lock:
            if self._closed:
                return False
            latest = kind in LATEST_WINS
            if latest and msg.topic in self._items:
                old = self._items[msg.topic]
                self._items[msg.topic] = msg
                self._bytes += len(msg.payload) - len(old.payload)
                self.replaced += 1
                return True
            if device and kind in ("device_events", "device_state", "device_online"):
                if not self._bucket(device, now).take(now):
                    if kind == "device_events":
                        self.dropped_rate[device] += 1
                        return False
                    if msg.topic in self._held:
                        self.replaced += 1
                    self._held[msg.topic] = (device, msg)
                    self._ready.notify()
                    return True
                self._held.pop(msg.topic, None)  # this newer one goes in its place
            return self._enqueue(msg, latest)

    def _enqueue(self, msg: Incoming, latest: bool) -> bool:
        if len(self._order) >= self.limits.max_queue_messages or self._bytes + len(msg.payload) > self.limits.max_queue_bytes:
            self.dropped_full += 1
            return False
        key = msg.topic if latest else f"\0{next(self._ids)}"
        self._order.append(key)
        self._items[key] = msg
        self._bytes += len(msg.payload)
        self._ready.notify()
        return True

    def _release_held(self, now: float) -> None:
        for topic, (device, msg) in list(self._held.items()):
            if self._bucket(device, now).take(now):
                del self._held[topic]
                if topic in self._items:  # (cannot happen: a queued topic is replaced, not held)
                    self._items[topic] = msg
                else:
                    self._enqueue(msg, True)

    def take(self, most: int, timeout_s: float) -> list[Incoming] | None:
        """Up to ``most`` messages, waiting up to ``timeout_s`` for the first; ``[]`` when none came;
        None once closed and empty (or closed and past the close budget: the rest is dropped)."""
        with self._lock:
            deadline = self.clock() + timeout_s
            while True:
                if self._held:
                    self._release_held(self.clock())
                if self._order:
                    break
                if self._closed:
                    return None
                left = deadline - self.clock()
                if left <= 0:
                    return []
                self._ready.wait(min(left, DEFERRED_POLL_S) if self._held else left)
            if self._closed and self._deadline is not None and self.clock() > self._deadline:
                self.dropped_at_close += len(self._order)
                self._order.clear()
                self._items.clear()
                self._bytes = 0
                return None
            out: list[Incoming] = []
            while self._order and len(out) < most:
                msg = self._items.pop(self._order.popleft())
                self._bytes -= len(msg.payload)
                out.append(msg)
            return out

    def close(self, budget_s: float) -> None:
        """No more messages; what is queued may still be taken for ``budget_s`` (held ones are dropped)."""
        with self._lock:
            self._closed = True
            self._deadline = self.clock() + budget_s
            self.dropped_at_close += len(self._held)
            self._held.clear()
            self._ready.notify_all()

    def counts(self) -> InboxCounts:
        """A copy of the counters."""
        with self._lock:
            return InboxCounts(
                len(self._order), self._bytes, self.dropped_full, dict(self.dropped_rate), self.dropped_at_close,
                self.replaced, len(self._held),
            )


__all__ = ["LATEST_WINS", "Inbox", "InboxCounts", "Incoming"]
