"""A cheap HTTP/1.1 keep-alive load generator: N connections, one request in flight each.

Runs in its own process on uvloop with raw asyncio protocols (no HTTP library), so it
costs a few microseconds per request and stays out of the way of the server it drives.
Usage: ``python loadgen.py JOB_JSON`` where the job names host, port, clients, warm-up
and duration in seconds, the request as a file of raw bytes, and ``out``, a file that
receives ``{"count", "total", "errors", "seconds", "latencies_us": [...]}`` (latencies of
the requests completed in the measured window). h2_loadgen.py drives gRPC calls with the
same :class:`Run` and :func:`drive`; only the connection protocol differs.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class Conn(asyncio.Protocol):
    """One keep-alive connection sending the same request again as soon as it is answered."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.buf = bytearray()
        self.need = -1
        self.t0 = 0.0
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.send()

    def send(self) -> None:
        self.t0 = time.perf_counter()
        assert self.transport is not None
        self.transport.write(self.run.payload)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            if self.need < 0:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buf[:end]).lower()
                self.status = int(head[9:12])
                i = head.find(b"\r\ncontent-length:")  # not inference-header-content-length
                length = 0
                if i >= 0:
                    j = head.find(b"\r\n", i + 2)
                    length = int(head[i + 17 : j if j >= 0 else len(head)])
                self.need = end + 4 + length
            if len(buf) < self.need:
                return
            del buf[: self.need]
            self.need = -1
            self.run.done(self.t0, time.perf_counter(), self.status == 200)
            if self.run.stopped:
                assert self.transport is not None
                self.transport.close()
                return
            self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class Run:
    """Counts completions inside the measured window."""

    def __init__(self, payload: bytes, start: float, end: float) -> None:
        self.payload = payload  # the bytes every request (or call) sends
        self.start = start
        self.end = end
        self.latencies: list[float] = []
        self.errors = 0
        self.total = 0  # every completion, warm-up included
        self.stopped = False

    def done(self, t0: float, now: float, ok: bool) -> None:
        """One request sent at ``t0`` completed at ``now``; ``ok``: answered with success."""
        self.total += 1
        if not ok:
            self.errors += 1
        if self.start <= now <= self.end:  # completions in the window (slow requests may start before it)
            self.latencies.append(now - t0)
        if now > self.end:
            self.stopped = True


async def drive(job: dict[str, Any], payload: bytes, protocol: Callable[[Run], Any]) -> dict[str, Any]:
    """Open ``job["clients"]`` connections of ``protocol`` (each has a ``closed`` future) and
    count what completes between the warm-up and the end of the run."""
    loop = asyncio.get_running_loop()
    t = time.perf_counter()
    run = Run(payload, t + job["warmup"], t + job["warmup"] + job["duration"])
    conns = []
    for _ in range(job["clients"]):
        _, proto = await loop.create_connection(lambda: protocol(run), job["host"], job["port"])
        conns.append(proto)
    await asyncio.sleep(max(0.0, run.end - time.perf_counter()))
    run.stopped = True
    await asyncio.wait([c.closed for c in conns], timeout=30)
    return {
        "count": len(run.latencies),
        "total": run.total,
        "errors": run.errors,
        "seconds": job["duration"],
        "latencies_us": [round(x * 1e6, 1) for x in run.latencies],
    }


def main(protocol: Callable[[Run], Any], frame: Callable[[bytes], bytes] = bytes) -> None:
    """Run the job of ``sys.argv[1]``: ``frame`` turns the request file into what each request sends."""
    spec = json.loads(sys.argv[1])
    payload = frame(Path(spec["request"]).read_bytes())
    try:
        import uvloop

        result = uvloop.run(drive(spec, payload, protocol))
    except ImportError:
        result = asyncio.run(drive(spec, payload, protocol))
    Path(spec["out"]).write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    main(Conn)
