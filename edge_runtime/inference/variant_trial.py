"""Trying one variant of a bundle on this device: its golden self-test, then a short timed run.

The decision over the figures is :mod:`edge_runtime.inference.variant_choice` (pure); this
module only measures. The self-test goes through the same path as an install's
(:func:`edge_runtime.inference.selftest.selftest_version`: a delegate library is loaded in a
probe child), then the variant is loaded as the daemon would (``[models.NAME]`` threads and
delegates) and its golden rows are run again and again for ``[inference] variant_timing_ms``;
the figure is the median call time divided by the rows per call.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from edge_runtime.config import InferenceConfig, ModelConfig
from edge_runtime.exceptions import EdgeRuntimeError
from edge_runtime.inference import delegates
from edge_runtime.inference.backend import load_backend
from edge_runtime.inference.rows import run_rows
from edge_runtime.inference.selftest import Testable, load_golden, run_selftest, selftest_version
from edge_runtime.inference.variant_choice import Trial

MIN_TIMED_CALLS = 5
MAX_TIMED_CALLS = 10_000

# What a variant's trial is: (the variant's view, ready to load) -> its figures. A parameter
# of the chooser so that tests can count calls and give known figures.
TrialFn = Callable[[Testable, ModelConfig, InferenceConfig], Trial]


def _recorded_error(version: Testable) -> float | None:
    q = version.manifest.quantization
    for key in ("accuracy", "report"):
        section = q.get(key)
        if isinstance(section, dict) and isinstance(section.get("max_abs_error"), (int, float)):
            return float(section["max_abs_error"])
    return None


def trial_variant(version: Testable, mcfg: ModelConfig, inference: InferenceConfig,
                  clock: Callable[[], float] = time.perf_counter) -> Trial:
    """Self-test ``version`` (a variant's view), then time it; a failure becomes the trial's ``error``."""
    manifest = version.manifest
    name = manifest.variant_name
    try:
        selftest_version(version, mcfg, inference)
        golden = load_golden(manifest, version.golden_bytes)
        threads = delegates.threads(mcfg, manifest)
        plan = delegates.plan(mcfg, manifest, inference)
        errors: list[float] = []
        backend = load_backend(manifest, version.model, threads, plan,
                               lambda b: errors.append(run_selftest(b, manifest, version.golden_bytes)))
    except EdgeRuntimeError as exc:
        return Trial(name, error=f"{type(exc).__name__}: {exc}")
    try:
        if golden is None:
            return Trial(name, error="it has no golden self-test data to time it with")
        rows = max(1, len(golden.inputs[0]) if golden.inputs and golden.inputs[0].ndim else 1)
        run_rows(backend, golden.inputs)  # warm-up
        budget_s = inference.variant_timing_ms / 1000.0
        times: list[float] = []
        start = clock()
        while len(times) < MIN_TIMED_CALLS or (clock() - start < budget_s and len(times) < MAX_TIMED_CALLS):
            t0 = clock()
            run_rows(backend, golden.inputs)
            times.append(clock() - t0)
    except (EdgeRuntimeError, RuntimeError, ValueError) as exc:
        return Trial(name, error=f"{type(exc).__name__}: {exc}")
    finally:
        backend.close()
    worst = max([*errors, *([e] if (e := _recorded_error(version)) is not None else [])], default=None)
    return Trial(name, ms_per_row=statistics.median(times) * 1000.0 / rows, max_abs_error=worst)


__all__ = ["TrialFn", "trial_variant"]
