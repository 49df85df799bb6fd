"""Pack an already-converted model (TFLite or ONNX) into a signed bundle.

Used by ``edge-runtime bundle create`` and by the converter: it reads the model's
interface, runs it on golden inputs to record the self-test, hashes the artifact in
chunks, and writes the signed bundle atomically.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime import RUNTIME_MAJOR
from edge_runtime.bundle.manifest import ARTIFACT_FILES, DEFAULT_CHUNK_SIZE, Golden, Manifest
from edge_runtime.bundle.writer import build_manifest, hash_artifact, write_bundle
from edge_runtime.exceptions import UsageError
from edge_runtime.inference.backend import load_backend
from edge_runtime.inference.tensors import TensorSpec, numpy_dtype
from edge_runtime.trust.keys import PrivateKey

FORMAT_BY_SUFFIX = {".tflite": "tflite", ".onnx": "onnx"}
DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3


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
        dtype = numpy_dtype(s.datatype)
        if np.issubdtype(dtype, np.floating):
            out.append(rng.standard_normal(shape).astype(dtype))
        elif dtype == np.bool_:
            out.append(rng.integers(0, 2, shape).astype(dtype))
        else:
            out.append(rng.integers(0, 10, shape).astype(dtype))
    return out


def _tensor_json(arr: np.ndarray) -> dict[str, Any]:
    return {"shape": list(arr.shape), "data": [float(v) if isinstance(v, float) else v for v in arr.reshape(-1).tolist()]}


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
) -> Manifest:
    """Pack ``model_path`` into a signed bundle at ``out`` and return its manifest.

    ``inputs``/``outputs`` override the specs read from the model (the converter passes
    the ONNX model's interface); golden outputs are computed by running the packed model.
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
    results = backend.run(samples)
    if atol is None:
        atol = DEFAULT_ATOL
        for s in draft.outputs:
            if s.quantization is not None:
                atol = max(atol, 2.0 * s.quantization.scale)
    golden = Golden(
        {s.name: _tensor_json(a) for s, a in zip(draft.inputs, samples)},
        {s.name: _tensor_json(a) for s, a in zip(draft.outputs, results)},
        float(atol),
        float(rtol),
    )
    fields["golden"] = golden.to_json()
    fields["created"] = draft.created
    manifest = build_manifest(fields)
    write_bundle(out, manifest, {artifact.file: data}, keys)
    return manifest


def this_machine() -> str:
    """The CPU architecture name used in ``compatible.architectures``."""
    return platform.machine()
