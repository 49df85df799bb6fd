"""An operator's short MQTT session: connect, read what is retained, publish and wait for acks.

Reading "everything retained under these filters" needs to know when the broker has sent
it all. The session subscribes to a private marker topic together with the filters, then
publishes one message to the marker: a broker handles one client's packets in order and
queues the retained messages of a SUBSCRIBE before the marker, so when the marker comes
back the snapshot is complete. No sleeping, no guessing. A filter the broker refuses
(its SUBACK says so) raises SubscriptionRefusedError at once. :meth:`FleetSession.watch` uses the
same marker to return once the retained messages are in, then keeps delivering live ones.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from types import TracebackType

import paho.mqtt.client as paho

from edge_runtime.config import BrokerOptions
from edge_runtime.exceptions import TransportError
from edge_runtime.updates.mqtt import LinkSettings, Message, MqttLink, Publication, redact_url
from edge_runtime.updates.protocol import Topics

MAX_OUTSTANDING = 64

ProgressFn = Callable[[int, int], None]  # progress(done_bytes, total_bytes)
MessageFn = Callable[[Message], None]


class FleetSession:
    """A clean (non-persistent) connection for one command. Use as a context manager.

    ``timeout_s`` bounds each wait for the broker: the CONNACK, a SUBACK, a marker, an ack.
    """

    def __init__(self, options: BrokerOptions, topics: Topics, timeout_s: float = 30.0) -> None:
        self.options = options
        self.topics = topics
        self.timeout_s = timeout_s
        self.client_id = f"edge-operator-{uuid.uuid4().hex[:12]}"
        self.link = MqttLink(LinkSettings(broker=options, client_id=self.client_id), self._on_message)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-mqtt", daemon=True)
        self._lock = threading.Lock()
        self._collect: tuple[list[str], dict[str, bytes]] | None = None
        self._watches: list[tuple[list[str], MessageFn]] = []
        self._marker = ""
        self._marker_seen = threading.Event()
        self._lost = ""

    def __enter__(self) -> FleetSession:
        self.link.connect(self.timeout_s)
        self._thread.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self.link.wakeup()
        self._thread.join(5.0)
        self.link.close()

    def _run(self) -> None:
        self._lost = self.link.run(self._stop)

    def _check(self) -> None:
        if not self.link.connected:
            raise TransportError(f"lost the connection to {redact_url(self.options.url)}: {self._lost or 'unknown reason'}")

    def _on_message(self, msg: Message) -> None:
        if msg.topic == self._marker:
            self._marker_seen.set()
            return
        with self._lock:
            watchers = [fn for filters, fn in self._watches if any(paho.topic_matches_sub(f, msg.topic) for f in filters)]
        for fn in watchers:
            fn(msg)
        with self._lock:
            if self._collect is None or not msg.retain:
                return
            filters, out = self._collect
            if any(paho.topic_matches_sub(f, msg.topic) for f in filters):
                if msg.payload:
                    out[msg.topic] = msg.payload
                else:
                    out.pop(msg.topic, None)

    def _round_trip(self, filters: Sequence[str], qos: int = 1) -> None:
        """Subscribe to ``filters`` and return once their retained messages have arrived."""
        self._marker = f"{self.topics.base}/operator/{self.client_id}/{uuid.uuid4().hex[:8]}"
        self._marker_seen.clear()
        subscription = self.link.subscribe([self._marker, *filters], qos=qos)
        self.link.publish(self._marker, b"marker")
        # The SUBACK comes before the marker: a refused filter (ACL) is an error now, not a
        # snapshot that silently lacks it.
        subscription.wait(self.timeout_s)
        if not self._marker_seen.wait(self.timeout_s):
            self._check()
            raise TransportError(f"the broker did not answer within {self.timeout_s:g} s")

    def snapshot(self, filters: Sequence[str]) -> dict[str, bytes]:
        """Every non-empty retained message under ``filters``, by topic.

        Do not snapshot a filter that is being watched: the snapshot unsubscribes at the end.
        """
        self._check()
        out: dict[str, bytes] = {}
        with self._lock:
            self._collect = (list(filters), out)
        try:
            self._round_trip(filters)
        finally:
            with self._lock:
                self._collect = None
            if self.link.connected:
                self.link.unsubscribe([self._marker, *filters])
        return dict(out)

    def watch(self, filters: Sequence[str], on_message: MessageFn, *, qos: int = 1) -> None:
        """Hand every message under ``filters`` to ``on_message`` (on the session's network thread),
        retained ones first: returns once those have been handed over. Lasts as long as the session.

        ``qos=0`` for filters that match many retained messages: no acknowledgement per message.
        A broker queues a bounded number of messages per client (mosquitto's
        ``max_queued_messages``) and drops the rest of a burst, the marker too; with mosquitto's
        default a subscription got about 9,000 of 20,000 retained messages (docs/console.md)."""
        self._check()
        with self._lock:
            self._watches.append((list(filters), on_message))
        self._round_trip(filters, qos)
        if self.link.connected:
            self.link.unsubscribe([self._marker])

    def publish(self, topic: str, payload: bytes, *, retain: bool = True) -> Publication:
        """Publish at QoS 1 (retained by default)."""
        self._check()
        return self.link.publish(topic, payload, retain=retain)

    def publish_all(
        self, messages: Sequence[tuple[str, bytes]], progress: ProgressFn | None = None, *, retain: bool = True
    ) -> int:
        """Publish many retained messages with at most 64 unacknowledged; returns bytes sent."""
        pending: list[Publication] = []
        sent = 0
        total = sum(len(p) for _, p in messages)
        for topic, payload in messages:
            pending.append(self.publish(topic, payload, retain=retain))
            sent += len(payload)
            while len(pending) >= MAX_OUTSTANDING:
                pending.pop(0).wait(self.timeout_s)
            if progress is not None:
                progress(sent, total)
        for pub in pending:
            pub.wait(self.timeout_s)
        return sent


__all__ = ["BrokerOptions", "FleetSession", "MessageFn", "ProgressFn"]
