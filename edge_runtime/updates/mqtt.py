"""A thin, typed layer over paho-mqtt. Reconnect policy lives in the caller, not here.

:class:`MqttLink` does one thing at a time: :meth:`~MqttLink.connect` makes one attempt
and waits for the CONNACK; :meth:`~MqttLink.run` pumps the network until the connection
drops or the caller stops it. The caller (the update service, the fleet tools) owns the
thread and decides when to retry, with :class:`Backoff` (jittered exponential).
paho's own errors are translated into :class:`TransportError` here, at the boundary.

Subscriptions are acknowledged, not fire-and-forget: each SUBSCRIBE is kept by its message
id until its SUBACK arrives (as aiomqtt does). :meth:`MqttLink.subscribe` returns a
:class:`Subscription` to wait on, and a filter the broker refuses (reason code >= 0x80,
e.g. an ACL) is reported the moment the SUBACK says so, to ``on_refused``.

Message size: with ``max_message_bytes`` set, an MQTT 5 link tells the broker in its CONNECT
(Maximum Packet Size) never to send a larger packet, so the broker drops it and nothing is
buffered here. MQTT 3.1.1 has no such property, and paho would buffer the packet whole (three
copies of the payload at its peak): :class:`_BoundedClient` keeps only the head of an
oversized PUBLISH (its topic and packet id) while paho reads the rest from the socket, and the
link then discards the message, acknowledges it (so it is not sent again) and reports it to
``on_dropped``. Memory stays at the head plus one read, whatever the size.
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

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_runtime.config import BrokerOptions
from edge_runtime.exceptions import SubscriptionRefusedError, TransportError, UsageError
from edge_runtime.spec.broker_url import BrokerAddress, parse_broker_url, redact_url
from edge_runtime.updates.paho_client import client as paho  # paho.mqtt.client, without urllib.request

log = logging.getLogger("edge_runtime.updates.mqtt")

PROTOCOLS = {"5": paho.MQTTv5, "3.1.1": paho.MQTTv311}

RefusedFn = Callable[[tuple[str, ...], str], None]  # on_refused(filters, reason), on the network thread
DroppedFn = Callable[[str, int], None]  # on_dropped(topic, payload bytes), on the network thread
# Room for the fixed header, topic and properties of a packet around the largest payload.
PACKET_OVERHEAD_BYTES = 1024
MQTT_MAX_PACKET_BYTES = 268_435_455 + 5  # the protocol's own limit


@dataclass(frozen=True)
class LinkSettings:
    """Everything needed to connect: the broker, and this client's session.
    ``persistent`` keeps the session (and its queue) across drops."""

    broker: BrokerOptions
    client_id: str
    keepalive_s: int = 30
    persistent: bool = False
    session_expiry_s: int = 0
    receive_maximum: int = 0  # MQTT 5; 0 = the broker's default
    will_topic: str = ""
    will_payload: bytes = b""
    max_message_bytes: int = 0  # payloads above this are dropped (see the module docstring); 0 = no cap

    @property
    def safe_url(self) -> str:
        """The broker URL without its password, for logs and errors."""
        return redact_url(self.broker.url)


@dataclass(frozen=True)
class Message:
    """A received message."""

    topic: str
    payload: bytes
    retain: bool
    duplicate: bool


# What is kept of an oversized PUBLISH: the topic (at most 65,535 bytes plus its length) and the
# packet id; the rest is read from the socket and thrown away.
OVERSIZED_HEAD_BYTES = 2 + 65535 + 2
OVERSIZED_READ_BYTES = 64 * 1024  # bytes asked of the socket at a time while discarding


class _BoundedClient(paho.Client):
    """paho's client, keeping only the head of a PUBLISH over ``packet_cap`` bytes.

    paho reads a packet's body into one buffer before handling it. This hooks the one place
    it reads from the socket: while the packet being read is an oversized PUBLISH, the
    buffer is cut back to its head before each read and each read is small. paho then hands
    on a message whose payload is cut short; :meth:`take_oversized` says it was, and how big
    it really was. Relies on paho's ``_in_packet`` (2.x); without it nothing is cut.
    """

    packet_cap = 0  # 0: no cap
    _oversized = 0

    def _sock_recv(self, bufsize: int) -> bytes:
        cap = self.packet_cap
        packet = getattr(self, "_in_packet", None)
        if cap and isinstance(packet, dict) and packet.get("have_remaining") and (packet.get("command", 0) & 0xF0) == 0x30:
            size = packet.get("remaining_length", 0)
            body = packet.get("packet")
            if size > cap and isinstance(body, bytearray):
                self._oversized = size
                del body[OVERSIZED_HEAD_BYTES:]
                bufsize = min(bufsize, OVERSIZED_READ_BYTES)
        return super()._sock_recv(bufsize)

    def _create_socket_connection(self) -> socket.socket:
        """paho's TCP connection, with an ASCII host name handed to the resolver as bytes.

        ``socket.getaddrinfo`` runs a ``str`` host through the ``idna`` codec, whose first use
        imports encodings.idna, stringprep and unicodedata (about 0.4 MB of RSS kept for the
        life of the process); for an ASCII name the codec returns the same bytes. A proxy
        (PySocks installed), a non-ASCII name or a paho without these attributes goes the
        usual way. TLS encodes ``server_hostname`` with the codec anyway (the ssl module).
        """
        host = getattr(self, "_host", None)
        port = getattr(self, "_port", None)
        proxy_possible = getattr(paho, "socks", "unknown") is not None  # paho reads proxies through PySocks only
        if proxy_possible or not isinstance(host, str) or not host.isascii() or not isinstance(port, int):
            return super()._create_socket_connection()  # type: ignore[no-any-return]
        source = (getattr(self, "_bind_address", ""), getattr(self, "_bind_port", 0))
        address = (host.encode("ascii"), port)  # the resolver takes bytes; typeshed says str only
        return socket.create_connection(address, timeout=getattr(self, "_connect_timeout", None),  # type: ignore[arg-type]
                                        source_address=source)

    def take_oversized(self) -> int:
        """The size of the PUBLISH just handed on if it was cut short (then forgotten), else 0."""
        size, self._oversized = self._oversized, 0
        return size


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


class Subscription:
    """A sent SUBSCRIBE (one or more packets); :meth:`wait` blocks until the broker answered.

    Something must run the network loop meanwhile (:meth:`MqttLink.run` on another thread).
    """

    def __init__(self, filters: Sequence[str]) -> None:
        self.filters = tuple(filters)
        self._unanswered: set[int] = set()
        self._answered = threading.Event()
        self._answered.set()  # until a packet is added
        self.refused: dict[str, str] = {}  # filter -> the broker's reason
        self.lost = ""  # why the connection dropped before every SUBACK came

    def _add(self, mid: int) -> None:
        self._unanswered.add(mid)
        self._answered.clear()

    def _settle(self, mid: int, refused: dict[str, str], lost: str = "") -> None:
        self._unanswered.discard(mid)
        self.refused.update(refused)
        self.lost = self.lost or lost
        if not self._unanswered:
            self._answered.set()

    @property
    def done(self) -> bool:
        """Every SUBACK arrived (or the connection dropped)."""
        return self._answered.is_set()

    def wait(self, timeout_s: float) -> None:
        """Return once every filter is granted; SubscriptionRefusedError when the broker refused
        one, TransportError when the connection dropped or no SUBACK came within ``timeout_s``."""
        if not self._answered.wait(timeout_s):
            raise TransportError(f"the broker did not acknowledge a subscription within {timeout_s:g} s")
        if self.refused:
            raise SubscriptionRefusedError(_refusal_text(self.refused))
        if self.lost:
            raise TransportError(f"the connection dropped before the subscription was acknowledged: {self.lost}")


def _refusal_text(refused: dict[str, str]) -> str:
    shown = ", ".join(f"{f[:120]!r} ({why})" for f, why in list(refused.items())[:5])
    more = f" and {len(refused) - 5} more" if len(refused) > 5 else ""
    return f"the broker refused the subscription to {shown}{more}"


class MqttLink:
    """One MQTT connection. ``on_message`` and ``on_refused`` run on the thread that calls :meth:`run`."""

    def __init__(
        self, settings: LinkSettings, on_message: Callable[[Message], None], on_refused: RefusedFn | None = None,
        on_dropped: DroppedFn | None = None,
    ) -> None:
        broker = settings.broker
        if broker.protocol not in PROTOCOLS:
            raise UsageError(f"mqtt protocol {broker.protocol!r}: expected one of {sorted(PROTOCOLS)}")
        self.settings = settings
        self.address = parse_broker_url(broker.url)
        self._v5 = broker.protocol == "5"
        self._on_message = on_message
        kwargs: dict[str, object] = {}
        if not self._v5:
            kwargs["clean_session"] = not settings.persistent
        self._client = _BoundedClient(
            paho.CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            protocol=PROTOCOLS[broker.protocol],
            manual_ack=True,
            **kwargs,  # type: ignore[arg-type]
        )
        username = broker.username or self.address.username
        if username:
            self._client.username_pw_set(username, broker.password or self.address.password or None)
        if self.address.tls or broker.ca_file or broker.cert_file:
            try:
                self._client.tls_set(
                    ca_certs=broker.ca_file or None,
                    certfile=broker.cert_file or None,
                    keyfile=broker.key_file or None,
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
        if settings.max_message_bytes:
            self._client.packet_cap = settings.max_message_bytes + PACKET_OVERHEAD_BYTES
        self._client.on_socket_register_write = lambda client, userdata, sock: self._wake()
        self._client.on_connect = self._connected_cb
        self._client.on_disconnect = self._disconnected_cb
        self._client.on_message = self._message_cb
        self._client.on_subscribe = self._subscribed_cb
        self._on_refused = on_refused
        self._on_dropped = on_dropped
        self.dropped = 0  # messages over max_message_bytes discarded here
        # SUBSCRIBEs waiting for their SUBACK, by message id; the lock makes registering a mid
        # and its SUBACK (on the network thread) happen in that order.
        self._subacks: dict[int, tuple[list[str], Subscription]] = {}
        self._subacks_lock = threading.Lock()
        self._connack: tuple[bool, bool, str] | None = None  # (ok, session present, reason)
        self._connected = False
        self._lost_reason = ""
        self._pending: collections.deque[paho.MQTTMessage] = collections.deque()
        self._oversized: dict[int, int] = {}  # id() of a pending message cut short -> its real size

    # -- paho callbacks (network thread) ----------------------------------------------------

    def _connected_cb(self, client: paho.Client, userdata: object, flags: paho.ConnectFlags, rc: object, props: object) -> None:
        ok = not getattr(rc, "is_failure", False)
        self._connack = (ok, bool(flags.session_present), str(rc))
        self._connected = ok

    def _disconnected_cb(self, client: paho.Client, userdata: object, flags: object, rc: object, props: object) -> None:
        self._connected = False
        self._lost_reason = str(rc)
        self._drop_subacks(str(rc))

    def _subscribed_cb(self, client: paho.Client, userdata: object, mid: int, codes: list[Any], props: object) -> None:
        with self._subacks_lock:
            entry = self._subacks.pop(mid, None)
        if entry is None:
            return
        filters, sub = entry
        refused = {f: str(code) for f, code in zip(filters, codes, strict=False) if getattr(code, "is_failure", False)}
        if refused:
            log.error("%s", _refusal_text(refused))
            if self._on_refused is not None:
                try:
                    self._on_refused(tuple(refused), _refusal_text(refused))
                except Exception:  # a handler bug must not kill the network thread
                    log.exception("subscription refusal handler failed")
        sub._settle(mid, refused)  # after on_refused: whoever waits sees the refusal reported

    def _drop_subacks(self, why: str) -> None:
        """The connection is gone: no SUBACK will come for what is pending (the caller resubscribes)."""
        with self._subacks_lock:
            pending, self._subacks = self._subacks, {}
        for mid, (_, sub) in pending.items():
            sub._settle(mid, {}, why or "connection lost")

    def _message_cb(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        # Only collected here: handling happens in _dispatch, outside paho's callback lock.
        size = self._client.take_oversized()
        if size:
            self._oversized[id(msg)] = size
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
                self._oversized.clear()
                return rc if rc != paho.MQTT_ERR_SUCCESS else paho.MQTT_ERR_CONN_LOST
            msg = self._pending.popleft()
            cap = self.settings.max_message_bytes
            cut = self._oversized.pop(id(msg), 0)
            if cut or (cap and len(msg.payload) > cap):
                self._drop(msg, cap, cut)
            else:
                try:
                    self._on_message(Message(msg.topic, bytes(msg.payload), bool(msg.retain), bool(msg.dup)))
                except Exception:  # a handler bug must not kill the network thread
                    log.exception("message handler failed for %s", msg.topic)
            msg.payload = b""  # the payload goes now, not when the next message replaces this one
            if msg.qos > 0:
                client.ack(msg.mid, msg.qos)
                if client.want_write():
                    rc = client.loop_write()
        return rc

    def _drop(self, msg: paho.MQTTMessage, cap: int, size: int = 0) -> None:
        """Discard a message over the cap (acknowledged by the caller like any other); ``size``:
        its packet size when paho was made to cut it short."""
        self.dropped += 1
        size = size or len(msg.payload)
        topic = msg.topic[:200]
        log.warning("dropped a %d-byte message on %r: larger than max_message_bytes %d", size, topic, cap)
        if self._on_dropped is not None:
            try:
                self._on_dropped(topic, size)
            except Exception:  # a handler bug must not kill the network thread
                log.exception("dropped-message handler failed")

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
        self._oversized.clear()
        self._client.take_oversized()  # a packet cut short when the old connection died
        self._drop_subacks("reconnecting")
        kwargs: dict[str, object] = {}
        if self._v5:
            props = Properties(PacketTypes.CONNECT)
            if s.persistent:
                props.SessionExpiryInterval = max(0, min(s.session_expiry_s, 0xFFFFFFFF))
            if s.receive_maximum:
                # Messages the broker may have in flight to us: each one in a socket buffer when the
                # connection drops is sent again after the reconnect, so this bounds the duplicates.
                props.ReceiveMaximum = s.receive_maximum
            if s.max_message_bytes:
                # The broker never sends a larger packet (it drops it): nothing is buffered here.
                props.MaximumPacketSize = min(s.max_message_bytes + PACKET_OVERHEAD_BYTES, MQTT_MAX_PACKET_BYTES)
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
        self._drop_subacks(self._lost_reason or fallback)
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

    def subscribe(self, filters: Sequence[str], *, new_only: bool = False, batch: int = 128,
                  qos: int = 1) -> Subscription:
        """Subscribe at QoS 1 (or ``qos``). ``new_only`` (MQTT 5): retained messages only for a
        subscription not already held.

        Returns at once; the :class:`Subscription` settles when the SUBACKs arrive, and a
        refused filter also goes to ``on_refused`` then.
        """
        sub = Subscription(filters)
        for start in range(0, len(filters), batch):
            part = list(filters[start : start + batch])
            with self._subacks_lock:
                if self._v5:
                    handling = SubscribeOptions.RETAIN_SEND_IF_NEW_SUB if new_only else SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE
                    rc, mid = self._client.subscribe([(t, SubscribeOptions(qos=qos, retainHandling=handling)) for t in part])
                else:
                    rc, mid = self._client.subscribe([(t, qos) for t in part])
                if rc != paho.MQTT_ERR_SUCCESS:
                    raise TransportError(f"subscribe failed: {paho.error_string(rc)}")
                if mid is not None:
                    self._subacks[mid] = (part, sub)
                    sub._add(mid)
        return sub

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
    "DroppedFn",
    "BrokerOptions",
    "LinkSettings",
    "Message",
    "MqttLink",
    "Publication",
    "RefusedFn",
    "Subscription",
    "parse_broker_url",
    "redact_url",
]
