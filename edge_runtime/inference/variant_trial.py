"""Trying the variants of a bundle on this device: each one's golden self-test, then timed runs.

The decision over the figures is :mod:`edge_runtime.inference.variant_choice` (pure); this
module only measures. Each variant's self-test goes through the same path as an install's
(:func:`edge_runtime.inference.selftest.selftest_version`: a delegate library is loaded in a
probe child); each that passes is then loaded as the daemon would load it (``[models.NAME]``
threads and delegates). The timing runs the golden rows of every loaded variant in turn,
round after round, for ``[inference] variant_timing_ms`` per variant: on a busy device a
burst of load then slows every variant alike instead of whichever was being timed (timing
one variant after another made the first of two equal models 5x slower on a loaded 2-core
machine). The figure is the median call time divided by the rows per call. The passing
variants are loaded together while they are timed, once per record (store/variants.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from edge_runtime.bundle.manifest import recorded_max_abs_error
from edge_runtime.config import InferenceConfig, ModelConfig
from edge_runtime.exceptions import EdgeRuntimeError, InferenceError
from edge_runtime.inference import delegates
from edge_runtime.inference.backend import Backend, load_backend
from edge_runtime.inference.rows import run_rows
from edge_runtime.inference.selftest import Testable, load_golden, run_selftest, selftest_version
from edge_runtime.inference.variant_choice import Trial

MIN_TIMED_CALLS = 5
MAX_TIMED_CALLS = 10_000
_RUN_ERRORS = (EdgeRuntimeError, RuntimeError, ValueError)

# What trying a bundle's variants is: (each variant's view, ready to load) -> one Trial each, in
# order. A parameter of the chooser so that tests can count calls and give known figures.
TrialFn = Callable[[Sequence[Testable], ModelConfig, InferenceConfig], list[Trial]]


@dataclass
class _Loaded:
    name: str
    backend: Backend
    inputs: list[np.ndarray]
    rows: int
    error_vs_golden: float
    recorded_error: float | None
    times: list[float]


def _load(version: Testable, mcfg: ModelConfig, inference: InferenceConfig) -> _Loaded:
    """Self-test one variant (isolated when a delegate library is involved), then load it to be timed."""
    manifest = version.manifest
    selftest_version(version, mcfg, inference)
    golden = load_golden(manifest, version.golden_bytes)
    if golden is None:
        raise InferenceError("it has no golden self-test data to time it with")
    errors: list[float] = []
    backend = load_backend(manifest, version.model, delegates.threads(mcfg, manifest),
                           delegates.plan(mcfg, manifest, inference),
                           lambda b: errors.append(run_selftest(b, manifest, version.golden_bytes)))
    rows = len(golden.inputs[0]) if golden.inputs and golden.inputs[0].ndim else 1
    return _Loaded(manifest.variant_name, backend, golden.inputs, max(1, rows), max(errors, default=0.0),
                   recorded_max_abs_error(version.manifest.quantization), [])


def trial_variants(versions: Sequence[Testable], mcfg: ModelConfig, inference: InferenceConfig,
                   clock: Callable[[], float] = time.perf_counter) -> list[Trial]:
    """Self-test each of ``versions`` (views of one bundle's variants), then time those that pass,
    interleaved; a failure becomes that variant's ``error``."""
    failed: dict[str, str] = {}
    loaded: list[_Loaded] = []
    try:
        for version in versions:
            try:
                item = _load(version, mcfg, inference)
                loaded.append(item)
                run_rows(item.backend, item.inputs)  # warm-up
            except _RUN_ERRORS as exc:
                failed[version.manifest.variant_name] = f"{type(exc).__name__}: {exc}"
        active = [x for x in loaded if x.name not in failed]
        budget_s = inference.variant_timing_ms / 1000.0 * len(active)
        start = clock()
        while active and (min(len(x.times) for x in active) < MIN_TIMED_CALLS
                          or (clock() - start < budget_s and max(len(x.times) for x in active) < MAX_TIMED_CALLS)):
            for item in list(active):
                t0 = clock()
                try:
                    run_rows(item.backend, item.inputs)
                except _RUN_ERRORS as exc:
                    failed[item.name] = f"{type(exc).__name__}: {exc}"
                    active.remove(item)
                    continue
                item.times.append(clock() - t0)
    finally:
        for item in loaded:
            item.backend.close()
    import statistics  # here, not at start-up: only a several-variant bundle is timed (about 0.5 MB of RSS)

    by_name = {x.name: x for x in loaded}
    trials = []
    for version in versions:
        name = version.manifest.variant_name
        if name in failed:
            trials.append(Trial(name, error=failed[name]))
            continue
        x = by_name[name]
        worst = max(x.error_vs_golden, x.recorded_error if x.recorded_error is not None else 0.0)
        trials.append(Trial(name, ms_per_row=statistics.median(x.times) * 1000.0 / x.rows, max_abs_error=worst))
    return trials


__all__ = ["TrialFn", "trial_variants"]
