"""Infer requests read by serving/http.py's protocol itself, without ASGI (the direct path).

The protocol is driven in memory (harness/transport.py): what reaches the direct entry and
what reaches the ASGI app, byte for byte, and what is written back. The real daemon's HTTP
tests (test_http.py, the fuzz and attack tests) run every infer request through this path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from edge_runtime.serving.http import http_protocol
from harness.transport import MemoryTransport

MAX_BYTES = 1_000_000


class Conn:
    """One connection to a protocol whose direct entry and ASGI app record what they get."""

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

        protocol = http_protocol(direct_infer=direct_infer, direct_max_bytes=MAX_BYTES)
        config = Config(app, http=protocol)
        config.load()
        self.proto = protocol(config=config, server_state=ServerState(), app_state={}, _loop=self.loop)
        self.transport = MemoryTransport()
        self.proto.connection_made(self.transport)

    def send(self, *pieces: bytes) -> None:
        for piece in pieces:
            self.proto.data_received(piece)
        self.settle()

    def settle(self) -> None:
        """Run what the loop has to do: ASGI tasks and the coalesced writes."""
        for _ in range(5):
            if self.proto.tasks:
                self.loop.run_until_complete(asyncio.wait(set(self.proto.tasks)))
            self.loop.run_until_complete(asyncio.sleep(0))

    def answers(self) -> list[bytes]:
        """Each response body written so far, in order (responses are parsed, not split on writes)."""
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
def conn() -> Any:
    c = Conn()
    yield c
    c.close()


def infer(body: bytes, path: bytes = b"/v2/models/m/infer", extra: bytes = b"") -> bytes:
    return b"POST %s HTTP/1.1\r\nhost: a\r\n%scontent-length: %d\r\n\r\n" % (path, extra, len(body)) + body


def test_an_infer_request_is_answered_without_asgi_in_one_write(conn: Conn) -> None:
    body = bytes(range(256)) * 400  # 100 kB: a small image tensor
    raw = infer(body, extra=b"inference-header-content-length: 12\r\n")
    conn.send(raw)
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
    declared = MAX_BYTES  # allowed, but the client sends 3 kB of it and stalls
    conn.send(b"POST /v2/models/m/infer HTTP/1.1\r\ncontent-length: %d\r\n\r\n" % declared, b"a" * 1000,
              b"b" * 1000, b"c" * 1000)
    held = conn.proto.cycle.body
    assert len(held) == 3000 and len(held) < declared // 100
    conn.send(b"d" * (declared // 2))  # past half: one buffer of the declared size, filled in place
    conn.send(b"e" * (declared - 3000 - declared // 2))
    [(_, got, _)] = conn.direct
    assert len(got) == declared and bytes(got[:3000]) == b"a" * 1000 + b"b" * 1000 + b"c" * 1000
    assert bytes(got[-10:]) == b"e" * 10


@pytest.mark.parametrize(("why", "raw"), [
    ("gzip body", infer(b"\x1f\x8b...", extra=b"content-encoding: gzip\r\n")),
    ("chunked body", b"POST /v2/models/m/infer HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    ("waits for 100 Continue", infer(b"abc", extra=b"expect: 100-continue\r\n")),
    ("over max_request_bytes", infer(b"x" * (MAX_BYTES + 1))),
    ("not an infer route", infer(b"{}", b"/v2/repository/index")),
    ("GET", b"GET /v2/models/m/infer HTTP/1.1\r\n\r\n"),
    ("percent-encoded path", infer(b"abc", b"/v2/models/m%2Fx/infer")),
    ("HTTP/1.0", b"POST /v2/models/m/infer HTTP/1.0\r\ncontent-length: 3\r\n\r\nabc"),
])
def test_other_requests_take_the_asgi_path(conn: Conn, why: str, raw: bytes) -> None:
    conn.send(raw)
    assert conn.direct == [], why
    assert len(conn.asgi) == 1, why


def test_connection_close_is_honoured(conn: Conn) -> None:
    conn.send(infer(b"abc", extra=b"connection: close\r\n"))
    assert conn.direct and conn.transport.closed
    assert b"connection: close\r\n" in conn.transport.written[0]


def test_pipelined_requests_are_answered_in_order_behind_a_queued_one() -> None:
    c = Conn(defer=True)
    try:
        c.send(infer(b"first") + infer(b"second!") + b"GET /v2/health/live HTTP/1.1\r\n\r\n")
        assert len(c.direct) == 1 and c.answers() == []  # the first waits for its executor
        c.pending.pop()()  # the executor answers
        c.settle()
        assert c.answers() == [b"direct:5", b"asgi:7", b"asgi:0"]
        assert c.asgi[0][1] == "/v2/models/m/infer"  # queued behind an answer: uvicorn's pipeline
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
