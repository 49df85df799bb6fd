"""serving/h1.py, the daemon's HTTP/1.1 server, driven in memory (harness/transport.py).

What reaches the direct infer entry and what reaches the ASGI app, byte for byte, and what is
written back, in order. The real daemon's HTTP tests (test_http.py, the fuzz, limit and attack
tests in tests/reliability) run every request through the same protocol over sockets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from edge_runtime.serving.h1 import H1Protocol, H1Server, Limits
from harness.transport import MemoryTransport

MAX_BYTES = 1_000_000


class Conn:
    """One connection to a server whose direct entry and ASGI app record what they get."""

    def __init__(self, defer: bool = False) -> None:
        self.loop = asyncio.new_event_loop()
        self.direct: list[tuple[str, Any, list[tuple[bytes, bytes]]]] = []
        self.asgi: list[tuple[str, str, bytes]] = []
        self.pending: list[Callable[[], None]] = []  # deferred answers (defer=True)

        def direct_infer(target: str, headers: list[tuple[bytes, bytes]], body: Any, t0: int,
                         answer: Callable[[int, list[tuple[bytes, bytes]], bytes], None]) -> None:
            self.direct.append((target, body, list(headers)))
            reply = b"direct:%d" % len(body)

            def respond() -> None:
                answer(200, [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(reply))], reply)

            if defer:
                self.pending.append(respond)
            else:
                respond()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            body = b""
            while True:
                msg = await receive()
                body += msg.get("body", b"")
                if not msg.get("more_body"):
                    break
            self.asgi.append((scope["method"], scope["path"], body))
            reply = b"asgi:%d" % len(body)
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", b"%d" % len(reply))]})
            await send({"type": "http.response.body", "body": reply})

        self.server = H1Server(app, Limits(max_request_bytes=MAX_BYTES), direct_infer=direct_infer, loop=self.loop)
        self.proto = H1Protocol(self.server)
        self.transport = MemoryTransport()
        self.proto.connection_made(self.transport)

    def send(self, *pieces: bytes) -> None:
        for piece in pieces:
            self.proto.data_received(piece)
        self.settle()

    def settle(self) -> None:
        """Run what the loop has to do: ASGI tasks and the writes at the end of the turn."""
        for _ in range(5):
            if self.server.tasks:
                self.loop.run_until_complete(asyncio.wait(set(self.server.tasks)))
            self.loop.run_until_complete(asyncio.sleep(0))

    def answers(self) -> list[bytes]:
        """Each response body written so far, in order (parsed, not split on writes)."""
        data = b"".join(self.transport.written)
        out = []
        while data:
            head, _, rest = data.partition(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")))
            out.append(rest[:length])
            data = rest[length:]
        return out

    def close(self) -> None:
        self.proto.connection_lost(None)
        self.loop.close()


@pytest.fixture
def conn() -> Iterator[Conn]:
    c = Conn()
    yield c
    c.close()


def infer(body: bytes, path: bytes = b"/v2/models/m/infer", extra: bytes = b"") -> bytes:
    return b"POST %s HTTP/1.1\r\nhost: a\r\n%scontent-length: %d\r\n\r\n" % (path, extra, len(body)) + body


def test_an_infer_request_is_answered_without_asgi_in_one_write(conn: Conn) -> None:
    body = bytes(range(256)) * 400  # 100 kB: a small image tensor
    conn.send(infer(body, extra=b"inference-header-content-length: 12\r\n"))
    assert conn.asgi == []
    [(target, got, headers)] = conn.direct
    assert target == "m" and got == body
    assert (b"inference-header-content-length", b"12") in headers
    assert conn.transport.written[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert len(conn.transport.written) == 1  # status line, headers and body in one write
    assert conn.answers() == [b"direct:102400"]
    assert not conn.transport.closed  # keep-alive: the next request follows on the same connection
    conn.send(infer(b"xy", b"/v2/models/m/versions/3/infer"))
    assert conn.direct[-1][0] == "m/versions/3" and conn.answers()[-1] == b"direct:2"


def test_a_body_in_one_piece_is_the_object_the_parser_made(conn: Conn) -> None:
    body = bytes(range(256)) * 400
    raw = infer(body)
    head = len(raw) - len(body)
    conn.send(raw[:head], raw[head:])
    assert conn.direct[0][1] == body and type(conn.direct[0][1]) is bytes  # held, never copied


def test_a_body_in_pieces_arrives_whole_and_in_order(conn: Conn) -> None:
    body = bytes(range(251)) * 1000
    raw = infer(body)
    conn.send(*(raw[i:i + 997] for i in range(0, len(raw), 997)))
    assert bytes(conn.direct[0][1]) == body
    assert conn.answers() == [b"direct:251000"]


def test_a_large_declared_body_gets_no_more_memory_than_was_sent(conn: Conn) -> None:
    conn.send(b"POST /v2/models/m/infer HTTP/1.1\r\ncontent-length: %d\r\n\r\n" % MAX_BYTES, b"a" * 1000,
              b"b" * 1000, b"c" * 1000)
    req = conn.proto.req
    assert req is not None and len(req.body) == 3000  # the client declared 1 MB and sent 3 kB
    conn.send(b"d" * (MAX_BYTES - 3000))
    [(_, got, _)] = conn.direct
    assert len(got) == MAX_BYTES and bytes(got[:3000]) == b"a" * 1000 + b"b" * 1000 + b"c" * 1000


def test_over_max_request_bytes_is_answered_413_and_the_connection_goes_on(conn: Conn) -> None:
    conn.send(infer(b"x" * (MAX_BYTES + 1)))
    assert conn.direct == [] and conn.asgi == []
    assert conn.transport.written[0].startswith(b"HTTP/1.1 413 ")
    assert b"max_request_bytes" in conn.answers()[0]
    conn.send(infer(b"abc"))  # the oversized body was read and dropped; the next request is answered
    assert conn.answers()[-1] == b"direct:3"


def test_a_chunked_body_over_the_limit_is_refused() -> None:
    c = Conn()
    try:
        piece = b"x" * 500_000
        chunk = b"%x\r\n%s\r\n" % (len(piece), piece)
        c.send(b"POST /v2/models/m/infer HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n" + chunk * 3 + b"0\r\n\r\n")
        assert c.direct == [] and c.transport.written[0].startswith(b"HTTP/1.1 413 ")
    finally:
        c.close()


@pytest.mark.parametrize(("why", "raw"), [
    ("gzip body", infer(b"\x1f\x8b...", extra=b"content-encoding: gzip\r\n")),
    ("not an infer route", infer(b"{}", b"/v2/repository/index")),
    ("GET", b"GET /v2/models/m/infer HTTP/1.1\r\n\r\n"),
    ("percent-encoded path", infer(b"abc", b"/v2/models/m%2Fx/infer")),
])
def test_other_requests_go_to_the_asgi_app_with_their_whole_body(conn: Conn, why: str, raw: bytes) -> None:
    conn.send(raw)
    assert conn.direct == [], why
    assert len(conn.asgi) == 1, why
    method, path, body = conn.asgi[0]
    assert conn.answers() == [b"asgi:%d" % len(body)]


def test_a_chunked_body_is_read_whole(conn: Conn) -> None:
    conn.send(b"POST /v2/models/m/infer HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert bytes(conn.direct[0][1]) == b"abcde"


def test_expect_100_continue_is_answered_before_the_body(conn: Conn) -> None:
    conn.send(b"POST /v2/models/m/infer HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 3\r\n\r\n")
    assert conn.transport.written == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    conn.send(b"abc")
    assert conn.direct[0][1] == b"abc"


def test_head_requests_get_headers_only(conn: Conn) -> None:
    conn.send(b"HEAD /v2/health/live HTTP/1.1\r\n\r\n")
    assert conn.asgi[0][0] == "HEAD"
    written = b"".join(conn.transport.written)
    assert written.endswith(b"content-length: 6\r\n\r\n")  # "asgi:0" not sent


@pytest.mark.parametrize("raw", [infer(b"abc", extra=b"connection: close\r\n"),
                                 b"POST /v2/models/m/infer HTTP/1.0\r\ncontent-length: 3\r\n\r\nabc"])
def test_connection_close_and_http_1_0_close_after_the_answer(conn: Conn, raw: bytes) -> None:
    conn.send(raw)
    assert conn.direct and conn.transport.closed
    assert b"connection: close\r\n" in conn.transport.written[0]


def test_pipelined_requests_are_answered_in_order_behind_a_queued_one() -> None:
    c = Conn(defer=True)
    try:
        c.send(infer(b"first") + infer(b"second!") + b"GET /v2/health/live HTTP/1.1\r\n\r\n")
        assert len(c.direct) == 1 and c.answers() == []  # the first waits for its executor
        assert c.transport.paused  # nothing more is read while a request waits behind it
        c.pending.pop()()  # the executor answers the first
        c.settle()
        assert len(c.direct) == 2 and c.answers() == [b"direct:5"]
        c.pending.pop()()
        c.settle()
        assert c.answers() == [b"direct:5", b"direct:7", b"asgi:0"]
        assert not c.transport.paused
    finally:
        c.close()


def test_a_half_closed_client_gets_its_answer_then_the_connection_closes() -> None:
    c = Conn(defer=True)
    try:
        c.send(infer(b"abc"))
        assert c.proto.eof_received() is True  # kept open for the answer
        c.pending.pop()()
        c.settle()
        assert c.answers() == [b"direct:3"] and c.transport.closed
    finally:
        c.close()


def test_a_client_gone_before_its_answer_gets_nothing_written() -> None:
    c = Conn(defer=True)
    try:
        c.send(infer(b"abc"))
        c.proto.connection_lost(None)
        c.pending.pop()()
        c.settle()
        assert c.transport.written == []
    finally:
        c.loop.close()


def test_a_body_cut_short_is_never_handed_on(conn: Conn) -> None:
    conn.send(infer(b"x" * 100)[:-40])
    conn.proto.connection_lost(None)
    assert conn.direct == []


def test_unparsable_http_is_answered_400_and_closed(conn: Conn) -> None:
    conn.send(b"NOT HTTP AT ALL\r\n\r\n")
    assert conn.transport.written[0].startswith(b"HTTP/1.1 400 ") and conn.transport.closed
    assert b'"error"' in conn.answers()[0]


def test_the_clocks_close_idle_and_slow_connections() -> None:
    c = Conn()
    try:
        c.send(infer(b"abc"))
        assert c.proto.phase == "idle" and c.proto.deadline is not None  # keep-alive clock after an answer
        c.proto.expire()
        assert c.transport.closed and c.transport.written[-1].startswith(b"HTTP/1.1 200")  # idle: closed, no answer
    finally:
        c.close()
    c = Conn()
    try:
        c.send(b"POST /v2/models/m/infer HTTP/1.1\r\ncontent-length: 10\r\n\r\nabc")
        assert c.proto.phase == "body"
        c.proto.expire()
        c.settle()
        assert c.transport.written[-1].startswith(b"HTTP/1.1 408 ") and c.transport.closed
    finally:
        c.close()


def test_a_head_pipelined_behind_a_slow_answer_is_not_timed_out() -> None:
    c = Conn(defer=True)
    try:
        c.send(infer(b"abc") + b"POST /v2/models/m/infer HTTP/1.1\r\ncontent-le")  # the next head, cut
        assert c.proto.phase == "head"
        c.proto.expire()  # its clock runs out while the first is still being answered
        assert not c.transport.closed
        c.pending.pop()()
        c.settle()
        assert c.answers() == [b"direct:3"] and not c.transport.closed
        c.proto.expire()  # now nothing is owed before it: 408 and close
        c.settle()
        assert c.transport.written[-1].startswith(b"HTTP/1.1 408 ") and c.transport.closed
    finally:
        c.close()


@pytest.mark.parametrize("target", [b"?x", b"*"])
def test_odd_request_targets_are_answered(conn: Conn, target: bytes) -> None:
    conn.send(b"GET %s HTTP/1.1\r\n\r\n" % target)
    written = b"".join(conn.transport.written)
    assert written.startswith(b"HTTP/1.1 400 ") or written.startswith(b"HTTP/1.1 200 "), written[:40]
    assert not conn.transport.closed or b"connection: close" in written


def test_with_several_connections_answers_are_written_together_at_the_end_of_the_turn() -> None:
    c = Conn()
    other = H1Protocol(c.server)
    other.connection_made(MemoryTransport())
    try:
        c.proto.data_received(infer(b"abc"))
        assert c.direct and c.transport.written == []  # answered, written with the turn's others
        c.settle()
        assert c.answers() == [b"direct:3"] and len(c.transport.written) == 1
    finally:
        other.connection_lost(None)
        c.close()
