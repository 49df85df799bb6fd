"""LiteRT backend: ``ai_edge_litert`` (maintained), falling back to ``tflite_runtime``."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.bundle.manifest import Manifest
from edge_runtime.exceptions import DelegateError, InferenceError
from edge_runtime.inference.base import Backend
from edge_runtime.spec.delegates import DelegateSpec
from edge_runtime.spec.tensors import (
    Quantization,
    TensorSpec,
    kserve_datatype,
    named_specs,
    numpy_dtype,
    unit_axes_only,
)


def interpreter_class() -> Any:
    """The Interpreter class of whichever LiteRT package is installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError as exc:
            raise InferenceError(
                "no LiteRT interpreter installed: pip install ai-edge-litert (or tflite-runtime)"
            ) from exc
    return Interpreter


def _cpu_only_resolver() -> Any:
    """LiteRT's op resolver without default delegates (the ``cpu`` delegate: reference kernels)."""
    try:
        from ai_edge_litert.interpreter import OpResolverType
    except ImportError:
        from tflite_runtime.interpreter import OpResolverType
    return OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES


def make_interpreter(model: Path | bytes, num_threads: int = 1, delegate: DelegateSpec | None = None) -> Any:
    """A loaded, allocated interpreter for a .tflite file or its bytes, on ``delegate``
    (None or ``xnnpack``: LiteRT's default CPU path)."""
    cls = interpreter_class()
    kwargs: dict[str, Any] = {"num_threads": num_threads}
    if isinstance(model, bytes):
        kwargs["model_content"] = model
    else:
        kwargs["model_path"] = str(model)
    what = "the model" if isinstance(model, bytes) else Path(model).name
    if delegate is not None and delegate.name == "cpu":
        kwargs["experimental_op_resolver_type"] = _cpu_only_resolver()
    elif delegate is not None and not delegate.builtin:
        from edge_runtime.inference.delegates import open_external

        kwargs["experimental_delegates"] = [open_external(delegate)]
        try:
            interp = cls(**kwargs)  # the delegate's Prepare runs here
        except (ValueError, RuntimeError) as exc:
            detail = " ".join(str(exc).split())
            raise DelegateError(f"delegate '{delegate.name}' refused {what}: {detail}", "refused") from exc
        try:
            interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise DelegateError(f"delegate '{delegate.name}' cannot allocate {what}: {exc}", "failed") from exc
        return interp
    try:
        interp = cls(**kwargs)
    except (ValueError, RuntimeError) as exc:
        raise InferenceError(f"LiteRT cannot load {what}: {exc}") from exc
    try:
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        if not has_dynamic_inputs(interp):
            raise InferenceError(f"LiteRT cannot load {what}: {exc}") from exc
        # Allocation happens at the default shape, 1 for each dynamic dimension, which some graphs
        # refuse (a constant reshape into 4-sample frames: "XNNPack delegate failed to reshape").
        # LiteRTBackend resizes to the data's shape and allocates at its first call instead.
    return interp


def has_dynamic_inputs(interp: Any) -> bool:
    """Whether any input has a dynamic dimension (-1 in its shape signature)."""
    return any(-1 in [int(v) for v in d.get("shape_signature", ())] for d in interp.get_input_details())


def _clean_name(name: str) -> str:
    name = re.sub(r"^serving_default_", "", name)
    name = re.sub(r":\d+$", "", name)
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    return name or "tensor"


def _spec(detail: dict[str, Any], name: str | None) -> TensorSpec:
    dtype = np.dtype(detail["dtype"])
    shape = tuple(int(d) for d in detail.get("shape_signature", detail["shape"]))
    datatype = kserve_datatype(dtype)
    quant = None
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if np.issubdtype(dtype, np.integer) and scale:
        quant = Quantization(datatype, float(scale), int(zero_point))
        datatype = "FP32"
    return TensorSpec(name or _clean_name(detail["name"]), datatype, shape, quant)


def describe(path: Path, input_names: Sequence[str] = (), output_names: Sequence[str] = ()) -> tuple[
    list[TensorSpec], list[TensorSpec]
]:
    """Tensor specs of a .tflite file, by position, with optional caller names."""
    interp = make_interpreter(path)
    return named_specs(interp.get_input_details(), interp.get_output_details(), input_names, output_names, _spec)


class LiteRTBackend(Backend):
    """A TFLite model in a LiteRT interpreter; inputs and outputs mapped by position."""

    def __init__(
        self, manifest: Manifest, model: Path | bytes, num_threads: int = 1, delegate: DelegateSpec | None = None
    ) -> None:
        super().__init__(manifest)
        self._interp = make_interpreter(model, num_threads, delegate)
        self.delegate = "xnnpack" if delegate is None else delegate.name
        ins = self._interp.get_input_details()
        outs = self._interp.get_output_details()
        for side, specs, details in (("inputs", self.inputs, ins), ("outputs", self.outputs, outs)):
            if len(specs) != len(details):
                raise InferenceError(f"manifest lists {len(specs)} {side}, the model has {len(details)}")
            for pos, (spec, d) in enumerate(zip(specs, details)):
                want = numpy_dtype(spec.quantization.datatype if spec.quantization else spec.datatype)
                if np.dtype(d["dtype"]) != want:
                    raise InferenceError(
                        f"{side[:-1]} '{spec.name}': manifest says {want}, the model has {np.dtype(d['dtype'])}"
                    )
                model_shape = tuple(int(v) for v in d.get("shape_signature", d["shape"]))
                same = len(model_shape) == len(spec.shape) and all(
                    -1 in (m, w) or m == w for m, w in zip(model_shape, spec.shape))
                if side == "outputs" and not same and unit_axes_only(model_shape, spec.shape):
                    self._reshape[pos] = True  # e.g. onnx2tf turned [1, T] into [-1, 1, T]
                elif len(model_shape) != len(spec.shape):
                    raise InferenceError(
                        f"{side[:-1]} '{spec.name}': the manifest says shape {list(spec.shape)}, the model "
                        f"{list(model_shape)}"
                    )
        self._in_idx = [d["index"] for d in ins]
        self._out_idx = [d["index"] for d in outs]
        self._shapes = [tuple(int(v) for v in d["shape"]) for d in ins]  # ints: numpy scalars compare slowly
        if has_dynamic_inputs(self._interp):
            # Never allocated for real data yet (make_interpreter may have deferred it): the first
            # call resizes every input to its array's shape and allocates.
            self._shapes = [(-2,) for _ in ins]

    def _invoke(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        interp = self._interp
        resized = False
        for i, arr in enumerate(arrays):
            if arr.shape != self._shapes[i]:
                interp.resize_tensor_input(self._in_idx[i], arr.shape)
                self._shapes[i] = arr.shape
                resized = True
        if resized:
            interp.allocate_tensors()
        for idx, arr in zip(self._in_idx, arrays):
            interp.set_tensor(idx, arr)
        interp.invoke()
        return [interp.get_tensor(idx) for idx in self._out_idx]

    def close(self) -> None:
        """Drop the interpreter."""
        self._interp = None
