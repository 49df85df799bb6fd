"""Several rows through a model that takes one at a time.

A model exported with a fixed batch of 1 (``[1, 128, 128, 3]``) cannot take four golden rows in
one call. ``edge-runtime score`` already splits such files row by row; the packer (golden outputs,
the measured error) and the device's self-test do the same through :func:`run_rows`, so four
golden rows mean four calls whose outputs are joined along the rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_runtime.inference.base import Backend


def takes_one_row(backend: Backend, arrays: Sequence[np.ndarray]) -> int:
    """How many rows ``arrays`` hold when they must go one per call (every input of the model has a
    fixed first dimension of 1 and the arrays agree on more rows than that), else 0."""
    specs = backend.inputs
    if not specs or len(arrays) != len(specs):
        return 0
    if not all(s.shape and s.shape[0] == 1 and a.ndim == len(s.shape) for s, a in zip(specs, arrays)):
        return 0
    rows = {int(a.shape[0]) for a in arrays}
    n = rows.pop() if len(rows) == 1 else 0
    return n if n > 1 else 0


def run_rows(backend: Backend, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``backend.run(arrays)``, one row per call when the model takes one row at a time."""
    n = takes_one_row(backend, arrays)
    if not n:
        return backend.run(arrays)
    parts = [backend.run([a[i : i + 1] for a in arrays]) for i in range(n)]
    return [np.concatenate([p[k] for p in parts], axis=0) if parts[0][k].ndim else np.stack([p[k] for p in parts])
            for k in range(len(parts[0]))]


__all__ = ["run_rows", "takes_one_row"]
