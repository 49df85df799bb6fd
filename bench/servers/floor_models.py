"""What the two floors (asgi_floor.py, raw_floor.py) share: load the models, run one request.

Only the HTTP side differs between them: an ASGI app on uvicorn against a raw asyncio protocol.
"""

import numpy as np
import orjson
from ai_edge_litert.interpreter import Interpreter


def load(args: list[str]) -> dict[str, list]:
    """``NAME=MODEL.tflite`` arguments -> ``{name: [interpreter, input index, output index, input shape]}``."""
    models = {}
    for arg in args:
        name, path = arg.split("=", 1)
        interp = Interpreter(model_path=path, num_threads=1)
        interp.allocate_tensors()
        i, o = interp.get_input_details()[0], interp.get_output_details()[0]
        models[name] = [interp, i["index"], o["index"], tuple(int(d) for d in i["shape"])]
    return models


JSON_HEADERS = [(b"content-type", b"application/json")]


def infer(model: list, body, hlen: int | None) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """Decode ``body`` (JSON, or a JSON header of ``hlen`` bytes and a binary tensor), invoke, encode.

    Returns the answer's body and its headers but for Content-Length.
    """
    if hlen is None:
        t = orjson.loads(body)["inputs"][0]
        x = np.array(t["data"], dtype=np.float32).reshape(t["shape"])
    else:
        t = orjson.loads(memoryview(body)[:hlen])["inputs"][0]
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
        return out, JSON_HEADERS
    raw = y.tobytes()
    meta = orjson.dumps({"outputs": [{"name": "y", "datatype": "FP32", "shape": list(y.shape),
                                      "parameters": {"binary_data_size": len(raw)}}]})
    return meta + raw, [(b"content-type", b"application/octet-stream"),
                        (b"inference-header-content-length", b"%d" % len(meta))]
