"""Request bodies through serving/http.py's protocol: held once, not copied on the way to the app."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState

from edge_runtime.serving.http import http_protocol
from harness.transport import MemoryTransport


def _serve(pieces: list[bytes]) -> tuple[list[Any], Any]:
    """Feed ``pieces`` to a connected protocol; what the app received and the body held before it ran."""
    received: list[Any] = []
    held: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            msg = await receive()
            received.append(msg["body"])
            if not msg.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    loop = asyncio.new_event_loop()
    try:
        config = Config(app, http=http_protocol())
        config.load()
        proto = http_protocol()(config=config, server_state=ServerState(), app_state={}, _loop=loop)
        proto.connection_made(MemoryTransport())
        for piece in pieces:
            proto.data_received(piece)
            if proto.cycle is not None:
                held.append(proto.cycle.body)
        loop.run_until_complete(asyncio.wait(proto.tasks))
        proto.connection_lost(None)
    finally:
        loop.close()
    return received, held


def _request(body: bytes) -> bytes:
    return b"POST /v2/models/m/infer HTTP/1.1\r\nhost: a\r\ncontent-length: %d\r\n\r\n" % len(body) + body


def test_a_body_in_one_piece_reaches_the_app_as_the_object_the_parser_made() -> None:
    body = bytes(range(256)) * 400  # 100 kB, the size of a small image tensor
    received, held = _serve([_request(body)])
    assert received == [body]
    assert received[0] is held[-1]  # uvicorn alone appends it to a bytearray, then copies that into bytes


def test_a_body_in_pieces_reaches_the_app_whole_and_in_order() -> None:
    body = bytes(range(256)) * 400
    raw = _request(body)
    received, _ = _serve([raw[:1000], raw[1000:50_000], raw[50_000:]])
    assert b"".join(received) == body
