"""The default accuracy budget of a bundle with variants (edge_runtime/bundle/budget.py): relative to
the primary variant, never below what the primary's own self-test accepts, and what the device then
chooses with it; packing signs it into the manifest unless a budget is given or none is wanted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime.bundle.budget import PRIMARY_ERROR_FACTOR, default_budget
from edge_runtime.bundle.reader import open_bundle
from edge_runtime.inference.variant_choice import Outcome, Trial, choose_variant
from edge_runtime.packaging import PackRequest, VariantRequest, pack_model
from harness.bundles import FACTORY_SRC


def test_the_corpus_wakeword_case_serves_a_variant_as_exact_as_the_fp16_model_asked_for() -> None:
    # bench/results/corpus.md: fp16 primary 0.04 against onnxruntime (atol 0.041), dynamic-range 1.79 and
    # 5.7x faster. Without a budget the device served dynamic-range; with the default it cannot.
    budget = default_budget(0.041, 1e-3, [np.array([[-3.0, 12.5]])], 0.04)
    assert budget == pytest.approx(PRIMARY_ERROR_FACTOR * 0.04)
    trials = [Trial("tflite-fp16", 2.369, max_abs_error=0.04), Trial("tflite-fp32", 2.352, max_abs_error=3e-6),
              Trial("tflite-dynamic", 0.418, max_abs_error=1.79), Trial("onnx", 2.405, max_abs_error=0.0)]
    assert choose_variant(trials).chosen == "tflite-dynamic"  # no budget: the old surprise
    choice = choose_variant(trials, budget)
    assert choice.chosen == "tflite-fp16"  # fp32 is faster by under the 5 % tie margin: the converter's pick stays
    dynamic = next(v for v in choice.verdicts if v.variant == "tflite-dynamic")
    assert dynamic.outcome is Outcome.OVER_BUDGET and "above the budget 0.16" in dynamic.reason
    # A variant up to the factor less exact than the primary is still in.
    assert choose_variant([*trials[:2], Trial("tflite-dynamic", 0.418, max_abs_error=0.15)], budget).chosen == "tflite-dynamic"


def test_the_primary_is_within_the_default_budget_on_any_device_where_it_passes_its_self_test() -> None:
    # The budget is at least atol + rtol x max|golden|, the loosest error allclose accepts: a primary that
    # drifts on another device (large outputs, the relative term) is never over it, so the default never
    # leaves a version with nothing to serve that a single-variant bundle would have served.
    rng = np.random.default_rng(7)
    for _ in range(200):
        golden = rng.normal(0, 10 ** rng.uniform(-2, 3), size=(4, 8))
        atol, rtol, measured = 10 ** rng.uniform(-5, -1), 1e-3, 10 ** rng.uniform(-7, -1)
        drift = rng.uniform(-1, 1, size=golden.shape) * (atol + rtol * np.abs(golden))
        device = golden + drift
        assert np.allclose(device, golden, atol=atol, rtol=rtol)  # its self-test passes
        error = float(np.max(np.abs(device - golden)))
        assert error <= default_budget(atol, rtol, [golden], measured)
    # ... and is the larger of that and the factor times the measured error; non-finite figures are ignored.
    assert default_budget(1e-4, 1e-3, [np.array([np.nan, -2.0])], 0.01) == pytest.approx(0.04)
    assert default_budget(1e-4, 1e-3, [np.array([-2.0])], float("inf")) == pytest.approx(1e-4 + 2e-3)


def test_packing_signs_the_default_budget_unless_one_is_given_or_none_is_wanted(tmp_path: Path, keys: Any) -> None:
    golden = np.load(FACTORY_SRC / "golden.npy")

    def pack(out: str, **kw: Any) -> Any:
        pack_model(PackRequest(
            FACTORY_SRC / "fraud.tflite", name="fraud", version=1, keys=[keys.key], out=tmp_path / out,
            input_names=["input_0"], output_names=["output_0"], golden_inputs=[golden], reference=FACTORY_SRC / "fraud.onnx",
            quantization={"mode": "fp32"}, variant="tflite-fp32",
            variants=[VariantRequest("onnx", FACTORY_SRC / "fraud.onnx", {"mode": "onnx"})], **kw))
        with open_bundle(tmp_path / out, keys.root) as b:
            return b.manifest

    m = pack("default.bundle", budget_factor=PRIMARY_ERROR_FACTOR)
    assert m.golden is not None
    primary_error = m.quantization["accuracy"]["max_abs_error"]
    outputs = [np.asarray(t["data"]) for t in m.golden.outputs.values()]
    assert m.budget_max_abs_error == pytest.approx(default_budget(m.golden.atol, m.golden.rtol, outputs, primary_error))
    assert pack("given.bundle", budget_factor=PRIMARY_ERROR_FACTOR, accuracy_budget=0.5).budget_max_abs_error == 0.5
    assert pack("none.bundle").budget_max_abs_error is None  # bundle create: no default (it may have no reference)
