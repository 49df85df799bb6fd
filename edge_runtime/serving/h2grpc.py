"""Unary gRPC over cleartext HTTP/2 as an asyncio protocol, on the daemon's own event loop.

Why not grpcio: its Python layer costs 400-600 µs of CPU per RPC on the daemon's machine
(an RPC that does nothing), several times the whole HTTP request path, plus about 14 MB of
RSS and 7 threads. gRPC's wire format for unary calls is small: HTTP/2 frames (RFC 9113)
with HPACK headers (:mod:`edge_runtime.serving.hpack`), a 5-byte length prefix before the one
request message, and the status in trailers. This module speaks exactly that, as the
server side of a connection with prior knowledge (``h2c``, what ``grpc.insecure_channel``
and ``tritonclient.grpc`` open); the request message is handed to the dispatcher as a view
of the received bytes and the answer is written with one ``write`` per loop turn.

A :data:`Dispatch` is called once per complete request with ``(path, message, reply)``
and calls ``reply(status, text, answer)`` once, at once or later from the loop thread.

Bounded, for hostile clients: frame size (:data:`MAX_FRAME_BYTES`), the header block of a
request (``max_header_bytes``), connections (``max_connections``, refused with GOAWAY past
it), concurrent streams per connection (:data:`MAX_STREAMS`), the request
message (``max_message_bytes``: RESOURCE_EXHAUSTED as soon as its length prefix says it is
larger, before the body is read), the flow-control windows we grant, and time: a connection
that sends nothing, stops inside a frame or header block, trickles a request's message or has
no call open for too long is closed (:mod:`edge_runtime.serving.h2deadlines`). A peer that
breaks the protocol gets GOAWAY and the connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from enum import IntEnum
from typing import Any

from edge_runtime.serving.h2deadlines import DEFAULT_TIMEOUTS, Clocks, Timeouts, Verdict, check
from edge_runtime.serving.hpack import Decoder, HpackError, literal

log = logging.getLogger("edge_runtime.serving")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, REFUSED_STREAM, COMPRESSION_ERROR = 0, 1, 3, 6, 7, 9
ENHANCE_YOUR_CALM = 0xB

MAX_FRAME_BYTES = 1 << 20  # SETTINGS_MAX_FRAME_SIZE we accept: fewer frames per image request
MAX_STREAMS = 128  # SETTINGS_MAX_CONCURRENT_STREAMS
MAX_WINDOW = (1 << 31) - 1
DEFAULT_WINDOW = 65535
MAX_STATUS_TEXT = 2048  # grpc-message is cut here



class Status(IntEnum):
    """The gRPC status codes this server answers with."""

    OK = 0
    INVALID_ARGUMENT = 3
    NOT_FOUND = 5
    RESOURCE_EXHAUSTED = 8
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14


OK, INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNIMPLEMENTED = Status.OK, Status.INVALID_ARGUMENT, Status.RESOURCE_EXHAUSTED, Status.UNIMPLEMENTED

Reply = Callable[[int, str, bytes], None]
Dispatch = Callable[[bytes, memoryview, Reply], None]

_FRAME = struct.Struct(">I B I")  # length << 8 | type, flags, stream id (first byte of length dropped)
_HEAD = struct.Struct(">HBBBI")
_RESPONSE_HEADERS = b"\x88" + literal(b"content-type", b"application/grpc")  # :status 200 (static index 8)
_OK_TRAILERS = literal(b"grpc-status", b"0")
_U32 = struct.Struct(">I")


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame."""
    n = len(payload)
    return _HEAD.pack(n >> 8, n & 0xFF, kind, flags, stream) + payload


def status_text(text: str) -> bytes:
    """``grpc-message``: percent-encoded UTF-8 (gRPC over HTTP/2), cut to :data:`MAX_STATUS_TEXT`."""
    raw = text.encode("utf-8", "replace")[:MAX_STATUS_TEXT]
    return b"".join(bytes([b]) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in raw)


def trailers_only(code: int, text: str) -> bytes:
    """The header block of an answer that is only a status (no message)."""
    block = _RESPONSE_HEADERS + literal(b"grpc-status", str(code).encode())
    return block + literal(b"grpc-message", status_text(text)) if text else block


class Stream:
    """One request on a connection."""

    __slots__ = ("sid", "path", "body", "expect", "send_window", "pending", "answered", "reset", "typed", "since")

    def __init__(self, sid: int, path: bytes, send_window: int, typed: bool, since: float | None = None) -> None:
        self.sid = sid
        self.path = path
        self.body = bytearray()
        self.expect = -1  # message length from its prefix, once known
        self.send_window = send_window
        self.pending: list[tuple[bytes, int]] = []  # (DATA payload, flags) waiting for window
        self.answered = False
        self.reset = False
        self.typed = typed  # content-type is application/grpc[+proto]
        self.since = since  # when its HEADERS came, until its message is complete (then None)


class Endpoint:
    """What connections share: the dispatcher, the limits and the set of live connections."""

    def __init__(self, dispatch: Dispatch, max_message_bytes: int, max_header_bytes: int,
                 max_connections: int = 256, timeouts: Timeouts = DEFAULT_TIMEOUTS) -> None:
        self.dispatch = dispatch
        self.timeouts = timeouts
        self.max_connections = max_connections
        self.max_message_bytes = max_message_bytes
        self.max_header_bytes = max_header_bytes
        self.stream_window = min(MAX_WINDOW, max(DEFAULT_WINDOW, max_message_bytes + 5))
        self.connections: set[Connection] = set()
        self.draining = False
        self.idle = asyncio.Event()
        self.idle.set()

    def busy_changed(self) -> None:
        """Set :attr:`idle` when no connection has a request open."""
        if any(c.streams for c in self.connections):
            self.idle.clear()
        else:
            self.idle.set()


class Connection(asyncio.Protocol):
    """The server side of one HTTP/2 connection carrying unary gRPC calls."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.ep = endpoint
        self.transport: Any = None
        self.loop = asyncio.get_running_loop()
        self.buf = bytearray()
        self.preface = False
        self.decoder = Decoder(endpoint.max_header_bytes)
        self.streams: dict[int, Stream] = {}
        self.last_sid = 0
        self.header_block: bytearray | None = None  # a HEADERS frame waiting for CONTINUATION
        self.header_sid = 0
        self.header_flags = 0
        self.send_window = DEFAULT_WINDOW
        self.peer_stream_window = DEFAULT_WINDOW
        self.peer_frame = 16384
        self.unacked = 0
        self.goaway_sent = False
        self._out: list[bytes] = []
        self.closed = False
        # Deadlines (h2deadlines): one timer, re-armed when it fires; the hot path records times.
        self.opened = self.loop.time()
        self.idle_since: float | None = self.opened  # no call open since then
        self.partial_since: float | None = None  # an incomplete frame header or control frame
        self.header_since = 0.0  # when the HEADERS of a block still waiting for CONTINUATION came
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if len(self.ep.connections) >= self.ep.max_connections:
            # Past [server] max_connections, as for HTTP: refused at once, so that idle
            # connections cannot take every file descriptor the process has.
            self._write(frame(GOAWAY, 0, 0, struct.pack(">II", 0, ENHANCE_YOUR_CALM) + b"too many connections"))
            self._close()
            return
        self.ep.connections.add(self)
        self._timer = self.loop.call_at(check(self.opened, self._clocks(), self.ep.timeouts)[1], self._deadline)
        settings = struct.pack(">HIHIHIHI", 0x3, MAX_STREAMS, 0x4, self.ep.stream_window, 0x5, MAX_FRAME_BYTES,
                               0x6, self.ep.max_header_bytes)
        grow = self.ep.stream_window - DEFAULT_WINDOW
        self._write(frame(SETTINGS, 0, 0, settings))
        if grow > 0:
            self._write(frame(WINDOW_UPDATE, 0, 0, _U32.pack(grow)))
        if self.ep.draining:
            self.goaway()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        self.ep.connections.discard(self)
        for s in self.streams.values():
            s.reset = True
        self.streams.clear()
        self.ep.busy_changed()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        if buf:
            buf += data
            src: bytes | bytearray = buf
        else:
            src = data  # the usual case: parse the received bytes in place, no copy
        pos = 0
        if not self.preface:
            if len(src) < len(PREFACE):
                if not PREFACE.startswith(bytes(src)):
                    self._abort(PROTOCOL_ERROR, "not an HTTP/2 client preface")
                elif src is data:
                    self.buf = bytearray(data)
                return
            if src[: len(PREFACE)] != PREFACE:
                self._abort(PROTOCOL_ERROR, "not an HTTP/2 client preface")
                return
            self.preface = True
            pos = len(PREFACE)
        end = len(src)
        with memoryview(src) as view:
            try:
                while end - pos >= 9:
                    word, flags, sid = _FRAME.unpack_from(src, pos)
                    length = word >> 8
                    if length > MAX_FRAME_BYTES:
                        self._abort(FRAME_SIZE_ERROR, f"frame of {length} bytes")
                        return
                    if end - pos - 9 < length:
                        break
                    start = pos + 9
                    pos = start + length
                    self._frame(word & 0xFF, flags, sid & 0x7FFFFFFF, view[start:pos])
                    if self.closed:
                        return
            except HpackError as exc:
                self._abort(COMPRESSION_ERROR, str(exc))
                return
        # The partial-frame clock: a frame header or non-DATA frame left incomplete (a DATA
        # frame arriving slowly is its request's body clock, when that clock runs: a DATA frame
        # for no stream still waiting for its message is on this clock). It restarts when a
        # frame completed.
        if pos < end and (end - pos < 9 or src[pos + 3] != DATA or not self._body_clock_runs(src, pos)):
            if self.partial_since is None or pos:
                self.partial_since = self.loop.time()
        else:
            self.partial_since = None
        if src is data:
            if pos < end:
                self.buf = bytearray(data[pos:])
        elif pos:
            try:
                del buf[:pos]
            except BufferError:  # a view of it is still held somewhere: start a new buffer
                self.buf = bytearray(buf[pos:])

    # -- frames ---------------------------------------------------------------------------

    def _frame(self, kind: int, flags: int, sid: int, payload: memoryview) -> None:
        if self.header_block is not None and kind != CONTINUATION:
            self._abort(PROTOCOL_ERROR, "expected CONTINUATION")
        elif kind == DATA:
            self._data(flags, sid, payload)
        elif kind == HEADERS:
            self._headers(flags, sid, payload)
        elif kind == CONTINUATION:
            self._continuation(flags, sid, payload)
        elif kind == SETTINGS:
            if not flags & ACK:
                self._settings(payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(sid, payload)
        elif kind == PING:
            if not flags & ACK and len(payload) == 8:
                self._write(frame(PING, ACK, 0, bytes(payload)))
        elif kind == RST_STREAM:
            s = self.streams.pop(sid, None)
            if s is not None:
                s.reset = True
                if not self.streams:
                    self.idle_since = self.loop.time()
                self.ep.busy_changed()
        elif kind == GOAWAY:
            self.goaway()
        # PRIORITY and unknown frame types are ignored (RFC 9113 5.5); PUSH_PROMISE is never sent to a server

    def _headers(self, flags: int, sid: int, payload: memoryview) -> None:
        start, stop = 0, len(payload)
        if flags & PADDED:
            if not stop:
                self._abort(PROTOCOL_ERROR, "padded HEADERS without a pad length")
                return
            start, stop = 1, stop - payload[0]
        if flags & PRIORITY_FLAG:
            start += 5
        if sid % 2 == 0 or start > stop:
            self._abort(PROTOCOL_ERROR, f"bad HEADERS on stream {sid}")
            return
        block = bytes(payload[start:stop])
        if not flags & END_HEADERS:
            self.header_block, self.header_sid, self.header_flags = bytearray(block), sid, flags
            self.header_since = self.loop.time()
            self._check_block_size(len(block))
            return
        self._request(sid, flags, block)

    def _continuation(self, flags: int, sid: int, payload: memoryview) -> None:
        if self.header_block is None or sid != self.header_sid:
            self._abort(PROTOCOL_ERROR, "unexpected CONTINUATION")
            return
        self.header_block += payload
        if not self._check_block_size(len(self.header_block)) or not flags & END_HEADERS:
            return
        block, self.header_block = bytes(self.header_block), None
        self._request(sid, self.header_flags, block)

    def _check_block_size(self, size: int) -> bool:
        if size > self.ep.max_header_bytes:
            self._abort(PROTOCOL_ERROR, f"header block over max_header_bytes ({self.ep.max_header_bytes})")
            return False
        return True

    def _request(self, sid: int, flags: int, block: bytes) -> None:
        headers = self.decoder.decode(block)  # always decoded: the HPACK table must stay in step
        s = self.streams.get(sid)
        if s is not None:  # trailers of a request: only their END_STREAM matters
            if flags & END_STREAM:
                self._complete(s)
            return
        if sid <= self.last_sid:
            self._abort(PROTOCOL_ERROR, f"stream {sid} reused or out of order")
            return
        self.last_sid = sid
        if self.goaway_sent or len(self.streams) >= MAX_STREAMS:
            self._write(frame(RST_STREAM, 0, sid, _U32.pack(REFUSED_STREAM)))
            return
        path = b""
        method = b""
        typed = False
        for name, value in headers:
            if name == b":path":
                path = value
            elif name == b":method":
                method = value
            elif name == b"content-type":
                typed = value.startswith(b"application/grpc")
        s = Stream(sid, path, self.peer_stream_window, typed, self.loop.time())
        self.streams[sid] = s
        self.idle_since = None
        self.ep.idle.clear()
        if method != b"POST" or not typed:
            self._finish(s, trailers_only(UNIMPLEMENTED, "only gRPC calls (POST, application/grpc) are served"))
        elif flags & END_STREAM:
            self._complete(s)

    def _data(self, flags: int, sid: int, payload: memoryview) -> None:
        size = len(payload)
        self.unacked += size
        if self.unacked >= 65536:
            self._write(frame(WINDOW_UPDATE, 0, 0, _U32.pack(self.unacked)))
            self.unacked = 0
        s = self.streams.get(sid)
        if s is None or s.answered:
            return  # reset, refused or already answered (too large): count the bytes, drop them
        start, stop = 0, size
        if flags & PADDED:
            if not size or payload[0] >= size:
                self._abort(PROTOCOL_ERROR, "bad DATA padding")
                return
            start, stop = 1, size - payload[0]
        body = s.body
        if not body and stop - start >= 5 and flags & END_STREAM and payload[start + 1: start + 5] == _U32.pack(
            stop - start - 5
        ):
            # The usual request: the whole message in one frame, handed over without a copy.
            if self._too_large(s, stop - start - 5):
                return
            self._dispatch(s, payload[start:stop])
            return
        body += payload[start:stop]
        if s.expect < 0 and len(body) >= 5:
            s.expect = _U32.unpack_from(body, 1)[0]
            if self._too_large(s, s.expect):
                return
        if len(body) > self.ep.max_message_bytes + 5:
            self._too_large(s, len(body) - 5)
        elif flags & END_STREAM:
            self._complete(s)
        elif len(body) > self.ep.stream_window:
            self._abort(FLOW_CONTROL_ERROR, f"stream {sid} sent past its window")

    def _too_large(self, s: Stream, size: int) -> bool:
        limit = self.ep.max_message_bytes
        if size <= limit:
            return False
        self._finish(s, trailers_only(RESOURCE_EXHAUSTED, f"request message is {size} bytes, max_request_bytes is {limit}"))
        self._write(frame(RST_STREAM, 0, s.sid, _U32.pack(NO_ERROR)))
        return True

    def _complete(self, s: Stream) -> None:
        if s.answered:
            return
        body = s.body
        if len(body) < 5 or len(body) != 5 + _U32.unpack_from(body, 1)[0]:
            self._finish(s, trailers_only(INVALID_ARGUMENT, "a unary call carries exactly one length-prefixed message"))
            return
        self._dispatch(s, memoryview(body)[:])

    def _dispatch(self, s: Stream, message: memoryview) -> None:
        s.since = None
        if message[0] != 0:
            self._finish(s, trailers_only(UNIMPLEMENTED, "compressed messages are not supported; send them uncompressed"))
            return

        def reply(code: int, text: str, answer: bytes) -> None:
            self._answer(s, code, text, answer)

        self.ep.dispatch(s.path, message[5:], reply)

    # -- answers ----------------------------------------------------------------------------

    def _answer(self, s: Stream, code: int, text: str, answer: bytes) -> None:
        if s.reset or self.closed or s.answered:
            return
        if code != OK:
            self._finish(s, trailers_only(code, text))
            return
        n = len(answer) + 5
        prefixed = b"\x00" + _U32.pack(len(answer)) + answer
        sid = s.sid
        if n <= self.send_window and n <= s.send_window and n <= self.peer_frame:
            self.send_window -= n
            self._write(frame(HEADERS, END_HEADERS, sid, _RESPONSE_HEADERS) + frame(DATA, 0, sid, prefixed)
                        + frame(HEADERS, END_HEADERS | END_STREAM, sid, _OK_TRAILERS))
            self._closed_stream(s)
            return
        self._write(frame(HEADERS, END_HEADERS, sid, _RESPONSE_HEADERS))
        s.answered = True
        s.pending = [(prefixed, 0)]
        self._send_pending(s)

    def _send_pending(self, s: Stream) -> None:
        while s.pending:
            data, _ = s.pending[0]
            n = min(len(data), self.send_window, s.send_window, self.peer_frame)
            if n <= 0:
                return
            self._write(frame(DATA, 0, s.sid, data[:n]))
            self.send_window -= n
            s.send_window -= n
            if n == len(data):
                s.pending.pop(0)
            else:
                s.pending[0] = (data[n:], 0)
        self._write(frame(HEADERS, END_HEADERS | END_STREAM, s.sid, _OK_TRAILERS))
        self._closed_stream(s)

    def _finish(self, s: Stream, block: bytes) -> None:
        """Answer ``s`` with a header block that ends the stream (a status without a message)."""
        if s.reset or self.closed or s.answered:
            return
        self._write(frame(HEADERS, END_HEADERS | END_STREAM, s.sid, block))
        self._closed_stream(s)

    def _closed_stream(self, s: Stream) -> None:
        s.answered = True
        s.pending = []
        if self.streams.pop(s.sid, None) is not None and not self.streams:
            self.idle_since = self.loop.time()
            self.ep.busy_changed()
            if self.goaway_sent:
                self.loop.call_soon(self._close)

    def _window_update(self, sid: int, payload: memoryview) -> None:
        if len(payload) != 4:
            self._abort(FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong size")
            return
        inc = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if sid == 0:
            self.send_window += inc
            for s in list(self.streams.values()):
                if s.pending:
                    self._send_pending(s)
        else:
            one = self.streams.get(sid)
            if one is not None:
                one.send_window += inc
                if one.pending:
                    self._send_pending(one)

    def _settings(self, payload: memoryview) -> None:
        if len(payload) % 6:
            self._abort(FRAME_SIZE_ERROR, "SETTINGS of the wrong size")
            return
        for k in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, k)
            if key == 0x4:
                if value > MAX_WINDOW:
                    self._abort(FLOW_CONTROL_ERROR, "initial window too large")
                    return
                delta = value - self.peer_stream_window
                self.peer_stream_window = value
                for s in self.streams.values():
                    s.send_window += delta
            elif key == 0x5:
                if not 16384 <= value <= (1 << 24) - 1:
                    self._abort(PROTOCOL_ERROR, "bad SETTINGS_MAX_FRAME_SIZE")
                    return
                self.peer_frame = value
        self._write(frame(SETTINGS, ACK, 0))
        for s in list(self.streams.values()):
            if s.pending:
                self._send_pending(s)

    # -- deadlines ----------------------------------------------------------------------------

    def _body_clock_runs(self, src: bytes | bytearray, pos: int) -> bool:
        """Whether the DATA frame whose header starts at ``pos`` is for a stream whose message is
        still incomplete (so its slowness is that stream's body clock)."""
        s = self.streams.get(int.from_bytes(src[pos + 5:pos + 9], "big") & 0x7FFFFFFF)
        return s is not None and s.since is not None

    def _clocks(self) -> Clocks:
        bodies = [s.since for s in self.streams.values() if s.since is not None]
        return Clocks(self.opened, self.preface,
                      self.header_since if self.header_block is not None else self.partial_since,
                      min(bodies) if bodies else None, self.idle_since if not self.streams else None)

    def _deadline(self) -> None:
        self._timer = None
        if self.closed:
            return
        t = self.ep.timeouts
        verdict, then = check(self.loop.time(), self._clocks(), t)
        if verdict is Verdict.KEEP:
            self._timer = self.loop.call_at(then, self._deadline)
        elif verdict is Verdict.IDLE:
            self.goaway()  # no call open: GOAWAY (no error) and close; the client reconnects
        elif verdict is Verdict.NO_PREFACE:
            self._close()  # connected and sent nothing that counts
        else:
            what, limit = (("request headers", f"request_header_timeout_s ({t.header_s:g} s)")
                           if verdict is Verdict.HALF_HEADER else
                           ("a request message", f"request_body_timeout_s ({t.body_s:g} s)"))
            log.warning("gRPC: %s not complete within %s: closing the connection", what, limit)
            self._abort(NO_ERROR, f"{what} not complete within {limit}")

    # -- connection ---------------------------------------------------------------------------

    def goaway(self) -> None:
        """Take no new streams; finish the open ones, then close (shutdown, or the peer's GOAWAY)."""
        if not self.goaway_sent and not self.closed:
            self.goaway_sent = True
            self._write(frame(GOAWAY, 0, 0, struct.pack(">II", self.last_sid, NO_ERROR)))
        if not self.streams:
            self.loop.call_soon(self._close)

    def _abort(self, code: int, why: str) -> None:
        log.debug("gRPC connection closed: %s", why)
        if not self.closed:
            self._write(frame(GOAWAY, 0, 0, struct.pack(">II", self.last_sid, code) + why.encode()[:256]))
            self._close()

    def close_now(self) -> None:
        """Close the connection (after a drain), whatever is still open."""
        self._close()

    def _close(self) -> None:
        if self.closed:
            return
        self.flush()
        self.closed = True
        self.transport.close()

    def _write(self, data: bytes) -> None:
        # Everything written in one turn of the loop leaves in one writelines (one writev).
        if not self._out:
            self.loop.call_soon(self.flush)
        self._out.append(data)

    def flush(self) -> None:
        """Write what this turn of the loop queued, in one writelines."""
        out = self._out
        if out and not self.closed:
            self.transport.writelines(out)
        self._out = []
