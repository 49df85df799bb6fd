"""Pinning dynamic input dimensions: from ``--input-shape`` or from the data the user passed.

Real third-party models (OCR, detection, layout) are often exported with dynamic height and
width (``[N, 3, H?, W?]``), which onnx2tf cannot convert. Users cannot re-export them, so the
converter fixes such dimensions in its copy of the model:

* ``--input-shape NAME:1,3,48,192`` (repeatable) pins every dimension given; ``-1`` keeps one
  dynamic. A fixed first dimension makes the batch static.
* Otherwise every dynamic dimension after the first is pinned to the value the calibration and
  validation rows all have (the batch stays dynamic). Rows that disagree leave it dynamic.

The pinned interface is what the bundle declares and what the device serves: a request of
another shape gets a 400 that names the expected shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from edge_runtime.exceptions import UsageError
from edge_runtime.spec.tensors import TensorSpec

Pins = dict[str, tuple[int, ...]]


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``NAME:D0,D1,...`` (``-1`` keeps a dimension dynamic; a scalar is ``NAME:``)."""
    name, sep, dims = text.rpartition(":")
    if not sep or not name:
        raise UsageError(f"--input-shape {text!r}: expected NAME:D0,D1,... (for example images:1,3,224,224)")
    try:
        shape = tuple(int(d) for d in dims.split(",")) if dims.strip() else ()
    except ValueError:
        raise UsageError(f"--input-shape {text!r}: dimensions must be integers (-1 for dynamic)") from None
    if any(d == 0 or d < -1 for d in shape) or len(shape) > 8:
        raise UsageError(f"--input-shape {text!r}: dimensions must be positive or -1 (at most 8)")
    return name, shape


@dataclass
class ShapePlan:
    """The pinned shape of each input that changed, and where each pin came from."""

    pins: Pins = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def pin(self, pins: Mapping[str, tuple[int, ...]], why: str) -> None:
        """Add or replace pins (e.g. the batch pinned to 1 after onnx2tf failed on it)."""
        for name, shape in pins.items():
            self.pins[name] = tuple(shape)
            self.sources[name] = why
            self.notes.append(f"input '{name}': pinned to {list(shape)} ({why})")

    def apply(self, specs: Sequence[TensorSpec]) -> tuple[TensorSpec, ...]:
        """``specs`` with the pinned shapes."""
        return tuple(TensorSpec(s.name, s.datatype, self.pins.get(s.name, s.shape), s.quantization) for s in specs)

    def to_json(self, specs: Sequence[TensorSpec]) -> dict[str, object]:
        """The manifest's record: per pinned input, the ONNX shape, the pinned one and the source."""
        by_name = {s.name: s for s in specs}
        return {
            name: {"onnx": list(by_name[name].shape), "pinned": list(shape), "from": self.sources[name]}
            for name, shape in self.pins.items()
        }


def plan_shapes(specs: Sequence[TensorSpec], explicit: Mapping[str, tuple[int, ...]],
                data: Sequence[Sequence[np.ndarray]]) -> ShapePlan:
    """Pins for ``specs`` (the ONNX interface): ``explicit`` ones first, then from ``data`` (each a list
    of arrays in input order, rows first) for dynamic dimensions after the first."""
    plan = ShapePlan()
    names = [s.name for s in specs]
    unknown = sorted(set(explicit) - set(names))
    if unknown:
        raise UsageError(f"--input-shape names {unknown}, the model's inputs are {names}")
    for i, spec in enumerate(specs):
        if spec.name in explicit:
            shape = explicit[spec.name]
            if len(shape) != len(spec.shape):
                raise UsageError(
                    f"--input-shape {spec.name}: {len(shape)} dimensions given, the input has {len(spec.shape)} "
                    f"({list(spec.shape)})"
                )
            for j, (onnx_d, want) in enumerate(zip(spec.shape, shape)):
                if onnx_d != -1 and want != onnx_d:
                    raise UsageError(
                        f"--input-shape {spec.name}: dimension {j} is fixed at {onnx_d} in the model, {want} given"
                    )
            if tuple(shape) != spec.shape:
                plan.pins[spec.name] = tuple(shape)
                plan.sources[spec.name] = "--input-shape"
                plan.notes.append(f"input '{spec.name}': shape {list(spec.shape)} pinned to {list(shape)} (--input-shape)")
            continue
        dynamic = [j for j, d in enumerate(spec.shape) if d == -1 and j > 0]
        if not dynamic or not data:
            continue
        arrays = [d[i] for d in data if i < len(d)]
        pinned = list(spec.shape)
        for j in dynamic:
            values = {int(a.shape[j]) for a in arrays if a.ndim == len(spec.shape)}
            if len(values) == 1:
                pinned[j] = values.pop()
        if tuple(pinned) != spec.shape:
            plan.pins[spec.name] = tuple(pinned)
            plan.sources[spec.name] = "data"
            plan.notes.append(
                f"input '{spec.name}': dynamic shape {list(spec.shape)} pinned to {list(pinned)} from the data "
                f"(use --input-shape {spec.name}:{','.join(map(str, pinned))} to choose another)"
            )
    return plan
