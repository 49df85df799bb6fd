"""The gRPC endpoint's own HTTP/2 transport and HPACK decoder, driven byte by byte (no sockets).

The real grpc client against a real daemon is in test_grpc.py; here are the cases a
well-behaved client never produces: hostile sizes, broken frames, flow control at its
edges, resets and shutdown.
"""

from __future__ import annotations

import asyncio
import functools
import struct
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from edge_runtime.serving import h2grpc
from edge_runtime.serving.h2grpc import DATA, GOAWAY, HEADERS, PREFACE, RST_STREAM, SETTINGS, WINDOW_UPDATE, Status
from edge_runtime.serving.hpack import Decoder, HpackError, huffman_decode, literal

PATH = b"/inference.GRPCInferenceService/ModelInfer"


class FakeTransport:
    """Collects what the connection writes."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def writelines(self, parts: Any) -> None:
        for p in parts:
            self.out += p

    def close(self) -> None:
        self.closed = True


def frames(data: bytes | bytearray) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream, payload) of every frame in ``data``."""
    out = []
    pos = 0
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 3], "big")
        kind, flags = data[pos + 3], data[pos + 4]
        sid = int.from_bytes(data[pos + 5:pos + 9], "big") & 0x7FFFFFFF
        out.append((kind, flags, sid, bytes(data[pos + 9:pos + 9 + length])))
        pos += 9 + length
    return out


def request_headers(sid: int, path: bytes = PATH, end_stream: bool = False) -> bytes:
    block = b"\x83\x86" + literal(b":path", path) + literal(b"content-type", b"application/grpc")
    return h2grpc.frame(HEADERS, 0x4 | (0x1 if end_stream else 0), sid, block)


def message(body: bytes, compressed: bool = False) -> bytes:
    return (b"\x01" if compressed else b"\x00") + struct.pack(">I", len(body)) + body


class Peer:
    """A connection under test and the calls it dispatched."""

    def __init__(self, max_message_bytes: int = 1000, max_header_bytes: int = 4096,
                 answer: Callable[[bytes, bytes, h2grpc.Reply], None] | None = None) -> None:
        self.calls: list[tuple[bytes, bytes, h2grpc.Reply]] = []

        def dispatch(path: bytes, msg: memoryview, reply: h2grpc.Reply) -> None:
            self.calls.append((path, bytes(msg), reply))
            if answer is not None:
                answer(path, bytes(msg), reply)

        self.endpoint = h2grpc.Endpoint(dispatch, max_message_bytes, max_header_bytes)
        self.conn = h2grpc.Connection(self.endpoint)
        self.transport = FakeTransport()
        self.conn.connection_made(self.transport)
        self.take()  # the server's SETTINGS and WINDOW_UPDATE

    def send(self, data: bytes, one_byte_at_a_time: bool = False) -> None:
        if one_byte_at_a_time:
            for k in range(len(data)):
                self.conn.data_received(data[k:k + 1])
        else:
            self.conn.data_received(data)

    def take(self) -> list[tuple[int, int, int, bytes]]:
        """Frames written since the last call."""
        self.conn.flush()
        got = frames(self.transport.out)
        self.transport.out.clear()
        return got

    def open(self) -> None:
        self.send(PREFACE + h2grpc.frame(SETTINGS, 0, 0, b""))
        assert self.take() == [(SETTINGS, 1, 0, b"")]


def in_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an ``async def`` test in a fresh event loop (the connection belongs to the running loop)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


def status_of(block: bytes) -> tuple[int, str]:
    headers = dict(Decoder(8192).decode(block))
    return int(headers[b"grpc-status"]), headers.get(b"grpc-message", b"").decode()


# -- HPACK ----------------------------------------------------------------------------------


def test_hpack_decodes_the_rfc_7541_examples_with_huffman_and_the_dynamic_table() -> None:
    d = Decoder(8192)
    assert d.decode(bytes.fromhex("828684418cf1e3c2e5f23a6ba0ab90f4ff"))[-1] == (b":authority", b"www.example.com")
    assert d.decode(bytes.fromhex("828684be5886a8eb10649cbf"))[-1] == (b"cache-control", b"no-cache")
    third = d.decode(bytes.fromhex("828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf"))
    assert third[-1] == (b"custom-key", b"custom-value") and third[1] == (b":scheme", b"https")
    assert d.size == 164  # RFC 7541 C.4.3: three entries, 164 octets


@pytest.mark.parametrize(
    ("block", "fragment"),
    [
        (b"\xff\x80\x01", "not in the table"),  # index 255
        (b"\x3f\xe2\x1f", "table size"),  # a table size update to 4097
        (b"\x00\x81\x00\x01a", "Huffman padding"),  # '0' (00000) padded with zeros, not with EOS ones
        (b"\x00\x7f\x10abc", "runs past the block"),
        (b"\x00\x01" + b"n" + b"\x7f\xff\xff\xff\xff\x7f", "integer too large"),
    ],
)
def test_hpack_refuses_malformed_blocks(block: bytes, fragment: str) -> None:
    with pytest.raises(HpackError, match=fragment):
        Decoder(8192).decode(block)


def test_hpack_bounds_the_decoded_header_list() -> None:
    with pytest.raises(HpackError, match="header list exceeds 100 bytes"):
        Decoder(100).decode(literal(b"x", b"y" * 80))


def test_huffman_round_trip_of_every_byte() -> None:
    from edge_runtime.serving.hpack import huffman_codes

    codes = huffman_codes()
    bits = "".join(format(code, f"0{length}b") for code, length in codes[:256])
    bits += "1" * (-len(bits) % 8)
    assert huffman_decode(int(bits, 2).to_bytes(len(bits) // 8, "big")) == bytes(range(256))


# -- HTTP/2 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("split", [False, True], ids=["one read", "one byte per read"])
@in_loop
async def test_a_unary_call_is_dispatched_and_answered_with_headers_message_and_trailers(split: bool
) -> None:
    peer = Peer(answer=lambda path, msg, reply: reply(Status.OK, "", b"answer:" + msg))
    peer.open()
    peer.send(request_headers(1) + h2grpc.frame(DATA, 1, 1, message(b"ping")), one_byte_at_a_time=split)
    assert [(p, m) for p, m, _ in peer.calls] == [(PATH, b"ping")]
    (k1, f1, s1, head), (k2, _, s2, data), (k3, f3, s3, trailers) = peer.take()
    assert (k1, k2, k3, s1, s2, s3) == (HEADERS, DATA, HEADERS, 1, 1, 1)
    assert dict(Decoder(8192).decode(head))[b"content-type"] == b"application/grpc" and not f1 & 1
    assert data == message(b"answer:ping")
    assert f3 & 1 and status_of(trailers) == (0, "")


@in_loop
async def test_errors_are_trailers_only_with_a_percent_encoded_message() -> None:
    peer = Peer(answer=lambda path, msg, reply: reply(Status.NOT_FOUND, "unknown model 'ü%'", b""))
    peer.open()
    peer.send(request_headers(1) + h2grpc.frame(DATA, 1, 1, message(b"")))
    [(kind, flags, _, block)] = peer.take()
    assert kind == HEADERS and flags & 1
    headers = dict(Decoder(8192).decode(block))
    assert headers[b"grpc-status"] == b"5" and headers[b"grpc-message"] == b"unknown model '%C3%BC%25'"


@in_loop
async def test_a_message_over_the_limit_is_refused_from_its_length_prefix() -> None:
    peer = Peer(max_message_bytes=100)
    peer.open()
    # Only the first bytes of a 1 MB message: refused at once, the rest is never waited for.
    peer.send(request_headers(1) + h2grpc.frame(DATA, 0, 1, b"\x00" + struct.pack(">I", 1_000_000) + b"x" * 10))
    assert peer.calls == []
    (kind, flags, _, block), (rst, _, sid, code) = peer.take()
    assert kind == HEADERS and flags & 1 and rst == RST_STREAM and sid == 1
    assert status_of(block) == (Status.RESOURCE_EXHAUSTED, "request message is 1000000 bytes, max_request_bytes is 100")
    peer.send(h2grpc.frame(DATA, 1, 1, b"y" * 50))  # what was already in flight is dropped
    assert peer.calls == [] and not peer.transport.closed


@in_loop
async def test_compressed_messages_and_calls_without_one_message_are_refused() -> None:
    peer = Peer()
    peer.open()
    peer.send(request_headers(1) + h2grpc.frame(DATA, 1, 1, message(b"z", compressed=True)))
    peer.send(request_headers(3, end_stream=True))
    peer.send(request_headers(5) + h2grpc.frame(DATA, 1, 5, message(b"a") + message(b"b")))
    answers = [status_of(block)[0] for _, _, _, block in peer.take()]
    assert answers == [Status.UNIMPLEMENTED, Status.INVALID_ARGUMENT, Status.INVALID_ARGUMENT]
    assert peer.calls == []


@in_loop
async def test_an_answer_larger_than_the_clients_window_waits_for_window_update() -> None:
    peer = Peer()
    peer.send(PREFACE + h2grpc.frame(SETTINGS, 0, 0, struct.pack(">HI", 0x4, 10)))
    peer.take()
    peer.send(request_headers(1) + h2grpc.frame(DATA, 1, 1, message(b"q")))
    peer.calls[0][2](Status.OK, "", b"a" * 100)
    head, first = peer.take()
    assert head[0] == HEADERS and first[:3] == (DATA, 0, 1) and len(first[3]) == 10
    peer.send(h2grpc.frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 50)))
    [more] = peer.take()
    assert len(more[3]) == 50
    peer.send(h2grpc.frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 1000)))
    rest, trailers = peer.take()
    assert first[3] + more[3] + rest[3] == message(b"a" * 100)
    assert trailers[0] == HEADERS and trailers[1] & 1 and status_of(trailers[3]) == (0, "")


@in_loop
async def test_a_reset_stream_gets_no_late_answer() -> None:
    peer = Peer()
    peer.open()
    peer.send(request_headers(1) + h2grpc.frame(DATA, 1, 1, message(b"q")))
    peer.send(h2grpc.frame(RST_STREAM, 0, 1, struct.pack(">I", 8)))
    peer.calls[0][2](Status.OK, "", b"late")
    assert peer.take() == [] and peer.endpoint.idle.is_set()


@in_loop
async def test_streams_over_the_concurrency_limit_are_refused() -> None:
    peer = Peer()
    peer.open()
    for k in range(h2grpc.MAX_STREAMS + 1):
        peer.send(request_headers(2 * k + 1) + h2grpc.frame(DATA, 1, 2 * k + 1, message(b"q")))
    assert len(peer.calls) == h2grpc.MAX_STREAMS
    [(kind, _, sid, code)] = peer.take()
    assert (kind, sid, code) == (RST_STREAM, 2 * h2grpc.MAX_STREAMS + 1, struct.pack(">I", h2grpc.REFUSED_STREAM))


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", h2grpc.PROTOCOL_ERROR),
        (PREFACE + h2grpc.frame(HEADERS, 0x4, 1, b"\xff\x80\x01"), h2grpc.COMPRESSION_ERROR),
        (PREFACE + h2grpc.frame(HEADERS, 0x0, 1, b"\x82" * 3000) + h2grpc.frame(9, 0, 1, b"\x82" * 3000),
         h2grpc.PROTOCOL_ERROR),  # a header block over max_header_bytes, spread over CONTINUATION
        (PREFACE + struct.pack(">I", h2grpc.MAX_FRAME_BYTES + 1)[1:] + b"\x00\x00\x00\x00\x00\x01", h2grpc.FRAME_SIZE_ERROR),
        (PREFACE + request_headers(3) + request_headers(1), h2grpc.PROTOCOL_ERROR),  # stream ids must grow
    ],
    ids=["not HTTP/2", "bad HPACK", "header flood", "frame too large", "stream id reused"],
)
@in_loop
async def test_protocol_errors_end_the_connection_with_goaway(data: bytes, code: int) -> None:
    peer = Peer()
    peer.send(data)
    got = peer.transport.out
    goaway = [f for f in frames(got) if f[0] == GOAWAY]
    assert peer.transport.closed and goaway and struct.unpack(">I", goaway[0][3][4:8])[0] == code


@in_loop
async def test_goaway_refuses_new_calls_and_closes_once_the_open_ones_are_answered() -> None:
    peer = Peer()
    peer.open()
    peer.send(request_headers(1) + h2grpc.frame(DATA, 1, 1, message(b"q")))
    assert not peer.endpoint.idle.is_set()
    peer.conn.goaway()
    peer.send(request_headers(3) + h2grpc.frame(DATA, 1, 3, message(b"q")))
    [(kind, _, _, payload), (rst, _, sid, _)] = peer.take()
    assert kind == GOAWAY and struct.unpack(">I", payload[:4])[0] == 1 and (rst, sid) == (RST_STREAM, 3)
    assert len(peer.calls) == 1 and not peer.transport.closed
    peer.calls[0][2](Status.OK, "", b"done")
    await asyncio.sleep(0)  # the close is scheduled after the answer's write
    assert peer.transport.closed and peer.endpoint.idle.is_set()
    assert [f[0] for f in frames(peer.transport.out)] == [HEADERS, DATA, HEADERS]


def test_the_protocol_adapters_share_the_cycle_and_never_import_each_other() -> None:
    import ast
    from pathlib import Path

    import edge_runtime.serving.app as app_module

    serving = Path(app_module.__file__).parent

    def imported(module: str) -> set[str]:
        tree = ast.parse((serving / f"{module}.py").read_text(encoding="utf-8"))
        return {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
        }

    grpc_side, http_side = imported("grpc_server") | imported("h2grpc"), imported("app")
    assert "edge_runtime.serving.cycle" in grpc_side and "edge_runtime.serving.cycle" in http_side
    assert "edge_runtime.serving.app" not in grpc_side and "edge_runtime.serving.grpc_server" not in http_side
    assert not any(m == "grpc" or m.startswith("grpc.") for m in grpc_side)  # grpcio is not used by the server


@in_loop
async def test_connections_past_max_connections_are_refused_at_once() -> None:
    first = Peer()
    first.endpoint.max_connections = 1
    extra = h2grpc.Connection(first.endpoint)
    transport = FakeTransport()
    extra.connection_made(transport)
    [(kind, _, _, payload)] = frames(transport.out)
    assert kind == GOAWAY and struct.unpack(">I", payload[4:8])[0] == h2grpc.ENHANCE_YOUR_CALM and transport.closed
    assert first.endpoint.connections == {first.conn}
