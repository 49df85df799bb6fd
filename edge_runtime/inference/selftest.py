"""The golden self-test: run the manifest's sample inputs, compare with expected outputs.

Golden data is inline in the manifest (small models, and bundles made before ``golden.npz``
existed) or in the bundle's ``golden.npz`` artifact, whose bytes the caller has verified
against the manifest (:attr:`edge_runtime.store.Resolved.golden_bytes`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from edge_runtime.bundle.manifest import GOLDEN_FILE, MAX_GOLDEN_ARRAY_BYTES, Golden, Manifest
from edge_runtime.bundle.npz import ArrayExpectation, read_npz
from edge_runtime.config import InferenceConfig, ModelConfig
from edge_runtime.exceptions import BundleError, SelfTestError
from edge_runtime.inference.base import Backend
from edge_runtime.inference.rows import run_rows
from edge_runtime.spec.tensors import TensorSpec, numpy_dtype


@dataclass(frozen=True)
class GoldenSet:
    """Golden inputs and expected outputs as arrays in manifest order, with the tolerance."""

    inputs: list[np.ndarray]
    outputs: list[np.ndarray]
    atol: float
    rtol: float


def golden_arrays(golden: Golden, specs: tuple[TensorSpec, ...], side: str) -> list[np.ndarray]:
    """The inline golden tensors of one side, in manifest order."""
    table = golden.inputs if side == "inputs" else golden.outputs
    return [
        np.asarray(table[s.name]["data"], dtype=numpy_dtype(s.datatype)).reshape(table[s.name]["shape"])
        for s in specs
    ]


def golden_npz(inputs: list[np.ndarray], outputs: list[np.ndarray]) -> bytes:
    """The ``golden.npz`` bytes for arrays in manifest order."""
    buf = io.BytesIO()
    arrays = {f"input_{i}": a for i, a in enumerate(inputs)}
    arrays.update({f"output_{i}": a for i, a in enumerate(outputs)})
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def golden_expectations(manifest: Manifest) -> list[ArrayExpectation]:
    """The arrays ``golden.npz`` must hold: ``input_<i>``/``output_<i>`` with the dtype and
    rank of the manifest's tensor ``i``."""
    return [
        ArrayExpectation(f"{prefix}_{i}", numpy_dtype(spec.datatype), len(spec.shape))
        for prefix, specs in (("input", manifest.inputs), ("output", manifest.outputs))
        for i, spec in enumerate(specs)
    ]


def _read_npz(manifest: Manifest, data: bytes) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The golden arrays, read in bounded memory (:func:`edge_runtime.bundle.npz.read_npz`)."""
    what = f"{manifest.name} v{manifest.version}: {GOLDEN_FILE}"
    try:
        arrays = read_npz(data, golden_expectations(manifest), MAX_GOLDEN_ARRAY_BYTES, what)
    except BundleError as exc:
        raise SelfTestError(str(exc)) from exc
    inputs = [arrays[f"input_{i}"] for i in range(len(manifest.inputs))]
    outputs = [arrays[f"output_{i}"] for i in range(len(manifest.outputs))]
    return inputs, outputs


def load_golden(manifest: Manifest, golden_bytes: bytes | None = None) -> GoldenSet | None:
    """The manifest's golden data as arrays (None when it has none)."""
    golden = manifest.golden
    if golden is None:
        return None
    if golden.file is None:
        return GoldenSet(
            golden_arrays(golden, manifest.inputs, "inputs"), golden_arrays(golden, manifest.outputs, "outputs"),
            golden.atol, golden.rtol,
        )
    if golden_bytes is None:
        raise SelfTestError(f"{manifest.name} v{manifest.version}: {GOLDEN_FILE} was not loaded")
    inputs, outputs = _read_npz(manifest, golden_bytes)
    return GoldenSet(inputs, outputs, golden.atol, golden.rtol)


class Testable(Protocol):
    """A verified version ready to load, as the store resolves it (:class:`edge_runtime.store.store.Resolved`)."""

    @property
    def manifest(self) -> Manifest: ...

    @property
    def model(self) -> Path | bytes: ...

    @property
    def golden_bytes(self) -> bytes | None: ...


def selftest_version(version: Testable, mcfg: ModelConfig | None = None, inference: InferenceConfig | None = None) -> None:
    """Load a version on its delegates (as the daemon would, with ``[models.NAME]`` ``mcfg``),
    run its golden self-test there and close it again: the self-test wherever no daemon runs
    it (``models install|activate``, a device updating without a daemon).

    When the plan loads a delegate library, all of it runs in a child process
    (:func:`edge_runtime.inference.probe.selftest_isolated`): a delegate that crashes fails
    the self-test (DelegateError, kind ``crashed``) instead of killing the caller.
    """
    from edge_runtime.inference import delegates
    from edge_runtime.inference.backend import load_backend
    from edge_runtime.inference.probe import selftest_isolated

    manifest = version.manifest
    mcfg = mcfg or ModelConfig()
    inf = inference or InferenceConfig()
    threads = delegates.threads(mcfg, manifest)
    plan = delegates.plan(mcfg, manifest, inf)
    if manifest.format == "tflite" and delegates.external(plan):
        load_golden(manifest, version.golden_bytes)  # bounded: a bad golden.npz never reaches the child
        selftest_isolated(manifest.canonical(), version.model, version.golden_bytes, threads, plan,
                          inf.delegate_probe_timeout_s, f"{manifest.name} v{manifest.version}", manifest.variant)
        return
    backend = load_backend(manifest, version.model, threads, plan,
                           lambda b: run_selftest(b, manifest, version.golden_bytes))
    backend.close()


def run_selftest(backend: Backend, manifest: Manifest, golden_bytes: bytes | None = None) -> float:
    """Run the golden samples; return the worst absolute error or raise SelfTestError.

    ``golden_bytes`` are the verified bytes of ``golden.npz`` when the manifest names it.
    """
    golden = load_golden(manifest, golden_bytes)
    if golden is None:
        return 0.0
    try:
        got = run_rows(backend, golden.inputs)  # a fixed-batch-1 model takes its golden rows one by one
    except Exception as exc:  # any failure to run is a failed self-test
        raise SelfTestError(f"{manifest.name} v{manifest.version}: self-test could not run: {exc}") from exc
    worst = 0.0
    for spec, want, have in zip(manifest.outputs, golden.outputs, got):
        if want.shape != have.shape:
            raise SelfTestError(
                f"{manifest.name} v{manifest.version}: output '{spec.name}' has shape {list(have.shape)}, "
                f"golden {list(want.shape)}"
            )
        w = want.astype(np.float64)
        h = have.astype(np.float64)
        if not np.all(np.isfinite(h)):
            raise SelfTestError(f"{manifest.name} v{manifest.version}: output '{spec.name}' is not finite")
        err = float(np.max(np.abs(w - h))) if w.size else 0.0
        worst = max(worst, err)
        if not np.allclose(h, w, atol=golden.atol, rtol=golden.rtol):
            raise SelfTestError(
                f"{manifest.name} v{manifest.version}: output '{spec.name}' differs from golden by {err:.3g} "
                f"(atol {golden.atol:g}, rtol {golden.rtol:g})"
            )
    return worst
