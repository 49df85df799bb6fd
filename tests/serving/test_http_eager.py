"""serving/http.py runs a request eagerly: answered inside ``data_received`` when its body came whole,
a task (as uvicorn makes one) only when it has to wait."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState

from edge_runtime.serving.http import http_protocol


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False
        self.written = bytearray()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 8000) if name in ("sockname", "peername") else default

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def write(self, data: Any) -> None:
        self.written += data

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


App = Callable[[Any, Any, Any], Awaitable[None]]


def _echo(log: list[Any]) -> App:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            msg = await receive()
            body += msg["body"]
            if not msg.get("more_body"):
                break
        log.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})
    return app


def _request(body: bytes) -> bytes:
    return b"POST /v2/models/m/infer HTTP/1.1\r\nhost: a\r\ncontent-length: %d\r\n\r\n" % len(body) + body


def _connect(app: App) -> tuple[Any, _Transport]:
    config = Config(app, http=http_protocol(), lifespan="off", log_config=None, access_log=False)
    config.load()
    proto = http_protocol()(config=config, server_state=ServerState(), app_state={})
    transport = _Transport()
    proto.connection_made(transport)
    return proto, transport


def test_a_request_whose_body_came_whole_is_answered_without_a_task() -> None:
    log: list[Any] = []

    async def run() -> None:
        proto, transport = _connect(_echo(log))
        proto.data_received(_request(b"x" * 5000))
        assert log == [b"x" * 5000] and not proto.tasks and proto.cycle.response_complete
        await asyncio.sleep(0)  # the one coalesced write of the turn
        assert transport.written.startswith(b"HTTP/1.1 200 ") and transport.written.endswith(b"x" * 5000)
        proto.connection_lost(None)

    asyncio.run(run())


def test_a_request_waiting_for_its_body_becomes_a_task_and_is_answered() -> None:
    log: list[Any] = []

    async def run() -> None:
        proto, transport = _connect(_echo(log))
        raw = _request(bytes(range(256)) * 100)
        proto.data_received(raw[:3000])
        assert len(proto.tasks) == 1 and not log
        await asyncio.sleep(0)
        proto.data_received(raw[3000:])
        await asyncio.wait(proto.tasks)
        assert log == [bytes(range(256)) * 100]
        await asyncio.sleep(0)
        assert transport.written.startswith(b"HTTP/1.1 200 ")
        proto.connection_lost(None)

    asyncio.run(run())


def test_pipelined_requests_are_answered_in_order() -> None:
    log: list[Any] = []

    async def run() -> None:
        proto, transport = _connect(_echo(log))
        proto.data_received(_request(b"first") + _request(b"second"))
        assert log == [b"first"]  # the second waits for the first's answer, then runs as a task
        for _ in range(5):
            await asyncio.sleep(0)
        assert log == [b"first", b"second"]
        assert transport.written.index(b"first") < transport.written.index(b"second")
        proto.connection_lost(None)

    asyncio.run(run())


def test_a_request_that_waits_gets_what_it_waited_for_and_its_cancellation() -> None:
    """The task that finishes an eagerly started request passes results and cancellation on."""
    got: list[Any] = []
    gate: dict[str, asyncio.Future[str]] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        fut = gate[scope["path"]] = asyncio.get_running_loop().create_future()
        try:
            got.append(await fut)
        except asyncio.CancelledError:
            got.append("cancelled")
            raise
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    async def run() -> None:
        proto, transport = _connect(app)
        proto.data_received(_request(b"a"))
        (task,) = proto.tasks
        gate["/v2/models/m/infer"].set_result("value")
        await task
        await asyncio.sleep(0)
        assert got == ["value"] and transport.written.startswith(b"HTTP/1.1 200 ")
        proto.data_received(_request(b"b"))
        (task,) = proto.tasks
        del transport.written[:]
        task.cancel()
        await asyncio.wait([task])
        await asyncio.sleep(0)
        assert got == ["value", "cancelled"]
        assert transport.written.startswith(b"HTTP/1.1 500 ")  # uvicorn's answer to a request task that failed
        proto.connection_lost(None)

    asyncio.run(run())
