"""The inference backend interface: one loaded model, arrays in and out in manifest order.

A backend owns one interpreter. It is not thread-safe: the serving layer gives each
backend instance to exactly one worker thread (LiteRT interpreters corrupt their inputs
when shared, see FACTS.md). The concrete backends (``litert``, ``onnx``) import this module;
``backend`` (the factory that picks one) imports them: nothing here imports back.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np

from edge_runtime.bundle.manifest import Manifest
from edge_runtime.exceptions import InputError
from edge_runtime.spec.delegates import Skipped
from edge_runtime.spec.tensors import TensorSpec, numpy_dtype, restore_shape


class Backend(abc.ABC):
    """One loaded model. ``run`` takes and returns arrays in manifest order and types."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.inputs: tuple[TensorSpec, ...] = manifest.inputs
        self.outputs: tuple[TensorSpec, ...] = manifest.outputs
        self._in_dtypes = [numpy_dtype(s.datatype) for s in self.inputs]
        # Outputs whose model shape differs from the manifest's by axes of size 1 (set by the backend).
        self._reshape = [False] * len(self.outputs)
        # What runs the model ("xnnpack", "cpu", "onnxruntime" or an external delegate's name) and
        # the delegates tried before it, with the reason each was skipped (set by load_backend).
        self.delegate = "cpu"
        self.skipped: tuple[Skipped, ...] = ()

    @abc.abstractmethod
    def _invoke(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run the interpreter on arrays already in the interpreter's types."""

    def run(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Score one batch: inputs in manifest order and declared datatypes."""
        if len(arrays) != len(self.inputs):
            raise InputError(f"expected {len(self.inputs)} inputs, found {len(arrays)}")
        model_inputs = []
        for spec, dtype, arr in zip(self.inputs, self._in_dtypes, arrays):
            if arr.dtype != dtype:
                arr = arr.astype(dtype)
            spec.check(arr)
            if spec.quantization is not None:
                try:
                    arr = spec.quantization.quantize(arr)
                except InputError as exc:
                    raise InputError(f"input '{spec.name}': {exc}") from exc
            model_inputs.append(arr)
        results = self._invoke(model_inputs)
        out = []
        for spec, reshape, arr in zip(self.outputs, self._reshape, results):
            if spec.quantization is not None:
                arr = spec.quantization.dequantize(arr)
            if reshape:
                batch = model_inputs[0].shape[0] if self.inputs[0].has_batch_dim else None
                arr = restore_shape(arr, spec.shape, batch)
            out.append(arr)
        return out

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the interpreter."""
