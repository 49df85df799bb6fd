"""``bundle create --golden-inputs`` with several rows for a model exported with a fixed batch of 1:
the rows are taken one at a time, as ``score`` does, and the device's self-test does the same."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _batch1_model(path: Path) -> np.ndarray:
    w = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "b1", [x], [y],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return w


def test_four_golden_rows_for_a_batch_one_model(tmp_path: Path, keys: Any, cli: Callable[..., Any]) -> None:
    w = _batch1_model(tmp_path / "b1.onnx")
    rows = np.random.default_rng(1).normal(size=(4, 4)).astype(np.float32)
    np.save(tmp_path / "golden.npy", rows)
    r = cli(["bundle", "create", tmp_path / "b1.onnx", "--name", "b1", "--version", "1", "--sign-key", keys.key_path,
             "--golden-inputs", tmp_path / "golden.npy", "-o", tmp_path / "b1.bundle"])
    assert r.code == 0, r.err
    with tarfile.open(tmp_path / "b1.bundle") as tar:
        fh = tar.extractfile("manifest.json")
        assert fh is not None
        golden = json.loads(fh.read())["golden"]
    assert golden["inputs"]["x"]["shape"] == [4, 4] and golden["outputs"]["y"]["shape"] == [4, 3]
    np.testing.assert_allclose(np.asarray(golden["outputs"]["y"]["data"]).reshape(4, 3), rows @ w, rtol=1e-5)
    factory = tmp_path / "factory"
    factory.mkdir()
    r = cli(["models", "install", tmp_path / "b1.bundle", "--store", tmp_path / "store", "--root", keys.root_path,
             "--factory", factory])
    assert r.code == 0 and "passed its self-test" in r.out + r.err, r.err
