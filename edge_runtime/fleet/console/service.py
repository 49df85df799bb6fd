"""The console's MQTT side: watch the fleet's topics and hand every message to the record.

One :class:`~edge_runtime.fleet.session.FleetSession` (the operator commands' connection,
same TLS and auth options) watches the devices' ``state``, ``online``, ``events`` and
``desired`` topics, the fleet's ``desired`` and the release manifests (never the chunks).
When the connection is lost the loop connects again with jittered backoff; the retained
messages come again and the record stores only what changed.
"""

from __future__ import annotations

import logging
import threading

from edge_runtime.exceptions import TransportError
from edge_runtime.fleet.console.record import Record
from edge_runtime.fleet.session import BrokerOptions, FleetSession
from edge_runtime.updates.mqtt import Backoff, Message, redact_url
from edge_runtime.updates.protocol import Topics

log = logging.getLogger("edge_runtime.fleet.console")

CHECK_S = 0.5


def console_filters(topics: Topics) -> list[str]:
    """The topics the console watches."""
    return [
        topics.devices_filter("state"),
        topics.devices_filter("online"),
        topics.devices_filter("events"),
        topics.devices_filter("desired"),
        topics.desired,
        topics.manifests_filter,
    ]


class ConsoleWatcher:
    """Keeps a session to the broker open and feeds the record, until stopped (thread ``console-mqtt``)."""

    def __init__(self, options: BrokerOptions, topics: Topics, record: Record) -> None:
        self.options = options
        self.topics = topics
        self.record = record
        self.connected = threading.Event()
        self.loaded = threading.Event()  # the retained messages of the first connection are in
        self.last_problem = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="console-mqtt", daemon=True)

    def start(self) -> ConsoleWatcher:
        """Start watching."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop and close the session."""
        self._stop.set()
        self._thread.join(15.0)

    def _on_message(self, msg: Message) -> None:
        self.record.submit(msg.topic, msg.payload)

    def _run(self) -> None:
        backoff = Backoff(0.5, 30.0)
        while not self._stop.is_set():
            try:
                with FleetSession(self.options, self.topics) as session:
                    # QoS 0: no acknowledgement for each of a big fleet's retained messages. The
                    # broker must queue them all for this client (docs/console.md, max_queued_messages).
                    self.record.pause()
                    try:
                        session.watch(console_filters(self.topics), self._on_message, qos=0)
                    finally:
                        self.record.resume()
                    self.connected.set()
                    self.loaded.set()
                    backoff.reset()
                    log.info("console watching %s on %s", self.topics.base, redact_url(self.options.url))
                    while not self._stop.wait(CHECK_S) and session.link.connected:
                        pass
                    self.connected.clear()
                    if self._stop.is_set():
                        return
                    self.last_problem = "lost the connection to the broker"
            except TransportError as exc:
                self.connected.clear()
                self.last_problem = str(exc)
            delay = backoff.next()
            log.warning("console: %s; connecting again in %.1f s", self.last_problem, delay)
            self._stop.wait(delay)


__all__ = ["ConsoleWatcher", "console_filters"]
