"""What a device tells the fleet: events (one JSON object per step) and its retained state.

Events go out when connected; while offline they wait in a bounded queue (the oldest are
dropped first, and the next flushed event says how many were lost) and are flushed on
reconnect. The state is retained, so only the newest matters: it is re-published after
every change and on every reconnect. The device republishes it whenever what it serves or
what its store records changes (the update service's store watch and the daemon's serving
callback), and ``last_error`` is left out once :func:`error_is_stale` says it is.

Events and state are published at QoS 0. With QoS 1 publishes from the device in flight,
mosquitto 2.0 was seen sending a device more unacknowledged chunks than its MQTT 5
receive maximum allows, and every one of those in a socket buffer when the connection
drops comes back as a duplicate after the reconnect (10 to 14 re-sent chunks per
interruption instead of 1, docs/updates.md). The cost: an event published in the very
instant a connection dies can be lost; the retained state converges anyway.
"""

from __future__ import annotations

import collections
import datetime as _dt
import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

from edge_runtime.exceptions import TransportError
from edge_runtime.updates.protocol import Topics

log = logging.getLogger("edge_runtime.updates")


class Transport(Protocol):
    """The part of an MQTT connection the updater uses (a fake in unit tests, :class:`MqttLink` otherwise)."""

    @property
    def connected(self) -> bool:
        """Connected and acknowledged by the broker."""

    def subscribe(self, filters: list[str], *, new_only: bool = False) -> object:
        """Subscribe at QoS 1; a refusal comes later, as a SubscriptionRefused event."""

    def unsubscribe(self, filters: list[str]) -> None:
        """Drop subscriptions."""

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1) -> object:
        """Send a message."""


def utc_now_iso() -> str:
    """The current UTC time, ISO 8601 with milliseconds."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()


class Reporter:
    """Publishes events and state for one device; keeps events while offline."""

    def __init__(
        self,
        transport: Transport,
        topics: Topics,
        device_id: str,
        max_events: int,
        clock: Callable[[], str] = utc_now_iso,
    ) -> None:
        self.transport = transport
        self.topics = topics
        self.device_id = device_id
        self._queue: collections.deque[dict[str, Any]] = collections.deque(maxlen=max(1, max_events))
        self._dropped = 0
        self._clock = clock
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=200)

    def now(self) -> str:
        """The timestamp put on events."""
        return self._clock()

    def event(self, kind: str, model: str | None = None, version: int | None = None, **fields: Any) -> dict[str, Any]:
        """Record and send (or queue) one event."""
        ev: dict[str, Any] = {"time": self._clock(), "device": self.device_id, "event": kind}
        if model is not None:
            ev["model"] = model
        if version is not None:
            ev["version"] = version
        ev.update({k: v for k, v in fields.items() if v is not None})
        self.history.append(ev)
        level = logging.WARNING if kind in ("rejected", "failed", "rolled_back") else logging.INFO
        what = f" {model} v{version}" if model is not None else ""
        detail = f" {fields['percent']}%" if "percent" in fields else ""
        detail += f": {fields['reason']}" if fields.get("reason") else ""
        log.log(level, "update %s%s%s", kind, what, detail, extra={"event": kind, "model": model, "version": version})
        if len(self._queue) == self._queue.maxlen:
            self._dropped += 1
        self._queue.append(ev)
        self.flush()
        return ev

    @property
    def queued(self) -> int:
        """Events waiting for a connection."""
        return len(self._queue)

    def flush(self) -> None:
        """Send queued events, oldest first, while connected."""
        while self._queue and self.transport.connected:
            ev = self._queue[0]
            if self._dropped:
                ev = {**ev, "dropped_before": self._dropped}
            try:
                self.transport.publish(self.topics.events(self.device_id), _dumps(ev), qos=0)
            except TransportError:
                return
            self._queue.popleft()
            self._dropped = 0

    def publish_state(self, state: dict[str, Any]) -> None:
        """Publish the retained state document (skipped while offline: sent again on reconnect)."""
        if not self.transport.connected:
            return
        try:
            self.transport.publish(self.topics.state(self.device_id), _dumps(state), retain=True, qos=0)
        except TransportError as exc:
            log.debug("state not published: %s", exc)

    def online(self, value: bool) -> None:
        """The retained ``online`` flag."""
        if self.transport.connected:
            try:
                self.transport.publish(self.topics.online(self.device_id), b"true" if value else b"false", retain=True)
            except TransportError as exc:
                log.debug("online flag not published: %s", exc)


def error_is_stale(
    last_error: dict[str, Any] | None, models: dict[str, Any], serving_at_error: dict[str, int | None]
) -> bool:
    """Whether ``last_error`` no longer describes the device: its model now serves a newer version.

    Newer means above both the version the error names and the version that served when the
    error was first seen (``serving_at_error``). An error that names no model (a refused desired
    state or trust root) goes once any model serves a newer version than it did then. The
    history stays in the events. Pure.
    """
    if not isinstance(last_error, dict):
        return False

    def serving(name: str) -> int | None:
        entry = models.get(name)
        value = entry.get("serving") if isinstance(entry, dict) else None
        return value if type(value) is int else None

    def newer(name: str, floor: int | None) -> bool:
        now = serving(name)
        before = serving_at_error.get(name)
        floors = [v for v in (floor, before) if type(v) is int]
        return now is not None and (not floors or now > max(floors)) and now != before

    model = last_error.get("model")
    version = last_error.get("version")
    if isinstance(model, str):
        return newer(model, version if type(version) is int else None)
    return any(newer(name, None) for name in models)


def serving_versions(models: dict[str, Any]) -> dict[str, int | None]:
    """``{model: serving version}`` of a state document's ``models``."""
    out: dict[str, int | None] = {}
    for name, entry in models.items():
        value = entry.get("serving") if isinstance(entry, dict) else None
        out[name] = value if type(value) is int else None
    return out


__all__ = ["Reporter", "Transport", "error_is_stale", "serving_versions", "utc_now_iso"]
