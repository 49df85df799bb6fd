"""ONNX models built for the converter tests and bench (with onnx.helper, deterministic).

* ``build_cnn``: a small image classifier, NCHW ``image`` [-1, 3, 96, 96] -> ``logits``
  [-1, 10]: three stride-2 3x3 convolutions (32/64/128 channels, ReLU), global average
  pooling, a dense layer; about 94 k weights so int8's size gain shows over the fixed overhead.
* ``build_two_io``: two NHWC image inputs with a static batch of 1 (``zeta_img``, then
  ``alpha_img``: reverse alphabetical, as TensorFlow would sort them) and two outputs
  (``y_sum``, ``b_diff``) of the same shape, so only running the model tells them apart;
  node names carry ``@`` and tensor names ``@`` and ``:``. Static small-batch 3-channel inputs
  are what makes onnx2tf reach for its downloaded sample images.
* ``build_unsupported``: ``CastLike`` (opset 15), which onnxruntime runs and onnx2tf 1.29
  has no converter for.
* ``fold_scaler``: the demo fraud MLP with its standardisation folded into the first layer,
  so it takes raw breast-cancer features (magnitudes 0.001 to 4,000): the int8 collapse case.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13


def _save(graph: onnx.GraphProto, path: Path, opset: int = OPSET) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8,
                              producer_name="edge-runtime tests")
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def build_cnn(path: Path, seed: int = 0, classes: int = 10, spatial: tuple[int | str, int | str] = (96, 96)) -> Path:
    """The NCHW 3x96x96 CNN classifier with a dynamic batch (``spatial=("h", "w")``: dynamic height and
    width too, as real OCR and detection exports have)."""
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []

    def weight(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
        return name

    nodes = []
    prev, cin = "image", 3
    for i, cout in enumerate((32, 64, 128)):
        w = weight(f"conv{i}_w", rng.normal(0.0, (2.0 / (9 * cin)) ** 0.5, (cout, cin, 3, 3)))
        b = weight(f"conv{i}_b", rng.normal(0.0, 0.1, cout))
        nodes += [
            helper.make_node("Conv", [prev, w, b], [f"conv{i}"], f"conv{i}", strides=[2, 2], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"], f"relu{i}"),
        ]
        prev, cin = f"relu{i}", cout
    nodes += [
        helper.make_node("GlobalAveragePool", [prev], ["pooled"], "gap"),
        helper.make_node("Flatten", ["pooled"], ["flat"], "flatten"),
        helper.make_node(
            "Gemm",
            ["flat", weight("fc_w", rng.normal(0.0, (1.0 / cin) ** 0.5, (classes, cin))),
             weight("fc_b", rng.normal(0.0, 0.1, classes))],
            ["logits"], "fc", transB=1,
        ),
    ]
    graph = helper.make_graph(
        nodes, "cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, *spatial])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=inits,
    )
    return _save(graph, path)


def build_stateful(path: Path) -> Path:
    """A stateful model shaped like a voice-activity detector: ``x`` [N, T], ``state`` [2, N, 4] (batch on
    axis 1) and ``sr`` a scalar int64 -> ``prob`` [N, 1], ``state_out`` [2, N, 4]. No common batch axis,
    so its data comes as whole calls."""
    c = [numpy_helper.from_array(np.asarray(v, dtype=d), n) for n, v, d in (
        ("axes1", [1], np.int64), ("axes0", [0], np.int64), ("axes02", [0, 2], np.int64),
        ("rate", 16000.0, np.float32), ("gain", np.linspace(0.5, 1.5, 4).reshape(1, 1, 4), np.float32))]
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["mean"], "mean", axes=[1], keepdims=1),
        helper.make_node("Cast", ["sr"], ["sr_f"], "cast", to=TensorProto.FLOAT),
        helper.make_node("Div", ["sr_f", "rate"], ["scale"], "scale"),
        helper.make_node("Mul", ["mean", "scale"], ["h"], "h"),
        helper.make_node("Unsqueeze", ["h", "axes0"], ["h3"], "h3"),
        helper.make_node("Mul", ["state", "gain"], ["kept"], "kept"),
        helper.make_node("Add", ["kept", "h3"], ["state_out"], "state_out"),
        helper.make_node("ReduceSum", ["state_out", "axes02"], ["total"], "total", keepdims=0),
        helper.make_node("Unsqueeze", ["total", "axes1"], ["total2"], "total2"),
        helper.make_node("Sigmoid", ["total2"], ["prob"], "prob"),
    ]
    graph = helper.make_graph(
        nodes, "stateful",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "t"]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "n", 4]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["n", 1]),
         helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [2, "n", 4])],
        initializer=c,
    )
    return _save(graph, path)


def cnn_images(rows: int, seed: int) -> np.ndarray:
    """Image-like NCHW rows in 0..1: smooth random blobs plus a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:96, 0:96] / 95.0
    out = np.empty((rows, 3, 96, 96), dtype=np.float32)
    for r in range(rows):
        for c in range(3):
            fx, fy, ph = rng.uniform(0.5, 4.0), rng.uniform(0.5, 4.0), rng.uniform(0, 2 * np.pi)
            out[r, c] = 0.5 + 0.4 * np.sin(2 * np.pi * (fx * xx + fy * yy) + ph)
    out += rng.normal(0.0, 0.03, out.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0)


def build_two_io(path: Path, seed: int = 1) -> Path:
    """Two static NHWC inputs, two same-shaped outputs, awkward names."""
    rng = np.random.default_rng(seed)
    wz = numpy_helper.from_array(rng.normal(size=(3, 4)).astype(np.float32), "w@z:0")
    wa = numpy_helper.from_array(rng.normal(size=(3, 4)).astype(np.float32), "w@a:0")
    two = numpy_helper.from_array(np.float32(2.0).reshape(()), "two")
    nodes = [
        helper.make_node("MatMul", ["zeta_img", "w@z:0"], ["p@z:0"], "block@0/matmul_z"),
        helper.make_node("MatMul", ["alpha_img", "w@a:0"], ["p@a:0"], "block@0/matmul_a"),
        helper.make_node("Add", ["p@z:0", "p@a:0"], ["s@0"], "block@1/add"),
        helper.make_node("Mul", ["p@a:0", "two"], ["a2@0"], "block@1/mul"),
        helper.make_node("Sub", ["p@z:0", "a2@0"], ["d@0"], "block@1/sub"),
        helper.make_node("ReduceMean", ["s@0"], ["y_sum"], "@head/mean_sum", axes=[1, 2], keepdims=0),
        helper.make_node("ReduceMean", ["d@0"], ["b_diff"], "@head/mean_diff", axes=[1, 2], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "two_io",
        [helper.make_tensor_value_info("zeta_img", TensorProto.FLOAT, [1, 16, 16, 3]),
         helper.make_tensor_value_info("alpha_img", TensorProto.FLOAT, [1, 16, 16, 3])],
        [helper.make_tensor_value_info("y_sum", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("b_diff", TensorProto.FLOAT, [1, 4])],
        initializer=[wz, wa, two],
    )
    return _save(graph, path)


def build_unsupported(path: Path) -> Path:
    """``features`` [-1, 4] -> Mul by 10 -> CastLike int32 -> ``counts`` INT32 [-1, 4]."""
    nodes = [
        helper.make_node("Mul", ["features", "ten"], ["scaled"], "scale"),
        helper.make_node("CastLike", ["scaled", "like_int"], ["counts"], "to_counts"),
    ]
    graph = helper.make_graph(
        nodes, "castlike",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("counts", TensorProto.INT32, ["batch", 4])],
        initializer=[numpy_helper.from_array(np.float32(10.0).reshape(()), "ten"),
                     numpy_helper.from_array(np.array([0], np.int32), "like_int")],
    )
    return _save(graph, path, opset=15)


def fold_scaler(fraud_onnx: Path, demo_json: Path, path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """The demo MLP taking raw features: (x - mean) / std folded into fc0. Returns (path, mean, std)."""
    scaler = json.loads(Path(demo_json).read_text())["scaler"]
    mean = np.asarray(scaler["mean"], dtype=np.float64)
    std = np.asarray(scaler["std"], dtype=np.float64)
    model = onnx.load(str(fraud_onnx))
    inits = {t.name: t for t in model.graph.initializer}
    w = numpy_helper.to_array(inits["fc0_weight"]).astype(np.float64)
    b = numpy_helper.to_array(inits["fc0_bias"]).astype(np.float64)
    # ((x - mean) / std) @ w + b  ==  x @ (w / std[:, None]) + (b - (mean / std) @ w)
    inits["fc0_weight"].CopyFrom(numpy_helper.from_array((w / std[:, None]).astype(np.float32), "fc0_weight"))
    inits["fc0_bias"].CopyFrom(numpy_helper.from_array((b - (mean / std) @ w).astype(np.float32), "fc0_bias"))
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return Path(path), mean, std
