"""Backends: LiteRT (float and int8 I/O) and onnxruntime against the interpreters run directly,
(de)quantization, input checks and the golden self-test."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime.bundle.manifest import Manifest
from edge_runtime.bundle.reader import open_bundle
from edge_runtime.bundle.writer import build_manifest, hash_artifact
from edge_runtime.exceptions import InferenceError, InputError, SelfTestError
from edge_runtime.inference.backend import Backend, load_backend
from edge_runtime.inference.litert import describe
from edge_runtime.inference.onnx import describe_onnx
from edge_runtime.inference.selftest import run_selftest
from edge_runtime.spec.tensors import Quantization, kserve_datatype, numpy_dtype

FACTORY = Path(__file__).resolve().parents[2] / "device" / "factory"
DEMO = json.loads((FACTORY / "demo_model.json").read_text())


def _manifest(bundle: Path, keys: Any) -> Manifest:
    with open_bundle(bundle, keys.root) as b:
        return b.manifest


def _int8_direct(x: np.ndarray) -> np.ndarray:
    """The int8 model run by hand: quantize with the interpreter's own parameters, invoke, dequantize."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(FACTORY / "fraud_int8io.tflite"))
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    interp.resize_tensor_input(inp["index"], x.shape)
    interp.allocate_tensors()
    s, z = inp["quantization"]
    interp.set_tensor(inp["index"], np.clip(np.round(x / s) + z, -128, 127).astype(np.int8))
    interp.invoke()
    q = interp.get_tensor(out["index"])
    s, z = out["quantization"]
    return (q.astype(np.float32) - z) * np.float32(s)


def test_litert_backend_matches_the_interpreter(
    make_bundle: Callable[..., Path], keys: Any, holdout_x: np.ndarray, litert: Any
) -> None:
    manifest = _manifest(make_bundle(1), keys)
    backend = load_backend(manifest, FACTORY / "fraud.tflite")
    want = litert(FACTORY / "fraud.tflite", holdout_x)
    (got,) = backend.run([holdout_x])
    assert got.dtype == np.float32 and got.shape == (143, 1)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    # The dynamic batch dimension follows each call: 1 row, then 7, then all again.
    (one,) = backend.run([holdout_x[:1]])
    (seven,) = backend.run([holdout_x[10:17]])
    np.testing.assert_allclose(one, want[:1], atol=1e-6, rtol=0)
    np.testing.assert_allclose(seven, want[10:17], atol=1e-6, rtol=0)
    # float64 callers are converted to the declared FP32.
    (again,) = backend.run([holdout_x.astype(np.float64)])
    np.testing.assert_allclose(again, want, atol=1e-6, rtol=0)


def test_int8_backend_quantizes_and_dequantizes_with_the_manifest_parameters(
    make_bundle: Callable[..., Path], keys: Any, holdout_x: np.ndarray
) -> None:
    manifest = _manifest(make_bundle(2, model="fraud_int8io.tflite"), keys)
    (inp,), (out,) = manifest.inputs, manifest.outputs
    # Callers see FP32; the manifest carries the interpreter's int8 parameters.
    assert (inp.datatype, out.datatype) == ("FP32", "FP32")
    assert inp.quantization == Quantization("INT8", DEMO["int8io_quantization"]["input"]["scale"],
                                            DEMO["int8io_quantization"]["input"]["zero_point"])
    assert out.quantization == Quantization("INT8", DEMO["int8io_quantization"]["output"]["scale"],
                                            DEMO["int8io_quantization"]["output"]["zero_point"])
    backend = load_backend(manifest, (FACTORY / "fraud_int8io.tflite").read_bytes())
    (got,) = backend.run([holdout_x])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, _int8_direct(holdout_x))
    # Outputs are multiples of the output scale within the sigmoid's range.
    steps = got / out.quantization.scale
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-4)
    assert got.min() >= 0.0 and got.max() <= 1.0


def test_quantization_round_trip_rounding_and_clipping() -> None:
    q = Quantization("INT8", 0.5, -10)
    x = np.array([0.0, 0.26, -0.74, 1000.0, -1000.0], dtype=np.float32)
    ints = q.quantize(x)
    assert ints.dtype == np.int8
    assert ints.tolist() == [-10, -9, -11, 127, -128]
    assert q.dequantize(ints).tolist() == [0.0, 0.5, -0.5, 68.5, -59.0]
    u = Quantization("UINT8", 1 / 255, 0)
    assert u.quantize(np.array([0.0, 1.0, 2.0])).tolist() == [0, 255, 255]


def test_datatype_tables_round_trip() -> None:
    for name in ("BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"):
        assert kserve_datatype(numpy_dtype(name)) == name
    with pytest.raises(InputError, match="unsupported datatype 'BYTES'"):
        numpy_dtype("BYTES")


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ([], "expected 1 inputs, found 0"),
        ([np.zeros((2, 29), np.float32)], r"input 'input_0': expected shape \[-1, 30\], found \[2, 29\] \(dimension 1\)"),
        ([np.zeros((30,), np.float32)], r"expected shape \[-1, 30\], found \[30\] \(rank 1\)"),
        ([np.zeros((1, 30), np.float32)] * 2, "expected 1 inputs, found 2"),
    ],
)
def test_backend_refuses_inputs_that_do_not_fit(
    make_bundle: Callable[..., Path], keys: Any, arrays: list[np.ndarray], match: str
) -> None:
    backend = load_backend(_manifest(make_bundle(1), keys), FACTORY / "fraud.tflite")
    with pytest.raises(InputError, match=match):
        backend.run(arrays)


def _with(manifest: Manifest, **changes: Any) -> Manifest:
    obj = manifest.to_json()
    for key, value in changes.items():
        obj[key] = value
    return build_manifest(obj)


def test_manifest_that_does_not_describe_the_model_is_refused_on_load(
    make_bundle: Callable[..., Path], keys: Any
) -> None:
    m = _manifest(make_bundle(1), keys)
    model = FACTORY / "fraud.tflite"
    wrong_type = _with(m, inputs=[{"name": "input_0", "datatype": "INT32", "shape": [-1, 30]}])
    with pytest.raises(InferenceError, match="input 'input_0': manifest says int32, the model has float32"):
        load_backend(wrong_type, model)
    wrong_rank = _with(m, outputs=[{"name": "output_0", "datatype": "FP32", "shape": [-1, 2, 3]}], golden=None)
    with pytest.raises(InferenceError, match=r"output 'output_0': the manifest says shape \[-1, 2, 3\], the model \[-1, 1\]"):
        load_backend(wrong_rank, model)
    # A shape that differs only by axes of size 1 holds the same elements in the same order: reshaped.
    squeezed = _with(m, outputs=[{"name": "output_0", "datatype": "FP32", "shape": [-1]}], golden=None)
    x = np.load(FACTORY / "golden.npy")
    full = load_backend(m, model).run([x])[0]
    got = load_backend(squeezed, model).run([x])[0]
    assert full.shape == (len(x), 1) and got.shape == (len(x),)
    np.testing.assert_array_equal(got, full.reshape(-1))
    two_outputs = _with(
        m, outputs=[{"name": "a", "datatype": "FP32", "shape": [-1, 1]}, {"name": "b", "datatype": "FP32", "shape": [-1, 1]}],
        golden=None,
    )
    with pytest.raises(InferenceError, match="manifest lists 2 outputs, the model has 1"):
        load_backend(two_outputs, model)
    with pytest.raises(InferenceError, match="LiteRT cannot load the model"):
        load_backend(m, b"TFL3" + bytes(64))


def test_onnx_backend_matches_the_tflite_model(
    make_bundle: Callable[..., Path], keys: Any, holdout_x: np.ndarray, litert: Any
) -> None:
    ins, outs = describe_onnx(FACTORY / "fraud.onnx")
    assert [(s.name, s.datatype, s.shape) for s in ins] == [("input_0", "FP32", (-1, 30))]
    manifest = _manifest(make_bundle(5, model="fraud.onnx"), keys)
    assert manifest.format == "onnx" and manifest.model_file == "model.onnx"
    backend = load_backend(manifest, FACTORY / "fraud.onnx")
    (got,) = backend.run([holdout_x])
    np.testing.assert_allclose(got, litert(FACTORY / "fraud.tflite", holdout_x), atol=1e-5, rtol=0)
    assert run_selftest(backend, manifest) <= 1e-6


def test_describe_reads_names_shapes_and_quantization_from_the_interpreter() -> None:
    ins, outs = describe(FACTORY / "fraud_int8io.tflite")
    assert ins[0].name == "input_0" and ins[0].shape == (-1, 30)  # serving_default_ and :0 stripped
    assert ins[0].quantization is not None and ins[0].quantization.datatype == "INT8"
    ins, outs = describe(FACTORY / "fraud.tflite", ["x"], ["y"])
    assert (ins[0].name, outs[0].name, outs[0].shape, outs[0].quantization) == ("x", "y", (-1, 1), None)
    with pytest.raises(InferenceError, match="model has 1 inputs, 2 names given"):
        describe(FACTORY / "fraud.tflite", ["a", "b"])


# -- the golden self-test -----------------------------------------------------------------------


def test_self_test_passes_on_the_packed_model_and_reports_its_error(make_bundle: Callable[..., Path], keys: Any) -> None:
    m = _manifest(make_bundle(1), keys)
    assert m.golden is not None and m.golden.atol == 1e-4
    err = run_selftest(load_backend(m, FACTORY / "fraud.tflite"), m)
    assert 0.0 <= err <= 1e-6


def test_self_test_fails_on_another_model(make_bundle: Callable[..., Path], keys: Any) -> None:
    m = _manifest(make_bundle(1), keys)
    # The int8 model under the float model's manifest (types checked by hand: both take FP32 callers).
    int8_manifest = _manifest(make_bundle(2, model="fraud_int8io.tflite"), keys)
    swapped = _with(int8_manifest, golden=m.golden.to_json() if m.golden else None)
    with pytest.raises(SelfTestError, match=r"fraud v2: output 'output_0' differs from golden by .* \(atol 0.0001"):
        run_selftest(load_backend(swapped, FACTORY / "fraud_int8io.tflite"), swapped)


def test_self_test_reports_shape_and_non_finite_outputs(make_bundle: Callable[..., Path], keys: Any) -> None:
    m = _manifest(make_bundle(1), keys)
    assert m.golden is not None
    golden = m.golden.to_json()
    golden["outputs"]["output_0"] = {"shape": [2, 2], "data": [0.0, 0.0, 0.0, 0.0]}
    bad_shape = _with(m, golden=golden)
    with pytest.raises(SelfTestError, match=r"output 'output_0' has shape \[4, 1\], golden \[2, 2\]"):
        run_selftest(load_backend(bad_shape, FACTORY / "fraud.tflite"), bad_shape)


    class NaNBackend(Backend):
        def _invoke(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
            return [np.full((len(arrays[0]), 1), np.nan, np.float32)]

    with pytest.raises(SelfTestError, match="fraud v1: output 'output_0' is not finite"):
        run_selftest(NaNBackend(m), m)

    class BrokenBackend(Backend):
        def _invoke(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
            raise InferenceError("interpreter crashed")

    with pytest.raises(SelfTestError, match="fraud v1: self-test could not run: interpreter crashed"):
        run_selftest(BrokenBackend(m), m)


def test_hash_artifact_chunks() -> None:
    art = hash_artifact("model.tflite", b"x" * 3000, 1024)
    assert art.chunk_count == 3 and art.length == 3000
    assert [art.chunk_length(i) for i in range(3)] == [1024, 1024, 952]


def test_nan_cannot_be_quantized() -> None:
    q = Quantization("INT8", 0.1, 0)
    with pytest.raises(InputError, match="input holds NaN, which the model's INT8 input cannot represent"):
        q.quantize(np.array([1.0, np.nan]))
    assert q.quantize(np.array([np.inf, -np.inf])).tolist() == [127, -128]


def test_int8_backend_names_the_input_holding_nan(make_bundle: Callable[..., Path], keys: Any) -> None:
    backend = load_backend(_manifest(make_bundle(2, model="fraud_int8io.tflite"), keys), FACTORY / "fraud_int8io.tflite")
    x = np.zeros((2, 30), np.float32)
    x[1, 3] = np.nan
    with pytest.raises(InputError, match="input 'input_0': input holds NaN"):
        backend.run([x])
