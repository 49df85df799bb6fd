"""The gRPC transport closes connections that hold it without finishing a call (raw sockets).

A real listening socket on a loop thread, with limits of a fraction of a second; each test
waits (``wait_until``) for the server to close the connection, never for a fixed time.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from edge_runtime.serving import h2grpc
from edge_runtime.serving.h2deadlines import Timeouts
from edge_runtime.serving.h2grpc import DATA, GOAWAY, HEADERS, NO_ERROR, PREFACE, SETTINGS
from edge_runtime.serving.hpack import literal
from tests.harness.wait import wait_until

PATH = b"/inference.GRPCInferenceService/ServerLive"


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    loop = asyncio.new_event_loop()
    bound: list[int] = []
    started = threading.Event()

    def dispatch(path: bytes, message: memoryview, reply: h2grpc.Reply) -> None:
        reply(h2grpc.OK, "", b"")

    def run() -> None:
        asyncio.set_event_loop(loop)
        endpoint = h2grpc.Endpoint(dispatch, 1000, 4096, timeouts=Timeouts(header_s=0.2, body_s=0.2, idle_s=0.2))
        server = loop.run_until_complete(loop.create_server(lambda: h2grpc.Connection(endpoint), "127.0.0.1", 0))
        bound.append(server.sockets[0].getsockname()[1])
        started.set()
        loop.run_forever()
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()

    thread = threading.Thread(target=run, name="test-h2-deadlines", daemon=True)
    thread.start()
    assert started.wait(60), "the test server did not start"
    yield bound[0]
    loop.call_soon_threadsafe(loop.stop)
    thread.join(60)


def closed_by_server(sock: socket.socket, got: bytearray) -> bool:
    """Read what is there without blocking; True once the server has closed the connection."""
    while True:
        try:
            data = sock.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except ConnectionResetError:
            return True
        if not data:
            return True
        got += data


def frame_types(data: bytes | bytearray) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos:pos + 3], "big")
        out.append((data[pos + 3], bytes(data[pos + 9:pos + 9 + length])))
        pos += 9 + length
    return out


def goaway_code(got: bytearray) -> int:
    payloads = [p for kind, p in frame_types(got) if kind == GOAWAY]
    assert payloads, "no GOAWAY before the close"
    return int(struct.unpack(">II", payloads[0][:8])[1])


def headers(sid: int, end_headers: bool = True) -> bytes:
    block = b"\x83\x86" + literal(b":path", PATH) + literal(b"content-type", b"application/grpc")
    return h2grpc.frame(HEADERS, 0x4 if end_headers else 0, sid, block)


HELLO = PREFACE + h2grpc.frame(SETTINGS, 0, 0)


@pytest.mark.parametrize("sent", [b"", PREFACE[:10]], ids=["nothing", "half a preface"])
def test_a_connection_that_sends_no_preface_is_closed(port: int, sent: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(sent)
        got = bytearray()
        wait_until(lambda: closed_by_server(sock, got), "the server to close a silent connection", 60)


@pytest.mark.parametrize("sent", [
    HELLO + h2grpc.frame(SETTINGS, 0, 0)[:5],  # half a frame header
    HELLO + headers(1, end_headers=False),  # a header block waiting for CONTINUATION
    HELLO + h2grpc.frame(DATA, 0, 7, b"x" * 100)[:50],  # half a DATA frame for no open stream
], ids=["half a frame header", "header block without its end", "half a DATA frame for no stream"])
def test_a_connection_that_stops_inside_a_header_is_closed_with_goaway(port: int, sent: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(sent)
        got = bytearray()
        wait_until(lambda: closed_by_server(sock, got), "the server to close a half-sent header", 60)
        assert b"request headers not complete" in got
        goaway_code(got)


def test_a_request_whose_message_never_completes_is_closed(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(HELLO + headers(1) + h2grpc.frame(DATA, 0, 1, b"\x00\x00\x00\x00\x10abc"))  # 3 of 16 bytes
        got = bytearray()
        wait_until(lambda: closed_by_server(sock, got), "the server to close a stalled request body", 60)
        assert b"a request message not complete" in got


def test_a_connection_without_a_call_is_closed_with_a_graceful_goaway_after_its_last_answer(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(HELLO + headers(1) + h2grpc.frame(DATA, 0x1, 1, b"\x00\x00\x00\x00\x00"))
        got = bytearray()
        wait_until(lambda: closed_by_server(sock, got), "the server to close an idle connection", 60)
        kinds = [kind for kind, _ in frame_types(got)]
        assert kinds.count(HEADERS) == 2 and DATA in kinds  # the call was answered first
        assert goaway_code(got) == NO_ERROR
