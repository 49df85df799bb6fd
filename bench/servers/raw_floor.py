"""The floor under any Python asyncio HTTP server: a raw protocol on uvloop + httptools.

No ASGI, no framework: httptools parses, the body is kept as it arrives (in one buffer of the
declared size when it comes in pieces), LiteRT is invoked on the event loop in the parser's
message-complete callback, and the answer is written in one piece. No routing, validation,
limits, timeouts, metrics or batching: what a Python server on this stack cannot go below.
Usage: ``python raw_floor.py PORT NAME=MODEL.tflite [NAME=MODEL.tflite ...]``.
"""

import asyncio
import sys

import floor_models
import httptools
import uvloop

models = floor_models.load(sys.argv[2:])

EMPTY = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"


class Protocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data):
        self.parser.feed_data(data)

    def on_message_begin(self):
        self.url = b""
        self.hlen = None
        self.clen = 0
        self.body = b""
        self.filled = -1

    def on_url(self, url):
        self.url += url

    def on_header(self, name, value):
        name = name.lower()
        if name == b"content-length":
            self.clen = int(value)
        elif name == b"inference-header-content-length":
            self.hlen = int(value)

    def on_body(self, piece):
        if not self.body:
            self.body = piece
            return
        if self.filled < 0:
            buf = bytearray(self.clen)
            buf[: len(self.body)] = self.body
            self.body, self.filled = buf, len(self.body)
        self.body[self.filled : self.filled + len(piece)] = piece
        self.filled += len(piece)

    def on_message_complete(self):
        path = self.url
        if not path.endswith(b"/infer"):
            self.transport.write(EMPTY)
            return
        out, headers = floor_models.infer(models[path.split(b"/")[3].decode()], self.body, self.hlen)
        head = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        self.transport.write(b"HTTP/1.1 200 OK\r\n" + head + b"content-length: %d\r\n\r\n" % len(out) + out)


async def main() -> None:
    server = await asyncio.get_running_loop().create_server(Protocol, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main())
