"""The Python HTTP floor: a bare ASGI app on uvicorn (uvloop + httptools) that only decodes
the request (JSON with orjson, or the binary tensor extension), invokes LiteRT on the event
loop and encodes the answer. No routing, validation, metrics or batching: what any Python
server on this stack must at least spend per request.
Usage: ``python asgi_floor.py PORT NAME=MODEL.tflite [NAME=MODEL.tflite ...]``.
"""

import sys

import numpy as np
import orjson
import uvicorn
from ai_edge_litert.interpreter import Interpreter

models = {}
for arg in sys.argv[2:]:
    name, path = arg.split("=", 1)
    interp = Interpreter(model_path=path, num_threads=1)
    interp.allocate_tensors()
    i, o = interp.get_input_details()[0], interp.get_output_details()[0]
    models[name] = [interp, i["index"], o["index"], tuple(int(d) for d in i["shape"])]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    if not path.endswith("/infer"):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        return
    model = models[path.split("/")[3]]
    msg = await receive()
    body = msg["body"]
    while msg.get("more_body"):
        msg = await receive()
        body += msg["body"]
    hlen = None
    for k, v in scope["headers"]:
        if k == b"inference-header-content-length":
            hlen = int(v)
    if hlen is None:
        t = orjson.loads(body)["inputs"][0]
        x = np.array(t["data"], dtype=np.float32).reshape(t["shape"])
    else:
        t = orjson.loads(body[:hlen])["inputs"][0]
        x = np.frombuffer(body, dtype=np.float32, offset=hlen).reshape(t["shape"])
    interp, i, o, shape = model
    if x.shape != shape:
        interp.resize_tensor_input(i, x.shape)
        interp.allocate_tensors()
        model[3] = x.shape
    interp.set_tensor(i, x)
    interp.invoke()
    y = interp.get_tensor(o)
    if hlen is None:
        out = orjson.dumps({"outputs": [{"name": "y", "datatype": "FP32", "shape": list(y.shape), "data": y.ravel()}]},
                           option=orjson.OPT_SERIALIZE_NUMPY)
        headers = [(b"content-type", b"application/json")]
    else:
        raw = y.tobytes()
        head = orjson.dumps({"outputs": [{"name": "y", "datatype": "FP32", "shape": list(y.shape),
                                          "parameters": {"binary_data_size": len(raw)}}]})
        out = head + raw
        headers = [(b"content-type", b"application/octet-stream"),
                   (b"inference-header-content-length", str(len(head)).encode())]
    headers.append((b"content-length", str(len(out)).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": out})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools", lifespan="off",
                access_log=False, log_level="warning")
