"""Models and a device store for bench/serve.py: the 3x96x96 CNN (built with onnx.helper,
converted once with onnx2tf into a cache directory), signed bundles of the demo model and
the CNN under several serving configs, and the daemon's config files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
FACTORY = REPO / "device" / "factory"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edge-runtime-bench"
CNN_VERSION = "cnn-v1"


def build_cnn_onnx(path: Path) -> None:
    """A MobileNet-like 3x96x96 classifier (dynamic batch), random weights, 10 classes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes: list[Any] = []
    inits: list[Any] = []

    def conv(x: str, cin: int, cout: int, k: int, s: int, group: int = 1) -> str:
        n = f"c{len(nodes)}"
        w = (rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2 / (cin // group * k * k))).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, n + "_w"), numpy_helper.from_array(np.zeros(cout, np.float32), n + "_b")])
        nodes.append(helper.make_node("Conv", [x, n + "_w", n + "_b"], [n], kernel_shape=[k, k], strides=[s, s],
                                      pads=[k // 2] * 4, group=group))
        nodes.append(helper.make_node("Relu", [n], [n + "_r"]))
        return n + "_r"

    x = conv("image", 3, 16, 3, 2)
    for cin, cout, s in [(16, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2)]:
        x = conv(conv(x, cin, cin, 3, s, group=cin), cin, cout, 1, 1)
    inits.append(numpy_helper.from_array((rng.standard_normal((256, 10)) / 16).astype(np.float32), "fc_w"))
    inits.append(numpy_helper.from_array(np.zeros(10, np.float32), "fc_b"))
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "cnn", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 96, 96])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 10])], inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)


def cnn_models() -> tuple[Path, Path]:
    """The CNN as ONNX and as float32 TFLite (NCHW kept), built and converted once into the cache."""
    d = CACHE / CNN_VERSION
    onnx_path, tflite_path = d / "cnn.onnx", d / "cnn.tflite"
    if onnx_path.is_file() and tflite_path.is_file():
        return onnx_path, tflite_path
    d.mkdir(parents=True, exist_ok=True)
    build_cnn_onnx(onnx_path)
    with tempfile.TemporaryDirectory() as work:
        shutil.copyfile(onnx_path, Path(work) / "cnn_in.onnx")  # onnx2tf rewrites its input in place
        env = dict(os.environ, PATH=f"{Path(PY).parent}:{os.environ.get('PATH', '')}")
        print("converting the CNN with onnx2tf (once; cached in", d, ")", flush=True)
        subprocess.run([str(Path(PY).parent / "onnx2tf"), "-i", "cnn_in.onnx", "-o", "out", "-k", "image"],
                       cwd=work, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.copyfile(Path(work) / "out" / "cnn_in_float32.tflite", tflite_path)
    return onnx_path, tflite_path


def make_device(base: Path, cnn_tflite: Path | None, demo_only: bool = False) -> tuple[Path, Path]:
    """A store with the demo model, its serving variants (and the CNN's) installed; returns (store dir, root file).

    ``demo_only``: the demo model alone, as a device that runs the README tour holds it.
    """
    from edge_runtime.packaging import PackRequest, pack_model
    from edge_runtime.store.store import ModelStore
    from edge_runtime.trust.keys import generate_private_key
    from edge_runtime.trust.root import make_root, sign_root, verify_root

    key = generate_private_key()
    root_bytes = sign_root(make_root(1, [key], [key]), [key])
    (base / "root.json").write_bytes(root_bytes)
    store = ModelStore(base / "store", verify_root(root_bytes), None)
    golden = np.load(FACTORY / "golden.npy")
    models: list[tuple[str, Path, list[str], list[str], Any]] = [
        (n, FACTORY / "fraud.tflite", ["input_0"], ["output_0"], [golden])
        for n in (("fraud",) if demo_only else ("fraud", "fraud_threads", "fraud_nobatch"))
    ]
    if cnn_tflite is not None:
        img = [np.random.default_rng(1).random((2, 3, 96, 96), dtype=np.float32)]
        models += [(n, cnn_tflite, ["image"], ["probs"], img) for n in ("cnn", "cnn_nobatch", "cnn_single")]
    # The same MLP with a reference profile: drift sketches on (and capture, by config).
    models += [(n, FACTORY / "fraud.tflite", ["input_0"], ["output_0"], [golden]) for n in MONITORED if not demo_only]
    calib = np.load(FACTORY / "calibration.npy").astype(np.float32)
    for name, path, ins, outs, sample in models:
        bundle = base / f"{name}.bundle"
        profile = [[calib[i:i + 50]] for i in range(0, len(calib), 50)] if name in MONITORED else None
        pack_model(PackRequest(path, name=name, version=1, keys=[key], out=bundle, input_names=ins, output_names=outs,
                   golden_inputs=sample, atol=1e-3, profile_calls=profile))
        store.install(bundle)
        store.activate(name, 1)
    return base / "store", base / "root.json"


MONITORED = ("fraud_drift", "fraud_monitored")
SERVING = """
[models.fraud_monitored.capture]
rate = 0.01
max_mb = 50
[models.fraud_threads]
execution = "threads"
max_batch_size = 8
max_queue_delay_us = 500
[models.fraud_nobatch]
max_batch_size = 0
[models.cnn]
instances = 2
max_batch_size = 8
max_queue_delay_us = 1000
[models.cnn_nobatch]
instances = 2
max_batch_size = 0
[models.cnn_single]
instances = 1
max_batch_size = 0
"""


def write_config(path: Path, store: Path, root: Path, port: int, serving: str = "") -> Path:
    path.write_text(
        f'[store]\npath = "{store}"\nfactory = ""\n[trust]\nroot = "{root}"\n[server]\nport = {port}\n'
        f'[logging]\nlevel = "warning"\n{serving}',
        encoding="utf-8",
    )
    return path
