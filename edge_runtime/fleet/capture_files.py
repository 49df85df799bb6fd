"""Captured records into training files, one record at a time, trusting nothing in them.

A record's model, version, tensor names, dtypes and shapes come from the device. Each record
is checked and decoded on its own (:func:`decode_record`); a bad one is skipped and named, the
others are written. The model must be the one whose ring the segment came from (the file name,
already checked), so a record cannot choose its directory; every path is built by
:func:`edge_runtime.fleet.names.contained_path` under the output directory::

    <base>/<model>/v<version>/inputs.npz     arrays by input name, rows concatenated
    <base>/<model>/v<version>/outputs.npz    (or "<i>/NAME" per record when shapes differ)
    <base>/<model>/v<version>/records.jsonl  time, reason, rows, shadow version per record
"""

from __future__ import annotations

import datetime as _dt
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.atomic import write_bytes_atomic
from edge_runtime.exceptions import BadDataError
from edge_runtime.fleet.names import contained_path, safe_component
from edge_runtime.monitoring.capture import decode_array
from edge_runtime.updates.verify import echo

MAX_VERSION = 2**63 - 1
MAX_DIMS = 32
MAX_TENSORS = 1024
MAX_TEXT_CHARS = 256


@dataclass
class TrainingRecord:
    """One checked record: decoded tensors and the metadata kept for ``records.jsonl``."""

    model: str
    version: int
    time: str
    meta: dict[str, Any]
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT_CHARS:
        raise BadDataError(f"{what}: expected a string of at most {MAX_TEXT_CHARS} characters, found {echo(value)}")
    return value


def _array(obj: Any, what: str) -> np.ndarray:
    if not isinstance(obj, dict):
        raise BadDataError(f"{what}: expected an encoded tensor, found {echo(obj)}")
    shape = obj.get("shape")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31 for d in shape):
        raise BadDataError(f"{what}: expected a shape of at most {MAX_DIMS} non-negative integers, found {echo(shape)}")
    dtype = obj.get("dtype")
    if not isinstance(dtype, str) or len(dtype) > 16:
        raise BadDataError(f"{what}: expected a dtype name, found {echo(dtype)}")
    try:
        arr = decode_array(obj)
    except (ValueError, TypeError, KeyError) as exc:  # bad base64, a dtype numpy refuses, bytes != shape
        raise BadDataError(f"{what}: {str(exc)[:120]}") from None
    if arr.dtype.hasobject and dtype != "str":
        raise BadDataError(f"{what}: expected a numeric dtype, found {echo(dtype)}")
    return arr


def _tensors(obj: Any, what: str) -> dict[str, np.ndarray]:
    if not isinstance(obj, dict) or len(obj) > MAX_TENSORS:
        raise BadDataError(f"{what}: expected at most {MAX_TENSORS} named tensors")
    return {safe_component(k, f"{what} tensor name"): _array(v, f"{what}[{k!r}]") for k, v in obj.items()}


def decode_record(rec: Any, model: str, since: _dt.datetime | None = None) -> TrainingRecord | None:
    """``rec`` checked and decoded (None: older than ``since``); BadDataError says what is wrong.

    ``model`` is the model of the segment the record was read from."""
    if not isinstance(rec, dict):
        raise BadDataError("expected a record object")
    if safe_component(rec.get("model"), "model") != model:
        raise BadDataError(f"record of model {echo(rec.get('model'))} in a segment of model {model!r}")
    version = rec.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or not 0 <= version <= MAX_VERSION:
        raise BadDataError(f"expected a version in [0, 2^63), found {echo(version)}")
    when = _text(rec.get("time", ""), "time")
    if since is not None and when:
        try:
            stamp = _dt.datetime.fromisoformat(when)
        except ValueError:
            stamp = None
        if stamp is not None and stamp.tzinfo is not None and stamp < since:
            return None
    inputs = _tensors(rec.get("inputs"), "inputs")
    outputs = _tensors(rec.get("outputs"), "outputs")
    meta: dict[str, Any] = {"model": model, "version": version}
    if when:
        meta["time"] = when
    if "reason" in rec:
        meta["reason"] = _text(rec["reason"], "reason")
    first = next(iter(inputs.values()), None)
    meta["rows"] = int(first.shape[0]) if first is not None and first.ndim else 1
    shadow = rec.get("shadow")
    if shadow is not None:
        if not isinstance(shadow, dict):
            raise BadDataError(f"shadow: expected an object, found {echo(shadow)}")
        for key in ("version", "rows_differing"):
            value = shadow.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or abs(value) > MAX_VERSION):
                raise BadDataError(f"shadow {key}: expected an integer, found {echo(value)}")
        meta["shadow_version"] = shadow.get("version")
        meta["shadow_rows_differing"] = shadow.get("rows_differing")
        meta["shadow_outputs"] = {k: a.tolist() for k, a in _tensors(shadow.get("outputs", {}), "shadow outputs").items()}
    return TrainingRecord(model, version, when, meta, inputs, outputs)


def write_training_files(base: Path, records: list[TrainingRecord]) -> list[Path]:
    """``inputs.npz``, ``outputs.npz`` and ``records.jsonl`` per model version (module docstring)."""
    groups: dict[tuple[str, int], list[TrainingRecord]] = {}
    for rec in records:
        groups.setdefault((rec.model, rec.version), []).append(rec)
    written: list[Path] = []
    for (model, version), recs in sorted(groups.items()):
        recs.sort(key=lambda r: r.time)
        d = contained_path(base, model, f"v{version}", what="model")
        d.mkdir(parents=True, exist_ok=True)
        for side in ("inputs", "outputs"):
            path = d / f"{side}.npz"
            _write_npz(path, _join([r.inputs if side == "inputs" else r.outputs for r in recs]))
            written.append(path)
        path = d / "records.jsonl"
        write_bytes_atomic(path, ("\n".join(json.dumps(r.meta, sort_keys=True) for r in recs) + "\n").encode())
        written.append(path)
    return written


def _join(per_record: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Rows of every record concatenated per tensor, when they line up; else ``"<i>/NAME"`` per record
    (the converter's whole-call form, so the files feed ``edge-convert --validation`` as they are)."""
    if not per_record:
        return {}
    names = list(per_record[0])
    joinable = all(list(r) == names for r in per_record) and all(
        len({(r[n].dtype.str, r[n].shape[1:]) for r in per_record}) == 1 and per_record[0][n].ndim >= 1
        for n in names)
    if joinable:
        return {n: np.concatenate([r[n] for r in per_record]) for n in names}
    return {f"{i}/{n}": a for i, r in enumerate(per_record) for n, a in r.items()}


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    write_bytes_atomic(path, buf.getvalue())


__all__ = ["TrainingRecord", "decode_record", "write_training_files"]
