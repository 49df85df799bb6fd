"""The floor under any Python asyncio HTTP server: a raw protocol on uvloop + httptools.

No ASGI, no framework: httptools parses, the body is kept as it arrives (in one buffer of the
declared size when it comes in pieces), LiteRT is invoked on the event loop in the parser's
message-complete callback, and the answer is written in one piece. No routing, validation,
limits, timeouts, metrics or batching: what a Python server on this stack cannot go below.
Usage: ``python raw_floor.py PORT NAME=MODEL.tflite [NAME=MODEL.tflite ...]``.
"""

import asyncio
import sys

import httptools
import numpy as np
import orjson
import uvloop
from ai_edge_litert.interpreter import Interpreter

models = {}
for arg in sys.argv[2:]:
    name, path = arg.split("=", 1)
    interp = Interpreter(model_path=path, num_threads=1)
    interp.allocate_tensors()
    i, o = interp.get_input_details()[0], interp.get_output_details()[0]
    models[name] = (interp, i["index"], o["index"])

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
        interp, i, o = models[path.split(b"/")[3].decode()]
        body, hlen = self.body, self.hlen
        if hlen is None:
            t = orjson.loads(body)["inputs"][0]
            x = np.array(t["data"], dtype=np.float32).reshape(t["shape"])
        else:
            t = orjson.loads(memoryview(body)[:hlen])["inputs"][0]
            x = np.frombuffer(body, dtype=np.float32, offset=hlen).reshape(t["shape"])
        interp.set_tensor(i, x)
        interp.invoke()
        y = interp.get_tensor(o)
        if hlen is None:
            out = orjson.dumps({"outputs": [{"name": "y", "datatype": "FP32", "shape": list(y.shape), "data": y.ravel()}]},
                               option=orjson.OPT_SERIALIZE_NUMPY)
            head = b"content-type: application/json\r\n"
        else:
            raw = y.tobytes()
            meta = orjson.dumps({"outputs": [{"name": "y", "datatype": "FP32", "shape": list(y.shape),
                                              "parameters": {"binary_data_size": len(raw)}}]})
            out = meta + raw
            head = b"content-type: application/octet-stream\r\ninference-header-content-length: %d\r\n" % len(meta)
        self.transport.write(b"HTTP/1.1 200 OK\r\n" + head + b"content-length: %d\r\n\r\n" % len(out) + out)


async def main() -> None:
    server = await asyncio.get_running_loop().create_server(Protocol, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main())
