"""Fixtures for the daemon tests: device directories with running daemons, extra models
built with ``onnx.helper`` (exact-type round trips, a slow model), a bundle whose golden
self-test fails, and distinct input rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime.bundle.reader import BundleLimits, open_bundle
from edge_runtime.bundle.writer import build_manifest, write_bundle
from serving.support import FACTORY_SRC, Env


@pytest.fixture
def env(tmp_path: Path, keys: Any, make_bundle: Callable[..., Path]) -> Iterator[Env]:
    """A fresh device directory; its daemons are stopped after the test."""
    e = Env(tmp_path, keys, make_bundle(1))
    yield e
    e.close()


@pytest.fixture(scope="session")
def onnx_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``types``: identity on FP16, INT32, UINT8 and INT64 tensors; ``slow``: a 256-wide MatMul chain (~ms)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    d = tmp_path_factory.mktemp("onnx")
    kinds = [("f16", TensorProto.FLOAT16, 4), ("i32", TensorProto.INT32, 3), ("u8", TensorProto.UINT8, 5),
             ("i64", TensorProto.INT64, 2)]
    nodes = [helper.make_node("Identity", [f"{k}_in"], [f"{k}_out"]) for k, _, _ in kinds]
    graph = helper.make_graph(
        nodes, "types",
        [helper.make_tensor_value_info(f"{k}_in", t, ["N", n]) for k, t, n in kinds],
        [helper.make_tensor_value_info(f"{k}_out", t, ["N", n]) for k, t, n in kinds],
    )
    types = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.save(types, d / "types.onnx")

    rng = np.random.default_rng(0)
    width, depth = 256, 120
    inits = []
    nodes = []
    prev = "x"
    for i in range(depth):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]))
        nodes.append(helper.make_node("Tanh", [f"h{i}"], [f"t{i}"]))
        prev = f"t{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])],
        inits,
    )
    slow = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.save(slow, d / "slow.onnx")
    return {"types": d / "types.onnx", "slow": d / "slow.onnx"}


@pytest.fixture(scope="session")
def bad_golden_bundle(tmp_path_factory: pytest.TempPathFactory, keys: Any, make_bundle: Callable[..., Path]) -> Callable[[int], Path]:
    """``bad_golden_bundle(version)``: a correctly signed fraud bundle whose golden outputs are wrong."""
    d = tmp_path_factory.mktemp("badgolden")

    def build(version: int) -> Path:
        src = make_bundle(version)
        with open_bundle(src, keys.root, BundleLimits()) as b:
            obj = b.manifest.to_json()
            data = b.read_artifact(b.manifest.model_file)
        for t in obj["golden"]["outputs"].values():
            t["data"] = [v + 0.5 for v in t["data"]]
        manifest = build_manifest(obj)
        out = d / f"fraud-v{version}-bad.bundle"
        write_bundle(out, manifest, {"model.tflite": data}, [keys.key])
        return out

    return build


@pytest.fixture(scope="session")
def rows() -> np.ndarray:
    """Distinct input rows for the fraud model: the held-out set, float32 [143, 30]."""
    return np.load(FACTORY_SRC / "holdout.npz")["x"].astype(np.float32)
