"""A model whose input is ``[-1, -1]`` (stateful VADs, audio front ends) answers JSON, binary and
``score`` requests of any length (issue: real models round 2, item 2).

Before, the JSON cap counted a dynamic dimension as 1 (``holds up to 800 values, the model takes at
most 514`` -> 413) and ``score`` refused the model (``file scoring needs fixed sample shapes``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from harness.daemon import Daemon, write_serve_config
from harness.http import request


def _sum_and_scale(path: Path) -> None:
    """y = [sum(x, axis 1), 2 * x[:, 0]]: input x FP32 [N, T], output y FP32 [N, 2]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])
    nodes = [
        helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=1),
        helper.make_node("Gather", ["x", "zero"], ["first"], axis=1),
        helper.make_node("Mul", ["first", "two"], ["scaled"]),
        helper.make_node("Concat", ["s", "scaled"], ["y"], axis=1),
    ]
    inits = [
        helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
        helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
        helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
    ]
    model = helper.make_model(helper.make_graph(nodes, "dyn", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _with_gain(path: Path) -> None:
    """The same times a scalar ``gain`` input (shape ``[]``, like a VAD's sample rate): no batch axis
    on every input, so requests are not merged and the JSON cap comes from the shapes."""
    model = onnx.load(str(path))
    g = model.graph
    g.node[-1].output[0] = "y0"
    g.node.append(helper.make_node("Mul", ["y0", "gain"], ["y"]))
    g.input.append(helper.make_tensor_value_info("gain", TensorProto.FLOAT, []))
    onnx.save(model, str(path.with_name("gain.onnx")))


def _want(x: np.ndarray) -> np.ndarray:
    return np.stack([x.sum(axis=1), 2 * x[:, 0]], axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def dyn(tmp_path_factory: pytest.TempPathFactory, keys: Any, cli: Callable[..., Any]) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("dyn")
    _sum_and_scale(d / "dyn.onnx")
    _with_gain(d / "dyn.onnx")
    store, factory = d / "store", d / "factory"
    factory.mkdir()
    common = ["--store", str(store), "--root", str(keys.root_path), "--factory", str(factory)]
    for name in ("dyn", "gain"):
        assert cli(["bundle", "create", d / f"{name}.onnx", "--name", name, "--version", "1",
                    "--sign-key", keys.key_path, "-o", d / f"{name}.bundle"]).code == 0
        assert cli(["models", "install", d / f"{name}.bundle", *common]).code == 0
    config = d / "serve.toml"
    write_serve_config(config, store, factory, keys.root_path)
    return {"dir": d, "store": store, "factory": factory, "config": config}


def test_json_binary_and_any_length_requests(dyn: dict[str, Path]) -> None:
    daemon = Daemon(dyn["config"])
    try:
        daemon.wait_ready()
        x = np.arange(800, dtype=np.float32).reshape(1, 800) / 100
        for model, extra, scale in (("dyn", [], 1.0), ("gain", [{"name": "gain", "datatype": "FP32", "shape": [],
                                                               "data": [0.5]}], 0.5)):
            body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 800],
                                           "data": x.ravel().tolist()}, *extra]}).encode()
            status, raw = request(daemon.port, "POST", f"/v2/models/{model}/infer", body)
            assert status == 200, (model, raw)
            got = np.asarray(json.loads(raw)["outputs"][0]["data"], dtype=np.float32).reshape(1, 2)
            np.testing.assert_allclose(got, _want(x) * scale, rtol=1e-5)
        for rows, length in ((3, 5), (2, 1000)):  # binary tensors, other lengths on the same model
            xb = np.random.default_rng(length).normal(size=(rows, length)).astype(np.float32)
            header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, length],
                                             "parameters": {"binary_data_size": xb.nbytes}}],
                                 "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}).encode()
            status, raw = request(daemon.port, "POST", "/v2/models/dyn/infer", header + xb.tobytes(),
                                  {"Inference-Header-Content-Length": str(len(header))})
            assert status == 200, raw
            np.testing.assert_allclose(np.frombuffer(raw[-rows * 2 * 4:], dtype=np.float32).reshape(rows, 2),
                                       _want(xb), rtol=1e-4, atol=1e-4)
    finally:
        assert daemon.stop() == 0, daemon.log()


def test_score_takes_each_rows_shape_from_the_file(dyn: dict[str, Path], cli: Callable[..., Any]) -> None:
    d = dyn["dir"]
    common = ["--config", dyn["config"]]
    x = np.random.default_rng(0).normal(size=(7, 514)).astype(np.float32)
    np.save(d / "rows.npy", x)
    r = cli(["score", "--model", "dyn", d / "rows.npy", "-o", d / "out.npy", *common])
    assert r.code == 0, r.err
    np.testing.assert_allclose(np.load(d / "out.npy"), _want(x), rtol=1e-4, atol=1e-4)
    lines = [np.arange(n, dtype=np.float32) for n in (3, 3, 9, 1)]
    (d / "rows.jsonl").write_text("".join(json.dumps({"x": a.tolist()}) + "\n" for a in lines), encoding="utf-8")
    r = cli(["score", "--model", "dyn", d / "rows.jsonl", "-o", d / "out.jsonl", *common])
    assert r.code == 0, r.err
    got = [json.loads(line)["y"] for line in (d / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    np.testing.assert_allclose(np.asarray(got), np.concatenate([_want(a[None, :]) for a in lines]), rtol=1e-5)
    (d / "rows.csv").write_text("1,2,3\n4,5\n", encoding="utf-8")
    r = cli(["score", "--model", "dyn", d / "rows.csv", "-o", d / "out.csv", *common])
    assert r.code == 0, r.err
    assert (d / "out.csv").read_text(encoding="utf-8").splitlines()[1:] == ["6,2", "9,8"]
    r = cli(["score", "--model", "dyn", d / "rows.jsonl", "-o", d / "ragged.npy", *common])  # inputs ragged, outputs not
    assert r.code == 0, r.err
    np.testing.assert_allclose(np.load(d / "ragged.npy"), np.asarray(got), rtol=1e-6)


def test_rows_of_another_output_shape_cannot_go_into_one_npy(tmp_path: Path) -> None:
    from edge_runtime.exceptions import InputError
    from edge_runtime.scoring import OutputWriter
    from edge_runtime.spec.tensors import TensorSpec

    writer = OutputWriter(tmp_path / "out.npy", (TensorSpec("y", "FP32", (-1, -1)),))
    writer.write([np.zeros((2, 3), np.float32)])
    with pytest.raises(InputError, match="write .jsonl"):
        writer.write([np.zeros((1, 4), np.float32)])
    writer.close(success=False)
    assert not (tmp_path / "out.npy").exists()


DATA = Path(__file__).parent / "data"


def test_a_dynamic_input_tflite_packs_and_serves(tmp_path: Path, keys: Any, cli: Callable[..., Any]) -> None:
    """``frames4.tflite`` (data/make_frames4.py) takes x [1, -1] and reshapes it into 4-sample
    frames: allocated at its default shape [1, 1] it fails ("XNNPack delegate failed to reshape").
    The interpreter is resized to the data's shape before it is allocated, so it packs and serves."""
    golden = np.arange(16, dtype=np.float32).reshape(1, 16)
    np.save(tmp_path / "golden.npy", golden)
    r = cli(["bundle", "create", DATA / "frames4.tflite", "--name", "frames", "--version", "1", "--sign-key",
             keys.key_path, "--golden-inputs", tmp_path / "golden.npy", "-o", tmp_path / "frames.bundle"])
    assert r.code == 0, r.err
    store, factory = tmp_path / "store", tmp_path / "factory"
    factory.mkdir()
    assert cli(["models", "install", tmp_path / "frames.bundle", "--store", store, "--root", keys.root_path,
                "--factory", factory]).code == 0
    config = tmp_path / "serve.toml"
    write_serve_config(config, store, factory, keys.root_path)
    daemon = Daemon(config)
    try:
        daemon.wait_ready()
        answers = []
        for length in (24, 8, 400):
            x = np.linspace(-1, 1, length, dtype=np.float32).reshape(1, length)
            body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, length],
                                           "data": x.ravel().tolist()}]}).encode()
            status, raw = request(daemon.port, "POST", "/v2/models/frames/infer", body)
            assert status == 200, (length, raw)
            answers.append(json.loads(raw)["outputs"][0]["shape"])
        assert answers == [[1, 2]] * 3
    finally:
        assert daemon.stop() == 0, daemon.log()
