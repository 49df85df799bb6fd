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
from edge_runtime.inference.tensors import TensorSpec
from edge_runtime.packaging import describe_model, pack_model, random_inputs, round_up

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
        pack_model(FACTORY / "fraud_int8io.tflite", name="fraud", version=2, keys=[keys.key], out=tmp_path / "x.bundle",
                   atol=0.01, reference=FACTORY / "fraud.tflite", validation_inputs=[holdout_x])
    assert not (tmp_path / "x.bundle").exists()
    m = pack_model(FACTORY / "fraud_int8io.tflite", name="fraud", version=2, keys=[keys.key], out=tmp_path / "y.bundle",
                   atol=0.5, reference=FACTORY / "fraud.tflite", validation_inputs=[holdout_x])
    assert m.golden is not None and m.golden.atol == 0.5 and m.quantization["accuracy"]["atol"] == 0.5


def test_float_model_against_its_onnx_reference(keys: Any, tmp_path: Path, holdout_x: np.ndarray) -> None:
    m = pack_model(FACTORY / "fraud.tflite", name="fraud", version=3, keys=[keys.key], out=tmp_path / "f.bundle",
                   input_names=["input_0"], output_names=["output_0"],
                   reference=FACTORY / "fraud.onnx", validation_inputs=[holdout_x])
    acc = m.quantization["accuracy"]
    assert acc["reference"]["format"] == "onnx" and acc["max_abs_error"] < 1e-5
    assert m.golden is not None and m.golden.atol == round_up(acc["max_abs_error"] + 1e-4)


def test_pack_model_argument_errors(keys: Any, tmp_path: Path) -> None:
    common: dict[str, Any] = {"name": "fraud", "version": 1, "keys": [keys.key], "out": tmp_path / "x.bundle"}
    with pytest.raises(UsageError, match="validation inputs need a reference model"):
        pack_model(FACTORY / "fraud.tflite", validation_inputs=[np.zeros((2, 30))], **common)
    with pytest.raises(UsageError, match="2 golden input arrays given, the model has 1 inputs"):
        pack_model(FACTORY / "fraud.tflite", golden_inputs=[np.zeros((2, 30))] * 2, **common)
    with pytest.raises(UsageError, match="sample.csv: expected a .tflite or .onnx file"):
        describe_model(FACTORY / "sample.csv")
    assert not (tmp_path / "x.bundle").exists()


def test_pack_model_overrides_and_extra_fields(keys: Any, tmp_path: Path) -> None:
    ins = [TensorSpec("features", "FP32", (-1, 30))]
    outs = [TensorSpec("probability", "FP32", (-1, 1))]
    m = pack_model(FACTORY / "fraud.tflite", name="fraud", version=1, keys=[keys.key], out=tmp_path / "o.bundle",
                   inputs=ins, outputs=outs, extra={"description": "demo"}, architectures=["aarch64", "x86_64"])
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
