"""The daemon: wires the HTTP API, the model manager, MQTT updates and systemd together.

Start-up order: bind the socket, start answering HTTP (``/v2/health/live`` is 200 at
once, ``/v2/health/ready`` 503 until the models are in) and, when ``[server] grpc_port``
is set and the ``grpc`` extra is installed, KServe v2 gRPC on the same event loop; load
every model, then tell systemd ``READY=1`` and start the watchdog and the update client.
Signals:

* SIGTERM / SIGINT: ``STOPPING=1``, stop accepting connections, let in-flight requests
  finish (up to ``[server] drain_timeout_s``), drain the model queues, exit 0.
* SIGHUP: re-read the config file and apply the serving part (batching, traffic, shadow,
  version policy, instances) and ``[monitoring] state_interval_s``/``health_interval_s``
  without dropping a request. Every other changed key (host, port, store, trust, ``[mqtt]``,
  ...) needs a restart, and a warning names each one (:mod:`edge_runtime.reload`); a config
  that does not parse is logged and ignored.

Every serving change (start-up, swap, fallback, a failed version) is handed to the update
client at once (``state_changed``), so the retained device state follows within a second.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_runtime import health, systemd
from edge_runtime.config import Config, check_topic_level, device_id
from edge_runtime.exceptions import ConfigError
from edge_runtime.monitoring.hub import Monitoring
from edge_runtime.reload import applied_live, restart_needed, unknown_models
from edge_runtime.serving.app import App, ServingState
from edge_runtime.serving.h1 import H1Server, Limits
from edge_runtime.serving.hooks import warn_if_enabled
from edge_runtime.serving.manager import ModelManager
from edge_runtime.serving.metrics import Metrics
from edge_runtime.store.store import ModelStore

log = logging.getLogger("edge_runtime.daemon")


def _tune_gc() -> None:
    """Keep the cyclic garbage collector off the request path.

    Requests allocate many short-lived objects that reference counting frees; none form
    cycles, so frequent generation-0 passes are pure overhead, and a full pass over the
    ~10^5 objects of numpy and the models stalls the loop for milliseconds.
    Freezing what start-up created and collecting young objects less often keeps
    latency tails short; cycles are still collected.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def _seconds_since_process_start() -> float | None:
    """Wall time since this process was started (Linux /proc), for the start-up log line."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def bind_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket for the API (port 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


FD_RESERVE = 64  # descriptors kept for model files, MQTT, logs and the store beside HTTP connections


def connection_cap(max_connections: int) -> int:
    """``max_connections``, lowered to leave :data:`FD_RESERVE` descriptors under RLIMIT_NOFILE."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or max_connections + FD_RESERVE <= soft:
        return max_connections
    cap = max(1, soft - FD_RESERVE)
    log.warning("[server] max_connections %d does not fit the open-file limit %d: using %d "
                "(raise LimitNOFILE)", max_connections, soft, cap)
    return cap


def _http_server(app: App, cfg: Config) -> H1Server:
    limits = Limits.of(cfg.server, connection_cap(cfg.server.max_connections))
    return H1Server(app, limits, direct_infer=app.infer_direct)


class Daemon:
    """One running edge-runtime daemon."""

    def __init__(self, cfg: Config, store: ModelStore, reload_config: Callable[[], Config] | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.reload_config = reload_config
        mon = cfg.monitoring
        self.monitoring = Monitoring(Path(mon.capture_dir) if mon.capture_dir else store.path / ".capture",
                                     min_free_bytes=int(mon.min_free_mb * 1024 * 1024))
        self.metrics = Metrics(self.monitoring, lambda: health.read_health(store.path))
        self.state = ServingState()
        self.address: tuple[str, int] | None = None
        self.ready_event = threading.Event()
        self.manager: ModelManager | None = None
        self.updates: Any = None  # the UpdateService once started ([mqtt] set)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    # -- thread-safe controls ----------------------------------------------------------

    def stop(self) -> None:
        """Ask the daemon to drain and exit (from any thread)."""
        loop, ev = self._loop, self._stop
        if loop is not None and ev is not None:
            try:
                loop.call_soon_threadsafe(ev.set)
            except RuntimeError:  # loop already closed
                pass

    def wake(self) -> None:
        """Make the model manager look at the store now (from any thread)."""
        if self.manager is not None:
            self.manager.wake()

    def reload(self) -> None:
        """Re-read the config file and apply its serving part (SIGHUP)."""
        if self.reload_config is None or self.manager is None:
            log.warning("SIGHUP: no config file to reload")
            return
        try:
            cfg = self.reload_config()
        except ConfigError as exc:
            log.error("SIGHUP: config not reloaded, keeping the running one: %s", exc)
            return
        for key in restart_needed(self.cfg, cfg):
            log.warning("SIGHUP: %s; it takes effect after a restart", key)
        live = applied_live(self.cfg, cfg)
        if self.updates is not None:
            self.updates.reconfigure(cfg)
        self.cfg = cfg
        self.manager.reload(cfg)
        self._warn_unknown_models()
        log.info("SIGHUP: serving config reloaded from %s%s", cfg.source or "defaults",
                 f" (applied: {', '.join(live)})" if live else "")

    def _warn_unknown_models(self) -> None:
        """A ``[models.X]`` table for a model that is not installed is most likely a typo."""
        try:
            installed = self.store.models()
        except OSError:
            return
        for name in unknown_models(self.cfg, installed):
            log.warning("[models.%s]: no model %r is installed or in the factory directory; its settings "
                        "apply once it is installed", name, name)

    @property
    def url(self) -> str:
        """``http://host:port`` of the API (once bound)."""
        assert self.address is not None
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    # -- the main coroutine ------------------------------------------------------------

    async def serve(self, *, handle_signals: bool = False, sock: socket.socket | None = None) -> None:
        """Run until :meth:`stop` (or SIGTERM when ``handle_signals``), then drain and return."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop = asyncio.Event()
        if self.cfg.mqtt is not None:  # the id from /etc/machine-id, before anything listens
            check_topic_level(device_id(self.cfg), "device.id (from /etc/machine-id)")
        sock = sock or bind_socket(self.cfg.server.host, self.cfg.server.port)
        self.address = tuple(sock.getsockname()[:2])  # type: ignore[assignment]
        self.manager = manager = ModelManager(self.store, self.cfg, self.metrics, loop, self._serving_changed,
                                              monitoring=self.monitoring)
        app = App(manager, self.metrics, self.state, self.cfg.server.max_request_bytes,
                  max_json_values=self.cfg.server.max_json_values)
        server = _http_server(app, self.cfg)
        await server.start(sock)
        log.info("listening on %s", self.url)
        warn_if_enabled()
        if handle_signals:
            self._install_signals(loop)
        updates = watchdog = grpc_endpoint = None
        try:
            grpc_endpoint = await self._start_grpc(app)
            await loop.run_in_executor(None, manager.start)
            self._serving_changed(manager.serving())
            self._warn_unknown_models()
            _tune_gc()
            systemd.ready(self._status_text())
            watchdog = self._start_watchdog(loop)
            updates = self.updates = self._start_updates()
            if updates is not None and getattr(updates, "updater", None) is not None:
                self.metrics.update_traffic = updates.updater.traffic.releases  # edge_update_downloaded_bytes_total
            self.ready_event.set()
            since = _seconds_since_process_start()
            problems = self.state.reasons
            log.log(
                logging.WARNING if problems else logging.INFO,
                "ready: %d model(s) served%s%s", sum(v is not None for v in manager.serving().values()),
                "" if since is None else f", {since:.3f} s after the process started",
                "; not serving: " + "; ".join(f"{n}: {p}" for n, p in sorted(problems.items())) if problems else "",
            )
            await self._stop.wait()
        finally:
            self.state.draining = True
            systemd.stopping()
            log.info("draining in-flight requests")
            grpc_stop = None
            if grpc_endpoint is not None:  # refuses new RPCs, lets running ones finish, alongside HTTP
                grpc_stop = loop.create_task(grpc_endpoint.stop(self.cfg.server.drain_timeout_s), name="edge-grpc-stop")
            await server.stop(self.cfg.server.drain_timeout_s)
            if grpc_stop is not None:
                await grpc_stop
            if updates is not None:
                await loop.run_in_executor(None, updates.stop)
            await loop.run_in_executor(None, manager.stop, self.cfg.server.drain_timeout_s)
            await loop.run_in_executor(None, self.monitoring.stop)
            if watchdog is not None:
                watchdog.stop()
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    loop.remove_signal_handler(sig)
            log.info("stopped")

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._stop is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)

    def _serving_changed(self, serving: dict[str, int | None]) -> None:
        manager = self.manager
        ready = manager is not None and manager.initial_done.is_set() and not manager.problems()
        ready = ready and all(v is not None for v in serving.values())
        loading = manager is None or not manager.initial_done.is_set()
        reasons = {} if manager is None else manager.problems()
        if not loading:
            reasons.update({n: "no version loaded" for n, v in serving.items() if v is None and n not in reasons})
        self.state.reasons = reasons
        self.state.ready = ready
        if self.ready_event.is_set():
            systemd.status(self._status_text())
        if self.updates is not None:
            self.updates.state_changed()

    def _status_text(self) -> str:
        assert self.manager is not None
        text = systemd.status_line(self.manager.serving())
        problems = self.manager.problems()
        if problems:
            text += "; not serving: " + "; ".join(f"{n}: {p}" for n, p in sorted(problems.items()))
        if self.store.write_fault:
            text += f"; {self.store.write_fault}"
        return text

    def _start_watchdog(self, loop: asyncio.AbstractEventLoop) -> Any:
        interval = systemd.watchdog_interval_s()
        if interval is None:
            return None
        dog = systemd.Watchdog(systemd.event_loop_responsive(loop, timeout_s=max(0.2, min(5.0, interval / 2))))
        dog.start()
        return dog

    async def _start_grpc(self, app: App) -> Any:
        """Start the KServe v2 gRPC endpoint when ``[server] grpc_port`` is set; None when off."""
        port = self.cfg.server.grpc_port
        if port == 0:
            return None
        try:
            from edge_runtime.serving.grpc_server import GrpcEndpoint
        except ImportError as exc:
            log.warning(
                "[server] grpc_port is %d but gRPC is not available (%s); install the grpc extra. Serving HTTP only",
                port, exc,
            )
            return None
        from edge_runtime.serving.h2deadlines import Timeouts

        srv = self.cfg.server
        endpoint = GrpcEndpoint(app.cycle, self.state, srv.max_request_bytes, srv.max_header_bytes,
                                connection_cap(srv.max_connections),
                                Timeouts(srv.request_header_timeout_s, srv.request_body_timeout_s, srv.grpc_idle_timeout_s))
        bound = await endpoint.start(self.cfg.server.host, port)
        host = self.cfg.server.host
        log.info("gRPC (KServe v2) listening on %s", f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}")
        return endpoint

    def _start_updates(self) -> Any:
        if self.cfg.mqtt is None:
            return None
        try:
            from edge_runtime.updates.service import start_updates  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            log.warning("[mqtt] is configured but the update client is not available (%s); serving offline", exc)
            return None
        return start_updates(self.cfg, self.store, device_id(self.cfg), self.wake, self.monitoring)


def run(cfg: Config, store: ModelStore, reload_config: Callable[[], Config] | None = None) -> int:
    """Run the daemon in this process until SIGTERM; returns the exit code (0 after a clean drain)."""
    daemon = Daemon(cfg, store, reload_config)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is in the device extra
        asyncio.run(daemon.serve(handle_signals=True))
    else:
        uvloop.run(daemon.serve(handle_signals=True))
    return 0
