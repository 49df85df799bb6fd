"""Match a converted TFLite model's inputs and outputs to the ONNX model's, and fix the order.

onnx2tf names tensors differently in each variant (``serving_default_in_000:0``,
``in_000``, ``PartitionedCall:1`` ...), some variants carry no signature, and the order of
``get_input_details()``/``get_output_details()`` need not be the ONNX order (TensorFlow
sorts signature keys; outputs often come back reversed). The device backend maps tensors
by position, so the converter:

1. proposes a mapping from signature names, then tensor names, then position;
2. keeps only pairings whose dtype and shape fit (the ONNX shape, -1 for dynamic);
3. when several pairings fit, runs the model on probe rows and keeps the one whose outputs
   agree with onnxruntime (the proposal wins ties);
4. rewrites the model's input/output index lists in place so that position = ONNX order.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from converter.exceptions import InterfaceError
from converter.tflite_run import make_interpreter, quantization_of
from edge_runtime.exceptions import InferenceError
from edge_runtime.spec.tensors import TensorSpec, kserve_datatype, numpy_dtype, restore_shape, unit_axes_only

MAX_CANDIDATES = 120
TIE_RATIO = 0.5  # another pairing must halve the proposal's error to replace it


@dataclass(frozen=True)
class Matched:
    """A TFLite model whose I/O positions now follow the ONNX order, and its manifest specs."""

    tflite: bytes
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    method: str
    reordered: bool


def _fits(onnx: TensorSpec, detail: dict[str, Any], output: bool = False) -> bool:
    dims = tuple(int(d) for d in detail.get("shape_signature", detail["shape"]))
    same = len(dims) == len(onnx.shape) and all(want in (-1, got) or got == -1 for want, got in zip(onnx.shape, dims))
    # An output may differ by axes of size 1 (same element order): the device reshapes it back.
    if not same and not (output and unit_axes_only(dims, onnx.shape)):
        return False
    got = np.dtype(detail["dtype"])
    want = numpy_dtype(onnx.datatype)
    return bool(got == want or (np.issubdtype(want, np.floating) and np.issubdtype(got, np.integer) and quantization_of(detail)))


def _clean(name: str) -> str:
    name = name.split(":")[0]
    return name[len("serving_default_"):] if name.startswith("serving_default_") else name


def _proposal(names: Sequence[str], details: Sequence[dict[str, Any]], signature: dict[str, int] | None) -> tuple[list[int], str]:
    """For each ONNX position, a TFLite position, with how it was found."""
    by_index = {d["index"]: pos for pos, d in enumerate(details)}
    if signature and set(names) <= set(signature):
        return [by_index[signature[n]] for n in names], "signature names"
    cleaned = [_clean(d["name"]) for d in details]
    if len(set(cleaned)) == len(cleaned) and set(names) <= set(cleaned):
        return [cleaned.index(n) for n in names], "tensor names"
    return list(range(len(details))), "position"


def _candidates(onnx: Sequence[TensorSpec], details: Sequence[dict[str, Any]], first: list[int],
                output: bool = False) -> list[list[int]]:
    """Every one-to-one pairing that fits (the proposal first), capped at MAX_CANDIDATES."""
    fits = [[j for j, d in enumerate(details) if _fits(s, d, output)] for s in onnx]
    out: list[list[int]] = []
    if all(first[i] in fits[i] for i in range(len(onnx))):
        out.append(first)
    for combo in itertools.product(*fits):
        if len(set(combo)) == len(combo) and list(combo) != first:
            out.append(list(combo))
            if len(out) >= MAX_CANDIDATES:
                break
    return out


def _side_error(reference: np.ndarray, got: np.ndarray) -> float:
    if reference.shape != got.shape:
        return float("inf")
    ref = reference.astype(np.float64)
    scale = float(np.mean(np.abs(ref))) + 1e-12
    return float(np.mean(np.abs(got.astype(np.float64) - ref))) / scale


def _restored(arr: np.ndarray, spec: TensorSpec, inputs: Sequence[TensorSpec], probe: Sequence[np.ndarray]) -> np.ndarray:
    """A TFLite output in the ONNX shape, when it differs only by axes of size 1 (else as it is)."""
    batch = probe[0].shape[0] if inputs[0].has_batch_dim else None
    try:
        return restore_shape(arr, spec.shape, batch)
    except InferenceError:
        return arr


def _run(interp: Any, in_details: Sequence[dict[str, Any]], out_details: Sequence[dict[str, Any]],
         in_order: Sequence[int], specs: Sequence[TensorSpec], probe: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run with ONNX input i fed to TFLite input ``in_order[i]``; outputs in TFLite order, dequantized."""
    for i, pos in enumerate(in_order):
        interp.resize_tensor_input(in_details[pos]["index"], probe[i].shape)
    interp.allocate_tensors()
    for i, pos in enumerate(in_order):
        detail = in_details[pos]
        arr = probe[i]
        q = quantization_of(detail)
        if q is not None:
            arr = q.quantize(arr)
        interp.set_tensor(detail["index"], np.ascontiguousarray(arr, dtype=detail["dtype"]))
    interp.invoke()
    outs = []
    for detail in out_details:
        arr = interp.get_tensor(detail["index"])
        q = quantization_of(detail)
        outs.append(q.dequantize(arr) if q is not None else arr)
    return outs


def _signature(interp: Any) -> tuple[dict[str, int] | None, dict[str, int] | None]:
    keys = list(interp.get_signature_list())
    if len(keys) != 1:
        return None, None
    runner = interp.get_signature_runner(keys[0])
    ins = {k: int(v["index"]) for k, v in runner.get_input_details().items()}
    outs = {k: int(v["index"]) for k, v in runner.get_output_details().items()}
    return ins, outs


def reorder_io(model: bytes, inputs: Sequence[int], outputs: Sequence[int]) -> bytes:
    """Rewrite subgraph 0's input and output tensor-index lists to the given lists.

    Only the order of two int32 vectors changes (same length, same members), so the bytes are
    patched in place; everything else in the flatbuffer stays byte-identical.
    """
    from ai_edge_litert import schema_py_generated as schema

    buf = bytearray(model)
    sub = schema.Model.GetRootAs(buf, 0).Subgraphs(0)
    for field_offset, values in ((6, inputs), (8, outputs)):  # SubGraph.inputs, SubGraph.outputs
        tab = sub._tab  # the generated accessors expose no vector positions
        o = tab.Offset(field_offset)
        if o == 0 or tab.VectorLen(o) != len(values):
            raise InterfaceError("the TFLite model's input/output lists are not where the schema says")
        start = tab.Vector(o)
        current = sorted(struct.unpack_from(f"<{len(values)}i", buf, start))
        if current != sorted(values):
            raise InterfaceError("reordering must keep the same input/output tensors")
        struct.pack_into(f"<{len(values)}i", buf, start, *values)
    return bytes(buf)


def _spec(onnx: TensorSpec, detail: dict[str, Any]) -> TensorSpec:
    q = quantization_of(detail)
    if q is None and kserve_datatype(np.dtype(detail["dtype"])) != onnx.datatype:
        raise InterfaceError(
            f"'{onnx.name}': the ONNX model says {onnx.datatype}, the TFLite model has "
            f"{kserve_datatype(np.dtype(detail['dtype']))}"
        )
    return TensorSpec(onnx.name, onnx.datatype, onnx.shape, q)


def _first_line(exc: BaseException) -> str:
    """LiteRT's messages run over many lines (and advice about the Flex delegate): the first says it."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    if "Select TensorFlow op" in str(exc):
        first = "it needs TensorFlow (Flex) ops, which LiteRT on a device does not have"
    return first


def _describe(details: Sequence[dict[str, Any]]) -> str:
    return ", ".join(f"{d['name']} {np.dtype(d['dtype'])} {[int(x) for x in d.get('shape_signature', d['shape'])]}" for d in details)


def match_interface(
    model: bytes,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    onnx2tf_inputs: Sequence[str],
    onnx2tf_outputs: Sequence[str],
    probe: Sequence[np.ndarray],
    reference: Sequence[np.ndarray],
) -> Matched:
    """Map ``model``'s tensors onto the ONNX interface and put them in ONNX order.

    ``probe`` are a few input rows in ONNX order and ``reference`` onnxruntime's outputs for them.
    """
    try:
        interp = make_interpreter(model, delegates=False)  # the reference kernels load whatever XNNPACK refuses
        interp.allocate_tensors()
    except (RuntimeError, ValueError) as exc:
        raise InterfaceError(f"LiteRT cannot load the converted model: {_first_line(exc)}") from exc
    in_details = list(interp.get_input_details())
    out_details = list(interp.get_output_details())
    for side, onnx, details in (("inputs", inputs, in_details), ("outputs", outputs, out_details)):
        if len(onnx) != len(details):
            raise InterfaceError(
                f"the ONNX model has {len(onnx)} {side} ({', '.join(s.name for s in onnx)}), the TFLite model "
                f"{len(details)} ({_describe(details)})"
            )
    sig_in, sig_out = _signature(interp)
    in_first, in_how = _proposal(onnx2tf_inputs, in_details, sig_in)
    out_first, out_how = _proposal(onnx2tf_outputs, out_details, sig_out)
    in_cands = _candidates(inputs, in_details, in_first)
    out_cands = _candidates(outputs, out_details, out_first, output=True)
    if not in_cands:
        raise InterfaceError(
            "the TFLite inputs do not fit the ONNX ones (onnx2tf changed a shape or layout): ONNX "
            f"{[(s.name, s.datatype, list(s.shape)) for s in inputs]}, TFLite {_describe(in_details)}"
        )
    if not out_cands:
        raise InterfaceError(
            "the TFLite outputs do not fit the ONNX ones (onnx2tf changed a shape or layout): ONNX "
            f"{[(s.name, s.datatype, list(s.shape)) for s in outputs]}, TFLite {_describe(out_details)}"
        )
    in_order, out_order = in_cands[0], out_cands[0]
    method = in_how if in_how == out_how else f"{in_how} / {out_how}"
    if len(in_cands) > 1 or len(out_cands) > 1:
        best: tuple[float, list[int], list[int]] | None = None
        for cand_in in in_cands:
            try:
                got = _run(interp, in_details, out_details, cand_in, inputs, probe)
            except (RuntimeError, ValueError) as exc:
                raise InterfaceError(f"LiteRT cannot run the converted model: {_first_line(exc)}") from exc
            for cand_out in out_cands:
                err = sum(_side_error(reference[k], _restored(got[pos], outputs[k], inputs, probe))
                          for k, pos in enumerate(cand_out))
                if best is None or err < best[0] * TIE_RATIO or (best[0] == float("inf") and err < best[0]):
                    best = (err, cand_in, cand_out)
        assert best is not None
        if (best[1], best[2]) != (in_order, out_order):
            method = "probe runs against onnxruntime"
        in_order, out_order = best[1], best[2]
    reordered = in_order != list(range(len(in_details))) or out_order != list(range(len(out_details)))
    if reordered:
        model = reorder_io(
            model, [in_details[p]["index"] for p in in_order], [out_details[p]["index"] for p in out_order]
        )
        interp = make_interpreter(model, delegates=False)
        in_details = list(interp.get_input_details())
        out_details = list(interp.get_output_details())
    else:
        in_details = [in_details[p] for p in in_order]
        out_details = [out_details[p] for p in out_order]
    return Matched(
        model,
        tuple(_spec(s, d) for s, d in zip(inputs, in_details)),
        tuple(_spec(s, d) for s, d in zip(outputs, out_details)),
        method,
        reordered,
    )
