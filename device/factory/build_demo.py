"""Build the factory demo model `fraud` from scikit-learn's breast-cancer data set.

Run in the converter environment: `.venv/bin/python device/factory/build_demo.py`.

1. Split the data set (seed 0, 25 % held out, stratified) and standardise the 30
   features with the mean/std of the train split.
2. Train an MLP 30 -> 64 -> 32 -> 1 (ReLU, sigmoid output) with MLPClassifier.
3. Write it by hand as ONNX (`input_0` FP32 [batch, 30] -> `output_0` FP32
   [batch, 1] = P(class 1 = benign)); check with onnx.checker and onnxruntime.
4. Convert a copy with onnx2tf in a subprocess: float32 and full-integer (int8
   I/O) TFLite, calibrated on the standardised train split.
5. Write sample, calibration and hold-out data and `demo_model.json` (scaler,
   hold-out metrics, int8 quantization parameters) next to this file.

Deterministic (same bytes on every run) and offline; takes about 12 s.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from ai_edge_litert.interpreter import Interpreter
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_breast_cancer
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

Array = NDArray[Any]
OUT_DIR = Path(__file__).resolve().parent
SEED = 0
N_SAMPLE = 20
N_CALIBRATION = 200
INPUT_NAME = "input_0"
OUTPUT_NAME = "output_0"
STEM = "fraud"
# Our files, keyed by the onnx2tf output each is copied from.
WANTED = {
    "model_float32.tflite": f"{STEM}.tflite",
    "model_full_integer_quant.tflite": f"{STEM}_int8io.tflite",
}
# -oiqt also writes float16/dynamic/integer variants. -iqd/-oqd int8 are the defaults,
# spelled out because the int8 I/O contract depends on them. The calibration data is
# already standardised, so onnx2tf's (x - mean) / std must be the identity.
CONVERT_ARGS = [
    "-i",
    "model.onnx",
    "-o",
    "out",
    "-oiqt",
    "-iqd",
    "int8",
    "-oqd",
    "int8",
]
CONVERT_ARGS += ["-cind", INPUT_NAME, "calib.npy", "[0.]", "[1.]"]


def load_data() -> dict[str, Any]:
    """Split and standardise the data; the scaler is fitted on the train split."""
    data = load_breast_cancer()
    x_tr, x_te, y_tr, y_te = train_test_split(
        data.data, data.target, test_size=0.25, random_state=SEED, stratify=data.target
    )
    mean, std = x_tr.mean(axis=0), x_tr.std(axis=0)
    return {
        "feature_names": [str(n) for n in data.feature_names],
        "mean": mean,
        "std": std,
        "x_train": ((x_tr - mean) / std).astype(np.float32),
        "y_train": y_tr.astype(np.int64),
        "x_test": ((x_te - mean) / std).astype(np.float32),
        "y_test": y_te.astype(np.int64),
    }


def train(x: Array, y: Array) -> MLPClassifier:
    """Train the 30-64-32-1 MLP (sklearn's binary output is one logistic unit)."""
    # alpha 1e-2: tied best 5-fold CV ROC AUC on the train split among 1e-4..1 (the
    # hold-out was not used to choose it); converges in ~180 epochs at default tol.
    clf = MLPClassifier(
        hidden_layer_sizes=(64, 32), alpha=1e-2, max_iter=1000, random_state=SEED
    )
    clf.fit(x, y)
    return clf


def layers(clf: MLPClassifier) -> list[tuple[Array, Array]]:
    """Return (weight, bias) per dense layer; weights are [in, out] as MatMul wants."""
    return list(zip(clf.coefs_, clf.intercepts_, strict=True))


def numpy_forward(clf: MLPClassifier, x: Array) -> Array:
    """Run the forward pass the ONNX graph encodes, in float64; shape [n, 1]."""
    h = x.astype(np.float64)
    dense = layers(clf)
    for i, (w, b) in enumerate(dense):
        h = h @ w + b
        h = 1.0 / (1.0 + np.exp(-h)) if i == len(dense) - 1 else np.maximum(h, 0.0)
    return h


def export_onnx(clf: MLPClassifier, path: Path) -> None:
    """Write the MLP as a plain MatMul/Add/Relu/Sigmoid graph with a dynamic batch."""
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    prev, dense = INPUT_NAME, layers(clf)
    for i, (w, b) in enumerate(dense):
        wn, bn, mm, z = f"fc{i}_weight", f"fc{i}_bias", f"fc{i}_mm", f"fc{i}_out"
        inits += [
            numpy_helper.from_array(w.astype(np.float32), wn),
            numpy_helper.from_array(b.astype(np.float32), bn),
        ]
        last = i == len(dense) - 1
        act, out = ("Sigmoid", OUTPUT_NAME) if last else ("Relu", f"fc{i}_act")
        nodes += [
            helper.make_node("MatMul", [prev, wn], [mm], f"fc{i}_matmul"),
            helper.make_node("Add", [mm, bn], [z], f"fc{i}_add"),
            helper.make_node(act, [z], [out], f"fc{i}_{act.lower()}"),
        ]
        prev = out
    graph = helper.make_graph(
        nodes,
        "fraud_mlp",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 30])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", 1])],
        initializer=inits,
    )
    # IR 8 / opset 13: loadable by every onnxruntime and onnx2tf release we support.
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 13)],
        ir_version=8,
        producer_name="edge-runtime build_demo.py",
    )
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def onnx_predict(path: Path, x: Array) -> Array:
    """Score a batch with onnxruntime."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0])


def convert(
    onnx_path: Path, calib: Array, workdir: Path
) -> tuple[list[str], list[str]]:
    """Run onnx2tf on a copy (it rewrites its -i file in place) inside `workdir`.

    Copies the wanted outputs next to this file; returns the command and every
    .tflite file onnx2tf produced.
    """
    shutil.copyfile(onnx_path, workdir / "model.onnx")
    np.save(workdir / "calib.npy", calib)
    bin_dir = Path(sys.executable).parent  # venv bin/: onnx2tf runs `onnxsim` by name
    cmd = [str(bin_dir / "onnx2tf"), *CONVERT_ARGS]
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    # onnx2tf downloads sample calibration images for some input shapes; a dead proxy
    # turns any such attempt into a loud failure instead of a silent download.
    dead = "http://127.0.0.1:9"
    env.update(HTTP_PROXY=dead, HTTPS_PROXY=dead, http_proxy=dead, https_proxy=dead)
    proc = subprocess.run(
        cmd, cwd=workdir, env=env, capture_output=True, text=True, check=False
    )
    produced = sorted(p.name for p in (workdir / "out").glob("*.tflite"))
    if proc.returncode != 0 or not set(WANTED) <= set(produced):
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        msg = f"onnx2tf exit {proc.returncode}, produced {produced}"
        raise RuntimeError(f"{msg}:\n{tail}")
    for src, dst in WANTED.items():
        shutil.copyfile(workdir / "out" / src, OUT_DIR / dst)
    return cmd, produced


def tflite_details(path: Path) -> dict[str, Any]:
    """Return input/output details as ai_edge_litert reports them, JSON-ready."""
    interp = Interpreter(model_path=str(path))

    def clean(d: dict[str, Any]) -> dict[str, Any]:
        (scale, zero_point), dtype = d["quantization"], np.dtype(d["dtype"]).name
        keep = {k: d[k] for k in ("name", "index")}
        keep.update({k: d[k].tolist() for k in ("shape", "shape_signature")})
        keep.update(dtype=dtype, scale=float(scale), zero_point=int(zero_point))
        return keep

    return {
        "inputs": [clean(d) for d in interp.get_input_details()],
        "outputs": [clean(d) for d in interp.get_output_details()],
    }


def tflite_predict(path: Path, x: Array) -> Array:
    """Score a batch; integer I/O is (de)quantized with the tensors' own params."""
    interp = Interpreter(model_path=str(path))
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    interp.resize_tensor_input(inp["index"], list(x.shape))
    interp.allocate_tensors()
    data = x
    if np.issubdtype(inp["dtype"], np.integer):
        scale, zp = inp["quantization"]
        info = np.iinfo(inp["dtype"])
        data = np.clip(np.round(x / scale) + zp, info.min, info.max).astype(info.dtype)
    interp.set_tensor(inp["index"], data)
    interp.invoke()
    y = interp.get_tensor(out["index"])
    if np.issubdtype(out["dtype"], np.integer):
        scale, zp = out["quantization"]
        y = (y.astype(np.float32) - zp) * scale
    return np.asarray(y, dtype=np.float32).reshape(len(x), -1)


def metrics(prob: Array, y: Array) -> dict[str, float]:
    """Return accuracy at threshold 0.5 and ROC AUC of P(class 1)."""
    p = prob.reshape(-1)
    return {
        "accuracy": round(float(np.mean((p >= 0.5) == (y == 1))), 4),
        "roc_auc": round(float(roc_auc_score(y, p)), 4),
    }


def main() -> None:
    """Build every artifact and print the hold-out metrics."""
    t0 = time.monotonic()
    d = load_data()
    x_tr, y_tr, x_te, y_te = d["x_train"], d["y_train"], d["x_test"], d["y_test"]
    clf = train(x_tr, y_tr)

    onnx_path = OUT_DIR / f"{STEM}.onnx"
    export_onnx(clf, onnx_path)
    p_onnx = onnx_predict(onnx_path, x_te)
    p_sk = clf.predict_proba(x_te)[:, 1:]
    diff = float(np.max(np.abs(p_onnx - numpy_forward(clf, x_te))))
    diff = max(diff, float(np.max(np.abs(p_onnx - p_sk))))
    if diff >= 1e-5:
        raise RuntimeError(
            f"ONNX disagrees with numpy/sklearn: max abs diff {diff:.3g}"
        )

    with tempfile.TemporaryDirectory(prefix="build_demo_") as tmp:
        cmd, produced = convert(onnx_path, x_tr, Path(tmp))

    fp32_path = OUT_DIR / WANTED["model_float32.tflite"]
    int8_path = OUT_DIR / WANTED["model_full_integer_quant.tflite"]
    int8_details = tflite_details(int8_path)
    i8_in, i8_out = int8_details["inputs"][0], int8_details["outputs"][0]
    if (i8_in["dtype"], i8_out["dtype"]) != ("int8", "int8"):
        raise RuntimeError(
            f"expected int8 I/O, found {i8_in['dtype']}/{i8_out['dtype']}"
        )
    p_fp32 = tflite_predict(fp32_path, x_te)

    columns = [f"f{i}" for i in range(x_te.shape[1])]
    sample = x_te[:N_SAMPLE]
    header = ",".join(columns)
    np.savetxt(OUT_DIR / "sample.csv", sample, "%.9g", ",", header=header, comments="")
    np.save(OUT_DIR / "sample.npy", sample)
    np.save(OUT_DIR / "calibration.npy", x_tr[:N_CALIBRATION])
    np.savez(OUT_DIR / "holdout.npz", x=x_te, y=y_te)

    report: dict[str, Any] = {
        "name": STEM,
        "description": "MLP 30-64-32-1 (ReLU, sigmoid) on sklearn's breast-cancer "
        "data; output_0 = P(class 1 = benign). Feed rows as (raw - mean) / std.",
        "source": "sklearn load_breast_cancer, stratified split, seed 0, 25 % held out",
        "n_train": len(x_tr),
        "n_holdout": len(x_te),
        "columns": columns,
        "feature_names": d["feature_names"],
        "scaler": {"mean": d["mean"].tolist(), "std": d["std"].tolist()},
        "classes": {"0": "malignant", "1": "benign"},
        "input": {"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, 30]},
        "output": {"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, 1]},
        "onnx_vs_numpy_max_abs_diff": diff,
        "tflite_float32_vs_onnx_max_abs_diff": float(np.max(np.abs(p_fp32 - p_onnx))),
        "metrics_holdout": {
            "onnx": metrics(p_onnx, y_te),
            "tflite_float32": metrics(p_fp32, y_te),
            "tflite_int8io": metrics(tflite_predict(int8_path, x_te), y_te),
        },
        "int8io_quantization": {
            "input": {"scale": i8_in["scale"], "zero_point": i8_in["zero_point"]},
            "output": {"scale": i8_out["scale"], "zero_point": i8_out["zero_point"]},
        },
        "converter": {
            "tool": "onnx2tf 1.29.24",
            "command": [Path(cmd[0]).name, *cmd[1:]],
            "calibration": "whole standardised train split, mean [0.], std [1.]",
            "produced": produced,
        },
        "tflite_details": {
            fp32_path.name: tflite_details(fp32_path),
            int8_path.name: int8_details,
        },
    }
    (OUT_DIR / "demo_model.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["metrics_holdout"], indent=2))
    print(f"done in {time.monotonic() - t0:.1f} s -> {OUT_DIR}")


if __name__ == "__main__":
    main()
