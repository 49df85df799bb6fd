"""Acceptance 1 (and the passing half of 4): the demo fraud classifier converts in every mode and
in auto; each bundle verifies against the trust root, installs, passes its self-test and scores
the hold-out rows within the error the converter reported. Real onnx2tf, no network."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from conversion_support import FACTORY_SRC, ConversionCache, ModelFiles

from edge_runtime.bundle.profile import parse_profile
from edge_runtime.bundle.reader import open_bundle
from edge_runtime.inference.backend import load_backend
from edge_runtime.inference.selftest import run_selftest
from edge_runtime.store.store import ModelStore
from harness.daemon import EDGE

pytestmark = pytest.mark.integration
# Started ahead, two at a time, by the _prefetch fixture (slowest first where order does not matter).
CONVERSIONS = ["fraud:fp16", "fraud:fp32", "fraud:dynamic", "fraud:int8", "fraud:auto"]
MODES = ["fp32", "fp16", "dynamic", "int8", "auto"]


def _holdout() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h = np.load(FACTORY_SRC / "holdout.npz")
    x = h["x"].astype(np.float32)
    ref = ort.InferenceSession(str(FACTORY_SRC / "fraud.onnx")).run(None, {"input_0": x})[0]
    return x, h["y"], ref


def _reported_error(quantization: dict[str, Any]) -> float:
    return max(m["max_abs_error"] for m in quantization["report"]["outputs"].values())


@pytest.mark.parametrize("mode", MODES)
def test_fraud_bundle_verifies_installs_and_scores_within_reported_error(
    mode: str, fraud_conversion: ConversionCache, keys: Any, tmp_path: Path
) -> None:
    conv = fraud_conversion(mode)
    assert conv.code == 0, conv.err_lines[-5:]
    store = ModelStore(tmp_path / "store", keys.root, None)
    store.install(conv.bundle)  # verifies layout, signature and every chunk hash
    state = store.activate("fraud", 1, selftest=lambda r: run_selftest(load_backend(r.manifest, r.model), r.manifest) and None)
    assert state.active == 1
    resolved = store.resolve("fraud")
    m = resolved.manifest
    assert m.format == "tflite"
    assert m.inputs[0].name == "input_0" and m.inputs[0].shape == (-1, 30) and m.inputs[0].datatype == "FP32"
    assert [(s.name, s.datatype, s.shape) for s in m.outputs] == [("output_0", "FP32", (-1, 1))]
    assert (m.outputs[0].quantization is not None) == (mode == "int8")  # int8 runs with --int8-io
    q = m.quantization
    assert q["mode"] == mode if mode != "auto" else q["mode"] in ("fp32", "fp16", "dynamic", "int8")
    assert q["report"]["passed"] is True and q["report"]["samples"] == 143
    x, _, ref = _holdout()
    got = load_backend(m, resolved.model).run([x])[0]
    err = float(np.max(np.abs(got - ref)))
    assert err <= _reported_error(q) * 1.01 + 1e-6, f"scored {err:.3g}, reported {_reported_error(q):.3g}"
    assert m.golden is not None and err <= m.golden.atol
    assert m.extra["source"]["sha256"] == hashlib.sha256((FACTORY_SRC / "fraud.onnx").read_bytes()).hexdigest()
    # The validation rows' reference profile, what drift is measured against on the device.
    assert m.profile_file == "profile.json" and resolved.profile_bytes is not None
    prof = parse_profile(resolved.profile_bytes, m.inputs, m.outputs)
    assert prof.rows == 143 and [f.name for f in prof.features] == [f"input_0[{i}]" for i in range(30)] + ["output_0[0]"]


def test_fraud_fp16_default_prints_table_keeps_model_and_log(fraud_conversion: ConversionCache,
                                                              fraud_files: ModelFiles) -> None:
    conv = fraud_conversion("fp16")
    assert conv.code == 0, conv.err_lines[-5:]
    header, row = conv.out.splitlines()[0], conv.out.splitlines()[1]
    assert "max abs err" in header and "correlation" in header
    assert row.startswith("*") and "fp16" in row and "acc 0.951 AUC 0.991" in row and row.endswith("pass")
    assert f"wrote {conv.bundle}" in conv.out
    # onnx2tf rewrites its -i file in place: the converter must have given it a copy.
    assert fraud_files.onnx.read_bytes() == (FACTORY_SRC / "fraud.onnx").read_bytes()
    log = conv.log.read_text()
    assert log.startswith("$ onnx2tf -i model.onnx -o out")
    assert "Model optimizing complete!" in log and "Failed to optimize" not in log
    assert any("converting with onnx2tf" in ln and ln.endswith("done") for ln in conv.err_lines)


def test_fraud_scores_through_the_device_cli(fraud_conversion: ConversionCache, keys: Any, tmp_path: Path) -> None:
    """The int8-I/O bundle (integer tensors, scale and zero point in the manifest) through the real commands."""
    conv = fraud_conversion("int8")
    assert conv.code == 0, conv.err_lines[-5:]
    factory = tmp_path / "factory"
    factory.mkdir()
    where = ["--store", tmp_path / "store", "--root", keys.root_path, "--factory", factory]
    x, _, ref = _holdout()
    np.save(tmp_path / "x.npy", x)
    for cmd in (["bundle", "verify", conv.bundle, "--root", keys.root_path],
                ["models", "install", conv.bundle, *where],
                ["score", "--model", "fraud", tmp_path / "x.npy", "-o", tmp_path / "y.npy", *where]):
        proc = subprocess.run([str(EDGE), *map(str, cmd)], capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
    got = np.load(tmp_path / "y.npy")
    with open_bundle(conv.bundle, keys.root) as b:
        m = b.manifest
    assert m.inputs[0].quantization is not None and m.inputs[0].quantization.datatype == "INT8"
    assert m.quantization["io"] == "int8" and m.quantization["tflite_variant"] == "full_integer_quant"
    assert float(np.max(np.abs(got.reshape(ref.shape) - ref))) <= _reported_error(m.quantization) * 1.01 + 1e-6


def test_standardised_int8_keeps_accuracy(fraud_conversion: ConversionCache) -> None:
    """Acceptance 4, passing half: the standardised model survives int8 (AUC within 0.02 of onnxruntime)."""
    conv = fraud_conversion("int8")
    assert conv.code == 0, conv.err_lines[-5:]
    labels = conv.json()["quantization"]["report"]["labels"]
    assert labels["onnxruntime"]["auc"] - labels["tflite"]["auc"] <= 0.02
    assert labels["tflite"]["auc"] > 0.95


def test_fraud_auto_validates_every_mode_and_keeps_a_fast_passing_one(fraud_conversion: ConversionCache) -> None:
    conv = fraud_conversion("auto")
    assert conv.code == 0, conv.err_lines[-5:]
    result = conv.json()
    rows = {r["mode"]: r for r in result["candidates"]}
    assert list(rows) == ["fp32", "fp16", "dynamic", "int8"]
    assert all(r["passed"] and r["latency_ms_batch1"] > 0 for r in rows.values())
    chosen = rows[result["mode"]]
    fastest = min(r["latency_ms_batch1"] for r in rows.values())
    # The rule holds for the measured figures; the report rounds them to 4 decimals (half a unit each).
    assert chosen["latency_ms_batch1"] - 5e-5 <= (fastest + 5e-5) * 1.05
    assert result["quantization"]["selection"]["optimize"] == "latency"
    assert rows["int8"]["size_bytes"] < rows["fp32"]["size_bytes"]
