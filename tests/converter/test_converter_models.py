"""Acceptance 3, 4 and 5, and onnx2tf's known traps: a two-input/two-output model keeps names and
order (in every variant, whatever onnx2tf calls its tensors), awkward names and a static
3-channel image input convert with no network, onnx2tf finds onnxsim with a bare PATH, the int8
collapse case fails with advice, and an unsupported operator fails clearly or falls back to a
working onnx bundle. Real onnx2tf, no network."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from ai_edge_litert.interpreter import Interpreter
from conversion_support import Conversion, ModelFiles

from edge_runtime.bundle.reader import open_bundle
from edge_runtime.inference.backend import load_backend
from edge_runtime.inference.selftest import run_selftest
from edge_runtime.store.store import ModelStore

pytestmark = pytest.mark.integration
# Started ahead, two at a time, by the _prefetch fixture (slowest first where order does not matter).
CONVERSIONS = ["two_io", "collapse", "unsupported:plain", "unsupported:fallback"]


def _two_io_inputs(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((1, 16, 16, 3), dtype=np.float32), rng.random((1, 16, 16, 3), dtype=np.float32)


def test_two_inputs_two_outputs_keep_names_and_order(two_io_conversion: Conversion, two_io_files: ModelFiles,
                                                     keys: Any) -> None:
    conv = two_io_conversion
    assert conv.code == 0, conv.err_lines[-5:]
    with open_bundle(conv.bundle, keys.root) as b:
        m, model = b.manifest, b.read_artifact("model.tflite")
    assert [(s.name, s.shape) for s in m.inputs] == [("zeta_img", (1, 16, 16, 3)), ("alpha_img", (1, 16, 16, 3))]
    assert [(s.name, s.shape) for s in m.outputs] == [("y_sum", (1, 4)), ("b_diff", (1, 4))]
    session = ort.InferenceSession(str(two_io_files.onnx))
    backend = load_backend(m, model)
    # The artifact itself is in ONNX order: position 0 of the raw interpreter is y_sum.
    interp = Interpreter(model_content=model)
    interp.allocate_tensors()
    err = max(v["max_abs_error"] for v in m.quantization["report"]["outputs"].values())
    for seed in range(3):
        z, a = _two_io_inputs(seed)
        want = session.run(None, {"zeta_img": z, "alpha_img": a})
        got = backend.run([z, a])
        for w, g in zip(want, got):
            np.testing.assert_allclose(g, w, atol=err * 1.05 + 1e-5)
        assert np.abs(got[0] - want[1]).max() > 10 * (err + 1e-5), "outputs must not be swapped"
        if m.inputs[0].quantization is None:
            for detail, arr in zip(interp.get_input_details(), (z, a)):
                interp.set_tensor(detail["index"], arr)
            interp.invoke()
            raw = [interp.get_tensor(d["index"]) for d in interp.get_output_details()]
            np.testing.assert_allclose(raw[0], want[0], atol=err * 1.05 + 1e-5)


def test_every_variant_maps_its_own_tensor_names(two_io_conversion: Conversion) -> None:
    """onnx2tf names and orders tensors differently per variant; each must still validate."""
    conv = two_io_conversion
    assert conv.code == 0, conv.err_lines[-5:]
    rows = conv.json()["candidates"]
    assert [r["mode"] for r in rows] == ["fp32", "fp16", "dynamic", "int8"]
    assert all(r["passed"] for r in rows), rows


def test_awkward_names_static_image_inputs_and_bare_path_convert_offline(two_io_conversion: Conversion) -> None:
    """'@' and ':' in names are renamed for onnx2tf; the static 1x16x16x3 inputs would make onnx2tf
    download sample images (it did not: no network here); onnxsim ran although PATH was /usr/bin:/bin."""
    conv = two_io_conversion
    assert conv.code == 0, conv.err_lines[-5:]
    log = conv.log.read_text()
    assert "Model optimizing complete!" in log and "Failed to optimize" not in log
    assert "onnx_op_name: " in log and not any("@" in ln for ln in log.splitlines() if "onnx_op_name:" in ln)
    assert "requests" not in log and "ConnectionError" not in log


def test_int8_collapse_fails_with_advice(collapse_conversion: Conversion) -> None:
    """Acceptance 4: raw features (magnitudes 0.02 to 4,000) collapse under int8 -> exit 1 and advice."""
    conv = collapse_conversion
    assert conv.code == 1, conv.err_lines[-5:]
    reason = conv.err_lines[-1]
    assert reason.startswith("edge-convert: int8 fails validation on 143 rows")
    for part in ("correlation with onnxruntime 0.000", "AUC 0.500 against 0.991", "input 'input_0' has columns",
                 "standardise the inputs", "--quantize fp16 passes", "--fallback-onnx", "--allow-accuracy-drop"):
        assert part in reason, part
    assert not conv.bundle.exists()
    table = conv.out.splitlines()
    assert any(ln.split()[0] == "int8" and "FAIL" in ln for ln in table[1:])
    assert any(ln.split()[0] == "fp16" and ln.endswith("pass") for ln in table[1:])


def test_unsupported_operator_fails_with_a_clear_message(unsupported_conversion: Callable[[bool], Conversion]) -> None:
    conv = unsupported_conversion(False)
    assert conv.code == 1
    reason = conv.err_lines[-1]
    assert "no converter for the ONNX operator CastLike (node 'to_counts')" in reason
    assert "--fallback-onnx" in reason and str(conv.log) in reason
    assert "CastLike OP is not yet implemented" in conv.log.read_text()
    assert not conv.bundle.exists()


def test_unsupported_operator_falls_back_to_a_working_onnx_bundle(
    unsupported_conversion: Callable[[bool], Conversion], unsupported_files: ModelFiles, keys: Any, tmp_path: Path
) -> None:
    conv = unsupported_conversion(True)
    assert conv.code == 0, conv.err_lines[-5:]
    assert "WARNING: wrote an ONNX bundle (onnxruntime backend), not TFLite" in conv.err
    store = ModelStore(tmp_path / "store", keys.root, None)
    store.install(conv.bundle)
    resolved = store.resolve("counts") if store.state("counts").active else store.resolved_version("counts", 1)
    m = resolved.manifest
    assert m.format == "onnx" and m.quantization["mode"] == "onnx-fallback" and "CastLike" in m.quantization["reason"]
    backend = load_backend(m, resolved.model)
    run_selftest(backend, m)
    x = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    want = ort.InferenceSession(str(unsupported_files.onnx)).run(None, {"features": x})[0]
    got = backend.run([x])[0]
    assert got.dtype == np.int32 and np.array_equal(got, want)
