"""The daemon's HTTP/1.1 server: an asyncio protocol on httptools (llhttp), no ASGI server under it.

**Why our own.** An infer request of a small model was mostly HTTP machinery: uvicorn's
request cycle, an ASGI task, ``receive``/``send`` coroutines, an ``asyncio.Event`` and, for a
body over 64 kB, a flow-control pause and resume (two ``epoll_ctl`` calls and an extra loop
round) per request. Measured side by side on sockets (bench/serve.py), a raw protocol spent
50-90 µs less per 110 kB image request and half the CPU per MLP request. The parsing is still
llhttp's (no hand-written HTTP parsing); this module only keeps the connection's state.

**Requests.** The whole body is read (at most ``max_request_bytes``; a larger declared body
is answered 413 at once and what follows of it is read and dropped, as are the bytes of a
chunked body past the limit) and held as httptools hands it over: a body that arrives in one
piece is that piece, with no copy; one that arrives in pieces is gathered into one buffer that
grows as they come (in place: ``realloc``, ``mremap`` for large ones), so a client holds no
more memory than it has sent, whatever it declares. Then:

* ``POST /v2/models/{m}[/versions/{v}]/infer`` without ``Content-Encoding`` goes to
  :meth:`~edge_runtime.serving.app.App.infer_direct`, which answers through a callback (now
  for an inline executor, or when the queued request is done);
* everything else goes to the app as ASGI, with the body already read: ``receive`` returns it
  in one message, ``send`` writes the answer.

Answers are written in order (pipelined requests wait for the one before them; reading is
paused while one waits) and in one piece, at the end of the event-loop turn, so that the
answers of several connections in one turn go out together (writing each at once cost the MLP
20 µs more CPU per request at 16 clients); a connection alone in the server writes at once. ``Connection: close``, HTTP/1.0 without keep-alive
and ``Expect: 100-continue`` behave as HTTP/1.1 says. A client that half-closes its socket
after its request (``shutdown(SHUT_WR)``) still gets its answer, then the connection closes.

**Limits** (``[server]``): ``max_header_bytes`` (request line and headers, counted as they
arrive; 400, then what the client still sends is read and dropped for up to :data:`LINGER_S`
so that it sees the answer), ``request_header_timeout_s`` (from the connection's opening or
a later request's first byte; 408, or a silent close for a connection that sent nothing),
``request_body_timeout_s`` (from the end of the headers; 408), ``keep_alive_s`` (an idle
connection is closed), ``max_connections`` (503 at once and closed). The clocks are checked
by one sweep for the whole server every :data:`TICK_S` at most (a fraction of the shortest
limit), not by a timer per request.
"""

from __future__ import annotations

import asyncio
import http
import logging
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httptools
import orjson

from edge_runtime.config import ServerConfig

log = logging.getLogger(__name__)

TICK_S = 0.25  # the sweep of the clocks, at most (shorter when a limit is shorter)
LINGER_S = 5.0  # after refusing a request's head: how long what the client still sends is dropped
REFUSAL_LOG_INTERVAL_S = 10.0  # refused connections are logged at most this often

Answer = Callable[[int, list[tuple[bytes, bytes]], bytes], None]
DirectInfer = Callable[[str, list[tuple[bytes, bytes]], "bytes | bytearray", int, Answer], None]
Asgi = Callable[[dict[str, Any], Any, Any], Any]

_STATUS = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode("ascii")) for s in http.HTTPStatus}


def status_line(status: int) -> bytes:
    line = _STATUS.get(status)
    return line if line is not None else b"HTTP/1.1 %d \r\n" % status


def answer_bytes(status: int, headers: list[tuple[bytes, bytes]], payload: bytes, *, keep_alive: bool,
                 head: bool = False) -> bytes:
    """One whole HTTP/1.1 answer: status line, headers (``Content-Length`` added when missing,
    ``Connection: close`` unless ``keep_alive``) and, unless ``head``, the payload."""
    parts = [status_line(status)]
    has_length = False
    for name, value in headers:
        if name == b"content-length":
            has_length = True
        parts += (name, b": ", value, b"\r\n")
    if not has_length:
        parts += (b"content-length: ", b"%d" % len(payload), b"\r\n")
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    if not head:
        parts.append(payload)
    return b"".join(parts)


@dataclass(frozen=True)
class Limits:
    """``[server]``'s limits for HTTP (see the module docstring); the defaults are its defaults."""

    max_header_bytes: int = ServerConfig.max_header_bytes
    header_timeout_s: float = ServerConfig.request_header_timeout_s
    body_timeout_s: float = ServerConfig.request_body_timeout_s
    keep_alive_s: float = ServerConfig.keep_alive_s
    max_connections: int = ServerConfig.max_connections
    max_request_bytes: int = ServerConfig.max_request_bytes

    @classmethod
    def of(cls, srv: ServerConfig, max_connections: int) -> Limits:
        """``[server]``'s limits, with ``max_connections`` as the daemon caps it under the open-file limit."""
        return cls(max_header_bytes=srv.max_header_bytes, header_timeout_s=srv.request_header_timeout_s,
                   body_timeout_s=srv.request_body_timeout_s, keep_alive_s=srv.keep_alive_s,
                   max_connections=max_connections, max_request_bytes=srv.max_request_bytes)


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop httptools at a head over ``max_header_bytes``."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


class _Request:
    """One request from its first byte to its answer."""

    __slots__ = ("url", "headers", "method", "declared", "chunked", "encoded", "expect", "keep_alive",
                 "body", "size", "too_large", "complete", "answered", "t0")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.method = b""
        self.declared = -1  # Content-Length, -1 when absent
        self.chunked = False
        self.encoded = False  # Content-Encoding other than identity
        self.expect = False  # Expect: 100-continue
        self.keep_alive = True
        self.body: bytes | bytearray = b""
        self.size = 0  # body bytes received
        self.too_large = False
        self.complete = False
        self.answered = False
        self.t0 = 0


class H1Server:
    """The listening socket, its connections and the sweep of their clocks."""

    def __init__(self, app: Asgi, limits: Limits, direct_infer: DirectInfer | None = None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.app = app
        self.limits = limits
        self.direct_infer = direct_infer
        self.connections: set[H1Protocol] = set()
        self.tasks: set[asyncio.Task[None]] = set()  # ASGI requests being answered
        self.refused = [0, -1e9]  # connections refused over max_connections, when last logged
        self.started = False
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._dirty: list[H1Protocol] = []  # connections with answers to write at the end of this turn
        self.loop = loop
        shortest = min(limits.header_timeout_s, limits.body_timeout_s, limits.keep_alive_s)
        self.tick_s = max(0.01, min(TICK_S, shortest / 4))

    async def start(self, sock: Any) -> None:
        """Serve on the bound socket ``sock``."""
        loop = self.loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: H1Protocol(self), sock=sock, backlog=1024)
        self._sweeper = loop.create_task(self._sweep(), name="edge-http-clocks")
        self.started = True

    async def stop(self, timeout_s: float) -> None:
        """Stop accepting; let requests in flight be answered for up to ``timeout_s``, then close all."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.shutdown()
        deadline = time.monotonic() + timeout_s
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.started = False

    def mark_dirty(self, conn: H1Protocol) -> None:
        """``conn`` has answers to write: write them (all connections' together) at the end of the turn."""
        if not self._dirty:
            assert self.loop is not None
            self.loop.call_soon(self._flush)
        self._dirty.append(conn)

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.flush()

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.tick_s)
            now = loop.time()
            for conn in list(self.connections):
                due = conn.deadline
                if due is not None and now >= due:
                    conn.expire()


class H1Protocol(asyncio.Protocol):
    """One HTTP/1.1 connection."""

    def __init__(self, server: H1Server) -> None:
        self.server = server
        self.limits = server.limits
        assert server.loop is not None
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.req: _Request | None = None  # the request being parsed
        self.queue: deque[_Request] = deque()  # complete requests waiting for the one being answered
        self.busy: _Request | None = None  # the request being answered
        self.out: list[bytes] = []
        self.closing = False  # close once what is written is flushed
        self.eof = False  # the client half-closed
        self.gone = False  # connection lost
        self.discarding = False  # refused: input dropped until EOF or LINGER_S
        self.paused = False
        self.in_head = True
        self.head_bytes = 0
        self.deadline: float | None = None
        self.phase = "head"  # head, body, busy, idle, linger: what the deadline is for
        self.peer: Any = None

    # -- connection -------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        self.transport = transport  # type: ignore[assignment]
        server = self.server
        if len(server.connections) >= self.limits.max_connections:
            self._refuse_connection()
            return
        server.connections.add(self)
        self.peer = transport.get_extra_info("peername")
        self._clock("head", self.limits.header_timeout_s)

    def _refuse_connection(self) -> None:
        counts = self.server.refused
        counts[0] += 1
        now = self.loop.time()
        if now - counts[1] >= REFUSAL_LOG_INTERVAL_S:
            counts[1] = now
            log.warning("%d connections open, max_connections is %d: refusing new ones with 503 (%d so far)",
                        len(self.server.connections), self.limits.max_connections, counts[0])
        body = orjson.dumps({"error": f"too many connections (max_connections {self.limits.max_connections}); "
                                      "retry later"})
        assert self.transport is not None
        self.transport.write(answer_bytes(503, [(b"content-type", b"application/json"), (b"retry-after", b"1")], body,
                                          keep_alive=False))
        self.transport.close()
        self.gone = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.gone = True
        self.deadline = None
        self.out.clear()

    def eof_received(self) -> bool | None:
        """The client half-closed: answer what is complete, then close; close now when nothing is."""
        self.eof = True
        if self.discarding or (self.busy is None and not self.queue):
            self.flush()
            return None  # the event loop closes the transport
        self.closing = True  # after the answers of the complete requests
        self._pause()
        return True

    def shutdown(self) -> None:
        """The server stops: close an idle connection now, a busy one after its answer."""
        if self.busy is None and not self.queue and (self.req is None or self.in_head):
            self._close()
        else:
            self.closing = True

    def abort(self) -> None:
        self.out.clear()
        if self.transport is not None:
            self.transport.abort()

    def _close(self) -> None:
        self.flush()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _clock(self, phase: str, seconds: float | None) -> None:
        self.phase = phase
        self.deadline = None if seconds is None else self.loop.time() + seconds

    def expire(self) -> None:
        """A clock ran out (called by the server's sweep)."""
        phase, self.deadline = self.phase, None
        if self.gone:
            return
        if phase in ("head", "body") and (self.busy is not None or self.queue):
            # A request pipelined behind one being answered (reading is paused meanwhile): its
            # clock waits for that answer; a request being answered is never cut short.
            self._clock(phase, 1.0)
            return
        if phase == "idle":
            self._close()
        elif phase == "linger":
            self._close()
        elif phase == "head":
            if self.head_bytes == 0 and self.req is None:
                self._close()  # connected and sent nothing
                return
            log.warning("request headers not complete after %.1f s (%d bytes received): closing the connection",
                        self.limits.header_timeout_s, self.head_bytes)
            self._refuse(408, f"request headers were expected within request_header_timeout_s "
                              f"({self.limits.header_timeout_s:g} s); found {self.head_bytes} bytes without their end")
        elif phase == "body":
            log.warning("request body not complete after %.1f s: closing the connection", self.limits.body_timeout_s)
            self._refuse(408, f"the request body was expected within request_body_timeout_s "
                              f"({self.limits.body_timeout_s:g} s)")

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` if no answer is owed before it, then close."""
        if self.busy is None and not self.queue:
            self._write_answer(status, [(b"content-type", b"application/json")],
                               orjson.dumps({"error": message}), keep_alive=False)
        self.closing = True
        self._close()

    # -- reading ----------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.discarding or self.gone:
            return
        if self.phase == "idle":
            self._clock("head", self.limits.header_timeout_s)
        if self.in_head:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._upgrade_refused()
            return
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._refuse_head(exc.__context__.size)
                return
            if isinstance(exc, httptools.HttpParserCallbackError):  # our own code failed: a bug, logged
                log.error("HTTP request handling failed", exc_info=exc.__context__)
                self._refuse(500, "internal server error")
                return
            self._refuse(400, f"invalid HTTP request: {exc}")
            return
        if self.in_head and self.head_bytes > self.limits.max_header_bytes and not self.closing:
            self._refuse_head(self.head_bytes)  # the head is still incomplete: every byte counted is head

    def _upgrade_refused(self) -> None:
        """An ``Upgrade`` request (websocket, h2c): answered as plain HTTP/1.1, then the connection closes."""
        req = self.req
        if req is not None:
            req.keep_alive = False
            if not req.complete:
                self.on_message_complete()
        self.closing = True
        self._pause()

    def on_message_begin(self) -> None:
        self.req = _Request()
        self.in_head = True
        if self.phase != "head":
            self._clock("head", self.limits.header_timeout_s)

    def on_url(self, url: bytes) -> None:
        assert self.req is not None
        self.req.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self.req
        assert req is not None
        name = name.lower()
        value = value.rstrip(b" \t")  # llhttp keeps trailing whitespace, which RFC 9110 excludes
        if name == b"content-length":
            req.declared = int(value) if value.isdigit() and len(value) <= 18 else -2
        elif name == b"transfer-encoding":
            req.chunked = True
        elif name == b"content-encoding":
            req.encoded = value.strip().lower() != b"identity"
        elif name == b"expect" and value.lower() == b"100-continue":
            req.expect = True
        req.headers.append((name, value))

    def on_headers_complete(self) -> None:
        req = self.req
        assert req is not None
        self.in_head = False
        if self.head_bytes > self.limits.max_header_bytes:  # counted bytes may include a body: measure the head
            size = 14 + len(req.url) + sum(len(n) + len(v) + 4 for n, v in req.headers)
            if size > self.limits.max_header_bytes:
                raise _HeadTooLarge(size)  # stops the parser; data_received refuses the request
        parser = self.parser
        req.method = parser.get_method()
        req.keep_alive = parser.should_keep_alive()
        req.t0 = time.perf_counter_ns()
        limit = self.limits.max_request_bytes
        if req.declared > limit:
            req.too_large = True
            if self.busy is None and not self.queue:  # nothing owed before it: refuse now, drop the body
                self._answer_too_large(req, f"request body is {req.declared} bytes, max_request_bytes is {limit}")
        elif req.expect and self.busy is None and not self.queue:
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._clock("body", self.limits.body_timeout_s)

    def on_body(self, piece: bytes) -> None:
        req = self.req
        assert req is not None
        if req.too_large:
            return
        req.size += len(piece)
        if req.size > self.limits.max_request_bytes:  # a chunked body past the limit
            req.too_large = True
            req.body = b""
            if self.busy is None and not self.queue:
                self._answer_too_large(req, f"request body exceeds max_request_bytes ({self.limits.max_request_bytes})")
            return
        held = req.body
        if not held:
            req.body = piece  # the whole body, usually: held as httptools made it, no copy
        elif type(held) is bytes:
            grown = bytearray(held)
            grown += piece
            req.body = grown
        else:
            held += piece  # type: ignore[operator]  # grows in place (realloc; mremap for large buffers)

    def on_message_complete(self) -> None:
        req = self.req
        assert req is not None
        req.complete = True
        self.in_head = True
        self.head_bytes = 0
        self.req = None
        self._clock("busy", None)
        if req.answered:  # refused early (413): its body has now been read and dropped
            self._after_answer()
            return
        if self.busy is None:
            self._dispatch(req)
        else:
            self.queue.append(req)
            self._pause()  # one request waits: read no further until it is answered

    # -- answering --------------------------------------------------------------------------------

    def _dispatch(self, req: _Request) -> None:
        self.busy = req
        self._clock("busy", None)
        if req.too_large:
            self._answer_too_large(req, f"request body exceeds max_request_bytes ({self.limits.max_request_bytes})")
            return
        body = req.body
        url = req.url
        direct = self.server.direct_infer
        if (direct is not None and req.method == b"POST" and not req.encoded and url.startswith(b"/v2/models/")
                and b"%" not in url):
            path = url.partition(b"?")[0]
            if path.endswith(b"/infer") and len(path) > 17 and path.isascii():
                direct(path[11:-6].decode("ascii"), req.headers, body,  # type: ignore[arg-type]
                       req.t0, lambda status, headers, payload: self._answer(req, status, headers, payload))
                return
        task = self.loop.create_task(self._asgi(req, body))
        self.server.tasks.add(task)
        task.add_done_callback(self.server.tasks.discard)

    async def _asgi(self, req: _Request, body: Any) -> None:
        """Run the app as ASGI for ``req``, its body already read."""
        try:
            parsed = httptools.parse_url(req.url)
        except httptools.HttpParserInvalidURLError:
            self._answer(req, 400, [(b"content-type", b"application/json")],
                         orjson.dumps({"error": f"invalid request target {req.url[:80]!r}"}))
            return
        path = (parsed.path or b"").decode("latin-1")
        if "%" in path:
            path = urllib.parse.unquote(path)
        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
                 "method": req.method.decode("ascii", "replace"), "scheme": "http", "path": path,
                 "raw_path": parsed.path, "query_string": parsed.query or b"", "root_path": "",
                 "headers": req.headers, "client": self.peer, "server": None}
        sent = False
        start: dict[str, Any] = {}

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent or self.gone:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                self._answer(req, start.get("status", 500), list(start.get("headers", [])),
                             message.get("body", b""))

        try:
            await self.server.app(scope, receive, send)
        except Exception as exc:  # noqa: BLE001 - a failing handler answers 500 and is logged
            log.error("request handling failed: %s %s", scope["method"], path, exc_info=exc)
            if not req.answered:
                self._answer(req, 500, [(b"content-type", b"application/json")],
                             orjson.dumps({"error": f"internal server error ({type(exc).__name__})"}))
            return
        if not req.answered:
            log.error("request handler returned without an answer: %s %s", scope["method"], path)
            self._answer(req, 500, [(b"content-type", b"application/json")],
                         orjson.dumps({"error": "internal server error (no answer)"}))

    def _answer_too_large(self, req: _Request, message: str) -> None:
        req.too_large = True
        self.busy = req
        self._answer(req, 413, [(b"content-type", b"application/json")], orjson.dumps({"error": message}))

    def _answer(self, req: _Request, status: int, headers: list[tuple[bytes, bytes]], payload: bytes) -> None:
        """Write ``req``'s answer (it is the one being answered), then go on with the next."""
        if req.answered:
            return
        req.answered = True
        if not self.gone:
            keep = req.keep_alive and not self.closing
            self._write_answer(status, headers, payload, keep_alive=keep, head=req.method == b"HEAD")
            if not keep:
                self.closing = True
        if req.complete:
            self._after_answer()

    def _write_answer(self, status: int, headers: list[tuple[bytes, bytes]], payload: bytes, *, keep_alive: bool,
                      head: bool = False) -> None:
        self._write(answer_bytes(status, headers, payload, keep_alive=keep_alive, head=head))

    def _after_answer(self) -> None:
        self.busy = None
        if self.gone:
            return
        if self.closing:
            if self.queue and not self.eof:
                self.queue.clear()  # Connection: close: what was pipelined after it is not answered
            if self.queue:
                self._dispatch(self.queue.popleft())
                return
            self._close_after_flush()
            return
        if self.queue:
            self._dispatch(self.queue.popleft())
            return
        self._resume()
        if self.req is not None and not self.in_head:
            return  # the next request's body is being read: its clock runs
        if self.req is not None or self.head_bytes:
            self._clock("head", self.limits.header_timeout_s)
        else:
            self._clock("idle", self.limits.keep_alive_s)

    def _close_after_flush(self) -> None:
        self._clock("linger", None)
        self._close()  # writes what is queued first

    def _write(self, data: bytes) -> None:
        self.out.append(data)
        if len(self.server.connections) <= 1:
            self.flush()  # alone: there is nothing to write together with, and the turn's end costs a wake-up
        elif len(self.out) == 1:
            self.server.mark_dirty(self)

    def flush(self) -> None:
        out = self.out
        if not out or self.transport is None:
            return
        self.out = []
        if self.gone or self.transport.is_closing():
            return
        if len(out) == 1:
            self.transport.write(out[0])
        else:
            self.transport.writelines(out)

    def _pause(self) -> None:
        if not self.paused and self.transport is not None and not self.gone:
            self.paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self.paused and self.transport is not None and not self.gone and not self.eof:
            self.paused = False
            self.transport.resume_reading()

    def _refuse_head(self, size: int) -> None:
        if self.busy is not None or self.queue:
            self._close()  # an earlier pipelined request is still being answered: no room for a second answer
            return
        log.warning("request headers over max_header_bytes (%d): %d bytes or more; refused",
                    self.limits.max_header_bytes, size)
        self._write_answer(400, [(b"content-type", b"application/json")], orjson.dumps(
            {"error": f"request line and headers must be at most max_header_bytes ({self.limits.max_header_bytes}) "
                      f"bytes; found {size} bytes or more"}), keep_alive=False)
        self.flush()
        self.discarding = True
        transport = self.transport
        assert transport is not None
        if transport.can_write_eof():
            transport.write_eof()
        # Read and drop what the client is still sending, so that its send does not end in a reset
        # that destroys the answer; close at its EOF (eof_received) or after LINGER_S.
        self.phase, self.deadline = "linger", self.loop.time() + LINGER_S
