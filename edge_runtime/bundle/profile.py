"""The reference profile of a model's data, and how rows map onto its features.

Pure code: arrays in, a profile document out; bytes in, a :class:`Profile` or a
:class:`~edge_runtime.exceptions.ManifestError` out. The profile is what drift is measured
against on the device (docs/monitoring.md): per *feature* the bin edges of the reference
data (its deciles) and the share of reference rows in each bin; per classification output
the frequency of each top-1 class.

A feature is one column of a tensor, read as follows (``shape`` without its batch axis):

* a scalar per row: the tensor is one feature;
* a vector of at most :data:`MAX_COLUMNS` values: one feature per column (``x[3]``);
* an image (rank 3 with at most 4 channels first or last): one feature per channel
  (``image[c=0]``), over up to :data:`PIXELS_PER_ROW` pixels of each row;
* anything else (long token sequences, spectrograms): the whole tensor is one feature.

An output that is a vector of 2 to :data:`MAX_CLASSES` scores also gets a categorical
feature ``NAME:class`` whose bins are the classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_runtime.bundle.manifest import MAX_PROFILE_BYTES, PROFILE_FILE
from edge_runtime.exceptions import CanonicalJSONError, ManifestError
from edge_runtime.spec.tensors import TensorSpec
from edge_runtime.trust.canonical import canonical_json, parse_json_object

PROFILE_TYPE = "edge-runtime/profile"
MAX_COLUMNS = 64  # a vector longer than this is one feature, not one per column
MAX_CLASSES = 64
MAX_FEATURES = 512
PIXELS_PER_ROW = 1024  # values of one row read per channel (a fixed stride over the image)
BINS = 10  # decile bins; fewer when the reference has ties
MIN_ROWS = 2  # a profile of fewer rows says nothing
RECOMMENDED_ROWS = 200  # fewer: the profile is marked weak (drift alarms allow for more sampling noise)
# Integers a profile may hold (its writer emits integers below 2**53 only): a larger one would
# overflow float() in the drift code and in metrics.
MAX_PROFILE_INT = 2**53


@dataclass(frozen=True)
class Layout:
    """How one tensor's rows are cut into features (see the module docstring)."""

    kind: str  # "scalar" | "columns" | "channels_last" | "channels_first" | "whole"
    count: int  # features it yields (not counting the class feature)
    batch_axis: bool  # the tensor's first axis is rows


def layout_of(spec: TensorSpec) -> Layout:
    """The feature layout of a tensor spec."""
    shape = spec.shape
    batch = len(shape) >= 1 and shape[0] in (-1, 1) and (len(shape) >= 2 or shape[0] == -1)
    rest = shape[1:] if batch else shape
    if len(rest) == 0:
        return Layout("scalar", 1, batch)
    if len(rest) == 1 and 0 < rest[0] <= MAX_COLUMNS:
        return Layout("columns", rest[0], batch)
    if len(rest) == 3 and 0 < rest[-1] <= 4:
        return Layout("channels_last", rest[-1], batch)
    if len(rest) == 3 and 0 < rest[0] <= 4:
        return Layout("channels_first", rest[0], batch)
    return Layout("whole", 1, batch)


def feature_matrix(arr: np.ndarray, layout: Layout) -> np.ndarray:
    """``arr`` as a float64 matrix ``[values, features]``: one line per row (per sampled
    pixel for images). Values that do not fit the layout give an empty matrix."""
    a = np.asarray(arr)
    if not layout.batch_axis or a.ndim == 0:
        a = a.reshape((1, *a.shape))
    rows = a.shape[0]
    if rows == 0:
        return np.empty((0, layout.count))
    try:
        if layout.kind == "scalar":
            m = a.reshape(rows, 1)
        elif layout.kind == "columns":
            m = a.reshape(rows, layout.count)
        elif layout.kind in ("channels_last", "channels_first"):
            c = layout.count
            flat = a.reshape(rows, -1, c) if layout.kind == "channels_last" else np.moveaxis(
                a.reshape(rows, c, -1), 1, 2)
            step = max(1, flat.shape[1] // PIXELS_PER_ROW)
            m = flat[:, ::step, :].reshape(-1, c)
        else:
            flat = a.reshape(rows, -1)
            step = max(1, flat.shape[1] // PIXELS_PER_ROW)
            m = flat[:, ::step].reshape(-1, 1)
    except ValueError:
        return np.empty((0, layout.count))
    return m.astype(np.float64, copy=False)


def class_vector(arr: np.ndarray, layout: Layout) -> np.ndarray | None:
    """The top-1 class of each row of a classification output (None when it is not one)."""
    if layout.kind != "columns" or not 2 <= layout.count <= MAX_CLASSES:
        return None
    a = np.asarray(arr)
    if not layout.batch_axis:
        a = a.reshape(1, -1)
    try:
        return np.argmax(a.reshape(a.shape[0], layout.count), axis=1)
    except ValueError:
        return None


def _feature_names(spec: TensorSpec, layout: Layout) -> list[str]:
    if layout.kind in ("scalar", "whole"):
        return [spec.name]
    if layout.kind == "columns":
        return [f"{spec.name}[{i}]" for i in range(layout.count)]
    return [f"{spec.name}[c={i}]" for i in range(layout.count)]


@dataclass(frozen=True)
class Feature:
    """One profiled feature: its bin edges and the reference share of each bin.

    ``edges`` are ascending; bin ``i`` holds values ``edges[i-1] <= v < edges[i]`` (bin 0
    everything below ``edges[0]``, the last bin everything from ``edges[-1]`` up). A
    categorical feature (``classes`` > 0) has one bin per class and no edges.
    """

    name: str
    side: str  # "input" | "output"
    tensor: int  # index into the model's inputs or outputs
    index: int  # column / channel within the tensor's layout; -1 for the class feature
    edges: tuple[float, ...]
    reference: tuple[float, ...]  # share of reference values per bin, sums to 1
    classes: int = 0
    degenerate: bool = False  # one value only in the reference data (a constant feature): said in the document

    @property
    def bins(self) -> int:
        """Number of bins."""
        return len(self.reference)

    def to_json(self) -> dict[str, Any]:
        """The profile document form."""
        out: dict[str, Any] = {
            "name": self.name, "side": self.side, "tensor": self.tensor, "index": self.index,
            "edges": [_num(e) for e in self.edges], "reference": [_num(p) for p in self.reference],
        }
        if self.classes:
            out["classes"] = self.classes
        if self.degenerate:
            out["constant"] = True
        return out


def _num(x: float) -> float | int:
    """A float with 6 significant digits (the profile stays small and canonical JSON has no NaN)."""
    v = float(f"{x:.6g}")
    return int(v) if v.is_integer() and abs(v) < 2**53 else v


@dataclass(frozen=True)
class Profile:
    """The reference profile of one model version."""

    rows: int
    features: tuple[Feature, ...]
    input_layouts: tuple[Layout, ...]
    output_layouts: tuple[Layout, ...]

    def to_json(self) -> dict[str, Any]:
        """The ``profile.json`` document."""
        doc: dict[str, Any] = {"_type": PROFILE_TYPE, "rows": self.rows, "bins": BINS,
                               "features": [f.to_json() for f in self.features]}
        if self.weak:
            doc["weak"] = True
        return doc

    @property
    def weak(self) -> bool:
        """Made from fewer than :data:`RECOMMENDED_ROWS` rows."""
        return self.rows < RECOMMENDED_ROWS

    def to_bytes(self) -> bytes:
        """Canonical JSON bytes, as stored in the bundle."""
        return canonical_json(self.to_json())


def _edges(values: np.ndarray) -> tuple[float, ...]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return ()
    qs = np.quantile(finite, np.linspace(0, 1, BINS + 1)[1:-1])
    edges: list[float] = []
    for q in qs:
        e = float(q)
        if not edges or e > edges[-1]:
            edges.append(e)
    lo = float(finite.min())
    if edges and edges[0] <= lo:  # many ties at the minimum: keep them apart from the rest
        edges[0] = float(np.nextafter(lo, np.inf))
        edges = [e for i, e in enumerate(edges) if i == 0 or e > edges[0]]
    elif not edges:
        edges = [float(np.nextafter(lo, np.inf))]
    # The document keeps 6 significant digits: edges that round to the same number are one edge
    # (a near-constant feature), and the shares are computed on the edges the device will read.
    rounded = sorted({float(_num(e)) for e in edges})
    return tuple(rounded)


def bin_shares(values: np.ndarray, edges: Sequence[float]) -> tuple[float, ...]:
    """Share of ``values`` in each bin of ``edges`` (see :class:`Feature`)."""
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right")
    counts = np.bincount(idx, minlength=len(edges) + 1).astype(np.float64)
    total = counts.sum()
    return tuple(float(c / total) for c in counts) if total else tuple(0.0 for _ in counts)


def build_profile(
    inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
    calls: Sequence[tuple[Sequence[np.ndarray], Sequence[np.ndarray]]],
) -> Profile:
    """The profile of reference data (validation or calibration rows) and the model's answers.

    ``calls`` holds ``(inputs, outputs)`` of each model call: a batch of rows, or one whole
    call for a model without a batch dimension.
    """
    in_layouts = tuple(layout_of(s) for s in inputs)
    out_layouts = tuple(layout_of(s) for s in outputs)
    features: list[Feature] = []
    rows = 0
    for ins, _ in calls:
        a = np.asarray(ins[0]) if ins else np.empty(0)
        rows += int(a.shape[0]) if in_layouts and in_layouts[0].batch_axis and a.ndim else 1
    for side, specs, layouts in (("input", inputs, in_layouts), ("output", outputs, out_layouts)):
        for t, (spec, lay) in enumerate(zip(specs, layouts)):
            arrays = [np.asarray((ins if side == "input" else outs)[t]) for ins, outs in calls]
            if not arrays or any(a.dtype.kind not in "biuf" for a in arrays):
                continue
            mats = [m for m in (feature_matrix(a, lay) for a in arrays) if m.shape[1] == lay.count]
            if not mats:
                continue
            m = np.concatenate(mats)
            for i, name in enumerate(_feature_names(spec, lay)):
                col = m[:, i]
                col = col[np.isfinite(col)]
                if col.size == 0:  # no finite value at all: nothing to compare traffic with
                    continue
                edges = _edges(col)
                degenerate = bool(np.all(col == col[0]))
                features.append(Feature(name, side, t, i, edges, bin_shares(col, edges), degenerate=degenerate))
            if side == "output":
                classes = [c for c in (class_vector(a, lay) for a in arrays) if c is not None]
                if classes:
                    counts = np.bincount(np.concatenate(classes), minlength=lay.count).astype(np.float64)
                    features.append(Feature(f"{spec.name}:class", side, t, -1, (),
                                            tuple(float(c / counts.sum()) for c in counts), lay.count))
    if rows < MIN_ROWS:
        raise ValueError(f"a profile needs at least {MIN_ROWS} reference rows, found {rows}")
    return Profile(rows, tuple(features[:MAX_FEATURES]), in_layouts, out_layouts)


def _bad(msg: str) -> ManifestError:
    return ManifestError(f"{PROFILE_FILE}: {msg}")


def parse_profile(data: bytes, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> Profile:
    """Validate ``profile.json`` bytes against the model's interface."""
    if len(data) > MAX_PROFILE_BYTES:
        raise _bad(f"{len(data)} bytes, the limit is {MAX_PROFILE_BYTES}")
    try:
        doc = parse_json_object(data, PROFILE_FILE, require_canonical=True)
    except CanonicalJSONError as exc:
        raise ManifestError(str(exc)) from exc
    if doc.get("_type") != PROFILE_TYPE:
        raise _bad(f"'_type' must be {PROFILE_TYPE!r}")
    rows = doc.get("rows")
    raw = doc.get("features")
    if not isinstance(rows, int) or isinstance(rows, bool) or not MIN_ROWS <= rows <= MAX_PROFILE_INT:
        raise _bad(f"'rows' must be an integer from {MIN_ROWS} to {MAX_PROFILE_INT}")
    if not isinstance(raw, list) or len(raw) > MAX_FEATURES:
        raise _bad(f"'features' must be a list of at most {MAX_FEATURES}")
    in_layouts = tuple(layout_of(s) for s in inputs)
    out_layouts = tuple(layout_of(s) for s in outputs)
    features = []
    for n, f in enumerate(raw):
        features.append(_parse_feature(f, n, in_layouts, out_layouts))
    return Profile(rows, tuple(features), in_layouts, out_layouts)


def _parse_feature(f: Any, n: int, in_layouts: tuple[Layout, ...], out_layouts: tuple[Layout, ...]) -> Feature:
    where = f"feature {n}"
    if not isinstance(f, dict):
        raise _bad(f"{where} must be an object")
    name, side, tensor, index = f.get("name"), f.get("side"), f.get("tensor", -1), f.get("index", -2)
    edges, ref, classes = f.get("edges"), f.get("reference"), f.get("classes", 0)
    if not all(_is_int(x) and abs(x) <= MAX_PROFILE_INT for x in (tensor, index, classes)):
        raise _bad(f"{where}: 'tensor', 'index' and 'classes' must be integers")
    tensor, index, classes = int(tensor), int(index), int(classes)
    if not isinstance(name, str) or not 0 < len(name) <= 200:
        raise _bad(f"{where}: 'name' must be a string of 1 to 200 characters")
    if side not in ("input", "output"):
        raise _bad(f"{where}: 'side' must be 'input' or 'output'")
    layouts = in_layouts if side == "input" else out_layouts
    if not 0 <= tensor < len(layouts):
        raise _bad(f"{where}: 'tensor' must index the model's {side}s")
    lay = layouts[tensor]
    if not isinstance(edges, list) or not isinstance(ref, list) or len(edges) > 4 * BINS or len(ref) > max(
            4 * BINS + 1, MAX_CLASSES):
        raise _bad(f"{where}: 'edges' and 'reference' must be lists of at most {4 * BINS} and "
                   f"{max(4 * BINS + 1, MAX_CLASSES)} numbers")
    if not all(_is_num(x) for x in edges + ref):
        raise _bad(f"{where}: 'edges' and 'reference' must hold finite numbers (integers below {MAX_PROFILE_INT})")
    if classes:
        if index != -1 or edges or classes != lay.count or lay.kind != "columns" or len(ref) != classes:
            raise _bad(f"{where}: a class feature needs index -1, no edges and one share per class of a vector output")
    else:
        if not 0 <= index < lay.count:
            raise _bad(f"{where}: 'index' {index} is outside the tensor's {lay.count} feature(s)")
        if len(ref) != len(edges) + 1 or len(edges) > 4 * BINS:
            raise _bad(f"{where}: needs one more reference share than edges (at most {4 * BINS} edges)")
        if any(b <= a for a, b in zip(edges, edges[1:])):
            raise _bad(f"{where}: edges must be strictly ascending")
    if any(p < 0 for p in ref) or not math.isclose(sum(ref), 1.0, abs_tol=1e-3):
        raise _bad(f"{where}: reference shares must be >= 0 and sum to 1")
    return Feature(name, side, tensor, index, tuple(float(e) for e in edges), tuple(float(p) for p in ref), classes)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, int):  # math.isfinite(10**400) raises OverflowError
        return abs(x) <= MAX_PROFILE_INT
    return isinstance(x, float) and math.isfinite(x)


__all__ = [
    "PROFILE_FILE", "Feature", "Layout", "Profile", "bin_shares", "build_profile", "class_vector",
    "feature_matrix", "layout_of", "parse_profile",
]
