"""The console's web server: stdlib ``http.server``, one thread per request, read-only (GET/HEAD).

Routes: ``/`` (overview and device table: ``q``, ``sort``, ``desc``, ``page``),
``/device/<id>``, ``/release/<model>/<version>``, ``/static/console.{js,css}``,
``/api/overview`` (JSON counts and rollouts), ``/api/page?path=P&after=N`` (the ``<main>``
of page P as JSON, held up to ``hold_s`` until the record's change counter passes N: the
live update of ``console.js``) and ``/api/health``. ``?live=0`` on a page leaves out the
live updates (to print it, or to take a screenshot).

A stdlib server keeps the console free of web-framework dependencies; the pages are small
and the request rate is one operator's browser. Its bounds: at most ``max_connections``
connections are served at once, and a connection that sends nothing for ``read_timeout_s``
(before or between requests) is closed. When every slot is taken, a new connection takes the
slot of the one that has waited longest without sending a request (an idle socket, an idle
keep-alive), as nginx reuses idle keep-alive connections; only when every slot is busy with a
request is the new one answered 503 and closed, without a thread. So idle sockets can hold
neither threads nor file descriptors, nor keep the operator's browser out.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from edge_runtime.fleet.console import pages
from edge_runtime.fleet.console.limits import ConsoleLimits
from edge_runtime.fleet.console.overview import compute
from edge_runtime.fleet.console.record import Record

log = logging.getLogger("edge_runtime.fleet.console")

STATIC = {"console.js": "text/javascript; charset=utf-8", "console.css": "text/css; charset=utf-8"}
CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'"
MAX_PATH_CHARS = 2000
EVICT_WAIT_S = 2.0
BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\nRetry-After: 5\r\n\r\n"


class _BoundedServer(ThreadingHTTPServer):
    """A :class:`ThreadingHTTPServer` that serves at most ``max_connections`` at once."""

    daemon_threads = True
    request_queue_size = 128  # the listen backlog: a burst of connections is accepted (and refused) at once, not after SYN retries

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], max_connections: int) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        self._idle_lock = threading.Lock()
        self._idle: dict[socket.socket, float] = {}  # connections waiting for a request line -> since (monotonic)
        self.refused = 0
        self.evicted = 0
        super().__init__(address, handler)

    def mark_idle(self, conn: socket.socket, idle: bool) -> None:
        """A handler waits for (``True``) or has begun (``False``) a request on ``conn``."""
        with self._idle_lock:
            if idle:
                self._idle[conn] = time.monotonic()
            else:
                self._idle.pop(conn, None)

    def _evict_idle(self) -> bool:
        with self._idle_lock:
            if not self._idle:
                return False
            conn = min(self._idle, key=self._idle.__getitem__)
            del self._idle[conn]
        try:
            conn.shutdown(socket.SHUT_RDWR)  # its handler reads the end of the stream and frees the slot
        except OSError:
            pass
        self.evicted += 1
        return True

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False) and not (self._evict_idle() and self._slots.acquire(timeout=EVICT_WAIT_S)):
            self.refused += 1
            try:
                request.settimeout(0.5)
                request.sendall(BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


@dataclass(frozen=True)
class Rendered:
    """One page: HTTP status, title, the ``<main>`` HTML and the change it shows."""

    status: int
    title: str
    main: str
    change: int


class ConsoleServer:
    """Serves the pages of one record on ``host:port`` (port 0: any free one)."""

    def __init__(
        self, record: Record, fleet: str, host: str = "127.0.0.1", port: int = 8080, *,
        max_failures: float | None = None, hold_s: float = 20.0, limits: ConsoleLimits | None = None,
    ) -> None:
        self.record = record
        self.fleet = fleet
        self.max_failures = max_failures
        self.hold_s = hold_s
        self.limits = limits or record.limits
        self._httpd = _BoundedServer((host, port), _handler(self), self.limits.max_connections)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="console-http", daemon=True)
        self._waiting_lock = threading.Lock()
        self._waiting: dict[int, int] = {}  # change a held /api/page request waits to pass -> how many

    def waiting(self) -> dict[int, int]:
        """The held live-update requests, by the change they wait to pass (``/api/health``)."""
        with self._waiting_lock:
            return {k: v for k, v in self._waiting.items() if v}

    def hold(self, after: int) -> None:
        """Block until the record passes change ``after`` or ``hold_s`` ends (one live-update request)."""
        with self._waiting_lock:
            self._waiting[after] = self._waiting.get(after, 0) + 1
        try:
            self.record.wait_change(after, self.hold_s)
        finally:
            with self._waiting_lock:
                self._waiting[after] -= 1

    def health(self) -> dict[str, Any]:
        """``/api/health``: the change counter, the held requests, what the record and the server dropped."""
        c = self.record.counts()
        top = sorted(c.dropped_rate.items(), key=lambda kv: (-kv[1], kv[0]))[:20]
        return {
            "change": self.record.change,
            "waiting": {str(k): v for k, v in self.waiting().items()},
            "queue": {"messages": c.queued, "bytes": c.queued_bytes, "held": c.held},
            "dropped": {
                "queue_full": c.dropped_full, "rate_limited": sum(c.dropped_rate.values()), "at_close": c.dropped_at_close,
                "rate_limited_by_device": dict(top),
            },
            "replaced": c.replaced,
            "unreadable": self.record.unreadable,
            "lost": self.record.lost,
            "pruned_rows": self.record.pruned,
            "http_refused": self._httpd.refused,
            "http_idle_closed": self._httpd.evicted,
        }

    @property
    def url(self) -> str:
        """``http://host:port``."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> ConsoleServer:
        """Serve in a thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (if started) and close the socket."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(10.0)
        self._httpd.server_close()

    def render(self, target: str) -> Rendered:
        """The page at ``target`` (path and query)."""
        parsed = urllib.parse.urlsplit(target)
        args = {k: v[0] for k, v in urllib.parse.parse_qs(parsed.query).items()}
        parts = [urllib.parse.unquote(p) for p in parsed.path.strip("/").split("/")] if parsed.path.strip("/") else []
        now = self.record.now()
        clock = time.time()
        if not parts:
            ov = compute(now, self.max_failures)
            return Rendered(200, "overview", pages.overview_main(ov, now.devices, args, clock, self.record.counts()), now.change)
        if len(parts) == 2 and parts[0] == "device":
            d = self.record.device(parts[1])
            if d is None:
                return Rendered(404, "not found", pages.not_found_main(f"no device {parts[1]!r} has reported"), now.change)
            dropped = self.record.counts().dropped_rate.get(d.device, 0)
            return Rendered(200, f"device {d.device}", pages.device_main(d, self.record.history(d.device), clock, dropped), now.change)
        if len(parts) == 3 and parts[0] == "release" and parts[2].isdigit() and len(parts[2]) <= 19:
            model, version = parts[1], int(parts[2])
            ov = compute(now, self.max_failures)
            progress = next((r for r in ov.releases if r.model == model and r.version == version), None)
            hist = self.record.release(model, version)
            return Rendered(
                200, f"release {model} v{version}",
                pages.release_main(model, version, progress, now.devices, hist, self.max_failures), now.change,
            )
        return Rendered(404, "not found", pages.not_found_main(f"nothing at {parsed.path}"), now.change)


def _handler(console: ConsoleServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "edge-runtime-console"
        protocol_version = "HTTP/1.1"
        timeout = console.limits.read_timeout_s  # StreamRequestHandler: the socket's timeout, so an idle client is closed

        def handle_one_request(self) -> None:
            # Wait for the request's first byte as an idle connection, which a newcomer may evict.
            server = console._httpd
            server.mark_idle(self.connection, True)
            try:
                first = self.rfile.peek(1)  # type: ignore[attr-defined]  # a BufferedReader (rbufsize -1)
            except OSError:  # the read timeout, or a reset
                first = b""
            finally:
                server.mark_idle(self.connection, False)
            if not first:
                self.close_connection = True
                return
            super().handle_one_request()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
            log.debug("%s %s", self.address_string(), format % args)

        def _send(self, status: int, body: bytes, content_type: str, cache: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Security-Policy", CSP)
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Cache-Control", "max-age=300" if cache else "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, doc: Any) -> None:
            self._send(status, json.dumps(doc).encode(), "application/json")

        def do_HEAD(self) -> None:  # noqa: N802 - the stdlib's name
            self.do_GET()

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            if len(self.path) > MAX_PATH_CHARS:
                self._json(414, {"error": "address too long"})
                return
            parsed = urllib.parse.urlsplit(self.path)
            try:
                if parsed.path.startswith("/static/"):
                    self._static(parsed.path[len("/static/") :])
                elif parsed.path == "/api/health":
                    self._json(200, console.health())
                elif parsed.path == "/api/overview":
                    self._json(200, compute(console.record.now(), console.max_failures).as_json())
                elif parsed.path == "/api/page":
                    self._page_json(urllib.parse.parse_qs(parsed.query))
                else:
                    r = console.render(self.path)
                    live = urllib.parse.parse_qs(parsed.query).get("live", ["1"])[0] != "0"
                    doc = pages.layout(r.title, console.fleet, r.main, r.change, live)
                    self._send(r.status, doc.encode(), "text/html; charset=utf-8")
            except (BrokenPipeError, ConnectionResetError):
                pass
            except Exception:  # one bad page must not stop the console: log it, answer 500
                log.exception("console page %s failed", parsed.path[:200])
                self._json(500, {"error": "the console failed to render this page; see its log"})

        def _static(self, name: str) -> None:
            if name not in STATIC:
                self._json(404, {"error": "no such file"})
                return
            body = resources.files("edge_runtime.fleet.console").joinpath("static", name).read_bytes()
            self._send(200, body, STATIC[name], cache=True)

        def _page_json(self, query: dict[str, list[str]]) -> None:
            target = query.get("path", ["/"])[0]
            if not target.startswith("/") or target.startswith("/api/") or target.startswith("//"):
                self._json(400, {"error": "path must be a page of this console"})
                return
            try:
                after = int(query.get("after", ["-1"])[0])
            except ValueError:
                after = -1
            console.hold(after)
            r = console.render(target)
            self._json(200, {"change": r.change, "status": r.status, "main": r.main})

        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            self._json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "the console is read-only"})

        do_PUT = do_DELETE = do_PATCH = do_POST  # noqa: N815

    return Handler


__all__ = ["ConsoleServer", "Rendered"]
