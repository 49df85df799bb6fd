"""uvicorn's httptools protocol with one socket write per response and connection limits.

**One write per response.** uvicorn writes a response's status line and headers as soon as
the app sends ``http.response.start`` and the body on ``http.response.body``: two ``send``
system calls and, on loopback, two TCP segments and two wake-ups of the client for every
answer. Measured on the daemon, those writes were about half of the event loop's time for a
small model. This protocol hands uvicorn a transport that collects what is written during
one turn of the event loop and passes it on in a single ``writelines`` (one ``writev``) at
the end of that turn. Bytes, order and HTTP semantics are uvicorn's own; only the number of
system calls changes. ``close`` and ``write_eof`` flush first, and so does an end of file
from the client: a client that half-closes its socket after its request (``shutdown(SHUT_WR)``)
keeps the connection open until its answer is written, then the server closes it.

**Infer requests without ASGI.** A ``POST /v2/models/{m}[/versions/{v}]/infer`` with a
``Content-Length`` within ``[server] max_request_bytes``, no ``Content-Encoding``, no ``Expect``
and nothing pipelined before it is read by this protocol itself and handed, whole, to the app's
:meth:`~edge_runtime.serving.app.App.infer_direct` once its last byte is in: no ASGI task, no
receive and send coroutines, no flow-control pause, and the answer written in one piece. The
steps (routing, decoding, executor, encoding, statistics) are the app's own; any other request
takes uvicorn's ASGI path. The body is held as the parser hands it over (one piece: no copy) or
gathered into one buffer, sized to the declared length once at least half of it has arrived, so
a client that declares a large body and sends little is never given more memory than it sent.

**Limits uvicorn does not have.** ``[server] max_header_bytes``: the request line and headers
of one request are counted as they arrive, before httptools buffers them; past the limit the
request is refused with 400 (``{"error": ...}``, ``Connection: close``), what the client still
sends is read and dropped for up to :data:`LINGER_S` so that it sees the answer, and the
connection is closed. ``[server] request_header_timeout_s``: the headers of a request must be
complete within this time of the connection's opening (first request) or of the request's
first byte (later requests; the wait before it is ``keep_alive_s``). A late request is answered
408 and closed; a connection that sent nothing at all is closed without an answer.
``[server] request_body_timeout_s``: the body must be complete within this time of the end of
the headers; a body trickled slower is answered 408 and the connection closed.
``[server] max_connections``: a connection past the limit is answered 503 at once (``{"error":
...}``, ``Connection: close``) and closed, so that trickling clients cannot take every file
descriptor the process has.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import httptools
import orjson
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

log = logging.getLogger(__name__)

DEFAULT_MAX_HEADER_BYTES = 64 * 1024
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 30.0
DEFAULT_MAX_CONNECTIONS = 256
REFUSAL_LOG_INTERVAL_S = 10.0  # refused connections are logged at most this often
LINGER_S = 5.0  # after refusing over-long headers: how long what the client still sends is drained


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop httptools at a head over ``max_header_bytes``."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


class CoalescingTransport:
    """A transport proxy that joins the writes of one event-loop turn into one."""

    __slots__ = ("_transport", "_loop", "_pending", "_closed")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._closed = False

    def write(self, data: bytes) -> None:
        """Queue ``data``; the first write of a turn schedules the flush."""
        if self._closed:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def writelines(self, lines: Any) -> None:
        """Queue several buffers."""
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        """Pass what is queued on to the socket now (one ``writev``)."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        if self._closed or self._transport.is_closing():
            return
        if len(pending) == 1:
            self._transport.write(pending[0])
        else:
            self._transport.writelines(pending)

    def write_eof(self) -> None:
        """Flush, then close the write side."""
        self.flush()
        if not self._transport.is_closing():
            self._transport.write_eof()

    def close(self) -> None:
        """Flush, then close."""
        self.flush()
        self._closed = True
        self._transport.close()

    def abort(self) -> None:
        """Drop what is queued and abort."""
        self._pending = []
        self._closed = True
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


DirectInfer = Callable[[str, list[tuple[bytes, bytes]], "bytes | bytearray", int,
                        Callable[[int, list[tuple[bytes, bytes]], bytes], None]], None]


class _NoEvent:
    """What uvicorn sets on a request's ``message_event``: nothing waits on a direct request's."""

    __slots__ = ()

    def set(self) -> None:
        pass


class _DirectCycle:
    """The state uvicorn's protocol reads from ``self.cycle``, for a request read without ASGI."""

    __slots__ = ("body", "more_body", "keep_alive", "disconnected", "response_started", "response_complete",
                 "on_response", "declared", "filled", "target", "t0")
    message_event = _NoEvent()

    def __init__(self, declared: int, target: str, keep_alive: bool, on_response: Callable[[], None]) -> None:
        self.body: bytes | bytearray = b""
        self.more_body = True
        self.keep_alive = keep_alive
        self.disconnected = False
        self.response_started = False
        self.response_complete = False
        self.on_response = on_response
        self.declared = declared
        self.filled = -1  # bytes in ``body`` once it is a buffer of the declared size; -1 before
        self.target = target  # "{m}" or "{m}/versions/{v}"
        self.t0 = time.perf_counter_ns()


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol writing through a :class:`CoalescingTransport`, with limits.

    The limits are class attributes; :func:`http_protocol` makes a subclass with configured ones.
    """

    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    # The app's infer entry for requests read without ASGI (None: every request goes through ASGI).
    direct_infer: DirectInfer | None = None
    direct_max_bytes = 0  # [server] max_request_bytes: a larger declared body takes the ASGI path
    refused = [0, -1e9]  # per protocol class: connections refused so far, when last logged

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # between the end of a request and the end of the next one's headers
        self._head_bytes = 0  # bytes received in this head phase
        self._head_since: float | None = None  # when the current request's head started
        self._head_timer: asyncio.TimerHandle | None = None
        self._discarding = False  # refused: input is read and dropped until EOF or LINGER_S
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_due: float | None = None  # when the body of the request being read must be complete
        self._over_limit = False  # refused at connect: uvicorn never saw this connection

    # -- connection ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        """Wrap the transport, let uvicorn set the connection up, start the header clock."""
        if len(self.server_state.connections) >= self.max_connections:
            self._refuse_connection(transport)  # type: ignore[arg-type]
            return
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
        self._head_since = self.loop.time()
        self._head_timer = self.loop.call_at(self._head_since + self.header_timeout_s, self._head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the clocks, then uvicorn's own clean-up."""
        if self._over_limit:
            return
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._stop_body_clock()
        super().connection_lost(exc)

    def _refuse_connection(self, transport: asyncio.Transport) -> None:
        self._over_limit = True
        counts = type(self).refused
        counts[0] += 1
        now = self.loop.time()
        if now - counts[1] >= REFUSAL_LOG_INTERVAL_S:
            counts[1] = now
            log.warning("%d connections open, max_connections is %d: refusing new ones with 503 (%d so far)",
                        len(self.server_state.connections), self.max_connections, counts[0])
        body = orjson.dumps({"error": f"too many connections (max_connections {self.max_connections}); retry later"})
        transport.write(b"".join([
            STATUS_LINE[503], b"content-type: application/json\r\ncontent-length: ", str(len(body)).encode("ascii"),
            b"\r\nretry-after: 1\r\nconnection: close\r\n\r\n", body,
        ]))
        transport.close()

    def _stop_body_clock(self) -> None:
        self._body_due = None
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timeout(self) -> None:
        self._body_timer = None
        if self._in_head or self.transport.is_closing():
            return  # the body arrived
        cycle = self.cycle
        log.warning("request body not complete after %.1f s: closing the connection", self.body_timeout_s)
        if cycle is not None and not cycle.response_started:
            self._answer(408, f"the request body was expected within request_body_timeout_s ({self.body_timeout_s:g} s)")
        self.transport.close()

    def eof_received(self) -> bool | None:  # type: ignore[override]
        """Flush; keep the connection open while a complete request is still being answered."""
        transport: CoalescingTransport = self.transport  # type: ignore[assignment]
        transport.flush()
        cycle = self.cycle  # the newest request: answered last, pipelined ones before it
        if not self._discarding and cycle is not None and not cycle.response_complete and not cycle.more_body:
            cycle.on_response = self._answered_after_eof
            return True  # closed by _answered_after_eof once the answer is written
        return None  # the event loop closes the transport

    def _answered_after_eof(self) -> None:
        self.on_response_complete()
        self.transport.close()

    # -- request heads ---------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """Count head bytes and start the header clock, then parse (uvicorn's own ``data_received``)."""
        if self._discarding:
            return
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_since is None:
                self._head_since = self.loop.time()
                if self._head_timer is None:
                    self._head_timer = self.loop.call_at(self._head_since + self.header_timeout_s, self._head_timeout)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._refuse_head(exc.__context__.size)
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._in_head and self._head_bytes > self.max_header_bytes and not self.transport.is_closing():
            self._refuse_head(self._head_bytes)  # the head is still incomplete: every byte counted is head
        elif self._body_due is not None and self._body_timer is None:
            # A body still incomplete at the end of this read gets its clock; one that came whole with
            # its head (the usual case) never needs a timer.
            self._body_timer = self.loop.call_at(self._body_due, self._body_timeout)

    def on_headers_complete(self) -> None:
        """The head is complete: check its size if it may be too large, then let uvicorn start the request."""
        self._in_head = False
        self._head_since = None
        if self._head_bytes > self.max_header_bytes:  # counted bytes may include a body: measure the head
            size = 14 + len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
            if size > self.max_header_bytes:
                raise _HeadTooLarge(size)  # stops the parser; data_received refuses the request
        direct = self._direct_cycle() if self.direct_infer is not None else None
        if direct is not None:
            self.cycle = direct  # type: ignore[assignment]
        else:
            super().on_headers_complete()
        # Armed by data_received if the body is not complete at the end of the read that completed the
        # head; on_message_complete stops the clock.
        self._body_due = self.loop.time() + self.body_timeout_s

    def on_body(self, body: bytes) -> None:
        """uvicorn's ``on_body``, except that a body's first piece is held as the parser made it.

        uvicorn appends every piece to a bytearray, and its ``receive`` copies that into bytes:
        two copies of each body (220 kB for one 3x96x96 float image) before the app sees it.
        A body that arrives in one piece, the usual case on a local connection, is now handed
        on as the bytes object httptools made (``bytes()`` of bytes is the same object); a
        second piece turns the held body into a bytearray and is appended as uvicorn does.
        """
        cycle = self.cycle
        if type(cycle) is _DirectCycle:
            self._direct_body(cycle, body)
            return
        if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
            return
        held = cycle.body
        if not held:
            cycle.body = body  # type: ignore[assignment]
        elif type(held) is bytes:
            cycle.body = bytearray(held)
            cycle.body += body
        else:
            held += body
        if len(cycle.body) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()

    def on_message_complete(self) -> None:
        """The request is complete: the next head starts with its first byte."""
        self._stop_body_clock()
        self._in_head = True
        self._head_bytes = 0
        self._head_since = None
        super().on_message_complete()
        cycle = self.cycle
        if type(cycle) is _DirectCycle and not cycle.response_complete:
            body, cycle.body = cycle.body, b""
            if (cycle.filled if cycle.filled >= 0 else len(body)) != cycle.declared:  # httptools ends a message at its Content-Length
                self._direct_answer(cycle, 400, [], orjson.dumps({"error": "request body shorter than Content-Length"}))
                return
            assert self.direct_infer is not None
            self.direct_infer(cycle.target, self.headers, body, cycle.t0,
                              lambda status, headers, payload: self._direct_answer(cycle, status, headers, payload))

    # -- infer requests read without ASGI ----------------------------------------------------------

    def _direct_cycle(self) -> _DirectCycle | None:
        """A cycle for this request when it can be read without ASGI (see the module docstring), else None."""
        existing = self.cycle
        if (existing is not None and not existing.response_complete) or self.expect_100_continue:
            return None  # pipelined behind an answer, or a client waiting for 100 Continue
        parser = self.parser
        if parser.get_method() != b"POST" or parser.get_http_version() != "1.1" or parser.should_upgrade():
            return None
        url = self.url
        if not url.startswith(b"/v2/models/") or b"%" in url or self.limit_concurrency is not None:
            return None
        path = url.partition(b"?")[0]
        if not path.endswith(b"/infer") or len(path) <= 17:
            return None
        declared = -1
        for name, value in self.headers:
            if name == b"content-length":
                if declared >= 0 or not value.isdigit() or len(value) > 18:
                    return None
                declared = int(value)
            elif name in (b"content-encoding", b"transfer-encoding"):
                return None
        if not 0 <= declared <= self.direct_max_bytes:
            return None  # no length, or too large: the ASGI path answers it
        try:
            target = path[11:-6].decode("ascii")
        except UnicodeDecodeError:
            return None
        return _DirectCycle(declared, target, parser.should_keep_alive(), self.on_response_complete)

    def _direct_body(self, cycle: _DirectCycle, piece: bytes) -> None:
        """Keep a piece of a direct request's body (see the module docstring for the memory rule)."""
        held = cycle.body
        if cycle.filled >= 0:  # a buffer of the declared size
            end = cycle.filled + len(piece)
            held[cycle.filled:end] = piece  # type: ignore[index]
            cycle.filled = end
            return
        if not held:
            cycle.body = piece  # the whole body, usually: held as httptools made it
            return
        size = len(held) + len(piece)
        if 2 * size >= cycle.declared:  # at least half has arrived: one buffer of the declared size
            buf = bytearray(cycle.declared)
            buf[: len(held)] = held
            buf[len(held): size] = piece
            cycle.body, cycle.filled = buf, size
            return
        grown = bytearray(held) if type(held) is bytes else held
        grown += piece
        cycle.body = grown

    def _direct_answer(self, cycle: _DirectCycle, status: int, headers: list[tuple[bytes, bytes]],
                       payload: bytes) -> None:
        """Write a direct request's answer in one piece, then what uvicorn does after a response."""
        if cycle.response_complete:
            return
        cycle.response_started = cycle.response_complete = True
        if not cycle.disconnected:
            content = [STATUS_LINE[status]]
            for name, value in (*self.server_state.default_headers, *headers):
                content += (name, b": ", value, b"\r\n")
            if status >= 400 and not any(name == b"content-length" for name, _ in headers):
                content += (b"content-length: ", b"%d" % len(payload), b"\r\n")
            if not cycle.keep_alive:
                content.append(b"connection: close\r\n")
            content += (b"\r\n", payload)
            # Through the coalescing transport, as an ASGI answer: written at the end of the loop turn, so
            # that with many connections the answers of one turn go out together (writing each at once
            # cost the MLP 20 µs more CPU per request at 16 clients: more, smaller epoll rounds).
            self.transport.write(b"".join(content))
            if not cycle.keep_alive:
                self.transport.close()
        cycle.on_response()

    def _head_timeout(self) -> None:
        self._head_timer = None
        since = self._head_since
        if since is None or self.transport.is_closing():
            return  # not in a head (idle keep-alive is uvicorn's timer); re-armed by the next byte
        deadline = since + self.header_timeout_s
        if self.loop.time() < deadline:  # a later head started since this timer was set
            self._head_timer = self.loop.call_at(deadline, self._head_timeout)
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:  # a pipelined head waits behind an answer
            self._head_timer = self.loop.call_later(1.0, self._head_timeout)
            return
        if self._head_bytes == 0:
            self.transport.close()  # connected and sent nothing
            return
        log.warning("request headers not complete after %.1f s (%d bytes received): closing the connection",
                    self.header_timeout_s, self._head_bytes)
        self._answer(408, f"request headers were expected within request_header_timeout_s "
                          f"({self.header_timeout_s:g} s); found {self._head_bytes} bytes without their end")
        self.transport.close()

    def _refuse_head(self, size: int) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # an earlier pipelined request is still being answered: no room for a second answer
            self.transport.close()
            return
        log.warning("request headers over max_header_bytes (%d): %d bytes or more; refused",
                    self.max_header_bytes, size)
        self._answer(400, f"request line and headers must be at most max_header_bytes "
                          f"({self.max_header_bytes}) bytes; found {size} bytes or more")
        self._discarding = True
        self._head_since = None
        transport: CoalescingTransport = self.transport  # type: ignore[assignment]
        if transport.can_write_eof():
            transport.write_eof()
        # Read and drop what the client is still sending, so that its send does not end in a reset
        # that destroys the answer; close at its EOF (eof_received) or after LINGER_S.
        self.loop.call_later(LINGER_S, transport.close)

    def _answer(self, status: int, message: str) -> None:
        body = orjson.dumps({"error": message})
        self.transport.write(b"".join([
            STATUS_LINE[status],
            b"content-type: application/json\r\ncontent-length: ", str(len(body)).encode("ascii"),
            b"\r\nconnection: close\r\n\r\n", body,
        ]))


def http_protocol(max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
                  header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
                  body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
                  max_connections: int = DEFAULT_MAX_CONNECTIONS, *,
                  direct_infer: DirectInfer | None = None,
                  direct_max_bytes: int = 0) -> type[CoalescingHttpToolsProtocol]:
    """The protocol class for uvicorn's ``http=`` with these limits.

    ``direct_infer`` (the app's :meth:`~edge_runtime.serving.app.App.infer_direct`) takes infer
    requests with a declared body of at most ``direct_max_bytes`` without ASGI.
    """
    return type("EdgeHttpProtocol", (CoalescingHttpToolsProtocol,),
                {"max_header_bytes": max_header_bytes, "header_timeout_s": header_timeout_s,
                 "body_timeout_s": body_timeout_s, "max_connections": max_connections, "refused": [0, -1e9],
                 "direct_infer": None if direct_infer is None else staticmethod(direct_infer),
                 "direct_max_bytes": direct_max_bytes})
