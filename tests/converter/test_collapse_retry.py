"""A conversion that collapses with a dynamic batch is converted again with the batch pinned to 1
before any advice is given (issue: real models, round 2).

onnx2tf and validation are faked (a subclass of the pipeline records each onnx2tf run's input
shapes and fails float variants while the batch is dynamic, as real exports did: correlation 0.26,
agreement 0); everything else, from reading the ONNX file to the pins written for the second run,
is the converter's own code.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from converter.auto import Candidate
from converter.exceptions import AccuracyError
from converter.interface import Matched
from converter.onnx2tf_runner import Onnx2tfResult
from converter.source import SourceModel
from edge_runtime.inference.tensors import TensorSpec

conv = importlib.import_module("converter.convert")  # converter/__init__ exports the function of that name
COLLAPSE = ["correlation 0.26 < 0.99", "agreement 0.000 < 0.98"]


def _model(path: Path) -> Path:
    w = helper.make_tensor("w", TensorProto.FLOAT, (4, 1), np.ones(4, np.float32))
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


class FakePipeline(conv._Pipeline):
    """onnx2tf and validation replaced: float variants collapse unless the batch is 1; with
    ``always_fail`` they collapse pinned too."""

    always_fail = False

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.onnx2tf_shapes: list[tuple[int, ...]] = []
        self.pinned_on_disk: list[list[Any]] = []

    def run_onnx2tf(self, source: SourceModel, data: conv._Data) -> tuple[Onnx2tfResult, SourceModel]:
        self.onnx2tf_shapes.append(source.inputs[0].shape)
        copy = onnx.load(str(self.workdir / "model.onnx"))  # what onnx2tf would read
        dims = copy.graph.input[0].type.tensor_type.shape.dim
        self.pinned_on_disk.append([d.dim_value or d.dim_param for d in dims])
        return Onnx2tfResult({"fp16": self.workdir / "fake.tflite"}, ["onnx2tf"], []), source

    def evaluate(self, mode: str, result: Onnx2tfResult, source: SourceModel, data: conv._Data,
                 reference: list[np.ndarray], measure: bool) -> conv._Evaluated:
        batch_1 = source.inputs[0].shape[0] == 1
        cand = Candidate(mode, mode, size_bytes=8, failures=[] if batch_1 and not self.always_fail else list(COLLAPSE))
        return conv._Evaluated(cand, Matched(b"tflite", source.inputs, source.outputs, "names", False))

    def quantization_field(self, *args: Any) -> dict[str, Any]:
        return {"mode": "fp16"}


@pytest.fixture
def packed(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(conv, "pack_tflite", lambda tflite, **kw: calls.append(kw) or {"format": "tflite"})
    return calls


def _pipeline(tmp_path: Path, keys: Any, **opts: Any) -> FakePipeline:
    model = _model(tmp_path / "m.onnx")
    np.save(tmp_path / "rows.npy", np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32))
    options = conv.ConvertOptions(model, "m", 1, tmp_path / "m.bundle", [keys.key], quantize="fp16",
                                  validation=tmp_path / "rows.npy", workdir_parent=tmp_path, **opts)
    return FakePipeline(options, lambda _: None)


def test_a_collapse_with_a_dynamic_batch_is_converted_again_pinned_and_ships(
    tmp_path: Path, keys: Any, packed: list[dict[str, Any]],
) -> None:
    p = _pipeline(tmp_path, keys)
    result = p.run()
    assert p.onnx2tf_shapes == [(-1, 4), (1, 4)]
    assert p.pinned_on_disk == [["N", 4], [1, 4]]  # the second onnx2tf run reads a batch-1 copy
    assert result.mode == "fp16" and len(packed) == 1
    pin = packed[0]["pinned"]["x"]  # the manifest records the pin and why
    assert pin["pinned"] == [1, 4] and "failed validation" in pin["from"]
    assert any("failed validation with a dynamic batch" in w and "pinned to 1" in w for w in result.warnings)


def test_when_the_pinned_conversion_collapses_too_the_error_says_both_were_tried(
    tmp_path: Path, keys: Any, packed: list[dict[str, Any]],
) -> None:
    p = _pipeline(tmp_path, keys)
    p.always_fail = True
    with pytest.raises(AccuracyError) as exc:
        p.run()
    assert p.onnx2tf_shapes == [(-1, 4), (1, 4)] and not packed
    message = str(exc.value)
    assert "with the batch pinned to 1" in message and "also failed with the dynamic batch" in message
    assert "--fallback-onnx" in message


def test_a_batch_the_user_chose_is_not_repinned(tmp_path: Path, keys: Any, packed: list[dict[str, Any]]) -> None:
    p = _pipeline(tmp_path, keys, input_shapes={"x": (8, 4)})
    with pytest.raises(AccuracyError):
        p.run()
    assert p.onnx2tf_shapes == [(8, 4)]  # one run: static batch, nothing to retry


def test_a_quantized_failure_alone_is_not_retried(tmp_path: Path, keys: Any, packed: list[dict[str, Any]]) -> None:
    """int8 failing is quantization, not the batch: a second onnx2tf run would cure nothing."""
    p = _pipeline(tmp_path, keys)
    failed = conv._Evaluated(Candidate("int8", "int8", failures=list(COLLAPSE)))
    data = conv._Data(None, conv.cal.Dataset((np.zeros((4, 4), np.float32),), None, "rows.npy"))
    source = SourceModel(Path("m.onnx"), (TensorSpec("x", "FP32", (-1, 4)),), (TensorSpec("y", "FP32", (-1, 1)),),
                         ("x",), ("y",))
    assert p.retry_collapsed([failed], source, data, [], ["int8"]) is None
    assert p.onnx2tf_shapes == []
