"""A KServe-style infer endpoint written the way most FastAPI model servers are written.

A pydantic request model, a plain ``def`` handler (FastAPI runs it in its thread pool),
onnxruntime with its default settings, ``tolist()`` into the JSON response. It is the
"usual way" point of comparison of bench/serve.py, not a tuned server.
Usage: ``python fastapi_usual.py PORT NAME=MODEL.onnx [NAME=MODEL.onnx ...]``.
"""

import sys

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel


class Tensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[float]


class InferRequest(BaseModel):
    inputs: list[Tensor]


sessions = {}
for arg in sys.argv[2:]:
    name, path = arg.split("=", 1)
    sessions[name] = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

app = FastAPI()


@app.get("/v2/health/ready")
def ready() -> dict:
    return {}


@app.post("/v2/models/{model}/infer")
def infer(model: str, request: InferRequest) -> dict:
    session = sessions.get(model)
    if session is None:
        raise HTTPException(status_code=404, detail=f"unknown model {model}")
    tensor = request.inputs[0]
    x = np.array(tensor.data, dtype=np.float32).reshape(tensor.shape)
    y = session.run(None, {session.get_inputs()[0].name: x})[0]
    return {
        "model_name": model,
        "outputs": [{"name": session.get_outputs()[0].name, "datatype": "FP32", "shape": list(y.shape),
                     "data": y.flatten().tolist()}],
    }


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
