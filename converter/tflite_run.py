"""Running converted models on the build host: LiteRT and onnxruntime, batched and timed.

The LiteRT runner feeds tensors by position, as the device backend does, with XNNPACK (the
device default) unless told otherwise; integer I/O is (de)quantized with the tensor's own
scale and zero point, as the manifest records them.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converter.exceptions import ConverterError
from edge_runtime.exceptions import InferenceError
from edge_runtime.spec.tensors import Quantization, TensorSpec, kserve_datatype, restore_shape

Runner = Callable[[Sequence[np.ndarray]], list[np.ndarray]]


def make_interpreter(model: bytes, delegates: bool = True, num_threads: int = 1) -> Any:
    """A LiteRT interpreter for ``model``; ``delegates=False`` uses the reference kernels only."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kind = OpResolverType.AUTO if delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    return Interpreter(model_content=model, num_threads=num_threads, experimental_op_resolver_type=kind)


def quantization_of(detail: dict[str, Any]) -> Quantization | None:
    """The per-tensor quantization of an integer tensor, or None for float tensors."""
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if np.issubdtype(dtype, np.integer) and scale:
        return Quantization(kserve_datatype(dtype), float(scale), int(zero_point))
    return None


class LiteRTRunner:
    """One interpreter; ``run`` takes and returns float arrays in position (= ONNX) order."""

    def __init__(self, model: bytes, delegates: bool = True, num_threads: int = 1,
                 outputs: Sequence[TensorSpec] | None = None, batch_dim: bool = False) -> None:
        """``outputs`` (the interface's specs) restore outputs that differ by axes of size 1, as the device
        does; ``batch_dim`` says that the first input's first dimension is the batch."""
        try:
            self.interp = make_interpreter(model, delegates, num_threads)
            self.interp.allocate_tensors()
        except (RuntimeError, ValueError) as exc:
            raise ConverterError(f"LiteRT cannot load the model: {exc}") from exc
        self.ins = list(self.interp.get_input_details())
        self.outs = list(self.interp.get_output_details())
        self.in_q = [quantization_of(d) for d in self.ins]
        self.out_q = [quantization_of(d) for d in self.outs]
        self.shapes = [tuple(int(x) for x in d["shape"]) for d in self.ins]
        self.out_shapes = [s.shape for s in outputs] if outputs is not None else None
        self.batch_dim = batch_dim

    def set_inputs(self, arrays: Sequence[np.ndarray]) -> None:
        """Resize if needed and copy the inputs in (quantizing integer inputs)."""
        resized = False
        for i, arr in enumerate(arrays):
            if arr.shape != self.shapes[i]:
                self.interp.resize_tensor_input(self.ins[i]["index"], arr.shape)
                self.shapes[i] = arr.shape
                resized = True
        if resized:
            try:
                self.interp.allocate_tensors()
            except (RuntimeError, ValueError) as exc:  # XNNPACK may refuse a shape only once it sees it
                raise ConverterError(f"LiteRT cannot run the model at shape {[list(a.shape) for a in arrays]}: {exc}") from exc
        for detail, q, arr in zip(self.ins, self.in_q, arrays):
            data = q.quantize(arr) if q is not None else arr
            self.interp.set_tensor(detail["index"], np.ascontiguousarray(data, dtype=detail["dtype"]))

    def get_outputs(self) -> list[np.ndarray]:
        """The outputs, dequantized (and in the interface's shapes, when given)."""
        out = []
        for i, (detail, q) in enumerate(zip(self.outs, self.out_q)):
            arr = self.interp.get_tensor(detail["index"])
            arr = q.dequantize(arr) if q is not None else np.array(arr)
            if self.out_shapes is not None:
                try:
                    arr = restore_shape(arr, self.out_shapes[i], self.shapes[0][0] if self.batch_dim else None)
                except InferenceError as exc:
                    raise ConverterError(f"output {i}: {exc}") from exc
            out.append(arr)
        return out

    def run(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One invocation."""
        self.set_inputs(arrays)
        try:
            self.interp.invoke()
        except RuntimeError as exc:
            raise ConverterError(f"LiteRT failed to run the model: {exc}") from exc
        return self.get_outputs()


class OnnxRunner:
    """onnxruntime on the original model (the reference), inputs and outputs in ONNX order."""

    def __init__(self, path: Path, num_threads: int = 0) -> None:
        import onnxruntime as ort

        opts: Any = ort.SessionOptions()
        opts.log_severity_level = 3  # exports that declare [1] for a batched output warn on every run
        if num_threads:
            opts.intra_op_num_threads = num_threads
            opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.in_names = [i.name for i in self.session.get_inputs()]
        self.out_names = [o.name for o in self.session.get_outputs()]

    def run(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One run."""
        return [np.asarray(r) for r in self.session.run(self.out_names, dict(zip(self.in_names, arrays)))]


def run_batched(run: Runner, inputs: Sequence[np.ndarray], batch_rows: int) -> list[np.ndarray]:
    """Run ``inputs`` in chunks of ``batch_rows`` rows and concatenate the outputs."""
    rows = inputs[0].shape[0]
    parts: list[list[np.ndarray]] = []
    for start in range(0, rows, batch_rows):
        parts.append(run([a[start : start + batch_rows] for a in inputs]))
    return [np.concatenate([p[k] for p in parts], axis=0) for k in range(len(parts[0]))]


def median_latency_ms(run: Runner, inputs: Sequence[np.ndarray], min_time_s: float = 0.25, min_runs: int = 15,
                      max_runs: int = 2000) -> float:
    """Median wall time of one call (set inputs + invoke + read outputs), after two warm-up calls."""
    run(inputs)
    run(inputs)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < min_time_s):
        t0 = time.perf_counter()
        run(inputs)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000.0
