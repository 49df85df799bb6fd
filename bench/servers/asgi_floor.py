"""The Python HTTP floor: a bare ASGI app on uvicorn (uvloop + httptools) that only decodes
the request (JSON with orjson, or the binary tensor extension), invokes LiteRT on the event
loop and encodes the answer. No routing, validation, metrics or batching: what any Python
server on this stack must at least spend per request.
Usage: ``python asgi_floor.py PORT NAME=MODEL.tflite [NAME=MODEL.tflite ...]``.
"""

import sys

import floor_models
import uvicorn

models = floor_models.load(sys.argv[2:])


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
    out, headers = floor_models.infer(model, body, hlen)
    headers = [*headers, (b"content-length", str(len(out)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": out})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools", lifespan="off",
                access_log=False, log_level="warning")
