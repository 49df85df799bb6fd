"""onnxruntime backend, for bundles whose format is ``onnx`` (models LiteRT cannot run)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.bundle.manifest import Manifest
from edge_runtime.exceptions import InferenceError
from edge_runtime.inference.base import Backend
from edge_runtime.spec.tensors import TensorSpec, named_specs


class OnnxBackend(Backend):
    """An ONNX model in an onnxruntime session; inputs and outputs mapped by position."""

    def __init__(self, manifest: Manifest, model: Path | bytes, num_threads: int = 1) -> None:
        super().__init__(manifest)
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise InferenceError("this bundle needs onnxruntime: re-run device/install.sh --with-onnx, or pip install onnxruntime into this environment") from exc
        opts: Any = ort.SessionOptions()
        opts.intra_op_num_threads = num_threads
        opts.inter_op_num_threads = 1
        try:
            source = model if isinstance(model, bytes) else str(model)
            self._session = ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise InferenceError(f"onnxruntime cannot load the model: {exc}") from exc
        ins = self._session.get_inputs()
        outs = self._session.get_outputs()
        if len(ins) != len(self.inputs) or len(outs) != len(self.outputs):
            raise InferenceError(
                f"manifest lists {len(self.inputs)}/{len(self.outputs)} inputs/outputs, "
                f"the model has {len(ins)}/{len(outs)}"
            )
        self.delegate = "onnxruntime"
        self._in_names = [i.name for i in ins]
        self._out_names = [o.name for o in outs]

    def _invoke(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        try:
            result = self._session.run(self._out_names, dict(zip(self._in_names, arrays)))
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise InferenceError(f"onnxruntime failed: {exc}") from exc
        return [np.asarray(r) for r in result]


def describe_onnx(path: Path, input_names: Sequence[str] = (), output_names: Sequence[str] = ()) -> tuple[
    list[TensorSpec], list[TensorSpec]
]:
    """Tensor specs of an .onnx file as onnxruntime sees it (dynamic dims become -1)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise InferenceError("describing an ONNX model needs onnxruntime") from exc
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise InferenceError(f"onnxruntime cannot load {Path(path).name}: {exc}") from exc

    def spec(node: Any, name: str | None) -> TensorSpec:
        kind = node.type  # e.g. "tensor(float)"
        datatype = ORT_TYPES.get(kind)
        if datatype is None:
            raise InferenceError(f"tensor {node.name!r} has unsupported type {kind}")
        shape = tuple(d if isinstance(d, int) and d > 0 else -1 for d in node.shape)
        return TensorSpec(name or node.name, datatype, shape)

    return named_specs(session.get_inputs(), session.get_outputs(), input_names, output_names, spec)


ORT_TYPES = {
    "tensor(float)": "FP32",
    "tensor(float16)": "FP16",
    "tensor(double)": "FP64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL",
}
