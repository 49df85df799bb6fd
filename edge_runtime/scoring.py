"""Offline batch scoring from files: ``.npy``, ``.npz``, ``.csv`` and ``.jsonl``.

Input is read in batches (``.npy`` through a memory map, ``.csv``/``.jsonl`` line by
line), so a file larger than memory works; outputs stream to ``.csv``/``.jsonl`` or to
``.npy``/``.npz`` through temporary raw files. No daemon, no network.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from edge_runtime.atomic import fsync_dir
from edge_runtime.exceptions import InputError, UsageError
from edge_runtime.inference.base import Backend
from edge_runtime.spec.tensors import TensorSpec, fits, numpy_dtype
from edge_runtime.text import ProgressLine

INPUT_FORMATS = (".npy", ".npz", ".csv", ".jsonl")
OUTPUT_FORMATS = (".csv", ".jsonl", ".npy", ".npz")
Batch = list[np.ndarray]
Progress = Callable[[int, int | None], None]


def _sample_shape(spec: TensorSpec) -> tuple[int, ...]:
    """The shape of one row of ``spec``; -1 where the model takes any size (the file says which)."""
    return tuple(spec.shape[1:] if spec.has_batch_dim or (spec.shape and spec.shape[0] == 1) else spec.shape)


def _row_shape(want: tuple[int, ...], values: int, where: str) -> tuple[int, ...]:
    """``want`` with its one dynamic dimension (if any) taken from a flat row of ``values`` numbers."""
    dynamic = [i for i, d in enumerate(want) if d < 0]
    fixed = math.prod(d for d in want if d >= 0)
    if not dynamic:
        if values != fixed:
            raise InputError(f"{where}: expected {fixed} values, found {values}")
        return want
    if len(dynamic) > 1:
        raise UsageError(f"rows of shape {list(want)} have {len(dynamic)} dynamic dimensions: a flat row cannot say "
                         "them; use .npy/.npz or .jsonl with nested lists")
    if values == 0 or values % fixed:
        raise InputError(f"{where}: {values} values do not make rows of shape {list(want)}")
    return tuple(values // fixed if d < 0 else d for d in want)


def _check_batchable(specs: tuple[TensorSpec, ...]) -> None:
    for s in specs:
        if not s.shape or (s.shape[0] != -1 and s.shape[0] != 1):
            raise UsageError(f"input '{s.name}' shape {list(s.shape)} has no batch dimension; cannot score rows from a file")


def _npy_batches(path: Path, specs: tuple[TensorSpec, ...], batch: int) -> tuple[Iterator[Batch], int]:
    if len(specs) != 1:
        raise UsageError(f"the model has {len(specs)} inputs; use .npz or .jsonl with one entry per input")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path.name}: not a readable .npy file ({exc})") from exc
    return _array_batches({specs[0].name: arr}, specs, batch, path.name)


def _npz_batches(path: Path, specs: tuple[TensorSpec, ...], batch: int) -> tuple[Iterator[Batch], int]:
    try:
        npz = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path.name}: not a readable .npz file ({exc})") from exc
    names = list(npz.files)
    if len(specs) == 1 and len(names) == 1:
        chosen = {specs[0].name: names[0]}
    else:
        missing = [s.name for s in specs if s.name not in names]
        if missing:
            raise InputError(f"{path.name}: no array for input(s) {missing}; found {names}")
        chosen = {s.name: s.name for s in specs}
    arrays: dict[str, Any] = {}
    for input_name, member in chosen.items():
        # .npz members are read lazily: a bad member only shows up here.
        try:
            arrays[input_name] = npz[member]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise InputError(f"{path.name}: array {member!r} is not readable ({exc})") from exc
    return _array_batches(arrays, specs, batch, path.name)


def _array_batches(
    arrays: dict[str, Any], specs: tuple[TensorSpec, ...], batch: int, label: str
) -> tuple[Iterator[Batch], int]:
    rows = None
    for s in specs:
        arr = arrays[s.name]
        if arr.dtype.kind not in "biuf":
            raise InputError(f"{label}: input '{s.name}' holds {arr.dtype} data, expected numbers for {s.datatype}")
        want = _sample_shape(s)
        if arr.ndim == len(want):  # a single sample without batch dimension
            arr = arr[None, ...]
            arrays[s.name] = arr
        if not fits(want, tuple(arr.shape[1:])):
            raise InputError(f"{label}: input '{s.name}' has rows of shape {list(arr.shape[1:])}, the model expects {list(want)}")
        if rows is not None and arr.shape[0] != rows:
            raise InputError(f"{label}: inputs have different row counts ({rows} and {arr.shape[0]})")
        rows = int(arr.shape[0])
    if not rows:
        raise InputError(f"{label}: the file holds no rows")
    dtypes = [numpy_dtype(s.datatype) for s in specs]

    def gen() -> Iterator[Batch]:
        for start in range(0, rows, batch):
            yield [np.ascontiguousarray(arrays[s.name][start : start + batch], dtype=d) for s, d in zip(specs, dtypes)]

    return gen(), rows


def _parse_float(cell: str, row: int, column: str) -> float:
    try:
        return float(cell)
    except ValueError:
        raise InputError(f"row {row}, column {column!r}: {cell.strip()!r} is not a number") from None


def _csv_batches(path: Path, specs: tuple[TensorSpec, ...], batch: int) -> tuple[Iterator[Batch], int | None]:
    if len(specs) != 1:
        raise UsageError(f"the model has {len(specs)} inputs; CSV holds one; use .npz or .jsonl")
    spec = specs[0]
    want = _sample_shape(spec)
    dynamic = any(d < 0 for d in want)
    width = math.prod(want) if not dynamic else None
    _row_shape(want, math.prod(d for d in want if d >= 0), "header")  # more than one dynamic dimension: usage error
    dtype = numpy_dtype(spec.datatype)

    def gen() -> Iterator[Batch]:
        rows: list[list[float]] = []
        row_shape = want
        seen = 0
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header: list[str] | None = None
            for line_no, cells in enumerate(reader, start=1):
                if not cells or all(not c.strip() for c in cells):
                    continue
                # A first row without a single number is a header; any other row is data.
                if header is None and line_no == 1 and not any(_is_number(c) for c in cells):
                    header = [c.strip() for c in cells]
                    if width is not None and len(header) != width:
                        raise InputError(f"header of {path.name} has {len(header)} columns, the model expects {width}")
                    continue
                shape = _row_shape(want, len(cells), f"row {line_no}")
                if rows and shape != row_shape:  # rows of another length: a call of their own
                    yield [np.asarray(rows, dtype=dtype).reshape((-1, *row_shape))]
                    rows = []
                row_shape = shape
                names = header if header and len(header) == len(cells) else [f"column {i + 1}" for i in range(len(cells))]
                rows.append([_parse_float(c, line_no, names[i]) for i, c in enumerate(cells)])
                seen += 1
                if len(rows) == batch:
                    yield [np.asarray(rows, dtype=dtype).reshape((-1, *row_shape))]
                    rows = []
        if rows:
            yield [np.asarray(rows, dtype=dtype).reshape((-1, *row_shape))]
        elif seen == 0:
            raise InputError(f"{path.name}: the file holds no rows")

    return gen(), None


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _all_numbers(value: Any, bools: bool) -> bool:
    if isinstance(value, list):
        return all(_all_numbers(v, bools) for v in value)
    if isinstance(value, bool):
        return bools
    return isinstance(value, (int, float))


def _jsonl_batches(path: Path, specs: tuple[TensorSpec, ...], batch: int) -> tuple[Iterator[Batch], int | None]:
    shapes = [_sample_shape(s) for s in specs]
    dtypes = [numpy_dtype(s.datatype) for s in specs]

    def row_arrays(obj: Any, line_no: int) -> list[np.ndarray]:
        if not isinstance(obj, dict):
            if len(specs) != 1:
                raise InputError(f"line {line_no}: expected an object with keys {[s.name for s in specs]}")
            obj = {specs[0].name: obj}
        out = []
        for s, shape, dt in zip(specs, shapes, dtypes):
            if s.name not in obj:
                raise InputError(f"line {line_no}: field {s.name!r} is missing")
            # numpy would turn null into NaN and "1.5" into 1.5: accept JSON numbers only.
            if not _all_numbers(obj[s.name], s.datatype == "BOOL"):
                raise InputError(f"line {line_no}, field {s.name!r}: expected (nested lists of) numbers for {s.datatype}")
            try:
                a = np.asarray(obj[s.name], dtype=dt)
            except (TypeError, ValueError, OverflowError):
                raise InputError(f"line {line_no}, field {s.name!r}: not numeric data of type {s.datatype}") from None
            if fits(shape, a.shape):  # nested lists give the row's own shape (dynamic dimensions too)
                out.append(a)
                continue
            out.append(a.reshape(_row_shape(shape, a.size, f"line {line_no}, field {s.name!r}")))
        return out

    def gen() -> Iterator[Batch]:
        pending: list[list[np.ndarray]] = []
        seen = 0
        with open(path, encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError as exc:
                    raise InputError(f"line {line_no}: not JSON ({exc})") from None
                arrays = row_arrays(obj, line_no)
                if pending and [a.shape for a in arrays] != [a.shape for a in pending[0]]:
                    yield [np.stack([r[i] for r in pending]) for i in range(len(specs))]  # rows of another shape
                    pending = []
                pending.append(arrays)
                seen += 1
                if len(pending) == batch:
                    yield [np.stack([r[i] for r in pending]) for i in range(len(specs))]
                    pending = []
        if pending:
            yield [np.stack([r[i] for r in pending]) for i in range(len(specs))]
        elif seen == 0:
            raise InputError(f"{path.name}: the file holds no rows")

    return gen(), None


def read_batches(path: Path, specs: tuple[TensorSpec, ...], batch: int) -> tuple[Iterator[Batch], int | None]:
    """Batches of input arrays from ``path``, and the row count when known up front."""
    suffix = path.suffix.lower()
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    if not path.is_file():
        raise UsageError(f"{path}: not a file")
    if suffix not in INPUT_FORMATS:
        raise UsageError(f"{path.name}: unsupported input format {suffix!r}; expected one of {', '.join(INPUT_FORMATS)}")
    if path.stat().st_size == 0:
        raise InputError(f"{path.name}: the file is empty")
    _check_batchable(specs)
    readers = {".npy": _npy_batches, ".npz": _npz_batches, ".csv": _csv_batches, ".jsonl": _jsonl_batches}
    return readers[suffix](path, specs, batch)


class OutputWriter:
    """Streams output rows to csv/jsonl (a file or stdout) or npy/npz (via raw temp files)."""

    def __init__(self, path: Path | None, specs: tuple[TensorSpec, ...]) -> None:
        self.path = path
        self.specs = specs
        self.kind = path.suffix.lower() if path else ".csv"
        if self.kind not in OUTPUT_FORMATS:
            raise UsageError(f"unsupported output format {self.kind!r}; expected one of {', '.join(OUTPUT_FORMATS)}")
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._raw: list[IO[bytes]] = []
        self._shapes: list[tuple[int, ...]] = []
        self._dtypes: list[Any] = []
        self._rows = 0
        self._text: IO[str] | None = None
        self._csv: Any = None
        if path is not None:
            if not path.parent.is_dir():
                raise UsageError(f"{path}: the directory {path.parent} does not exist")
            self._tmpdir = tempfile.TemporaryDirectory(prefix=".score-", dir=path.parent)
        if self.kind in (".npy", ".npz"):
            assert self._tmpdir is not None
            self._raw = [open(Path(self._tmpdir.name) / f"{i}.raw", "w+b") for i in range(len(specs))]
        elif self._tmpdir is not None:
            self._text = open(Path(self._tmpdir.name) / ("out" + self.kind), "w", newline="", encoding="utf-8")
        else:
            self._text = sys.stdout

    def write(self, outputs: list[np.ndarray]) -> None:
        """Append one batch of outputs."""
        n = outputs[0].shape[0]
        if self._raw:
            if not self._shapes:
                self._shapes = [tuple(o.shape[1:]) for o in outputs]
                self._dtypes = [o.dtype for o in outputs]
            for spec, shape, o in zip(self.specs, self._shapes, outputs):
                if tuple(o.shape[1:]) != shape:  # rows of another length (a dynamic dimension)
                    raise InputError(f"output '{spec.name}' has rows of shape {list(o.shape[1:])} after rows of "
                                     f"shape {list(shape)}: {self.kind} holds one shape; write .jsonl for rows "
                                     "of different lengths")
            for fh, o in zip(self._raw, outputs):
                fh.write(np.ascontiguousarray(o).tobytes())
        elif self.kind == ".jsonl":
            assert self._text is not None
            for r in range(n):
                self._text.write(json.dumps({s.name: o[r].tolist() for s, o in zip(self.specs, outputs)}) + "\n")
        else:
            assert self._text is not None
            if self._csv is None:
                self._csv = csv.writer(self._text)
                header = []
                for s, o in zip(self.specs, outputs):
                    width = int(np.prod(o.shape[1:]))
                    header += [s.name] if width == 1 else [f"{s.name}_{i}" for i in range(width)]
                self._csv.writerow(header)
            flat = [o.reshape(n, -1) for o in outputs]
            for r in range(n):
                self._csv.writerow([f"{v:.9g}" if isinstance(v, float) else v for f in flat for v in f[r].tolist()])
        self._rows += n

    def close(self, success: bool = True) -> None:
        """Finish the output: on success it replaces ``path`` atomically, else it is discarded."""
        if self._text is sys.stdout or self._text is None and self.path is None:
            sys.stdout.flush()
            return
        assert self.path is not None and self._tmpdir is not None
        try:
            if not success:
                return
            tmp = Path(self._tmpdir.name) / ("out" + self.kind)
            if self._text is not None:
                self._text.flush()
                os.fsync(self._text.fileno())
                self._text.close()
            else:
                arrays: dict[str, Any] = {}
                for s, fh, shape, dt in zip(self.specs, self._raw, self._shapes, self._dtypes):
                    fh.flush()
                    arrays[s.name] = np.memmap(fh.name, dtype=dt, mode="r", shape=(self._rows, *shape))
                if self.kind == ".npy":
                    np.save(tmp, next(iter(arrays.values())))
                else:
                    np.savez(tmp, **arrays)
                with open(tmp, "rb") as done:
                    os.fsync(done.fileno())
            os.replace(tmp, self.path)
            fsync_dir(self.path.parent)
        finally:
            if self._text is not None and not self._text.closed:
                self._text.close()
            for fh in self._raw:
                fh.close()
            self._tmpdir.cleanup()


def terminal_progress(stream: IO[str]) -> Progress:
    """A progress callback that redraws one line on a terminal (the caller ends the line)."""
    return ProgressLine(stream, "rows", rate=True, end_line=False)


def score_file(
    backend: Backend,
    input_path: Path,
    output_path: Path | None,
    batch_size: int = 256,
    progress: Progress | None = None,
) -> int:
    """Score every row of ``input_path``; returns the number of rows scored."""
    batches, total = read_batches(Path(input_path), backend.inputs, batch_size)
    if output_path is not None and Path(output_path).resolve() == Path(input_path).resolve():
        raise UsageError("the output file must differ from the input file")
    writer = OutputWriter(Path(output_path) if output_path else None, backend.outputs)
    done = 0
    ok = False
    try:
        static = not all(s.has_batch_dim for s in backend.inputs)
        for batch in batches:
            if static and batch[0].shape[0] > 1:
                # A model exported with a batch of 1 ([1, 3, 224, 224]) takes its rows one at a time.
                parts = [backend.run([a[i : i + 1] for a in batch]) for i in range(batch[0].shape[0])]
                writer.write([np.concatenate([p[k] for p in parts], axis=0) for k in range(len(parts[0]))])
            else:
                writer.write(backend.run(batch))
            done += batch[0].shape[0]
            if progress is not None:
                progress(done, total)
        ok = True
    finally:
        writer.close(success=ok)
    return done


__all__ = ["OutputWriter", "read_batches", "score_file", "terminal_progress"]
