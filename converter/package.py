"""Packing a converted (or fallback ONNX) model into a signed bundle.

Delegates to :func:`edge_runtime.packaging.pack_model`, which hashes, records golden outputs
by running the packed model through the device's own backend, signs and writes atomically.
The converter adds the ONNX interface (names, order, shapes, layout), the quantization
report and golden inputs taken from the validation rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.bundle.budget import PRIMARY_ERROR_FACTOR
from edge_runtime.bundle.manifest import Manifest
from edge_runtime.packaging import DEFAULT_ATOL, PackRequest, VariantRequest, pack_model, round_up
from edge_runtime.spec.tensors import TensorSpec
from edge_runtime.trust.keys import PrivateKey

GOLDEN_ROWS = 4
# Golden rows beyond the first are kept only while the inputs stay under this many bytes: small
# models get inline golden data in the manifest, images a golden.npz of one or a few rows.
GOLDEN_INPUT_BYTES = 4 * 1024 * 1024


def golden_inputs(inputs: Sequence[np.ndarray], specs: Sequence[TensorSpec], rows: int = GOLDEN_ROWS) -> list[np.ndarray]:
    """The first few validation rows (the model's fixed batch, if it has one), at most GOLDEN_INPUT_BYTES."""
    fixed = [s.shape[0] for s in specs if s.shape and s.shape[0] != -1]
    per_row = sum(a[:1].nbytes for a in inputs)
    n = fixed[0] if fixed else max(1, min(rows, GOLDEN_INPUT_BYTES // max(per_row, 1)))
    return [np.ascontiguousarray(a[:n]) for a in inputs]


def stated_atol(outputs: Sequence[TensorSpec], max_error: float) -> float:
    """The self-test tolerance for a model whose validation error against onnxruntime was ``max_error``:
    that error plus the drift allowed between LiteRT builds and CPUs, rounded up."""
    drift = DEFAULT_ATOL  # the rule edge_runtime.packaging applies: 1e-4, or two steps of an integer output
    for s in outputs:
        if s.quantization is not None:
            drift = max(drift, 2.0 * s.quantization.scale)
    return round_up(max_error + drift)


def source_fields(model: Path, pinned: dict[str, Any] | None = None,
                  rewrites: Sequence[str] = ()) -> dict[str, Any]:
    """Provenance: the ONNX file the bundle was made from, the input shapes the converter pinned and
    what it rewrote in the graph before converting (a ZipMap stripped, converter/tabular.py)."""
    data = Path(model).read_bytes()
    source: dict[str, Any] = {"file": Path(model).name, "sha256": hashlib.sha256(data).hexdigest(), "length": len(data)}
    if pinned:
        source["pinned_inputs"] = pinned
    if rewrites:
        source["rewrites"] = list(rewrites)
    return {"source": source}


def pack_tflite(
    tflite: Path,
    *,
    source: Path,
    name: str,
    version: int,
    keys: Sequence[PrivateKey],
    out: Path,
    chunk_size: int,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    golden: Sequence[np.ndarray],
    validation: Sequence[np.ndarray] | None,
    max_error: float,
    quantization: dict[str, Any],
    architectures: Sequence[str],
    pinned: dict[str, Any] | None = None,
    profile_calls: Sequence[Sequence[np.ndarray]] | None = None,
    rewrites: Sequence[str] = (),
    variant: str | None = None,
    variants: Sequence[VariantRequest] = (),
    accuracy_budget: float | None = None,
    budget_factor: float | None = PRIMARY_ERROR_FACTOR,
    provenance: Path | None = None,
) -> Manifest:
    """Pack a converted TFLite file with the ONNX interface and the converter's report (and
    further ``variants``, each checked against ``source`` like the main file).

    The golden outputs are onnxruntime's (``source`` is the reference), so the device's
    self-test checks that it scores within the accepted error of the ONNX model. Models with
    a dynamic batch have that error re-measured on the validation rows by the device backend;
    a fixed-batch model states the converter's own measurement. With ``variants`` and no
    ``accuracy_budget``, the budget is relative to this model (``budget_factor``, see
    edge_runtime/bundle/budget.py); ``budget_factor=None`` signs none.
    """
    dynamic = all(s.shape and s.shape[0] == -1 for s in inputs)
    return pack_model(PackRequest(
        tflite,
        name=name,
        version=version,
        keys=keys,
        out=out,
        chunk_size=chunk_size,
        inputs=inputs,
        outputs=outputs,
        golden_inputs=golden,
        atol=None if dynamic else stated_atol(outputs, max_error),
        quantization=quantization,
        architectures=architectures,
        extra=source_fields(provenance or source, pinned, rewrites),  # the user's file, before any rewrite
        reference=source,
        validation_inputs=validation if dynamic and validation is not None else None,
        profile_calls=profile_calls,
        variant=variant if variants else None,
        variants=variants,
        accuracy_budget=accuracy_budget if variants else None,
        budget_factor=budget_factor,
    ))


def pack_onnx(
    model: Path,
    *,
    name: str,
    version: int,
    keys: Sequence[PrivateKey],
    out: Path,
    chunk_size: int,
    golden: Sequence[np.ndarray] | None,
    reason: str,
    report: dict[str, Any] | None,
    architectures: Sequence[str],
    profile_calls: Sequence[Sequence[np.ndarray]] | None = None,
    source: Path | None = None,
    rewrites: Sequence[str] = (),
    outputs: Sequence[TensorSpec] | None = None,
) -> Manifest:
    """Pack the ONNX model for the device's onnxruntime backend (``model`` as rewritten, ``source``
    the user's file when they differ)."""
    quantization: dict[str, Any] = {"mode": "onnx-fallback", "reason": reason}
    if report:
        quantization["report"] = report
    return pack_model(PackRequest(
        model,
        name=name,
        version=version,
        keys=keys,
        out=out,
        chunk_size=chunk_size,
        golden_inputs=golden,
        quantization=quantization,
        architectures=architectures,
        outputs=outputs,
        extra=source_fields(source or model, rewrites=rewrites),
        profile_calls=profile_calls,
    ))
