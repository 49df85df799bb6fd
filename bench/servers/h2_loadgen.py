"""A cheap KServe v2 gRPC load generator: raw HTTP/2 (h2c) over asyncio, N connections, one call in flight each.

The gRPC counterpart of loadgen.py and as cheap: no grpc or HTTP/2 library, a pre-built
``ModelInfer`` call (HEADERS with a stateless HPACK encoding, then the length-prefixed
message in DATA frames of the server's announced maximum size) sent again as soon as the
trailers of the previous one arrive. A call counts as an error unless its trailers carry
``grpc-status: 0``. grpc_loadgen.py (grpcio's own client) costs about ten times as much CPU
per call as the server it measures, so it measures the client. Usage:
``python h2_loadgen.py JOB_JSON`` with the job of loadgen.py (``port`` is the gRPC port;
``request`` a file of ``ModelInferRequest`` bytes).
"""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Any

from loadgen import Run, main  # this folder is sys.path[0]: the generators run as scripts

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
PATH = b"/inference.GRPCInferenceService/ModelInfer"
HEAD = struct.Struct(">HBBBI")


def lit(index: int, value: bytes) -> bytes:
    """A literal field without indexing whose name is static-table entry ``index`` (< 15)."""
    assert index < 15 and len(value) < 127
    return bytes([index, len(value)]) + value


def lit_new(name: bytes, value: bytes) -> bytes:
    return bytes([0, len(name)]) + name + bytes([len(value)]) + value


BLOCK = (b"\x83\x86" + lit(4, PATH) + lit(1, b"localhost") + b"\x0f\x10\x10application/grpc"
         + lit_new(b"te", b"trailers"))
OK_TRAILER = b"\x0bgrpc-status\x010"


def frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    n = len(payload)
    return HEAD.pack(n >> 8, n & 0xFF, kind, flags, sid) + payload


class Conn(asyncio.Protocol):
    """One HTTP/2 connection sending the same call again as soon as it is answered."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.buf = bytearray()
        self.sid = -1
        self.t0 = 0.0
        self.max_frame = 16384
        self.started = False
        self.received = 0
        self.transport: Any = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(PREFACE + frame(4, 0, 0, struct.pack(">HI", 0x4, (1 << 31) - 1))
                        + frame(8, 0, 0, struct.pack(">I", (1 << 30))))

    def send(self) -> None:
        self.sid += 2
        sid = self.sid
        msg = self.run.payload
        parts = [frame(1, 0x4, sid, BLOCK)]
        step = self.max_frame
        for k in range(0, len(msg), step):
            parts.append(frame(0, 0x1 if k + step >= len(msg) else 0, sid, msg[k:k + step]))
        self.t0 = time.perf_counter()
        self.transport.writelines(parts)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        while len(buf) - pos >= 9:
            hi, lo, kind, flags, sid = HEAD.unpack_from(buf, pos)
            length = (hi << 8) | lo
            if len(buf) - pos - 9 < length:
                break
            payload = bytes(buf[pos + 9:pos + 9 + length])
            pos += 9 + length
            if kind == 4 and not flags & 1:  # SETTINGS
                for k in range(0, len(payload), 6):
                    key, value = struct.unpack_from(">HI", payload, k)
                    if key == 0x5:
                        self.max_frame = value
                self.transport.write(frame(4, 1, 0, b""))
                if not self.started:
                    self.started = True
                    self.send()
            elif kind == 6 and not flags & 1:  # PING
                self.transport.write(frame(6, 1, 0, payload))
            elif kind == 0:  # DATA: give the window back
                self.received += length
                if self.received > 1 << 20:
                    self.transport.write(frame(8, 0, 0, struct.pack(">I", self.received)))
                    self.received = 0
            elif kind == 1 and flags & 1 and sid == self.sid:  # trailers: the call is over
                self.run.done(self.t0, time.perf_counter(), OK_TRAILER in payload)
                if self.run.stopped:
                    self.transport.close()
                    return
                self.send()
            elif kind == 3 and sid == self.sid or kind == 7:  # RST_STREAM, GOAWAY
                self.run.done(self.t0, time.perf_counter(), False)
                self.transport.close()
                return
        del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


def grpc_message(message: bytes) -> bytes:
    """The length-prefixed gRPC message (not compressed) that carries ``message``."""
    return b"\x00" + struct.pack(">I", len(message)) + message


if __name__ == "__main__":
    main(Conn, grpc_message)
