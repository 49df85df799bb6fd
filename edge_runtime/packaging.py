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
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime import RUNTIME_MAJOR
from edge_runtime.bundle.budget import default_budget
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


@dataclass(frozen=True)
class VariantRequest:
    """A further faithful variant of the packed model (docs/store-and-bundles.md "Variants").

    ``model_path`` is another file of the same model (another quantization, or the ONNX model);
    its golden outputs are the reference's (the request's ``reference``, else the main model),
    and its tolerance covers its measured error against that reference, as for the main model.
    """

    name: str
    model_path: Path
    quantization: dict[str, Any] | None = None


@dataclass(frozen=True)
class PackRequest:
    """What :func:`pack_model` packs.

    ``inputs``/``outputs`` override the specs read from the model (the converter passes
    the ONNX model's interface); golden outputs are computed by running the packed model,
    or, when ``reference`` names a model file, by running the reference, with ``atol``
    covering the packed model's measured error on ``validation_inputs`` and the golden
    inputs (see the module docstring). An explicit ``atol`` below that error is refused.
    ``profile_calls`` (model calls of reference data: batches of rows, see
    :func:`profile_batches`) become the bundle's reference profile for drift
    (docs/monitoring.md), the outputs being the packed model's own. ``variants`` are packed
    beside the model, each with its own golden self-test; ``variant`` names the main model's
    variant and ``accuracy_budget`` is the error against the reference no variant may exceed
    to be served; without one, ``budget_factor`` (the converter's) derives it from the main
    model's measured error and tolerance (bundle/budget.py), and None leaves the bundle without.
    """

    model_path: Path
    name: str
    version: int
    keys: Sequence[PrivateKey]
    out: Path
    chunk_size: int = DEFAULT_CHUNK_SIZE
    input_names: Sequence[str] = ()
    output_names: Sequence[str] = ()
    inputs: Sequence[TensorSpec] | None = None
    outputs: Sequence[TensorSpec] | None = None
    golden_inputs: Sequence[np.ndarray] | None = None
    atol: float | None = None
    rtol: float = DEFAULT_RTOL
    quantization: dict[str, Any] | None = None
    architectures: Sequence[str] = ("any",)
    extra: dict[str, Any] | None = None
    reference: Path | None = None
    validation_inputs: Sequence[np.ndarray] | None = None
    profile_calls: Sequence[Sequence[np.ndarray]] | None = None
    variant: str | None = None
    variants: Sequence[VariantRequest] = ()
    accuracy_budget: float | None = None
    budget_factor: float | None = None


@dataclass
class _Golden:
    """A model's golden outputs and tolerance, and its accuracy against the reference when measured."""

    results: list[np.ndarray]
    atol: float
    accuracy: dict[str, Any] | None


def _golden_for(backend: Backend, draft: Manifest, samples: list[np.ndarray], req: PackRequest,
                reference: Path | None, atol: float | None) -> _Golden:
    """Golden outputs of ``samples``: the model's own, or the reference's with the measured error."""
    if reference is None:
        if req.validation_inputs is not None:
            raise UsageError("validation inputs need a reference model to compare against")
        return _Golden(run_rows(backend, samples), atol if atol is not None else _drift_atol(draft.outputs), None)
    ref = reference_backend(Path(reference), draft.inputs, draft.outputs)
    try:
        results = run_rows(ref, samples)
        input_sets = [samples]
        if req.validation_inputs is not None:
            if len(req.validation_inputs) != len(draft.inputs):
                raise UsageError(
                    f"{len(req.validation_inputs)} validation arrays given, the model has {len(draft.inputs)} inputs"
                )
            input_sets.append([np.asarray(a, dtype=numpy_dtype(s.datatype))
                               for a, s in zip(req.validation_inputs, draft.inputs)])
        rows, worst, mean = measure_error(backend, ref, input_sets)
    finally:
        ref.close()
    stated = round_up(worst + _drift_atol(draft.outputs))
    if atol is None:
        atol = stated
    elif atol < worst:
        raise UsageError(f"atol {atol:g} is below the measured error {worst:.3g} against the reference")
    ref_data = Path(reference).read_bytes()
    accuracy = {
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
    return _Golden(results, float(atol), accuracy)


def pack_model(req: PackRequest) -> Manifest:
    """Pack ``req.model_path`` (and its ``variants``) into a signed bundle at ``req.out``; its manifest."""
    model_path = Path(req.model_path)
    fmt, found_in, found_out = describe_model(model_path, req.input_names, req.output_names)
    ins = list(req.inputs) if req.inputs is not None else found_in
    outs = list(req.outputs) if req.outputs is not None else found_out
    data = model_path.read_bytes()
    artifact = hash_artifact(ARTIFACT_FILES[fmt], data, req.chunk_size)
    fields: dict[str, Any] = dict(req.extra or {})
    fields.update(
        {
            "name": req.name,
            "version": req.version,
            "format": fmt,
            "artifacts": {artifact.file: artifact.to_json()},
            "inputs": [s.to_json() for s in ins],
            "outputs": [s.to_json() for s in outs],
            "quantization": req.quantization or {"mode": "unknown"},
            "compatible": {"runtime_major": RUNTIME_MAJOR, "architectures": list(req.architectures)},
        }
    )
    draft = build_manifest(fields)
    backend = load_backend(draft, data)
    samples = list(req.golden_inputs) if req.golden_inputs is not None else random_inputs(draft.inputs)
    if len(samples) != len(draft.inputs):
        raise UsageError(f"{len(samples)} golden input arrays given, the model has {len(draft.inputs)} inputs")
    samples = [np.asarray(a, dtype=numpy_dtype(s.datatype)) for a, s in zip(samples, draft.inputs)]
    golden = _golden_for(backend, draft, samples, req, req.reference, req.atol)
    if golden.accuracy is not None:
        fields["quantization"] = {**fields["quantization"], "accuracy": golden.accuracy}
    artifacts = {artifact.file: data}
    if req.profile_calls:
        blob = reference_profile(backend, draft, req.profile_calls)
        if blob is not None:
            artifacts[PROFILE_FILE] = blob
            fields["artifacts"] = {**fields["artifacts"], PROFILE_FILE: hash_artifact(PROFILE_FILE, blob, req.chunk_size).to_json()}
            fields["profile"] = {"file": PROFILE_FILE}
    fields["golden"] = _golden_field(draft, samples, golden.results, golden.atol, float(req.rtol), artifacts, fields,
                                     req.chunk_size)
    budget = req.accuracy_budget
    if budget is None and req.budget_factor is not None and golden.accuracy is not None:
        budget = default_budget(golden.atol, float(req.rtol), golden.results, float(golden.accuracy["max_abs_error"]),
                                req.budget_factor)
    backends = {None: backend, **_pack_variants(req, draft, samples, artifacts, fields, budget)}
    fields["created"] = draft.created
    manifest = build_manifest(fields)
    try:  # what a device runs on install: a bundle that fails it is never written
        for name, b in backends.items():
            view = manifest if name is None else manifest.for_variant(name)
            run_selftest(b, view, artifacts.get(view.golden.file) if view.golden and view.golden.file else None)
    except SelfTestError as exc:
        raise BundleError(f"a device would refuse this bundle: {exc}") from exc
    finally:
        for b in backends.values():
            b.close()
    write_bundle(req.out, manifest, artifacts, req.keys)
    return manifest


def _pack_variants(req: PackRequest, draft: Manifest, samples: list[np.ndarray], artifacts: dict[str, bytes],
                   fields: dict[str, Any], budget: float | None) -> dict[str | None, Backend]:
    """Add ``req.variants`` to ``artifacts`` and ``fields``; each variant's loaded backend by name."""
    if not req.variants:
        return {}
    reference = Path(req.reference) if req.reference is not None else Path(req.model_path)
    if req.variant is not None:
        fields["variant"] = req.variant
    if budget is not None:
        fields["accuracy_budget"] = {"max_abs_error": float(budget)}
    backends: dict[str | None, Backend] = {}
    entries = []
    for vr in req.variants:
        vfmt = FORMAT_BY_SUFFIX.get(Path(vr.model_path).suffix.lower())
        if vfmt is None:
            raise UsageError(f"variant {vr.name}: {Path(vr.model_path).name} is not a .tflite or .onnx file")
        vdata = Path(vr.model_path).read_bytes()
        plain = ARTIFACT_FILES[vfmt]
        file = plain if plain not in artifacts else f"model-{vr.name}.{plain.rsplit('.', 1)[1]}"
        vdraft = build_manifest({k: fields[k] for k in ("name", "version", "inputs", "outputs", "compatible")} | {
            "format": vfmt, "created": draft.created, "artifacts": {plain: hash_artifact(plain, vdata).to_json()}})
        vbackend = load_backend(vdraft, vdata)
        backends[vr.name] = vbackend
        golden = _golden_for(vbackend, vdraft, samples, req, reference, None)
        quantization = dict(vr.quantization or {"mode": "unknown"})
        if golden.accuracy is not None:
            quantization["accuracy"] = golden.accuracy
        artifacts[file] = vdata
        fields["artifacts"] = {**fields["artifacts"], file: hash_artifact(file, vdata, req.chunk_size).to_json()}
        vgolden = _golden_field(vdraft, samples, golden.results, golden.atol, float(req.rtol), artifacts, fields,
                                req.chunk_size, f"golden-{vr.name}.npz")
        entries.append({"name": vr.name, "format": vfmt, "file": file, "quantization": quantization, "golden": vgolden})
    fields["variants"] = entries
    return backends


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
                  artifacts: dict[str, bytes], fields: dict[str, Any], chunk_size: int,
                  golden_file: str = GOLDEN_FILE) -> dict[str, Any]:
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
    art = hash_artifact(golden_file, blob, chunk_size)
    artifacts[golden_file] = blob
    fields["artifacts"] = {**fields["artifacts"], golden_file: art.to_json()}
    return Golden({}, {}, atol, rtol, golden_file).to_json()
