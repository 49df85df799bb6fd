"""Helpers shared by the MQTT benchmarks: a TFLite MLP of a chosen size, a free port, mosquitto started."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

BUILD_MODEL = r"""
import json, sys, numpy as np, tensorflow as tf
rng = np.random.default_rng(0)
sizes = [tuple(s) for s in json.loads(sys.argv[2])]
class MLP(tf.Module):
    def __init__(self):
        self.w = [tf.constant((rng.standard_normal(s) / np.sqrt(s[0])).astype(np.float32)) for s in sizes]
    @tf.function(input_signature=[tf.TensorSpec([None, sizes[0][0]], tf.float32)])
    def __call__(self, x):
        for i, w in enumerate(self.w):
            x = tf.matmul(x, w)
            x = tf.nn.relu(x) if i < len(self.w) - 1 else tf.sigmoid(x)
        return x
m = MLP()
conv = tf.lite.TFLiteConverter.from_concrete_functions([m.__call__.get_concrete_function()], m)
open(sys.argv[1], "wb").write(conv.convert())
"""


def build_mlp(model: Path, sizes: list[tuple[int, int]]) -> Path:
    """A TFLite MLP with these layer sizes (ReLU, sigmoid output), built once with TensorFlow in a
    subprocess and cached at ``model``."""
    if not model.exists():
        model.parent.mkdir(parents=True, exist_ok=True)
        tmp = model.with_suffix(".tmp")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
        subprocess.run([sys.executable, "-c", BUILD_MODEL, str(tmp), json.dumps(sizes)], check=True, env=env,
                       timeout=600)
        tmp.replace(model)
    return model


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_mosquitto(conf: Path, port: int, timeout_s: float = 20.0) -> subprocess.Popen[bytes]:
    """mosquitto with ``conf``, once it accepts connections on ``port``."""
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("mosquitto did not start") from None
            time.sleep(0.02)
