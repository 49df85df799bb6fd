"""The device's choice among a bundle's variants: a pure decision, one table row per rule."""

from __future__ import annotations

import pytest

from edge_runtime.config import parse_config
from edge_runtime.exceptions import ConfigError, InferenceError
from edge_runtime.inference.variant_choice import Choice, Outcome, Trial, choose_variant


def outcomes(choice: Choice) -> dict[str, Outcome]:
    return {v.variant: v.outcome for v in choice.verdicts}


FP16 = Trial("tflite-fp16", ms_per_row=0.50, max_abs_error=0.001)
INT8 = Trial("tflite-int8", ms_per_row=0.30, max_abs_error=0.02)
ONNX = Trial("onnx", ms_per_row=0.80, max_abs_error=0.0)


@pytest.mark.parametrize(
    ("trials", "budget", "pin", "chosen", "expected"),
    [
        # the fastest wins
        ([FP16, INT8, ONNX], None, "", "tflite-int8",
         {"tflite-fp16": Outcome.SLOWER, "tflite-int8": Outcome.CHOSEN, "onnx": Outcome.SLOWER}),
        # over the accuracy budget never serves, however fast
        ([FP16, INT8, ONNX], 0.01, "", "tflite-fp16",
         {"tflite-fp16": Outcome.CHOSEN, "tflite-int8": Outcome.OVER_BUDGET, "onnx": Outcome.SLOWER}),
        # a failed self-test never serves
        ([FP16, Trial("tflite-int8", error="SelfTestError: differs from golden"), ONNX], None, "", "tflite-fp16",
         {"tflite-fp16": Outcome.CHOSEN, "tflite-int8": Outcome.FAILED, "onnx": Outcome.SLOWER}),
        # a pin wins over speed
        ([FP16, INT8, ONNX], None, "onnx", "onnx",
         {"tflite-fp16": Outcome.NOT_PINNED, "tflite-int8": Outcome.NOT_PINNED, "onnx": Outcome.CHOSEN}),
        # a pin of a failed variant is not honoured: the fastest passing one serves
        ([FP16, Trial("tflite-int8", error="SelfTestError: x"), ONNX], None, "tflite-int8", "tflite-fp16",
         {"tflite-fp16": Outcome.CHOSEN, "tflite-int8": Outcome.FAILED, "onnx": Outcome.SLOWER}),
        # a pin over the budget is not honoured either
        ([FP16, INT8], 0.01, "tflite-int8", "tflite-fp16",
         {"tflite-fp16": Outcome.CHOSEN, "tflite-int8": Outcome.OVER_BUDGET}),
        # an untimed variant cannot serve
        ([Trial("tflite-fp16"), ONNX], None, "", "onnx", {"tflite-fp16": Outcome.FAILED, "onnx": Outcome.CHOSEN}),
    ],
)
def test_choice_table(trials: list[Trial], budget: float | None, pin: str, chosen: str,
                      expected: dict[str, Outcome]) -> None:
    choice = choose_variant(trials, budget, pin)
    assert choice.chosen == chosen
    assert choice.pinned == (pin == chosen)
    assert outcomes(choice) == expected


def test_a_near_tie_keeps_the_variant_listed_first_and_never_one_slower_than_the_noise() -> None:
    first, second = Trial("tflite-fp16", ms_per_row=1.03), Trial("onnx", ms_per_row=1.00)
    assert choose_variant([first, second], tie_pct=5.0).chosen == "tflite-fp16"
    assert choose_variant([first, second], tie_pct=1.0).chosen == "onnx"
    slow = Trial("tflite-fp16", ms_per_row=1.2)
    choice = choose_variant([slow, second], tie_pct=5.0)
    assert choice.chosen == "onnx" and "1.2 ms/row against 1 ms/row for onnx" in choice.verdicts[0].reason


def test_the_reasons_say_why_the_others_lost() -> None:
    choice = choose_variant([FP16, Trial("tflite-int8", error="SelfTestError: differs"), ONNX], None, "tflite-int8")
    reasons = {v.variant: v.reason for v in choice.verdicts}
    assert "pinned variant 'tflite-int8' cannot serve (SelfTestError: differs)" in reasons["tflite-fp16"]
    assert reasons["tflite-int8"] == "SelfTestError: differs"
    assert choose_variant([FP16], None, "nope").verdicts[0].reason.startswith(
        "the pinned variant 'nope' is not in the bundle (tflite-fp16)")


def test_no_variant_can_serve() -> None:
    with pytest.raises(InferenceError, match="no variant can serve: tflite-fp16: SelfTestError: a; onnx: over the accuracy"):
        choose_variant([Trial("tflite-fp16", error="SelfTestError: a"), Trial("onnx", ms_per_row=1, max_abs_error=1)], 0.5)


def test_trials_round_trip_and_hostile_records_are_refused() -> None:
    for t in (FP16, Trial("x", error="e")):
        assert Trial.from_json(t.to_json()) == t
    for bad in ({"variant": 1}, {"variant": "a", "ms_per_row": -1}, {"variant": "a", "ms_per_row": float("nan")},
                {"variant": "a", "error": 5}, "x"):
        with pytest.raises(ValueError):
            Trial.from_json(bad)


def test_the_pin_and_the_timing_limits_are_typed_config() -> None:
    cfg = parse_config({"inference": {"variant_tie_pct": 2, "variant_timing_ms": 50}, "models": {"fraud": {"variant": "onnx"}}})
    assert (cfg.inference.variant_tie_pct, cfg.inference.variant_timing_ms, cfg.model("fraud").variant) == (2.0, 50, "onnx")
    for bad in ({"variant_timing_ms": 0}, {"variant_tie_pct": 101}, {"variant_timing_ms": 60_001}):
        with pytest.raises(ConfigError, match="variant_timing_ms must be in"):
            parse_config({"inference": bad})
