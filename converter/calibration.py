"""Calibration and validation data: reading ``.npy``/``.npz``/``.csv`` files in the ONNX
layout, holding out a validation part, and writing what onnx2tf reads.

A data set holds one array per model input (rows along the first axis) and optional
labels. ``.npy`` and ``.csv`` files suit single-input models; an ``.npz`` file names its
arrays after the inputs (a single-input model also accepts any one array, such as ``x``).
Labels come from the ``.npz`` key or ``.csv`` column ``label``, ``labels``, ``y`` or
``target`` (or the one named by ``label_key``).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.exceptions import UsageError
from edge_runtime.packaging import random_tensor
from edge_runtime.spec.tensors import TensorSpec, numpy_dtype

LABEL_KEYS = ("label", "labels", "y", "target")
MAX_CALIBRATION_ROWS = 1000
MAX_VALIDATION_ROWS = 1000
RANDOM_ROWS = 64
HOLDOUT_EVERY = 5  # every 5th calibration row is held out for validation (20 %)
MIN_ROWS_TO_SPLIT = 10
SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"


FEED_KEY_RE = re.compile(r"^(\d{1,6})/(.+)$")
MAX_FEEDS = 256


@dataclass(frozen=True)
class Dataset:
    """Rows for a model: one array per input in manifest order, optional labels.

    A *feeds* data set (``feeds`` set) holds whole model calls instead of rows: for models whose
    inputs have no common batch axis (a scalar, a state ``[2, N, 128]``). ``inputs`` is then the
    first call.
    """

    inputs: tuple[np.ndarray, ...]
    labels: np.ndarray | None
    source: str
    feeds: tuple[tuple[np.ndarray, ...], ...] | None = None

    @property
    def rows(self) -> int:
        """How many rows (samples; calls for a feeds data set) the data set holds."""
        if self.feeds is not None:
            return len(self.feeds)
        return int(self.inputs[0].shape[0]) if self.inputs and self.inputs[0].ndim else 0

    def take(self, index: np.ndarray | slice, source: str | None = None) -> Dataset:
        """The rows selected by ``index``."""
        if self.feeds is not None:
            picked = tuple(self.feeds[int(i)] for i in np.arange(len(self.feeds))[index])
            return Dataset(picked[0], None, source or self.source, picked)
        labels = self.labels[index] if self.labels is not None else None
        return Dataset(tuple(a[index] for a in self.inputs), labels, source or self.source)

    def head(self, n: int) -> Dataset:
        """The first ``n`` rows."""
        return self.take(slice(0, n)) if self.rows > n else self


def _typed(spec: TensorSpec, arr: np.ndarray, what: str) -> np.ndarray:
    """``arr`` in the input's datatype, refusing values that do not convert and NaN/infinity."""
    try:
        arr = arr.astype(numpy_dtype(spec.datatype), copy=False)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{what}: input '{spec.name}' cannot be read as {spec.datatype}: {exc}") from exc
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        raise UsageError(f"{what}: input '{spec.name}' holds NaN or infinite values")
    return arr


def _check(specs: Sequence[TensorSpec], arrays: Sequence[np.ndarray], what: str) -> tuple[np.ndarray, ...]:
    out = []
    rows = None
    for spec, arr in zip(specs, arrays):
        arr = np.asarray(arr)
        if arr.ndim != len(spec.shape):
            raise UsageError(
                f"{what}: input '{spec.name}' expects rows of shape {list(spec.shape)}, found an array of shape "
                f"{list(arr.shape)} (rank {arr.ndim}, expected {len(spec.shape)} with the rows first)"
            )
        for i, (want, got) in enumerate(zip(spec.shape, arr.shape)):
            if i > 0 and want != -1 and want != got:
                raise UsageError(
                    f"{what}: input '{spec.name}' expects shape {list(spec.shape)}, found {list(arr.shape)} "
                    f"(dimension {i}); data must be in the ONNX model's layout"
                )
        if spec.shape and spec.shape[0] not in (-1, arr.shape[0]) and arr.shape[0] % spec.shape[0] != 0:
            raise UsageError(f"{what}: input '{spec.name}' has a fixed batch of {spec.shape[0]}, found {arr.shape[0]} rows")
        if rows is not None and arr.shape[0] != rows:
            raise UsageError(f"{what}: inputs have different row counts ({rows} and {arr.shape[0]})")
        rows = arr.shape[0]
        if rows == 0:
            raise UsageError(f"{what}: no rows")
        out.append(_typed(spec, arr, what))
    return tuple(out)


def _check_feed(specs: Sequence[TensorSpec], arrays: Sequence[np.ndarray], what: str) -> tuple[np.ndarray, ...]:
    """One whole call: each array must fit its input's rank and fixed dimensions (no rows axis)."""
    out = []
    for spec, arr in zip(specs, arrays):
        arr = np.asarray(arr)
        if arr.ndim != len(spec.shape) or any(w not in (-1, g) for w, g in zip(spec.shape, arr.shape)):
            raise UsageError(f"{what}: input '{spec.name}' expects shape {list(spec.shape)}, found {list(arr.shape)}")
        out.append(_typed(spec, arr, what))
    return tuple(out)


def _load_feeds(loaded: Any, keys: list[str], specs: Sequence[TensorSpec], what: str) -> Dataset:
    """A ``.npz`` of whole calls: arrays named ``<call>/<input>`` (``0/input``, ``0/state``, ``0/sr``, ``1/input`` ...)."""
    calls: dict[int, dict[str, str]] = {}
    for k in keys:
        m = FEED_KEY_RE.match(k)
        if not m:
            raise UsageError(f"{what}: mixes call arrays ('0/NAME') with {k!r}; use one form")
        calls.setdefault(int(m.group(1)), {})[m.group(2)] = k
    if len(calls) > MAX_FEEDS:
        raise UsageError(f"{what}: {len(calls)} calls, at most {MAX_FEEDS} are used; keep fewer")
    names = [s.name for s in specs]
    feeds = []
    for index in sorted(calls):
        members = calls[index]
        if set(members) != set(names):
            raise UsageError(f"{what}: call {index} has arrays {sorted(members)}, the model's inputs are {names}")
        feeds.append(_check_feed(specs, [loaded[members[n]] for n in names], f"{what}, call {index}"))
    return Dataset(feeds[0], None, f"{what} ({len(feeds)} calls)", tuple(feeds))


def _labels(value: np.ndarray | None, rows: int, what: str) -> np.ndarray | None:
    if value is None:
        return None
    labels = np.asarray(value)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels.reshape(-1)
    if labels.ndim != 1 or labels.shape[0] != rows:
        raise UsageError(f"{what}: labels must be one value per row ({rows}), found shape {list(labels.shape)}")
    return labels


def _read_csv(path: Path, label_key: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    if not rows:
        raise UsageError(f"{path}: empty CSV file")
    header: list[str] | None = None
    try:
        [float(c) for c in rows[0]]
    except ValueError:
        header = [c.strip() for c in rows[0]]
        rows = rows[1:]
    label_col = None
    if header is not None:
        wanted = [label_key] if label_key else list(LABEL_KEYS)
        label_col = next((header.index(k) for k in wanted if k in header), None)
        if label_key and label_col is None:
            raise UsageError(f"{path}: no column named {label_key!r} (columns: {header[:8]}...)")
    try:
        table = np.asarray([[float(c) for c in r] for r in rows], dtype=np.float64)
    except ValueError as exc:
        raise UsageError(f"{path}: every cell must be a number: {exc}") from exc
    if table.ndim != 2:
        raise UsageError(f"{path}: rows have different numbers of columns")
    if label_col is None:
        return table, None
    return np.delete(table, label_col, axis=1), table[:, label_col]


def load_dataset(path: Path, specs: Sequence[TensorSpec], what: str, label_key: str | None = None) -> Dataset:
    """Read a data file for a model with inputs ``specs`` (``what`` names it in errors)."""
    path = Path(path)
    label_keys = (label_key,) if label_key else LABEL_KEYS
    suffix = path.suffix.lower()
    labels: np.ndarray | None = None
    if not path.is_file():
        raise UsageError(f"{what} file {path}: no such file")
    if suffix in (".npy", ".npz"):
        try:
            loaded = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UsageError(f"{what} file {path}: not a numpy file: {exc}") from exc
        if isinstance(loaded, np.ndarray):
            if len(specs) != 1:
                raise UsageError(f"{what} file {path}: a .npy holds one array, the model has {len(specs)} inputs; use .npz")
            arrays: list[np.ndarray] = [loaded]
        else:
            with loaded:
                keys = list(loaded.files)
                if keys and all(FEED_KEY_RE.match(k) for k in keys):
                    return _load_feeds(loaded, keys, specs, f"{what} file {path.name}")
                label_name = next((k for k in label_keys if k in keys), None)
                labels = loaded[label_name] if label_name else None
                data_keys = [k for k in keys if k != label_name]
                if all(s.name in data_keys for s in specs):
                    arrays = [loaded[s.name] for s in specs]
                elif len(specs) == 1 and len(data_keys) == 1:
                    arrays = [loaded[data_keys[0]]]
                else:
                    raise UsageError(
                        f"{what} file {path}: expected arrays named {[s.name for s in specs]}"
                        f"{' (labels optional: ' + '/'.join(label_keys) + ')'}, found {keys}"
                    )
    elif suffix == ".csv":
        if len(specs) != 1:
            raise UsageError(f"{what} file {path}: a CSV file suits single-input models; the model has {len(specs)}")
        table, labels = _read_csv(path, label_key)
        spec = specs[0]
        sample = spec.shape[1:]
        if -1 in sample:
            raise UsageError(f"{what} file {path}: input '{spec.name}' has dynamic dimensions {list(spec.shape)}; use .npy")
        want = int(np.prod(sample)) if sample else 1
        if table.shape[1] != want:
            raise UsageError(
                f"{what} file {path}: input '{spec.name}' {list(spec.shape)} needs {want} columns per row, "
                f"found {table.shape[1]}"
            )
        arrays = [table.reshape((table.shape[0], *sample))]
    else:
        raise UsageError(f"{what} file {path}: expected .npy, .npz or .csv")
    checked = _check(specs, arrays, f"{what} file {path.name}")
    return Dataset(checked, _labels(labels, checked[0].shape[0], f"{what} file {path.name}"), f"{what} file {path.name}")


def random_dataset(specs: Sequence[TensorSpec], rows: int = RANDOM_ROWS, seed: int = 0) -> Dataset:
    """Standard-normal floats (small non-negative integers for integer inputs), for when no data is given."""
    rng = np.random.default_rng(seed)
    arrays = []
    for s in specs:
        if -1 in s.shape[1:]:
            raise UsageError(
                f"input '{s.name}' has dynamic dimensions {list(s.shape)}: pass --validation data of the real shape"
            )
        fixed = s.shape[0] if s.shape and s.shape[0] != -1 else None
        count = rows if fixed is None else fixed * max(1, rows // fixed)  # whole fixed-size batches
        shape = (count, *s.shape[1:]) if s.shape else ()
        arrays.append(random_tensor(rng, numpy_dtype(s.datatype), shape))
    n = arrays[0].shape[0] if arrays and arrays[0].ndim else 1
    return Dataset(tuple(arrays), None, f"{n} random rows (no --validation or --calibration data given)")


def split_holdout(data: Dataset) -> tuple[Dataset, Dataset]:
    """(calibration, validation): every 5th row held out, unless there are too few rows to split."""
    if data.rows < MIN_ROWS_TO_SPLIT:
        return data, data.take(slice(None), f"{data.source} (all {data.rows} rows; too few to hold any out)")
    idx = np.arange(data.rows)
    held = idx % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
    return (
        data.take(idx[~held], f"{data.source}, {int((~held).sum())} rows"),
        data.take(idx[held], f"{data.source}, {int(held.sum())} held-out rows"),
    )


def write_for_onnx2tf(data: Dataset, specs: Sequence[TensorSpec], names: Sequence[str], workdir: Path) -> dict[str, Path]:
    """Write one float32 ``.npy`` per input for onnx2tf's ``-cind``; returns name -> file name.

    With ``-k`` onnx2tf keeps the ONNX layout at its inputs, so the rows are written as given.
    """
    out = {}
    for i, (spec, name, arr) in enumerate(zip(specs, names, data.head(MAX_CALIBRATION_ROWS).inputs)):
        if not np.issubdtype(numpy_dtype(spec.datatype), np.floating):
            raise UsageError(f"int8 calibration needs float inputs; input '{spec.name}' is {spec.datatype}")
        path = workdir / f"calibration_{i:03d}.npy"
        np.save(path, np.ascontiguousarray(arr, dtype=np.float32))
        out[name] = path
    return out


def write_sample_guard(workdir: Path) -> Path:
    """Pre-create the sample file onnx2tf would otherwise download (float32 [20,128,128,3] in 0..1).

    onnx2tf fetches it for its own test inference whenever every input looks like a small-batch
    RGB image; with the file present it reads it instead. Seeded, so conversions are repeatable.
    """
    path = workdir / SAMPLE_FILE
    rng = np.random.default_rng(20)
    np.save(path, rng.random((20, 128, 128, 3), dtype=np.float32))
    return path


def spread_hint(data: Dataset, specs: Sequence[TensorSpec]) -> str | None:
    """A sentence naming an input whose columns span very different ranges, if there is one.

    Integer quantization uses one scale per tensor, so a column that spans 0.05 next to one that
    spans 2,500 is rounded to nothing: the usual cause of collapsed int8 outputs.
    """
    for spec, arr in zip(specs, data.inputs):
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating) or arr.shape[1] < 2:
            continue
        spans = np.max(np.abs(arr.astype(np.float64)), axis=0)
        spans = spans[spans > 0]
        if spans.size < 2:
            continue
        lo, hi = float(spans.min()), float(spans.max())
        if hi / lo > 100:
            return (
                f"input '{spec.name}' has columns whose magnitudes span {lo:.3g} to {hi:.3g} "
                f"(ratio {hi / lo:,.0f}); int8 gives the whole tensor one scale, so the small columns round to zero"
            )
    return None
