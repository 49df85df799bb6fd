"""KServe v2 datatypes, numpy dtypes, tensor specs and (de)quantization."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from edge_runtime.exceptions import InferenceError, InputError, ManifestError

KSERVE_TO_NUMPY: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
NUMPY_TO_KSERVE: dict[Any, str] = {np.dtype(v): k for k, v in KSERVE_TO_NUMPY.items()}
T = TypeVar("T")  # a runtime's own description of one tensor
INTEGER_TYPES = frozenset({"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"})


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """The numpy dtype of a KServe datatype name."""
    try:
        return np.dtype(KSERVE_TO_NUMPY[datatype])
    except KeyError:
        raise InputError(f"unsupported datatype {datatype!r}; expected one of {sorted(KSERVE_TO_NUMPY)}") from None


def kserve_datatype(dtype: Any) -> str:
    """The KServe datatype name of a numpy dtype."""
    try:
        return NUMPY_TO_KSERVE[np.dtype(dtype)]
    except KeyError:
        raise InputError(f"unsupported numpy dtype {np.dtype(dtype)}") from None


@dataclass(frozen=True)
class Quantization:
    """How a float tensor maps to the interpreter's integer tensor: real = scale * (q - zero_point)."""

    datatype: str
    scale: float
    zero_point: int

    def quantize(self, real: np.ndarray) -> np.ndarray:
        """Float values to the integer type, rounded and clipped."""
        dtype = numpy_dtype(self.datatype)
        info = np.iinfo(dtype)
        q = np.round(np.asarray(real, dtype=np.float64) / self.scale) + self.zero_point
        if np.isnan(q).any():  # NaN has no integer value: refuse rather than feed garbage
            raise InputError(f"input holds NaN, which the model's {self.datatype} input cannot represent")
        return np.clip(q, info.min, info.max).astype(dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        """Integer values to float32."""
        return ((q.astype(np.float32) - np.float32(self.zero_point)) * np.float32(self.scale)).astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        """The manifest form."""
        return {"datatype": self.datatype, "scale": self.scale, "zero_point": self.zero_point}


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as callers see it: KServe name, datatype and shape (-1 = dynamic).

    ``quantization`` is set when the interpreter's tensor is integer while callers use
    ``datatype`` (float): the backend converts on the way in and out.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    quantization: Quantization | None = None

    @property
    def has_batch_dim(self) -> bool:
        """True when the first dimension is dynamic, so requests can be merged along it."""
        return len(self.shape) > 0 and self.shape[0] == -1

    def to_json(self) -> dict[str, Any]:
        """The manifest form."""
        out: dict[str, Any] = {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}
        if self.quantization is not None:
            out["quantization"] = self.quantization.to_json()
        return out

    def check(self, arr: np.ndarray, *, where: str = "") -> None:
        """Raise InputError unless ``arr`` fits this spec's rank and fixed dimensions."""
        label = f"{where}input '{self.name}'"
        if arr.ndim != len(self.shape):
            raise InputError(f"{label}: expected shape {list(self.shape)}, found {list(arr.shape)} (rank {arr.ndim})")
        for i, (want, got) in enumerate(zip(self.shape, arr.shape)):
            if want != -1 and want != got:
                raise InputError(f"{label}: expected shape {list(self.shape)}, found {list(arr.shape)} (dimension {i})")


def fits(shape: tuple[int, ...], dims: tuple[int, ...]) -> bool:
    """True when concrete ``dims`` fit ``shape`` (same rank, -1 matches anything)."""
    return len(shape) == len(dims) and all(w == -1 or w == g for w, g in zip(shape, dims))


def unit_axes_only(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """True when shapes ``a`` and ``b`` (-1 = dynamic) can differ only by axes of size 1.

    Such tensors hold their elements in the same order, so one is a reshape of the other
    (``[1, T]`` and ``[-1, 1, T]``; ``[1, 1000, 1, 1]`` and ``[1, 1, 1, 1000]``).
    """
    memo: dict[tuple[int, int], bool] = {}

    def match(i: int, j: int) -> bool:
        if (i, j) in memo:
            return memo[(i, j)]
        ok = (i == len(a) and j == len(b)) or (
            (i < len(a) and a[i] in (1, -1) and match(i + 1, j))
            or (j < len(b) and b[j] in (1, -1) and match(i, j + 1))
            or (i < len(a) and j < len(b) and (a[i] == b[j] or -1 in (a[i], b[j])) and match(i + 1, j + 1))
        )
        memo[(i, j)] = ok
        return ok

    return match(0, 0)


def restore_shape(arr: np.ndarray, shape: tuple[int, ...], batch: int | None) -> np.ndarray:
    """``arr`` reshaped to ``shape`` (the interface's form, -1 = dynamic) when the two differ only by
    axes of size 1; ``batch`` fills a dynamic first dimension. Raises InferenceError otherwise."""
    if fits(shape, arr.shape):
        return arr
    core = [d for d in arr.shape if d != 1]
    target: list[int] = []
    for i, want in enumerate(shape):
        later_fixed = sum(1 for d in shape[i + 1 :] if d > 1)
        if want > 1:
            if not core or core[0] != want:
                break
            target.append(core.pop(0))
        elif want == 1:
            target.append(1)
        elif i == 0 and batch is not None:
            if batch != 1:
                if not core or core[0] != batch:
                    break
                core.pop(0)
            target.append(batch)
        elif len(core) > later_fixed:
            target.append(core.pop(0))
        else:
            target.append(1)
    else:
        if not core and int(np.prod(target, dtype=np.int64)) == arr.size:
            return arr.reshape(target)
    raise InferenceError(f"the model produced shape {list(arr.shape)}, which does not fit {list(shape)}")


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ManifestError(f"{what}: expected an integer, found {value!r}")
    return value


def _num(value: Any, what: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ManifestError(f"{what}: expected a number, found {value!r}")
    return float(value)


def parse_tensor_spec(obj: Any, what: str) -> TensorSpec:
    """Validate the manifest form of a tensor spec."""
    if not isinstance(obj, dict):
        raise ManifestError(f"{what}: expected an object, found {type(obj).__name__}")
    name = obj.get("name")
    if not isinstance(name, str) or not name or len(name) > 256:
        raise ManifestError(f"{what}: 'name' must be a non-empty string of at most 256 characters")
    datatype = obj.get("datatype")
    if datatype not in KSERVE_TO_NUMPY:
        raise ManifestError(f"{what} '{name}': datatype {datatype!r} is not one of {sorted(KSERVE_TO_NUMPY)}")
    shape = obj.get("shape")
    if not isinstance(shape, list) or len(shape) > 8:
        raise ManifestError(f"{what} '{name}': 'shape' must be a list of at most 8 integers")
    dims = tuple(_int(d, f"{what} '{name}' shape") for d in shape)
    if any(d < -1 or d == 0 for d in dims):
        raise ManifestError(f"{what} '{name}': dimensions must be positive or -1, found {list(dims)}")
    quant = None
    q = obj.get("quantization")
    if q is not None:
        if not isinstance(q, dict):
            raise ManifestError(f"{what} '{name}': 'quantization' must be an object")
        qtype = q.get("datatype")
        if qtype not in INTEGER_TYPES:
            raise ManifestError(f"{what} '{name}': quantized datatype {qtype!r} is not an integer type")
        scale = _num(q.get("scale"), f"{what} '{name}' quantization scale")
        if not scale > 0:
            raise ManifestError(f"{what} '{name}': quantization scale must be > 0, found {scale}")
        quant = Quantization(qtype, scale, _int(q.get("zero_point"), f"{what} '{name}' zero_point"))
    return TensorSpec(name, datatype, dims, quant)


def named_specs(
    inputs: Sequence[T], outputs: Sequence[T], input_names: Sequence[str], output_names: Sequence[str],
    spec: Callable[[T, str | None], TensorSpec],
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """A model's input and output specs by position, from what its runtime describes (``spec``
    of one tensor and the caller's name for it, or None); names, when given, name every tensor."""
    for given, found, side in ((input_names, inputs, "input"), (output_names, outputs, "output")):
        if given and len(given) != len(found):
            raise InferenceError(f"model has {len(found)} {side}s, {len(given)} names given")
    return (
        [spec(t, input_names[i] if input_names else None) for i, t in enumerate(inputs)],
        [spec(t, output_names[i] if output_names else None) for i, t in enumerate(outputs)],
    )
