"""Which further variants ``edge-convert`` packs beside the one it chose (``--variants``).

A bundle may carry several faithful variants of one model, each validated against
onnxruntime here and each with its own golden self-test; the device times those it can load
and serves the fastest (docs/store-and-bundles.md "Variants"). The default is what a user
would want: with ``--quantize auto``, every TFLite variant that passed validation (this
machine's latency ranking need not be the device's, so the device decides); with one
explicit mode, that mode alone (a single-variant bundle, as before: every extra variant costs
each device its download). ``onnx`` adds the ONNX model itself, for devices with onnxruntime.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from converter.auto import Candidate

TFLITE_MODES = ("fp32", "fp16", "dynamic", "int8")
VARIANT_CHOICES = (*TFLITE_MODES, "onnx")


def parse_variants(text: str) -> tuple[str, ...]:
    """The ``--variants`` value: comma-separated names of VARIANT_CHOICES (argparse type)."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    bad = [n for n in names if n not in VARIANT_CHOICES]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown variant(s) {', '.join(bad)}; choose from {', '.join(VARIANT_CHOICES)}")
    return names


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


__all__ = ["VARIANT_CHOICES", "extra_tflite_modes", "parse_variants", "variant_name", "wanted_variants"]
