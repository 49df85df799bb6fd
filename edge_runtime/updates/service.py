"""The device side of the update protocol as two threads beside the daemon.

``edge-mqtt`` owns the connection: one attempt at a time, jittered exponential backoff
between attempts, forever. Chunks are handled on this thread (written before they are
acknowledged); every other message is queued for ``edge-updates``, which runs the
:class:`~edge_runtime.updates.updater.Updater` and its timers. Serving never waits on
either thread: the daemon learns about a new version only through the store and ``wake``.

The retained state tells the truth within about a second: the daemon calls
:meth:`UpdateService.state_changed` whenever what it serves changes, and ``edge-updates``
looks at the store's change signature every :data:`STORE_POLL_S` (a few ``stat`` calls), so a
change made by another process (``edge-runtime models rollback`` run by hand) is published too.
The state also carries the device's health (:mod:`edge_runtime.health`), read every
``[monitoring] health_interval_s``; throttling or under-voltage that starts raises a
``health_alert`` event.

The daemon calls :func:`start_updates` and ``stop()``; the fleet simulator and
``edge-runtime fleet agent`` build an :class:`UpdateService` with
``selftest_in_process=True`` because no daemon is there to run the self-test.
"""

from __future__ import annotations

import logging
import platform
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_runtime import health
from edge_runtime.config import Config, check_mqtt_config
from edge_runtime.exceptions import ConfigError, TransportError
from edge_runtime.monitoring.hub import Monitoring
from edge_runtime.store.store import ModelStore, Resolved
from edge_runtime.store.variants import install_selftest
from edge_runtime.updates.effects import NetworkEvent, SubscriptionRefused
from edge_runtime.updates.mqtt import Backoff, LinkSettings, Message, MqttLink
from edge_runtime.updates.policy import policy_settings
from edge_runtime.updates.protocol import CaptureRequestTopic, ChunkTopic, Topic, Topics, check_id
from edge_runtime.updates.report import error_is_stale, serving_versions
from edge_runtime.updates.roots import load_trust_root, updates_state_dir
from edge_runtime.updates.updater import Updater, UpdaterSettings

if TYPE_CHECKING:
    from edge_runtime.updates.capture import CaptureResponder

log = logging.getLogger("edge_runtime.updates")

TIMESYNC_FLAG = Path("/run/systemd/timesync/synchronized")
STORE_POLL_S = 0.5  # how often the store's change signature is compared (changes by another process)
MAX_TOPIC_SHOWN = 200  # characters of a dropped message's topic put in the event


# -- what the threads put on the edge-updates queue -------------------------------------------


@dataclass(frozen=True)
class LinkUp:
    """Connected; ``session_present``: the broker kept our session."""

    session_present: bool


@dataclass(frozen=True)
class LinkDown:
    """The connection was lost."""

    reason: str


@dataclass(frozen=True)
class MessageWaiting:
    """A control message waits in ``_waiting`` under ``topic`` (newest per topic)."""

    topic: str


@dataclass(frozen=True)
class MessagesDropped:
    """Oversized messages were dropped; ``topic`` is the first one's, cut short."""

    topic: str


@dataclass(frozen=True)
class ReportEvent:
    """An event of another part (capture, monitoring) to publish on the device's event stream."""

    kind: str
    name: str | None = None
    version: int | None = None
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PublishDue:
    """Something the state shows changed: republish (once, however many were queued)."""


@dataclass(frozen=True)
class Stop:
    """The service is stopping."""


QueueItem = LinkUp | LinkDown | MessageWaiting | MessagesDropped | ReportEvent | PublishDue | Stop | NetworkEvent


def clock_is_trusted(setting: str) -> bool:
    """``yes``/``no``, or ``auto``: systemd-timesyncd has synchronised the clock since boot."""
    if setting == "yes":
        return True
    if setting == "no":
        return False
    return TIMESYNC_FLAG.exists()


class UpdateService:
    """The update threads of one device; :meth:`start` returns at once, :meth:`stop` joins."""

    def __init__(
        self,
        cfg: Config,
        store: ModelStore,
        device_id: str,
        wake: Callable[[], None] = lambda: None,
        *,
        selftest_in_process: bool = False,
        monitoring: Monitoring | None = None,
        selftest: Callable[[Resolved], None] | None = None,
    ) -> None:
        if cfg.mqtt is None:
            raise ConfigError("updates need an [mqtt] table in the configuration")
        m = cfg.mqtt
        check_mqtt_config(m)
        check_id(device_id, "device id")
        self.cfg = cfg
        self.store = store
        self.device_id = device_id
        self.topics = Topics(m.prefix, m.fleet)
        state_dir = updates_state_dir(m, store.path)
        self.settings = UpdaterSettings(
            device_id=device_id,
            topics=self.topics,
            state_dir=state_dir,
            staging_dir=Path(m.staging_dir) if m.staging_dir else state_dir / "staging",
            machine=platform.machine(),
            max_download_bytes=m.max_download_bytes,
            window_chunks=m.download_window_chunks,
            stall_s=m.download_stall_s,
            activation_timeout_s=m.activation_timeout_s,
            max_download_bytes_per_s=m.max_download_bytes_per_s,
            max_events=m.max_event_queue,
            **policy_settings(cfg.updates),
        )
        self._queue: queue.Queue[QueueItem] = queue.Queue()
        # Control messages waiting for edge-updates, newest per topic: a flood on one topic
        # holds one payload, not every one the broker delivers faster than they are verified.
        self._waiting: dict[str, tuple[Topic, bytes]] = {}
        self._waiting_lock = threading.Lock()
        self._stop = threading.Event()
        self.link = MqttLink(
            LinkSettings(
                broker=m,  # [mqtt] holds the BrokerOptions fields
                client_id=m.client_id or f"edge-{m.fleet}-{device_id}",
                keepalive_s=m.keepalive_s,
                persistent=True,
                session_expiry_s=m.session_expiry_s,
                receive_maximum=m.receive_maximum,
                will_topic=self.topics.online(device_id),
                will_payload=b"false",
                max_message_bytes=m.max_message_bytes,
            ),
            self._on_message,
            on_refused=lambda filters, reason: self._queue.put(SubscriptionRefused(filters, reason)),
            on_dropped=self._on_dropped,
        )
        self.updater = Updater(
            self.settings,
            store,
            self.link,
            wake=wake,
            # In-process: ``selftest`` (the simulator's, with a device's faults) or the real one
            # (every variant of a several-variant version tried and timed, see store/variants.py).
            selftest=(selftest or install_selftest(store, cfg.model, cfg.inference)) if selftest_in_process else None,
            clock_trusted=lambda: clock_is_trusted(m.trusted_clock),
            post=self._queue.put,
            amend_state=self._amend_state,
        )
        self.monitoring = monitoring
        self._capture: CaptureResponder | None = None  # built by the first capture request (see `capture`)
        if monitoring is not None:
            monitoring.subscribe(lambda kind, name, version, fields: self._queue.put(ReportEvent(kind, name, version, fields)))
        self._state_interval_s = cfg.monitoring.state_interval_s
        self._health_interval_s = cfg.monitoring.health_interval_s
        self._next_state = 0.0
        self._last_drift: Any = None
        # Republishing: a change the daemon reported, or a store signature other than the one
        # the last published document was built from.
        self._publish_due = threading.Event()
        self._published_signature: Any = None
        self._next_store_poll = 0.0
        # last_error: the serving versions when it was first published (see error_is_stale).
        self._error_seen: tuple[Any, dict[str, int | None]] | None = None
        # Health: the newest reading and when to read again.
        self.health_root = Path("/")
        self._vcgencmd = health.default_vcgencmd()
        self._health: health.Health | None = None
        self._published_health: health.Health | None = None
        self._next_health = 0.0
        # Oversized MQTT messages dropped (counted on the network thread, reported as events).
        self._dropped_lock = threading.Lock()
        self._dropped_total = 0
        self._dropped_unreported = 0
        self._dropped_last_bytes = 0
        self._updates_thread = threading.Thread(target=self._updates_main, name="edge-updates", daemon=True)
        self._network_thread = threading.Thread(target=self._network_main, name="edge-mqtt", daemon=True)
        self.loaded = threading.Event()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> UpdateService:
        """Start the threads; returns at once."""
        self._updates_thread.start()
        return self

    @property
    def capture(self) -> CaptureResponder:
        """The capture-upload responder, built (and its module imported) on first use.

        A device that is never asked for its captured traffic does not hold the responder,
        its module nor its nonce book in memory (docs/updates.md, "Memory: what the client
        loads").
        """
        if self._capture is None:
            from edge_runtime.updates.capture import CaptureResponder
            from edge_runtime.updates.nonces import NONCES_FILE

            m, monitoring = self.cfg.mqtt, self.monitoring
            assert m is not None
            self._capture = CaptureResponder(
                self.topics, self.device_id, lambda: self.store.root, self.link,
                capture_dir=monitoring.capture_dir if monitoring is not None else None,
                seal=monitoring.seal_all if monitoring is not None else (lambda: None),
                max_kbps=self.cfg.monitoring.capture_max_kbps,
                clock_trusted=lambda: clock_is_trusted(m.trusted_clock),
                on_done=lambda kind, fields: self._queue.put(ReportEvent(kind, fields=fields)),
                nonce_file=self.settings.state_dir / NONCES_FILE,
            )
        return self._capture

    def stop(self, timeout_s: float = 10.0) -> None:
        """Say ``online: false``, disconnect (the session stays on the broker) and join the threads."""
        self._stop.set()
        if self._capture is not None:
            self._capture.stop()
        self._queue.put(Stop())
        self.link.wakeup()
        for t in (self._updates_thread, self._network_thread):
            if t.is_alive():
                t.join(timeout_s)

    def state_changed(self) -> None:
        """Something the state shows changed (the daemon's serving callback): republish now."""
        self._publish_due.set()
        self._queue.put(PublishDue())

    def reconfigure(self, cfg: Config) -> None:
        """SIGHUP: apply what applies live (``[monitoring] state_interval_s`` and ``health_interval_s``)."""
        self._state_interval_s = cfg.monitoring.state_interval_s
        self._health_interval_s = cfg.monitoring.health_interval_s
        self._next_state = 0.0
        self._next_health = 0.0
        self._queue.put(PublishDue())

    @property
    def dropped_messages(self) -> int:
        """Messages over ``[mqtt] max_message_bytes`` discarded on arrival so far."""
        with self._dropped_lock:
            return self._dropped_total

    # -- threads -------------------------------------------------------------------------

    def _updates_main(self) -> None:
        try:
            self.store.root = load_trust_root(self.store.root, self.settings.state_dir)
            self.updater.load()
        except OSError as exc:  # e.g. a read-only or full store: reported, not a traceback
            self.store.write_fault = f"cannot load or create the update state: {exc.strerror or exc}"
            log.error("update state could not be loaded (%s); starting without it", exc)
        except Exception:  # the updater must never take the daemon down
            log.exception("update state could not be loaded; starting without it")
        self.loaded.set()
        self._network_thread.start()
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=self.updater.tick_interval_s())
            except queue.Empty:
                item = None
            try:
                if item is not None:
                    self._dispatch(item)
                self.updater.tick()
                self._refresh_drift()
                self._watch()
            except TransportError as exc:
                log.info("update step deferred, broker unavailable: %s", exc)
            except Exception:
                log.exception("update step failed")

    def _dispatch(self, item: QueueItem) -> None:
        match item:
            case LinkUp(session_present=session_present):
                log.info("connected to %s (session %s)", self.link.settings.safe_url, "resumed" if session_present else "new")
                self.updater.on_connect(session_present)
                self.link.subscribe([self.topics.capture_request(self.device_id)])
            case LinkDown(reason=reason):
                log.warning("disconnected from %s: %s", self.link.settings.safe_url, reason)
            case MessageWaiting(topic=topic):
                with self._waiting_lock:
                    ref, payload = self._waiting.pop(topic)
                if isinstance(ref, CaptureRequestTopic):
                    if ref.device == self.device_id:
                        self.capture.on_request(payload)
                else:
                    self.updater.on_message(ref, payload)
            case MessagesDropped(topic=topic):
                with self._dropped_lock:
                    count, self._dropped_unreported = self._dropped_unreported, 0
                    total, size = self._dropped_total, self._dropped_last_bytes
                assert self.cfg.mqtt is not None
                self.updater.reporter.event(
                    "message_dropped", None, None, topic=topic, count=count, total=total, bytes=size,
                    reason=f"larger than [mqtt] max_message_bytes ({self.cfg.mqtt.max_message_bytes})",
                )
            case ReportEvent(kind=kind, name=name, version=version, fields=fields):
                self.updater.reporter.event(kind, name, version, **fields)
                if kind.startswith("drift"):
                    self.updater.publish_state()
            case PublishDue():
                self._publish_due.set()  # handled by _watch, once however many were queued
            case Stop():
                pass
            case _:  # every network-thread event (a dropped DownloadFailed would leave the job stalled)
                self.updater.on_internal(item)

    def _watch(self) -> None:
        """Republish the state when the daemon said so or the store changed; read the health when due."""
        now = time.monotonic()
        if now >= self._next_health:
            self._next_health = now + self._health_interval_s
            self._sample_health()
        if now >= self._next_store_poll:
            self._next_store_poll = now + STORE_POLL_S
            if self._store_signature() != self._published_signature:
                self._publish_due.set()
        if self._publish_due.is_set() and self.link.connected:
            self._publish_due.clear()
            self.updater.publish_state()

    def _store_signature(self) -> Any:
        try:
            return self.store.signature(self.store.models())
        except Exception:  # an unreadable store: the state document says so; keep watching
            return None

    def _sample_health(self) -> None:
        reading = health.read_health(self.store.path, self.health_root, self._vcgencmd)
        started = health.alert_started(self._health, reading)
        self._health = reading
        if started:
            self.updater.reporter.event(
                "health_alert", None, None, started=started, throttle_flags=reading.throttle_flags,
                cpu_temp_c=reading.cpu_temp_c,
            )
            self._publish_due.set()

    def _on_dropped(self, topic: str, size: int) -> None:
        """A message over the size cap was discarded (network thread): count it, report it once queued."""
        with self._dropped_lock:
            self._dropped_total += 1
            self._dropped_unreported += 1
            self._dropped_last_bytes = size
            first = self._dropped_unreported == 1
        if first:  # one event carries every drop until it is handled: a flood is one event
            self._queue.put(MessagesDropped(topic[:MAX_TOPIC_SHOWN]))

    def _amend_state(self, doc: dict[str, Any]) -> None:
        """Health, the stale-error rule, dropped messages and each model's drift in the state document."""
        self._published_signature = self._store_signature()
        if self._health is None:
            self._sample_health()
        assert self._health is not None
        self._published_health = self._health
        doc["health"] = self._health.to_json()
        doc["dropped_messages"] = self.dropped_messages
        self._clear_stale_error(doc)
        if self.monitoring is None:
            return
        models = doc.setdefault("models", {})
        serving = {n: m.get("serving") for n, m in models.items() if isinstance(m, dict)}
        summary = self.monitoring.summary(serving)  # the drift of the version that answers
        self._last_drift = {k: (v.get("score"), v.get("alert")) for k, v in summary.items()}
        for name, drift in summary.items():
            entry = models.setdefault(name, {})
            if isinstance(entry, dict):
                entry["drift"] = drift

    def _clear_stale_error(self, doc: dict[str, Any]) -> None:
        """Leave ``last_error`` out once its model serves a newer version (docs/updates.md)."""
        last = doc.get("last_error")
        models = doc.get("models") if isinstance(doc.get("models"), dict) else {}
        assert isinstance(models, dict)
        if not isinstance(last, dict):
            self._error_seen = None
            return
        key = (last.get("time"), last.get("model"), last.get("version"), last.get("reason"))
        if self._error_seen is None or self._error_seen[0] != key:
            self._error_seen = (key, serving_versions(models))
        if error_is_stale(last, models, self._error_seen[1]):
            doc["last_error"] = None
            if self.updater.last_error is last:
                self.updater.last_error = None
            self._error_seen = None

    def _refresh_drift(self) -> None:
        """Re-publish the state every ``state_interval_s`` while the drift figures or the health change."""
        if time.monotonic() < self._next_state:
            return
        self._next_state = time.monotonic() + self._state_interval_s
        if self.monitoring is not None:
            current = {k: (v.get("score"), v.get("alert")) for k, v in self.monitoring.summary().items()}
            if current != self._last_drift:
                self._publish_due.set()
        if self._health != self._published_health:
            self._publish_due.set()

    def _on_message(self, msg: Message) -> None:
        ref = self.topics.parse(msg.topic)
        if ref is None:
            return
        if isinstance(ref, ChunkTopic):
            self.updater.on_chunk(ref, msg.payload)
        else:
            with self._waiting_lock:
                queued = msg.topic in self._waiting
                self._waiting[msg.topic] = (ref, msg.payload)  # a retained topic: only the newest counts
            if not queued:
                self._queue.put(MessageWaiting(msg.topic))

    def _network_main(self) -> None:
        m = self.cfg.mqtt
        assert m is not None
        backoff = Backoff(m.reconnect_min_s, m.reconnect_max_s)
        failures = 0
        while not self._stop.is_set():
            try:
                session_present = self.link.connect(m.connect_timeout_s)
            except TransportError as exc:
                failures += 1
                (log.warning if failures == 1 else log.debug)("broker unavailable, retrying: %s", exc)
                self._stop.wait(backoff.next())
                continue
            failures = 0
            backoff.reset()
            self._queue.put(LinkUp(session_present))
            reason = self.link.run(self._stop)
            if self._stop.is_set():
                break
            self._queue.put(LinkDown(str(reason)))
            self._stop.wait(backoff.next())
        if self.link.connected:
            try:
                sent = self.link.publish(self.topics.online(self.device_id), b"false", retain=True)
                self.link.pump(lambda: sent.done, 2.0)
            except TransportError:
                pass
        self.link.close()


def start_updates(cfg: Config, store: ModelStore, device_id: str, wake: Callable[[], None],
                  monitoring: Monitoring | None = None) -> UpdateService:
    """Start following signed updates for this device (the daemon calls this when ``[mqtt]`` is set).

    Returns at once; ``svc.stop()`` on shutdown. The daemon runs the self-test when it swaps.
    """
    return UpdateService(cfg, store, device_id, wake, monitoring=monitoring).start()


__all__ = ["UpdateService", "check_mqtt_config", "clock_is_trusted", "start_updates"]
