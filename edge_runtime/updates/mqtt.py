"""A thin, typed layer over paho-mqtt. Reconnect policy lives in the caller, not here.

:class:`MqttLink` does one thing at a time: :meth:`~MqttLink.connect` makes one attempt
and waits for the CONNACK; :meth:`~MqttLink.run` pumps the network until the connection
drops or the caller stops it. The caller (the update service, the fleet tools) owns the
thread and decides when to retry, with :class:`Backoff` (jittered exponential).
paho's own errors are translated into :class:`TransportError` here, at the boundary.
"""

from __future__ import annotations

import collections
import logging
import random
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_runtime.exceptions import TransportError, UsageError
from edge_runtime.updates.broker_url import BrokerAddress, parse_broker_url, redact_url

log = logging.getLogger("edge_runtime.updates.mqtt")

PROTOCOLS = {"5": paho.MQTTv5, "3.1.1": paho.MQTTv311}


@dataclass(frozen=True)
class LinkSettings:
    """Everything needed to connect. ``persistent`` keeps the session (and its queue) across drops."""

    url: str
    client_id: str
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    username: str = ""
    password: str = ""
    keepalive_s: int = 30
    protocol: str = "5"
    persistent: bool = False
    session_expiry_s: int = 0
    receive_maximum: int = 0  # MQTT 5; 0 = the broker's default

    @property
    def safe_url(self) -> str:
        """The broker URL without its password, for logs and errors."""
        return redact_url(self.url)
    will_topic: str = ""
    will_payload: bytes = b""


@dataclass(frozen=True)
class Message:
    """A received message."""

    topic: str
    payload: bytes
    retain: bool
    duplicate: bool


class Backoff:
    """Jittered exponential backoff ("full jitter"): each delay is uniform in [min, current cap]."""

    def __init__(self, min_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self.min_s = max(0.0, min_s)
        self.max_s = max(self.min_s, max_s)
        self._cap = self.min_s
        self._rng = rng or random.Random()

    def next(self) -> float:
        """The next delay in seconds; the cap doubles up to ``max_s``."""
        delay = self._rng.uniform(self.min_s, max(self.min_s, self._cap))
        self._cap = min(self.max_s, max(self._cap * 2, self.min_s * 2, 0.1))
        return delay

    def reset(self) -> None:
        """Back to the minimum after a connection that worked."""
        self._cap = self.min_s


class Publication:
    """A sent QoS 1 message; :meth:`wait` blocks until the broker acknowledged it."""

    def __init__(self, info: paho.MQTTMessageInfo) -> None:
        self._info = info

    def wait(self, timeout_s: float) -> None:
        """Raise TransportError unless the broker acknowledged within ``timeout_s``."""
        try:
            self._info.wait_for_publish(timeout_s)
        except (RuntimeError, ValueError) as exc:
            raise TransportError(f"publish failed: {exc}") from exc
        if not self._info.is_published():
            raise TransportError(f"the broker did not acknowledge a publish within {timeout_s:g} s")

    @property
    def done(self) -> bool:
        """Acknowledged by the broker."""
        return self._info.is_published()


class MqttLink:
    """One MQTT connection. ``on_message`` runs on the thread that calls :meth:`run`."""

    def __init__(self, settings: LinkSettings, on_message: Callable[[Message], None]) -> None:
        if settings.protocol not in PROTOCOLS:
            raise UsageError(f"mqtt protocol {settings.protocol!r}: expected one of {sorted(PROTOCOLS)}")
        self.settings = settings
        self.address = parse_broker_url(settings.url)
        self._v5 = settings.protocol == "5"
        self._on_message = on_message
        kwargs: dict[str, object] = {}
        if not self._v5:
            kwargs["clean_session"] = not settings.persistent
        self._client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            protocol=PROTOCOLS[settings.protocol],
            manual_ack=True,
            **kwargs,  # type: ignore[arg-type]
        )
        username = settings.username or self.address.username
        if username:
            self._client.username_pw_set(username, settings.password or self.address.password or None)
        if self.address.tls or settings.ca_file or settings.cert_file:
            try:
                self._client.tls_set(
                    ca_certs=settings.ca_file or None,
                    certfile=settings.cert_file or None,
                    keyfile=settings.key_file or None,
                    cert_reqs=ssl.CERT_REQUIRED,
                )
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise UsageError(f"cannot load the TLS files for {settings.safe_url}: {exc}") from exc
        if settings.will_topic:
            self._client.will_set(settings.will_topic, settings.will_payload, qos=1, retain=True)
        # Only the thread that runs the network loop may touch the socket (an SSL socket breaks
        # when two threads write): with a write callback registered, paho queues packets from
        # other threads and wakes the loop instead of writing itself.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._client.on_socket_register_write = lambda client, userdata, sock: self._wake()
        self._client.on_connect = self._connected_cb
        self._client.on_disconnect = self._disconnected_cb
        self._client.on_message = self._message_cb
        self._connack: tuple[bool, bool, str] | None = None  # (ok, session present, reason)
        self._connected = False
        self._lost_reason = ""
        self._pending: collections.deque[paho.MQTTMessage] = collections.deque()

    # -- paho callbacks (network thread) ----------------------------------------------------

    def _connected_cb(self, client: paho.Client, userdata: object, flags: paho.ConnectFlags, rc: object, props: object) -> None:
        ok = not getattr(rc, "is_failure", False)
        self._connack = (ok, bool(flags.session_present), str(rc))
        self._connected = ok

    def _disconnected_cb(self, client: paho.Client, userdata: object, flags: object, rc: object, props: object) -> None:
        self._connected = False
        self._lost_reason = str(rc)

    def _message_cb(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        # Only collected here: handling happens in _dispatch, outside paho's callback lock.
        self._pending.append(msg)

    def _dispatch(self) -> paho.MQTTErrorCode:
        """Hand every received message to ``on_message``, acknowledging each right after it.

        A message is acknowledged once the handler is done (a chunk is on disk by then) and its
        PUBACK leaves at once, before the next message is handled. Before each message, whatever
        has already arrived is read in, so a connection that has closed is noticed first: the
        messages still waiting were never acknowledged and the broker sends them again, so they
        are dropped here instead of being handled twice.
        """
        client = self._client
        rc = paho.MQTT_ERR_SUCCESS
        while self._pending:
            sock = client.socket()
            if sock is not None and self._readable_now(sock):
                rc = client.loop_read(1)
            if rc != paho.MQTT_ERR_SUCCESS or not self._connected:
                log.debug("connection lost: dropping %d unacknowledged messages", len(self._pending))
                self._pending.clear()
                return rc if rc != paho.MQTT_ERR_SUCCESS else paho.MQTT_ERR_CONN_LOST
            msg = self._pending.popleft()
            try:
                self._on_message(Message(msg.topic, bytes(msg.payload), bool(msg.retain), bool(msg.dup)))
            except Exception:  # a handler bug must not kill the network thread
                log.exception("message handler failed for %s", msg.topic)
            if msg.qos > 0:
                client.ack(msg.mid, msg.qos)
                if client.want_write():
                    rc = client.loop_write()
        return rc

    @staticmethod
    def _readable_now(sock: socket.socket | ssl.SSLSocket | Any) -> bool:
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        try:
            r, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True  # let loop_read report the broken socket
        return bool(r)

    # -- connection ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Connected and acknowledged by the broker."""
        return self._connected

    def connect(self, timeout_s: float) -> bool:
        """One connection attempt; returns whether the broker kept our session. TransportError on failure."""
        s = self.settings
        self._connack = None
        self._pending.clear()  # unacknowledged leftovers of an old connection come again
        kwargs: dict[str, object] = {}
        if self._v5:
            props = Properties(PacketTypes.CONNECT)
            if s.persistent:
                props.SessionExpiryInterval = max(0, min(s.session_expiry_s, 0xFFFFFFFF))
            if s.receive_maximum:
                # Messages the broker may have in flight to us: each one in a socket buffer when the
                # connection drops is sent again after the reconnect, so this bounds the duplicates.
                props.ReceiveMaximum = s.receive_maximum
            kwargs = {"clean_start": not s.persistent, "properties": props}
        try:
            self._client.connect(self.address.host, self.address.port, keepalive=s.keepalive_s, **kwargs)  # type: ignore[arg-type]
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise TransportError(f"cannot connect to {s.safe_url}: {exc}") from exc
        deadline = time.monotonic() + timeout_s
        while self._connack is None:
            if time.monotonic() > deadline:
                self._client.disconnect()
                raise TransportError(f"no CONNACK from {s.safe_url} within {timeout_s:g} s")
            rc = self._client.loop(0.05)
            if rc != paho.MQTT_ERR_SUCCESS and self._connack is None:
                raise TransportError(f"connection to {s.safe_url} lost before CONNACK ({paho.error_string(rc)})")
        ok, session_present, reason = self._connack
        if not ok:
            self._client.disconnect()
            raise TransportError(f"{s.safe_url} refused the connection: {reason}")
        return session_present

    def run(self, stop: threading.Event) -> str:
        """Pump the network until the connection drops or ``stop`` is set; returns why it ended.

        One incoming packet at a time, then every pending write: the PUBACK of a chunk leaves
        as soon as the chunk is on disk, so a connection that drops leaves at most one
        processed-but-unacknowledged message for the broker to send again.
        """
        client = self._client
        self._dispatch()  # what arrived with the CONNACK (a resumed session's queue)
        while not stop.is_set():
            sock = client.socket()
            if sock is None or not self._connected:
                return self._lost("the connection closed")
            try:
                if isinstance(sock, ssl.SSLSocket) and sock.pending():
                    readable = True  # decrypted bytes waiting: select() would not see them
                else:
                    r, _, _ = select.select([sock, self._wake_r], [sock] if client.want_write() else [], [], 0.2)
                    readable = sock in r
                    if self._wake_r in r:
                        self._drain_wake()
                rc = client.loop_read(1) if readable else paho.MQTT_ERR_SUCCESS
                dispatched = self._dispatch()
                if rc == paho.MQTT_ERR_SUCCESS:
                    rc = dispatched
                if rc == paho.MQTT_ERR_SUCCESS and client.want_write():
                    rc = client.loop_write()
                if rc == paho.MQTT_ERR_SUCCESS:
                    rc = client.loop_misc()
            except (OSError, ValueError, ssl.SSLError) as exc:
                return self._lost(f"socket error: {exc}")
            if rc != paho.MQTT_ERR_SUCCESS or not self._connected:
                return self._lost(paho.error_string(rc))
        return "stopped"

    def wakeup(self) -> None:
        """Make :meth:`run` look at its ``stop`` event now (from any thread)."""
        self._wake()

    def _lost(self, fallback: str) -> str:
        self._connected = False
        return self._lost_reason or fallback

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already pending, or closing

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def pump(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """Run the network loop on this thread until ``done()`` or the timeout; returns ``done()``."""
        deadline = time.monotonic() + timeout_s
        while not done() and time.monotonic() < deadline:
            if self._client.loop(0.05) != paho.MQTT_ERR_SUCCESS:
                break
            self._dispatch()
        return done()

    def disconnect(self) -> None:
        """Close cleanly (no last will); keeps a persistent session on the broker."""
        try:
            self._client.disconnect()
            self._client.loop(0.1)
        except (OSError, ssl.SSLError):
            pass
        self._connected = False

    def close(self) -> None:
        """Disconnect and release the wake-up socket pair (the link cannot be used again)."""
        self.disconnect()
        for sock in (self._wake_r, self._wake_w):
            sock.close()

    # -- traffic -------------------------------------------------------------------------

    def subscribe(self, filters: Sequence[str], *, new_only: bool = False, batch: int = 128, qos: int = 1) -> None:
        """Subscribe at QoS 1 (or ``qos``). ``new_only`` (MQTT 5): retained messages only for a subscription not already held."""
        if not filters:
            return
        for start in range(0, len(filters), batch):
            part = filters[start : start + batch]
            if self._v5:
                handling = SubscribeOptions.RETAIN_SEND_IF_NEW_SUB if new_only else SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE
                rc, _ = self._client.subscribe([(t, SubscribeOptions(qos=qos, retainHandling=handling)) for t in part])
            else:
                rc, _ = self._client.subscribe([(t, qos) for t in part])
            if rc != paho.MQTT_ERR_SUCCESS:
                raise TransportError(f"subscribe failed: {paho.error_string(rc)}")

    def unsubscribe(self, filters: Sequence[str], batch: int = 128) -> None:
        """Drop subscriptions (ignored while disconnected: a lost session holds none)."""
        for start in range(0, len(filters), batch):
            rc, _ = self._client.unsubscribe(list(filters[start : start + batch]))
            if rc != paho.MQTT_ERR_SUCCESS:
                raise TransportError(f"unsubscribe failed: {paho.error_string(rc)}")

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1) -> Publication:
        """Send a message; QoS 1 by default."""
        try:
            info = self._client.publish(topic, payload, qos=qos, retain=retain)
        except (ValueError, OSError) as exc:
            raise TransportError(f"publish to {topic} failed: {exc}") from exc
        if info.rc == paho.MQTT_ERR_NO_CONN and qos == 0:
            raise TransportError(f"publish to {topic}: not connected")  # QoS 0 would be dropped
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            raise TransportError(f"publish to {topic} failed: {paho.error_string(info.rc)}")
        return Publication(info)


__all__ = [
    "Backoff",
    "BrokerAddress",
    "LinkSettings",
    "Message",
    "MqttLink",
    "Publication",
    "parse_broker_url",
    "redact_url",
]
