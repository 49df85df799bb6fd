"""pack_model / ``bundle create``, and acceptance 5: an int8-I/O model scores correctly from
float inputs, checked against the float model within the tolerance its manifest states."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime.bundle.reader import open_bundle
from edge_runtime.exceptions import UsageError
from edge_runtime.packaging import PackRequest, describe_model, pack_model, random_inputs, round_up
from edge_runtime.spec.tensors import TensorSpec

FACTORY = Path(__file__).resolve().parents[1] / "device" / "factory"


def test_acceptance_5_int8_model_scores_float_inputs_within_the_stated_tolerance(
    device: Any, cli: Any, keys: Any, litert: Any, holdout_x: np.ndarray, tmp_path: Path
) -> None:
    bundle = tmp_path / "fraud-int8.bundle"
    r = cli(["bundle", "create", FACTORY / "fraud_int8io.tflite", "--name", "fraud", "--version", "2",
             "--sign-key", keys.key_path, "--input-names", "input_0", "--output-names", "output_0",
             "--golden-inputs", FACTORY / "golden.npy",
             "--reference", FACTORY / "fraud.tflite", "--validation", FACTORY / "holdout.npz", "-o", bundle])
    assert r.code == 0, r.err
    assert "against fraud.tflite on 147 rows" in r.out  # 143 validation rows + 4 golden rows

    with open_bundle(bundle, keys.root) as b:
        m = b.manifest
    # The backend, not the caller, quantizes: callers send and receive FP32.
    assert (m.inputs[0].datatype, m.outputs[0].datatype) == ("FP32", "FP32")
    assert m.inputs[0].quantization is not None and m.inputs[0].quantization.datatype == "INT8"
    assert m.outputs[0].quantization is not None and m.outputs[0].quantization.datatype == "INT8"
    acc = m.quantization["accuracy"]
    assert acc["reference"]["file"] == "fraud.tflite" and acc["rows"] == 147
    assert m.golden is not None
    # One tolerance, stated once: the golden atol is the accuracy statement, and covers what was measured.
    assert m.golden.atol == acc["atol"] >= acc["max_abs_error"] > 0

    r = device.cli("models", "install", bundle)
    assert r.code == 0 and "fraud v2 passed its self-test and is active" in r.out, r.err

    np.save(tmp_path / "holdout.npy", holdout_x)
    out = tmp_path / "scores.csv"
    r = device.cli("score", "--model", "fraud", tmp_path / "holdout.npy", "-o", out, "--batch-size", "32")
    assert r.code == 0, r.err
    rows = list(csv.reader(io.StringIO(out.read_text())))
    got = np.array(rows[1:], dtype=np.float64)
    float_out = litert(FACTORY / "fraud.tflite", holdout_x).astype(np.float64)
    assert got.shape == float_out.shape == (143, 1)
    assert np.allclose(got, float_out, atol=m.golden.atol, rtol=m.golden.rtol)
    assert np.max(np.abs(got - float_out)) <= acc["max_abs_error"] + 1e-6
    # And the scores are still the classifier they claim to be (labels of the held-out split).
    y = np.load(FACTORY / "holdout.npz")["y"]
    assert np.mean((got[:, 0] > 0.5) == (y == 1)) >= 0.93
    assert np.mean((got[:, 0] > 0.5) == (float_out[:, 0] > 0.5)) >= 0.97


def test_without_a_reference_the_tolerance_is_only_a_drift_allowance(
    make_bundle: Any, keys: Any, litert: Any, holdout_x: np.ndarray
) -> None:
    with open_bundle(make_bundle(2, model="fraud_int8io.tflite"), keys.root) as b:
        m = b.manifest
    assert m.golden is not None and "accuracy" not in m.quantization
    assert m.golden.atol == 2 * 0.00390625  # two steps of the int8 output
    # Which is why it cannot be read as accuracy against the float model:
    from edge_runtime.inference.backend import load_backend

    (got,) = load_backend(m, FACTORY / "fraud_int8io.tflite").run([holdout_x])
    assert np.max(np.abs(got - litert(FACTORY / "fraud.tflite", holdout_x))) > m.golden.atol


def test_explicit_atol_below_the_measured_error_is_refused(keys: Any, tmp_path: Path, holdout_x: np.ndarray) -> None:
    with pytest.raises(UsageError, match=r"atol 0.01 is below the measured error 0.1\d+ against the reference"):
        pack_model(PackRequest(FACTORY / "fraud_int8io.tflite", name="fraud", version=2, keys=[keys.key], out=tmp_path / "x.bundle",
                   atol=0.01, reference=FACTORY / "fraud.tflite", validation_inputs=[holdout_x]))
    assert not (tmp_path / "x.bundle").exists()
    m = pack_model(PackRequest(FACTORY / "fraud_int8io.tflite", name="fraud", version=2, keys=[keys.key], out=tmp_path / "y.bundle",
                   atol=0.5, reference=FACTORY / "fraud.tflite", validation_inputs=[holdout_x]))
    assert m.golden is not None and m.golden.atol == 0.5 and m.quantization["accuracy"]["atol"] == 0.5


def test_float_model_against_its_onnx_reference(keys: Any, tmp_path: Path, holdout_x: np.ndarray) -> None:
    m = pack_model(PackRequest(FACTORY / "fraud.tflite", name="fraud", version=3, keys=[keys.key], out=tmp_path / "f.bundle",
                   input_names=["input_0"], output_names=["output_0"],
                   reference=FACTORY / "fraud.onnx", validation_inputs=[holdout_x]))
    acc = m.quantization["accuracy"]
    assert acc["reference"]["format"] == "onnx" and acc["max_abs_error"] < 1e-5
    assert m.golden is not None and m.golden.atol == round_up(acc["max_abs_error"] + 1e-4)


def test_pack_model_argument_errors(keys: Any, tmp_path: Path) -> None:
    common: dict[str, Any] = {"name": "fraud", "version": 1, "keys": [keys.key], "out": tmp_path / "x.bundle"}
    with pytest.raises(UsageError, match="validation inputs need a reference model"):
        pack_model(PackRequest(FACTORY / "fraud.tflite", validation_inputs=[np.zeros((2, 30))], **common))
    with pytest.raises(UsageError, match="2 golden input arrays given, the model has 1 inputs"):
        pack_model(PackRequest(FACTORY / "fraud.tflite", golden_inputs=[np.zeros((2, 30))] * 2, **common))
    with pytest.raises(UsageError, match="sample.csv: expected a .tflite or .onnx file"):
        describe_model(FACTORY / "sample.csv")
    assert not (tmp_path / "x.bundle").exists()


def test_pack_model_overrides_and_extra_fields(keys: Any, tmp_path: Path) -> None:
    ins = [TensorSpec("features", "FP32", (-1, 30))]
    outs = [TensorSpec("probability", "FP32", (-1, 1))]
    m = pack_model(PackRequest(FACTORY / "fraud.tflite", name="fraud", version=1, keys=[keys.key], out=tmp_path / "o.bundle",
                   inputs=ins, outputs=outs, extra={"description": "demo"}, architectures=["aarch64", "x86_64"]))
    assert [s.name for s in m.inputs] == ["features"] and [s.name for s in m.outputs] == ["probability"]
    assert m.extra == {"description": "demo"}
    assert m.compatible["architectures"] == ["aarch64", "x86_64"]
    assert m.golden is not None and m.golden.inputs["features"]["shape"] == [4, 30]  # random, reproducible
    with open_bundle(tmp_path / "o.bundle", keys.root) as b:
        assert b.manifest == m


def test_random_inputs_are_reproducible() -> None:
    specs = [TensorSpec("x", "FP32", (-1, 3)), TensorSpec("n", "INT32", (2,)), TensorSpec("b", "BOOL", (-1,))]
    a, b = random_inputs(specs), random_inputs(specs)
    assert [x.shape for x in a] == [(4, 3), (2,), (4,)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert a[1].dtype == np.int32 and a[2].dtype == np.bool_


@pytest.mark.parametrize(("value", "want"), [(0.13468948, 0.14), (0.0078125, 0.0079), (1e-4, 1e-4), (0.0, 0.0), (12.01, 13.0)])
def test_round_up_never_rounds_down(value: float, want: float) -> None:
    assert round_up(value) == want
    assert round_up(value) >= value


def _big_image_onnx(path: Path, hw: tuple[int, int], weights: int = 0) -> Path:
    """y = x * 0.5 + w[0] over an NCHW image: a model whose golden rows are large (and, with
    ``weights``, whose file is that many float32s)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.full(max(weights, 1), 0.25, np.float32)
    nodes = [
        helper.make_node("Slice", ["w", "zero", "one"], ["w0"]),
        helper.make_node("Mul", ["x", "half"], ["h"]),
        helper.make_node("Add", ["h", "w0"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, *hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, *hw])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([0], np.int64), "zero"),
                     numpy_helper.from_array(np.array([1], np.int64), "one"),
                     numpy_helper.from_array(np.array(0.5, np.float32), "half")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


def test_large_golden_data_travels_as_a_signed_artifact_and_the_manifest_stays_small(
    keys: Any, tmp_path: Path
) -> None:
    from edge_runtime.bundle.manifest import GOLDEN_FILE, TARGET_MANIFEST_BYTES
    from edge_runtime.inference.backend import load_backend
    from edge_runtime.inference.selftest import load_golden, run_selftest
    from edge_runtime.store.store import ModelStore

    model = _big_image_onnx(tmp_path / "layout.onnx", (800, 608))
    rows = np.random.default_rng(0).random((1, 3, 800, 608), dtype=np.float32)
    m = pack_model(PackRequest(model, name="layout", version=1, keys=[keys.key], out=tmp_path / "layout.bundle", golden_inputs=[rows]))
    assert m.golden is not None and m.golden.file == GOLDEN_FILE and m.golden.inputs == {}
    assert len(m.canonical()) < TARGET_MANIFEST_BYTES and m.artifacts[GOLDEN_FILE].length > 2 * rows.nbytes
    store = ModelStore(tmp_path / "store", keys.root, None)
    store.install(tmp_path / "layout.bundle")
    store.activate("layout", 1, selftest=lambda r: run_selftest(load_backend(r.manifest, r.model), r.manifest,
                                                                r.golden_bytes) and None)
    resolved = store.resolve("layout")
    golden = load_golden(resolved.manifest, resolved.golden_bytes)
    assert golden is not None and np.array_equal(golden.inputs[0], rows)
    np.testing.assert_allclose(golden.outputs[0], rows * 0.5 + 0.25, rtol=1e-6)
    # The golden file is hashed like the model: a flipped byte in the store is caught on load.
    path = store.version_dir("layout", 1) / GOLDEN_FILE
    data = bytearray(path.read_bytes())
    data[-100] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(Exception, match="golden.npz"):
        store.resolved_version("layout", 1)


def test_a_bundle_a_device_would_refuse_is_never_written(keys: Any, tmp_path: Path) -> None:
    from converter.package import pack_onnx
    from edge_runtime.exceptions import BundleError

    # 17 M float32 = 68 MB in 1 KiB chunks: 66,000 chunk hashes make a 4.4 MB manifest (the limit is 4 MiB).
    model = _big_image_onnx(tmp_path / "huge.onnx", (4, 4), weights=17_000_000)
    out = tmp_path / "huge.bundle"
    with pytest.raises(BundleError, match=r"a device would refuse this bundle: manifest.json is \d+ bytes, the limit is 4194304"):
        pack_onnx(model, name="huge", version=1, keys=[keys.key], out=out, chunk_size=1024, golden=None,
                  reason="test", report=None, architectures=["any"])
    assert not out.exists() and list(tmp_path.iterdir()) == [model]
