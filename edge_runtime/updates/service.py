"""The device side of the update protocol as two threads beside the daemon.

``edge-mqtt`` owns the connection: one attempt at a time, jittered exponential backoff
between attempts, forever. Chunks are handled on this thread (written before they are
acknowledged); every other message is queued for ``edge-updates``, which runs the
:class:`~edge_runtime.updates.updater.Updater` and its timers. Serving never waits on
either thread: the daemon learns about a new version only through the store and ``wake``.

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
from pathlib import Path
from typing import Any

from edge_runtime.config import Config, check_mqtt_config
from edge_runtime.exceptions import ConfigError, TransportError
from edge_runtime.inference.selftest import selftest_version
from edge_runtime.monitoring.hub import Monitoring
from edge_runtime.store.store import ModelStore
from edge_runtime.updates.capture import CaptureResponder
from edge_runtime.updates.job import SubscriptionRefused
from edge_runtime.updates.mqtt import Backoff, LinkSettings, Message, MqttLink
from edge_runtime.updates.policy import policy_settings
from edge_runtime.updates.protocol import Topics, check_id
from edge_runtime.updates.roots import load_trust_root, updates_state_dir
from edge_runtime.updates.updater import Updater, UpdaterSettings

log = logging.getLogger("edge_runtime.updates")

TIMESYNC_FLAG = Path("/run/systemd/timesync/synchronized")


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
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue()
        # Control messages waiting for edge-updates, newest per topic: a flood on one topic
        # holds one payload, not every one the broker delivers faster than they are verified.
        self._waiting: dict[str, tuple[Any, bytes]] = {}
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
            ),
            self._on_message,
            on_refused=lambda filters, reason: self._queue.put(("updater", SubscriptionRefused(filters, reason))),
        )
        self.updater = Updater(
            self.settings,
            store,
            self.link,
            wake=wake,
            selftest=selftest_version if selftest_in_process else None,
            clock_trusted=lambda: clock_is_trusted(m.trusted_clock),
            post=lambda event: self._queue.put(("updater", event)),
        )
        self.monitoring = monitoring
        self.updater.amend_state = self._amend_state
        self.capture = CaptureResponder(
            self.topics, device_id, lambda: self.store.root, self.link,
            capture_dir=monitoring.capture_dir if monitoring is not None else None,
            seal=monitoring.seal_all if monitoring is not None else (lambda: None),
            max_kbps=cfg.monitoring.capture_max_kbps,
            clock_trusted=lambda: clock_is_trusted(m.trusted_clock),
            on_done=lambda kind, fields: self._queue.put(("event", (kind, None, None, fields))),
        )
        if monitoring is not None:
            monitoring.subscribe(lambda kind, name, version, fields: self._queue.put(("event", (kind, name, version, fields))))
        self._state_interval_s = cfg.monitoring.state_interval_s
        self._next_state = 0.0
        self._last_drift: Any = None
        self._updates_thread = threading.Thread(target=self._updates_main, name="edge-updates", daemon=True)
        self._network_thread = threading.Thread(target=self._network_main, name="edge-mqtt", daemon=True)
        self.loaded = threading.Event()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> UpdateService:
        """Start the threads; returns at once."""
        self._updates_thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Say ``online: false``, disconnect (the session stays on the broker) and join the threads."""
        self._stop.set()
        self.capture.stop()
        self._queue.put(("stop", None))
        self.link.wakeup()
        for t in (self._updates_thread, self._network_thread):
            if t.is_alive():
                t.join(timeout_s)

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
            except TransportError as exc:
                log.info("update step deferred, broker unavailable: %s", exc)
            except Exception:
                log.exception("update step failed")

    def _dispatch(self, item: tuple[str, Any]) -> None:
        kind, value = item
        if kind == "connected":
            log.info("connected to %s (session %s)", self.link.settings.safe_url, "resumed" if value else "new")
            self.updater.on_connect(bool(value))
            self.link.subscribe([self.topics.capture_request(self.device_id)])
        elif kind == "disconnected":
            log.warning("disconnected from %s: %s", self.link.settings.safe_url, value)
        elif kind == "message":
            with self._waiting_lock:
                ref, payload = self._waiting.pop(value)
            if ref.kind == "capture_request":
                if ref.device == self.device_id:
                    self.capture.on_request(payload)
            else:
                self.updater.on_message(ref, payload)
        elif kind == "event":
            ev_kind, name, version, fields = value
            self.updater.reporter.event(ev_kind, name, version, **fields)
            if ev_kind.startswith("drift"):
                self.updater.publish_state()
        elif kind == "updater":  # every UpdaterEvent (a dropped DownloadFailed would leave the job stalled)
            self.updater.on_internal(value)

    def _amend_state(self, doc: dict[str, Any]) -> None:
        """Each model's drift (and capture ring) in the state document."""
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

    def _refresh_drift(self) -> None:
        """Re-publish the state every ``state_interval_s`` while the drift figures change."""
        if self.monitoring is None or time.monotonic() < self._next_state:
            return
        self._next_state = time.monotonic() + self._state_interval_s
        current = {k: (v.get("score"), v.get("alert")) for k, v in self.monitoring.summary().items()}
        if current != self._last_drift:
            self.updater.publish_state()

    def _on_message(self, msg: Message) -> None:
        ref = self.topics.parse(msg.topic)
        if ref is None:
            return
        if ref.kind == "chunk":
            self.updater.on_chunk(ref, msg.payload)
        else:
            with self._waiting_lock:
                queued = msg.topic in self._waiting
                self._waiting[msg.topic] = (ref, msg.payload)  # a retained topic: only the newest counts
            if not queued:
                self._queue.put(("message", msg.topic))

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
            self._queue.put(("connected", session_present))
            reason = self.link.run(self._stop)
            if self._stop.is_set():
                break
            self._queue.put(("disconnected", reason))
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
