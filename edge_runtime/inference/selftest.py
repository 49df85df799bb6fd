"""The golden self-test: run the manifest's sample inputs, compare with expected outputs."""

from __future__ import annotations

import numpy as np

from edge_runtime.bundle.manifest import Golden, Manifest
from edge_runtime.exceptions import SelfTestError
from edge_runtime.inference.backend import Backend
from edge_runtime.inference.tensors import TensorSpec, numpy_dtype


def golden_arrays(golden: Golden, specs: tuple[TensorSpec, ...], side: str) -> list[np.ndarray]:
    """The golden tensors of one side, in manifest order."""
    table = golden.inputs if side == "inputs" else golden.outputs
    return [
        np.asarray(table[s.name]["data"], dtype=numpy_dtype(s.datatype)).reshape(table[s.name]["shape"])
        for s in specs
    ]


def run_selftest(backend: Backend, manifest: Manifest) -> float:
    """Run the golden samples; return the worst absolute error or raise SelfTestError."""
    golden = manifest.golden
    if golden is None:
        return 0.0
    inputs = golden_arrays(golden, manifest.inputs, "inputs")
    expected = golden_arrays(golden, manifest.outputs, "outputs")
    try:
        got = backend.run(inputs)
    except Exception as exc:  # any failure to run is a failed self-test
        raise SelfTestError(f"{manifest.name} v{manifest.version}: self-test could not run: {exc}") from exc
    worst = 0.0
    for spec, want, have in zip(manifest.outputs, expected, got):
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
