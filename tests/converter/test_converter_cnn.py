"""Acceptance 2: an NCHW 3x96x96 CNN converts in all four modes with the ONNX input layout (in the
manifest and inside the TFLite file), batch 1 and batch 16 give the same per-sample results,
and int8 is at most 0.36x the size of fp32. Real onnx2tf, no network."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from ai_edge_litert.interpreter import Interpreter
from conversion_support import ConversionCache, ModelFiles

from edge_runtime.bundle.reader import open_bundle
from edge_runtime.inference.backend import load_backend
from edge_runtime.spec.tensors import TensorSpec

pytestmark = pytest.mark.integration
# Started ahead, two at a time, by the _prefetch fixture (slowest first where order does not matter).
CONVERSIONS = ["cnn:int8", "cnn:dynamic", "cnn:fp32", "cnn:fp16"]
MODES = ["fp32", "fp16", "dynamic", "int8"]


def _bundle(conv: Any, keys: Any) -> tuple[Any, bytes]:
    with open_bundle(conv.bundle, keys.root) as b:
        return b.manifest, b.read_artifact("model.tflite")


@pytest.mark.parametrize("mode", MODES)
def test_cnn_keeps_nchw_layout_and_batches_consistently(mode: str, cnn_conversion: ConversionCache,
                                                        cnn_files: ModelFiles, keys: Any) -> None:
    conv = cnn_conversion(mode)
    assert conv.code == 0, conv.err_lines[-5:]
    manifest, model = _bundle(conv, keys)
    assert manifest.inputs == (TensorSpec("image", "FP32", (-1, 3, 96, 96)),)
    assert manifest.outputs == (TensorSpec("logits", "FP32", (-1, 10)),)
    # The layout is kept inside the model too (onnx2tf's -k), not transposed by a wrapper.
    detail = Interpreter(model_content=model).get_input_details()[0]
    assert [int(d) for d in detail["shape_signature"]] == [-1, 3, 96, 96]
    report = manifest.quantization["report"]
    assert report["passed"] and report["outputs"]["logits"]["top1_agreement"] >= 0.95
    assert cnn_files.validation is not None
    x = np.load(cnn_files.validation)[:16]
    backend = load_backend(manifest, model)
    batch16 = backend.run([x])[0]
    single = np.concatenate([backend.run([x[i : i + 1]])[0] for i in range(16)])
    # Every mode gives each sample the same answer whatever else is in the batch (dynamic-range
    # quantizes activations per row here), so the daemon may batch any variant.
    np.testing.assert_allclose(single, batch16, atol=1e-5, rtol=1e-5)
    assert np.array_equal(single.argmax(1), batch16.argmax(1))
    ref = ort.InferenceSession(str(cnn_files.onnx)).run(None, {"image": x})[0]
    assert float(np.max(np.abs(batch16 - ref))) <= report["outputs"]["logits"]["max_abs_error"] * 1.05 + 1e-5


def test_cnn_int8_is_at_most_036_of_fp32(cnn_conversion: ConversionCache, keys: Any) -> None:
    sizes = {}
    for mode in ("fp32", "int8"):
        conv = cnn_conversion(mode)
        assert conv.code == 0, conv.err_lines[-5:]
        manifest, model = _bundle(conv, keys)
        sizes[mode] = len(model)
        assert manifest.quantization["mode"] == mode
    assert sizes["int8"] <= 0.36 * sizes["fp32"], sizes
    assert manifest.quantization["io"] == "float" and manifest.inputs[0].quantization is None
