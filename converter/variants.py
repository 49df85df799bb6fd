"""Which further variants ``edge-convert`` packs beside the one it chose (``--variants``).

A bundle may carry several faithful variants of one model, each validated against
onnxruntime here and each with its own golden self-test; the device times those it can load
and serves the fastest (docs/store-and-bundles.md "Variants"). The default is what a user
would want: with ``--quantize auto``, every TFLite variant that passed validation (this
machine's latency ranking need not be the device's, so the device decides); with one
explicit mode, that mode alone (a single-variant bundle, as before: every extra variant costs
each device its download). ``onnx`` adds the ONNX model itself, for devices with onnxruntime.

Speed is bought within an accuracy budget: by default a variant serves only when its error
against onnxruntime is of the order of the chosen variant's (edge_runtime/bundle/budget.py); a
packed variant over it is reported here, since every device downloads it for nothing.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from converter.auto import Candidate
from edge_runtime.bundle.manifest import Manifest

TFLITE_MODES = ("fp32", "fp16", "dynamic", "int8")
VARIANT_CHOICES = (*TFLITE_MODES, "onnx")


def parse_variants(text: str) -> tuple[str, ...]:
    """The ``--variants`` value: comma-separated names of VARIANT_CHOICES (argparse type)."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    bad = [n for n in names if n not in VARIANT_CHOICES]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown variant(s) {', '.join(bad)}; choose from {', '.join(VARIANT_CHOICES)}")
    return names


THRESHOLDS = "thresholds"  # --accuracy-budget: no budget, the validation thresholds alone


def parse_budget(text: str) -> float | str:
    """The ``--accuracy-budget`` value: a max abs error >= 0, or ``thresholds`` (argparse type)."""
    if text.strip() == THRESHOLDS:
        return THRESHOLDS
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0.0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a max abs error >= 0 or '{THRESHOLDS}', found {text[:40]!r}")
    return value


def variant_name(mode: str) -> str:
    """The name a variant has in the manifest: ``tflite-fp16``, ..., ``onnx``."""
    return "onnx" if mode == "onnx" else f"tflite-{mode}"


def wanted_variants(asked: Sequence[str] | None, quantize: str, primary: str,
                    candidates: Sequence[Candidate]) -> list[str]:
    """The modes to pack beside ``primary`` (in the order asked; the default explained above)."""
    if asked is None:
        asked = [c.mode for c in candidates if c.passed] if quantize == "auto" else []
    return [m for m in asked if m != primary]


def extra_tflite_modes(asked: Sequence[str] | None) -> list[str]:
    """The TFLite modes onnx2tf must produce for ``--variants`` (beyond ``--quantize``)."""
    return [m for m in (asked or ()) if m in TFLITE_MODES]


def over_budget_warnings(manifest: Manifest) -> list[str]:
    """One warning per packed variant whose measured error is above the bundle's accuracy budget:
    no device serves it (unless its own self-test error decides otherwise, it never can)."""
    budget = manifest.budget_max_abs_error
    if budget is None or len(manifest.variants) < 2:
        return []
    return [f"variant {v.name}: max error {v.max_abs_error:.3g} against onnxruntime is above the accuracy budget "
            f"{budget:.3g}; devices will not serve it (a larger --accuracy-budget, or --accuracy-budget {THRESHOLDS}, "
            "allows it)"
            for v in manifest.variants if v.max_abs_error is not None and v.max_abs_error > budget]


__all__ = ["VARIANT_CHOICES", "extra_tflite_modes", "over_budget_warnings", "parse_budget", "parse_variants", "THRESHOLDS", "variant_name",
           "wanted_variants"]
