"""``edge-convert --variants``: every variant validated against onnxruntime and packed with its own
golden self-test; with ``--quantize auto`` every passing variant by default; and a device
installing the bundle times them and serves one that is never slower than the fastest by more
than the tie margin, nor outside the accuracy budget (by default, of the order of the chosen
variant's own error)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conversion_support import ConversionCache

from edge_runtime.bundle.reader import open_bundle
from edge_runtime.config import InferenceConfig, ModelConfig
from edge_runtime.inference.variant_choice import Outcome
from edge_runtime.store.store import ModelStore
from edge_runtime.store.variants import select_variant

CONVERSIONS = ["fraud:variants", "fraud:auto"]


def test_each_asked_variant_is_validated_and_packed_and_the_device_serves_the_fastest(
        fraud_conversion: ConversionCache, keys: Any, tmp_path: Path) -> None:
    conv = fraud_conversion("variants")
    assert conv.code == 0, conv.err_lines[-5:]
    assert conv.json()["variants"] == ["tflite-fp16", "tflite-fp32", "tflite-int8", "onnx"]
    with open_bundle(conv.bundle, keys.root) as b:
        m = b.manifest
    files = {v.name: v.file for v in m.variants}
    assert files == {"tflite-fp16": "model.tflite", "tflite-fp32": "model-tflite-fp32.tflite",
                     "tflite-int8": "model-tflite-int8.tflite", "onnx": "model.onnx"}
    for v in m.variants:  # each its own golden self-test, stating its own measured error against onnxruntime
        assert v.golden is not None
        assert v.quantization["accuracy"]["reference"]["format"] == "onnx"
        assert v.golden.atol >= v.quantization["accuracy"]["max_abs_error"]
    assert m.for_variant("tflite-int8").quantization["report"]["passed"] is True

    store = ModelStore(tmp_path / "store", keys.root)
    store.install(conv.bundle)
    inference = InferenceConfig(variant_timing_ms=30)
    _, choice = select_variant(store, store.resolved_version("fraud", 1), ModelConfig(), inference)
    timed = {v.variant: v.ms_per_row for v in choice.verdicts}
    assert all(ms is not None and ms > 0 for ms in timed.values())
    # The default budget is relative to the fp16 model asked for (edge_runtime/bundle/budget.py): its
    # self-test tolerance (outputs are probabilities, at most 1) or 4x its error. int8 (error 0.13,
    # about 700x fp16's) is packed as asked, reported, and never served; the others compete on speed.
    fp16 = m.variants[0]
    assert fp16.golden is not None and fp16.max_abs_error is not None and m.budget_max_abs_error is not None
    assert max(fp16.golden.atol, 4 * fp16.max_abs_error) <= m.budget_max_abs_error <= fp16.golden.atol + fp16.golden.rtol
    assert conv.json()["accuracy_budget"] == m.budget_max_abs_error
    assert any(w.startswith("variant tflite-int8: max error 0.13") and "above the accuracy budget" in w
               for w in conv.json()["warnings"])
    outcomes = {v.variant: v.outcome for v in choice.verdicts}
    assert outcomes.pop("tflite-int8") is Outcome.OVER_BUDGET
    assert set(outcomes.values()) <= {Outcome.CHOSEN, Outcome.SLOWER}
    fastest = min(ms for name, ms in timed.items() if ms is not None and name in outcomes)
    assert (choice.chosen_ms_per_row or 0) <= fastest * (1 + inference.variant_tie_pct / 100)


def test_auto_packs_every_passing_variant_with_the_converters_pick_first(fraud_conversion: ConversionCache) -> None:
    conv = fraud_conversion("auto")
    assert conv.code == 0, conv.err_lines[-5:]
    result = conv.json()
    passing = [r["mode"] for r in result["candidates"] if r["passed"]]
    assert result["variants"][0] == f"tflite-{result['mode']}"
    assert sorted(result["variants"]) == sorted(f"tflite-{m}" for m in passing)
