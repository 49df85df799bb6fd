"""Pack an already-converted model (TFLite or ONNX) into a signed bundle.

Used by ``edge-runtime bundle create`` and by the converter: it reads the model's
interface, runs it on golden inputs to record the self-test, hashes the artifact in
chunks, and writes the signed bundle atomically.

Two meanings of the golden tolerance, chosen by whether a reference model is given:

* without one, the golden outputs are the packed model's own and ``atol`` only says how
  far another LiteRT build or CPU may drift from them (1e-4, or two quantization steps of
  an integer output);
* with ``reference`` (e.g. the float model an int8 model was made from), the golden
  outputs are the reference's, and ``atol`` is the packed model's largest error against
  the reference over the validation rows plus that drift, rounded up: a statement of
  accuracy that the on-device self-test checks again. ``quantization.accuracy`` records
  the measurement.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime import RUNTIME_MAJOR
from edge_runtime.bundle.manifest import (
    ARTIFACT_FILES,
    DEFAULT_CHUNK_SIZE,
    GOLDEN_FILE,
    MAX_GOLDEN_BYTES,
    MAX_INLINE_GOLDEN_BYTES,
    PROFILE_FILE,
    Golden,
    Manifest,
)
from edge_runtime.bundle.profile import build_profile, parse_profile
from edge_runtime.bundle.writer import build_manifest, hash_artifact, write_bundle
from edge_runtime.exceptions import BundleError, EdgeRuntimeError, SelfTestError, UsageError
from edge_runtime.inference.backend import Backend, load_backend
from edge_runtime.inference.rows import run_rows
from edge_runtime.inference.selftest import golden_npz, run_selftest
from edge_runtime.spec.tensors import TensorSpec, numpy_dtype
from edge_runtime.trust.canonical import canonical_json
from edge_runtime.trust.keys import PrivateKey

log = logging.getLogger("edge_runtime.packaging")

FORMAT_BY_SUFFIX = {".tflite": "tflite", ".onnx": "onnx"}
DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3
MEASURE_BATCH_ROWS = 256


def describe_model(
    path: Path, input_names: Sequence[str] = (), output_names: Sequence[str] = ()
) -> tuple[str, list[TensorSpec], list[TensorSpec]]:
    """The format and tensor specs of a model file."""
    fmt = FORMAT_BY_SUFFIX.get(Path(path).suffix.lower())
    if fmt is None:
        raise UsageError(f"{Path(path).name}: expected a .tflite or .onnx file")
    if fmt == "tflite":
        from edge_runtime.inference.litert import describe

        ins, outs = describe(path, input_names, output_names)
    else:
        from edge_runtime.inference.onnx import describe_onnx

        ins, outs = describe_onnx(path, input_names, output_names)
    return fmt, ins, outs


def random_inputs(specs: Sequence[TensorSpec], rows: int = 4, seed: int = 0) -> list[np.ndarray]:
    """Reproducible sample inputs: standard normal floats, small integers."""
    rng = np.random.default_rng(seed)
    out = []
    for s in specs:
        shape = tuple(rows if (i == 0 and d == -1) else (1 if d == -1 else d) for i, d in enumerate(s.shape))
        out.append(random_tensor(rng, numpy_dtype(s.datatype), shape))
    return out


def random_tensor(rng: np.random.Generator, dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray:
    """Sample data of one tensor: standard normal floats, 0/1 booleans, integers in [0, 10)."""
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(dtype)
    return rng.integers(0, 10, shape).astype(dtype)


def _tensor_json(arr: np.ndarray) -> dict[str, Any]:
    return {"shape": list(arr.shape), "data": [float(v) if isinstance(v, float) else v for v in arr.reshape(-1).tolist()]}


def _drift_atol(outputs: Sequence[TensorSpec]) -> float:
    """How far the same model may drift between LiteRT builds and CPUs."""
    atol = DEFAULT_ATOL
    for s in outputs:
        if s.quantization is not None:
            atol = max(atol, 2.0 * s.quantization.scale)
    return atol


def round_up(value: float, digits: int = 2) -> float:
    """``value`` rounded up to ``digits`` significant digits (never below ``value``)."""
    if value <= 0:
        return 0.0
    nearest = float(f"{value:.{digits}g}")
    if nearest >= value:  # already short (1e-4 is not stored exactly; do not bump it to 1.1e-4)
        return nearest
    exponent = math.floor(math.log10(value)) - digits + 1
    return float(Decimal(value).quantize(Decimal(10) ** exponent, rounding=ROUND_CEILING))


def reference_backend(reference: Path, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> Backend:
    """Load a reference model under the packed model's tensor names (matched by position)."""
    fmt, ref_in, ref_out = describe_model(reference)
    if len(ref_in) != len(inputs) or len(ref_out) != len(outputs):
        raise UsageError(
            f"reference {Path(reference).name} has {len(ref_in)} inputs and {len(ref_out)} outputs, "
            f"the packed model {len(inputs)} and {len(outputs)}"
        )
    data = Path(reference).read_bytes()
    artifact = hash_artifact(ARTIFACT_FILES[fmt], data)
    draft = build_manifest(
        {
            "name": "reference",
            "version": 1,
            "format": fmt,
            "artifacts": {artifact.file: artifact.to_json()},
            "inputs": [TensorSpec(o.name, r.datatype, r.shape, r.quantization).to_json() for o, r in zip(inputs, ref_in)],
            "outputs": [TensorSpec(o.name, r.datatype, r.shape, r.quantization).to_json() for o, r in zip(outputs, ref_out)],
            "compatible": {"runtime_major": RUNTIME_MAJOR, "architectures": ["any"]},
        }
    )
    return load_backend(draft, data)


def _row_batches(arrays: Sequence[np.ndarray], rows: int) -> list[list[np.ndarray]]:
    return [[a[i : i + rows] for a in arrays] for i in range(0, len(arrays[0]), rows)]


def measure_error(
    model: Backend, reference: Backend, input_sets: Sequence[Sequence[np.ndarray]]
) -> tuple[int, float, float]:
    """Rows compared, and the largest and mean absolute output error of ``model`` against ``reference``."""
    rows = 0
    worst = 0.0
    total = 0.0
    count = 0
    for arrays in input_sets:
        for batch in _row_batches(arrays, MEASURE_BATCH_ROWS):
            for have, want in zip(run_rows(model, batch), run_rows(reference, batch)):
                err = np.abs(have.astype(np.float64) - want.astype(np.float64))
                if not np.all(np.isfinite(err)):
                    raise UsageError("the packed model or the reference produced non-finite outputs")
                if err.size:
                    worst = max(worst, float(err.max()))
                    total += float(err.sum())
                    count += err.size
            rows += len(batch[0])
    return rows, worst, (total / count if count else 0.0)


def pack_model(
    model_path: Path,
    *,
    name: str,
    version: int,
    keys: Sequence[PrivateKey],
    out: Path,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    input_names: Sequence[str] = (),
    output_names: Sequence[str] = (),
    inputs: Sequence[TensorSpec] | None = None,
    outputs: Sequence[TensorSpec] | None = None,
    golden_inputs: Sequence[np.ndarray] | None = None,
    atol: float | None = None,
    rtol: float = DEFAULT_RTOL,
    quantization: dict[str, Any] | None = None,
    architectures: Sequence[str] = ("any",),
    extra: dict[str, Any] | None = None,
    reference: Path | None = None,
    validation_inputs: Sequence[np.ndarray] | None = None,
    profile_calls: Sequence[Sequence[np.ndarray]] | None = None,
) -> Manifest:
    """Pack ``model_path`` into a signed bundle at ``out`` and return its manifest.

    ``inputs``/``outputs`` override the specs read from the model (the converter passes
    the ONNX model's interface); golden outputs are computed by running the packed model,
    or, when ``reference`` names a model file, by running the reference, with ``atol``
    covering the packed model's measured error on ``validation_inputs`` and the golden
    inputs (see the module docstring). An explicit ``atol`` below that error is refused.
    ``profile_calls`` (model calls of reference data: batches of rows, see
    :func:`profile_batches`) become the bundle's reference profile for drift
    (docs/monitoring.md), the outputs being the packed model's own.
    """
    model_path = Path(model_path)
    fmt, found_in, found_out = describe_model(model_path, input_names, output_names)
    ins = list(inputs) if inputs is not None else found_in
    outs = list(outputs) if outputs is not None else found_out
    data = model_path.read_bytes()
    artifact = hash_artifact(ARTIFACT_FILES[fmt], data, chunk_size)
    fields: dict[str, Any] = dict(extra or {})
    fields.update(
        {
            "name": name,
            "version": version,
            "format": fmt,
            "artifacts": {artifact.file: artifact.to_json()},
            "inputs": [s.to_json() for s in ins],
            "outputs": [s.to_json() for s in outs],
            "quantization": quantization or {"mode": "unknown"},
            "compatible": {"runtime_major": RUNTIME_MAJOR, "architectures": list(architectures)},
        }
    )
    draft = build_manifest(fields)
    backend = load_backend(draft, data)
    samples = list(golden_inputs) if golden_inputs is not None else random_inputs(draft.inputs)
    if len(samples) != len(draft.inputs):
        raise UsageError(f"{len(samples)} golden input arrays given, the model has {len(draft.inputs)} inputs")
    samples = [np.asarray(a, dtype=numpy_dtype(s.datatype)) for a, s in zip(samples, draft.inputs)]
    if reference is None:
        if validation_inputs is not None:
            raise UsageError("validation inputs need a reference model to compare against")
        results = run_rows(backend, samples)
        if atol is None:
            atol = _drift_atol(draft.outputs)
    else:
        ref = reference_backend(Path(reference), draft.inputs, draft.outputs)
        results = run_rows(ref, samples)
        input_sets = [samples]
        if validation_inputs is not None:
            if len(validation_inputs) != len(draft.inputs):
                raise UsageError(
                    f"{len(validation_inputs)} validation arrays given, the model has {len(draft.inputs)} inputs"
                )
            input_sets.append([np.asarray(a, dtype=numpy_dtype(s.datatype)) for a, s in zip(validation_inputs, draft.inputs)])
        rows, worst, mean = measure_error(backend, ref, input_sets)
        stated = round_up(worst + _drift_atol(draft.outputs))
        if atol is None:
            atol = stated
        elif atol < worst:
            raise UsageError(f"atol {atol:g} is below the measured error {worst:.3g} against the reference")
        ref_data = Path(reference).read_bytes()
        fields["quantization"] = dict(fields["quantization"])
        fields["quantization"]["accuracy"] = {
            "reference": {
                "file": Path(reference).name,
                "format": FORMAT_BY_SUFFIX[Path(reference).suffix.lower()],
                "sha256": hashlib.sha256(ref_data).hexdigest(),
            },
            "rows": rows,
            "max_abs_error": worst,
            "mean_abs_error": mean,
            "atol": float(atol),
        }
    artifacts = {artifact.file: data}
    if profile_calls:
        blob = reference_profile(backend, draft, profile_calls)
        if blob is not None:
            artifacts[PROFILE_FILE] = blob
            fields["artifacts"] = {**fields["artifacts"], PROFILE_FILE: hash_artifact(PROFILE_FILE, blob, chunk_size).to_json()}
            fields["profile"] = {"file": PROFILE_FILE}
    fields["golden"] = _golden_field(draft, samples, results, float(atol), float(rtol), artifacts, fields, chunk_size)
    fields["created"] = draft.created
    manifest = build_manifest(fields)
    try:  # what a device runs on install: a bundle that fails it is never written
        run_selftest(backend, manifest, artifacts.get(GOLDEN_FILE))
    except SelfTestError as exc:
        raise BundleError(f"a device would refuse this bundle: {exc}") from exc
    write_bundle(out, manifest, artifacts, keys)
    return manifest


PROFILE_MAX_ROWS = 4096
PROFILE_BATCH_ROWS = 64


def profile_batches(specs: Sequence[TensorSpec], arrays: Sequence[np.ndarray],
                    max_rows: int = PROFILE_MAX_ROWS) -> list[list[np.ndarray]]:
    """Rows cut into calls the model accepts: batches for a dynamic batch, its fixed batch otherwise."""
    if not arrays or not specs:
        return []
    first = specs[0].shape
    fixed = first[0] if first and first[0] > 0 else None
    n = min(len(arrays[0]), max_rows)
    step = fixed or PROFILE_BATCH_ROWS
    end = n - n % step if fixed else n
    return [[np.asarray(a[i:i + step]) for a in arrays] for i in range(0, end, step)]


def reference_profile(backend: Backend, draft: Manifest, calls: Sequence[Sequence[np.ndarray]]) -> bytes | None:
    """``profile.json`` of reference data and the packed model's answers (None, logged, when the data
    cannot give one: too few rows, or no numeric tensor)."""
    try:
        pairs = []
        for call in calls:
            ins = [np.asarray(a, dtype=numpy_dtype(s.datatype)) for a, s in zip(call, draft.inputs)]
            pairs.append((ins, backend.run(ins)))
        profile = build_profile(draft.inputs, draft.outputs, pairs)
    except (ValueError, EdgeRuntimeError) as exc:
        log.warning("no reference profile in the bundle: %s", exc)
        return None
    blob = profile.to_bytes()
    parse_profile(blob, draft.inputs, draft.outputs)  # what the device will read
    return blob


def _golden_field(draft: Manifest, samples: list[np.ndarray], results: Sequence[np.ndarray], atol: float, rtol: float,
                  artifacts: dict[str, bytes], fields: dict[str, Any], chunk_size: int) -> dict[str, Any]:
    """The manifest's ``golden`` field: inline when small, else a ``golden.npz`` artifact added to
    ``artifacts`` and ``fields["artifacts"]`` (so the manifest stays small for any model)."""
    outputs = [np.asarray(r).astype(numpy_dtype(s.datatype), copy=False) for s, r in zip(draft.outputs, results)]
    inline = Golden(
        {s.name: _tensor_json(a) for s, a in zip(draft.inputs, samples)},
        {s.name: _tensor_json(a) for s, a in zip(draft.outputs, outputs)},
        atol,
        rtol,
    ).to_json()
    if len(canonical_json(inline)) <= MAX_INLINE_GOLDEN_BYTES:
        return inline
    blob = golden_npz(samples, outputs)
    if len(blob) > MAX_GOLDEN_BYTES:
        raise UsageError(
            f"golden self-test data of {len(samples[0]) if samples and samples[0].ndim else 1} row(s) is {len(blob)} "
            f"bytes, the limit is {MAX_GOLDEN_BYTES}: pass fewer or smaller golden rows"
        )
    art = hash_artifact(GOLDEN_FILE, blob, chunk_size)
    artifacts[GOLDEN_FILE] = blob
    fields["artifacts"] = {**fields["artifacts"], GOLDEN_FILE: art.to_json()}
    return Golden({}, {}, atol, rtol, GOLDEN_FILE).to_json()
