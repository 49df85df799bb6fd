"""Before advising anything or falling back, the converter tries what can cure a failed conversion
(issue: real models, round 2): a conversion that collapses with a dynamic batch is converted again
with the batch pinned to 1; one that LiteRT needs TensorFlow (Flex) ops for is converted again with
onnx2tf's Flex-free replacements (-rtpo for the model's operators, -eru for recurrent layers).

onnx2tf and validation are faked (a subclass of the pipeline records each onnx2tf run's arguments
and input shapes, and fails float variants while the batch is dynamic, as real exports did:
correlation 0.26, agreement 0, or with LiteRT's Flex error until the replacements are asked for);
everything else, from reading the ONNX file to the job's arguments and the pins written for the
second run, is the converter's own code.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from converter.auto import Candidate
from converter.exceptions import AccuracyError
from converter.interface import Matched
from converter.onnx2tf_runner import Onnx2tfJob, Onnx2tfResult
from converter.source import SourceModel
from edge_runtime.spec.tensors import TensorSpec

conv = importlib.import_module("converter.convert")  # converter/__init__ exports the function of that name
COLLAPSE = ["correlation 0.26 < 0.99", "agreement 0.000 < 0.98"]


def _model(path: Path) -> Path:
    w = helper.make_tensor("w", TensorProto.FLOAT, (4, 1), np.ones(4, np.float32))
    graph = helper.make_graph([helper.make_node("Abs", ["x"], ["a"]), helper.make_node("MatMul", ["a", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


class FakePipeline(conv._Pipeline):
    """onnx2tf and validation replaced. ``failure``: "batch" (float variants collapse unless the batch
    is 1), "flex" (LiteRT needs Flex ops unless onnx2tf was given -rtpo) or "always"."""

    failure = "batch"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.onnx2tf_shapes: list[tuple[int, ...]] = []
        self.onnx2tf_args: list[list[str]] = []
        self.pinned_on_disk: list[list[Any]] = []

    def _attempt(self, job: Onnx2tfJob, source: SourceModel) -> Onnx2tfResult:
        self.onnx2tf_shapes.append(source.inputs[0].shape)
        self.onnx2tf_args.append(job.args())
        copy = onnx.load(str(job.model))  # what onnx2tf would read
        dims = copy.graph.input[0].type.tensor_type.shape.dim
        self.pinned_on_disk.append([d.dim_value or d.dim_param for d in dims])
        return Onnx2tfResult({"fp16": self.workdir / "fake.tflite"}, ["onnx2tf", *job.args()], [])

    def evaluate(self, mode: str, result: Onnx2tfResult, source: SourceModel, data: conv._Data,
                 reference: list[np.ndarray], measure: bool) -> conv._Evaluated:
        cand = Candidate(mode, mode, size_bytes=8)
        if self.failure == "flex" and "-rtpo" not in self.onnx2tf_args[-1]:
            cand.error = ("LiteRT cannot load the converted model: it needs TensorFlow (Flex) ops, which LiteRT on "
                          "a device does not have")
            return conv._Evaluated(cand)
        if self.failure == "always" or (self.failure == "batch" and source.inputs[0].shape[0] != 1):
            cand.failures = list(COLLAPSE)
        return conv._Evaluated(cand, Matched(b"tflite", source.inputs, source.outputs, "names", False))

    def quantization_field(self, *args: Any) -> dict[str, Any]:
        return {"mode": "fp16"}


@pytest.fixture
def packed(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    packed_manifest = SimpleNamespace(format="tflite", budget_max_abs_error=None, variants=())  # what run() reads of it
    monkeypatch.setattr(conv, "pack_tflite", lambda tflite, **kw: calls.append(kw) or packed_manifest)
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
    p.failure = "always"
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


def test_flex_ops_are_replaced_by_onnx2tfs_builtin_compositions_before_falling_back(
    tmp_path: Path, keys: Any, packed: list[dict[str, Any]],
) -> None:
    p = _pipeline(tmp_path, keys)
    p.failure = "flex"
    result = p.run()
    assert len(p.onnx2tf_args) == 2 and "-rtpo" not in p.onnx2tf_args[0]
    assert p.onnx2tf_args[1][-2:] == ["-rtpo", "abs"]  # the model's Abs, as onnx2tf spells it
    assert result.mode == "fp16" and len(packed) == 1 and result.fallback_reason is None
    assert any("TensorFlow (Flex) ops" in w and "-rtpo abs" in w for w in result.warnings)


def test_flex_free_arguments_name_only_the_models_replaceable_operators() -> None:
    assert conv.flex_free_args({"Erf": ["e"], "MatMul": ["m"], "LSTM": ["l"], "Pow": ["p"]}) == (
        "-rtpo", "erf", "pow", "-eru")
    assert conv.flex_free_args({"MatMul": ["m"], "Conv": ["c"]}) == ()
    job = conv._ExtraArgsJob(Path("model.onnx"), dynamic_range=True, extra=("-rtpo", "erf"))
    assert job.args()[-3:] == ["-odrqt", "-rtpo", "erf"]


@pytest.mark.corpus  # two real onnx2tf runs: in make test-corpus, not make test
def test_a_real_erf_model_needs_flex_and_ends_as_tflite_with_the_replacement(tmp_path: Path, keys: Any) -> None:
    """onnx2tf 1.29 writes ONNX Erf as a Flex op by default; with -rtpo erf the fp16 .tflite loads
    in LiteRT without Flex and matches onnxruntime."""
    import json

    from conversion_support import run_convert

    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", TensorProto.FLOAT, (8, 4), rng.normal(size=32).astype(np.float32))
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Erf", ["h"], ["y"])],
                              "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8),
              str(tmp_path / "erf.onnx"))
    np.save(tmp_path / "rows.npy", rng.normal(size=(64, 8)).astype(np.float32))
    c = run_convert([tmp_path / "erf.onnx", "--name", "erf", "--version", "1", "--sign-key", keys.key_path,
                     "--quantize", "fp16", "--validation", tmp_path / "rows.npy", "--json"], tmp_path / "erf.bundle")
    assert c.code == 0, c.err
    report = json.loads(c.out)
    assert report["format"] == "tflite" and report["mode"] == "fp16"
    assert "converted again with onnx2tf's replacements (-rtpo erf)" in c.err
