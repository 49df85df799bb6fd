"""The accuracy budget ``edge-convert --variants`` signs into a bundle when none is asked: a PURE rule.

A bundle's ``accuracy_budget.max_abs_error`` is the largest error against the reference
(onnxruntime, for the converter) a variant may have and still be served; the device drops a
variant above it before it compares speeds (:mod:`edge_runtime.inference.variant_choice`).

Without ``--accuracy-budget`` the budget used to be "whatever passed validation" (correlation,
decision agreement, metric drop), so a device could trade the quantization the user asked for
for a much less exact one: on the real-model corpus it served wakeword-embedding's
dynamic-range variant, max error 1.79, where the fp16 model the user asked for has 0.04.
``--variants`` asks for speed at the accuracy of the chosen model, so the default is relative
to it (docs/converter.md, docs/store-and-bundles.md section 2.5)::

    budget = max(primary's tolerance, PRIMARY_ERROR_FACTOR x primary's max error)

* the primary's tolerance is the loosest deviation its own golden self-test accepts,
  ``atol + rtol x max |golden output|``: any device on which the primary passes its self-test
  finds it within the budget, so the default never leaves a version with no variant to serve
  that one variant alone would have served;
* the factor (4) lets a variant be somewhat less exact than the primary (fp32 beside an fp16
  primary always is; dynamic-range beside fp16 within 4x of its error) and no more: the same
  order of error, not the 45x of the wakeword example.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

PRIMARY_ERROR_FACTOR = 4.0


def default_budget(atol: float, rtol: float, golden_outputs: Iterable[np.ndarray], max_abs_error: float,
                   factor: float = PRIMARY_ERROR_FACTOR) -> float:
    """The default ``accuracy_budget.max_abs_error`` for a primary with golden tolerance ``atol``/``rtol``
    over ``golden_outputs`` and measured error ``max_abs_error`` against the reference."""
    largest = 0.0
    for out in golden_outputs:
        arr = np.asarray(out, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        if finite.size:
            largest = max(largest, float(np.max(np.abs(finite))))
    tolerance = atol + rtol * largest
    error = max_abs_error if math.isfinite(max_abs_error) else 0.0
    return max(tolerance, factor * error)  # not rounded: rounding down could put the primary itself over it


__all__ = ["PRIMARY_ERROR_FACTOR", "default_budget"]
