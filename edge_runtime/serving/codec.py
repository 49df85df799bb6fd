"""KServe v2 infer requests and responses: JSON tensors and Triton's binary tensor extension.

Pure code: bytes in, arrays out (or arrays in, bytes out); every problem with a request
is an :class:`~edge_runtime.exceptions.InputError` whose message says what was expected
and what was found, so the HTTP layer can answer 400 and never 500.

Binary extension, as Triton does it: the body is a JSON header of
``Inference-Header-Content-Length`` bytes followed by the raw tensors, in the order the
inputs are listed, each little-endian and row-major, its length given by the input's
``parameters.binary_data_size``. Outputs are returned the same way when the request asks
for it (``parameters.binary_data_output`` for all, or ``binary_data`` per output).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from edge_runtime.bundle.manifest import Manifest
from edge_runtime.exceptions import InputError
from edge_runtime.spec.tensors import TensorSpec, numpy_dtype

JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
_FLOAT_KINDS = frozenset("fiu")
_INT_KINDS = frozenset("iu")
_FLOAT_LIMITS = {2: float(np.finfo(np.float16).max), 4: float(np.finfo(np.float32).max)}  # by item size


class Interface:
    """A model's inputs and outputs, prepared once per loaded version for fast request checks."""

    def __init__(self, manifest: Manifest) -> None:
        self.inputs: tuple[TensorSpec, ...] = manifest.inputs
        self.outputs: tuple[TensorSpec, ...] = manifest.outputs
        self.output_index = {s.name: i for i, s in enumerate(self.outputs)}
        self.input_dtypes = [numpy_dtype(s.datatype).newbyteorder("<") for s in self.inputs]
        self.output_dtypes = [numpy_dtype(s.datatype).newbyteorder("<") for s in self.outputs]
        # Requests can be merged along dimension 0 only when every tensor has a dynamic one.
        self.batchable = all(s.has_batch_dim for s in self.inputs + self.outputs)
        self.all_outputs = tuple(range(len(self.outputs)))
        self.all_json = (False,) * len(self.outputs)
        # name -> (position, spec, little-endian dtype, expected shape) for the decoder
        self.input_table = {
            s.name: (i, s, dt, s.shape) for i, (s, dt) in enumerate(zip(self.inputs, self.input_dtypes))
        }
        self.output_meta = [(s.name, s.datatype) for s in self.outputs]
        # Numbers one request carries: exactly this many without a batch dimension, this many
        # per row with one (bounds the JSON a request may hold before it is parsed).
        # A dynamic dimension past the batch has no size to count: such a model is bounded by
        # max_json_values alone (None), never by a product that counts the dimension as 1.
        dims = [d for s in self.inputs for d in (s.shape[1:] if self.batchable else s.shape)]
        self.values_per_request: int | None = (
            None if any(d < 0 for d in dims)
            else sum(_product(s.shape[1:] if self.batchable else s.shape) for s in self.inputs)
        )
        # What callers see of the inputs: equal signatures accept the same requests.
        self.input_signature = tuple((s.name, s.datatype, s.shape) for s in self.inputs)

    def metadata(self) -> dict[str, Any]:
        """The ``inputs``/``outputs`` part of the KServe model metadata."""
        return {
            "inputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in self.inputs],
            "outputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in self.outputs],
        }


@dataclass(slots=True)
class InferRequest:
    """A decoded infer request: input arrays in model order and how to answer it."""

    request_id: str | None
    arrays: list[np.ndarray]
    rows: int  # size of dimension 0 (the batch) when the model is batchable, else 1
    outputs: tuple[int, ...]  # indices of the outputs to return, in response order
    binary: tuple[bool, ...]  # per returned output: raw bytes (True) or JSON numbers


def _product(dims: tuple[int, ...] | list[int]) -> int:
    n = 1
    for d in dims:
        n *= max(d, 1)
    return n


JSON_SLACK_VALUES = 64  # per input: shape entries, parameters, ids; never near a real tensor's size


def json_values_problem(body: bytes | bytearray, json_length: int | None, iface: Interface, max_values: int) -> str | None:
    """Why the JSON part of ``body`` may hold too many values for ``iface``, or None.

    Checked before parsing: every JSON value after the first of its array or object follows a
    comma, so commas plus brackets plus one bound the count from above. A model without a batch
    dimension takes exactly its input size; a batchable one at most ``max_values``.
    """
    end = len(body) if json_length is None else json_length
    allowed = max_values
    if not iface.batchable and iface.values_per_request is not None:
        allowed = min(max_values, iface.values_per_request)
    allowed += JSON_SLACK_VALUES * max(1, len(iface.inputs))
    bound = body.count(b",", 0, end) + 1
    if bound <= allowed:  # the common case: one scan
        return None
    bound += body.count(b"[", 0, end) + body.count(b"{", 0, end)
    return (
        f"the JSON request holds up to {bound} values, the model takes at most {allowed} per request "
        f"(max_json_values {max_values}); send fewer rows per request or use binary tensors"
    )


def header_length(value: bytes | None, body_length: int) -> int | None:
    """Parse ``Inference-Header-Content-Length``; None when absent (the whole body is JSON)."""
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        raise InputError(f"Inference-Header-Content-Length: expected an integer, found {value[:32]!r}") from None
    if not 0 < n <= body_length:
        raise InputError(f"Inference-Header-Content-Length is {n}, the body has {body_length} bytes")
    return n


def _object(value: Any, what: str) -> dict[str, Any]:
    if type(value) is not dict:
        raise InputError(f"{what}: expected a JSON object, found {type(value).__name__}")
    return value


def _parameters(obj: dict[str, Any], what: str) -> dict[str, Any]:
    params = obj.get("parameters")
    if params is None:
        return {}
    return _object(params, f"{what} 'parameters'")


def _shape_error(spec: TensorSpec, value: Any) -> InputError:
    if type(value) is not list or not all(type(d) is int and d >= 0 for d in value):
        return InputError(f"input '{spec.name}': 'shape' must be a list of non-negative integers, found {value!r}")
    return InputError(f"input '{spec.name}': expected shape {list(spec.shape)}, found {value}")


def _json_array(data: Any, spec: TensorSpec, dtype: np.dtype[Any], shape: list[int], count: int) -> np.ndarray:
    try:
        arr = np.array(data)
    except (ValueError, TypeError) as exc:  # ragged nesting
        raise InputError(f"input '{spec.name}': 'data' is not a regular array of numbers: {exc}") from None
    kind = arr.dtype.kind
    target = dtype.kind
    if kind == "f" and target == "f" and arr.size == count:  # the common case, checked cheaply
        return _finite(dtype, spec, arr).reshape(shape)
    if kind not in "biuf":
        raise InputError(f"input '{spec.name}': expected {spec.datatype} values in 'data', found non-numeric values")
    if arr.size != count:
        raise InputError(f"input '{spec.name}': shape {shape} needs {count} values, 'data' has {arr.size}")
    if target == "f":
        if kind in _FLOAT_KINDS:
            return _finite(dtype, spec, arr).reshape(shape)
        ok = False
    elif target == "b":
        ok = kind == "b"
    else:
        ok = kind in _INT_KINDS
        if ok:
            info = np.iinfo(dtype)
            if int(arr.min()) < info.min or int(arr.max()) > info.max:
                raise InputError(
                    f"input '{spec.name}': {spec.datatype} values must lie in [{info.min}, {info.max}], "
                    f"found [{arr.min()}, {arr.max()}]"
                )
    if not ok:
        if kind == "f" and target in _INT_KINDS and bool(np.all(np.floor(arr) == arr)):
            # Integers beyond 64 bits reach here as floats (the JSON parser's choice).
            info = np.iinfo(dtype)
            raise InputError(
                f"input '{spec.name}': {spec.datatype} values must lie in [{info.min}, {info.max}], "
                f"found [{arr.min():.6g}, {arr.max():.6g}]"
            )
        found = "booleans" if kind == "b" else "non-integer numbers"
        raise InputError(f"input '{spec.name}': expected {spec.datatype} values in 'data', found {found}")
    return arr.astype(dtype, copy=False).reshape(shape)


def _finite(converted_dtype: np.dtype[Any], spec: TensorSpec, source: np.ndarray) -> np.ndarray:
    """``source`` as ``converted_dtype``, refusing values the float type cannot hold (they would
    become inf and answer null). Checked before the cast, so numpy warns of nothing."""
    if converted_dtype.itemsize < 8 and source.size:
        limit = _FLOAT_LIMITS[converted_dtype.itemsize]
        high, low = source.max(), source.min()
        if high > limit or low < -limit:
            worst = high if high > limit else low
            raise InputError(
                f"input '{spec.name}': {spec.datatype} values must lie within ±{limit:.6g}, found {float(worst):.6g}"
            )
    return source.astype(converted_dtype)


def batch_rows(name: str, shape: list[int], rows: int) -> int:
    """The batch size shared by all inputs so far (-1: none yet); raise when ``shape`` disagrees."""
    if rows == -1:
        return shape[0]
    if shape[0] != rows:
        raise InputError(f"input '{name}': batch dimension is {shape[0]}, other inputs have {rows}")
    return rows


def check_all_given(iface: Interface, arrays: list[Any], given: int) -> None:
    """Raise naming the missing inputs unless each of the ``given`` inputs filled one slot."""
    if given != len(arrays):
        missing = [s.name for s, a in zip(iface.inputs, arrays) if a is None]
        raise InputError(f"missing input(s) {missing}; the model needs {[s.name for s in iface.inputs]}")


def decode_request(body: bytes | bytearray, json_length: int | None, iface: Interface) -> InferRequest:
    """Decode an infer request body (JSON, or a JSON header of ``json_length`` bytes plus binary tensors).

    This runs for every request on the event loop, so the common path avoids helper
    calls and string formatting; every message is built only when raising.
    """
    try:
        obj = orjson.loads(body if json_length is None else memoryview(body)[:json_length])
    except orjson.JSONDecodeError as exc:
        raise InputError(f"request body is not valid JSON: {exc}") from None
    if type(obj) is not dict:
        raise InputError(f"request: expected a JSON object, found {type(obj).__name__}")
    request_id = obj.get("id")
    if request_id is not None and type(request_id) is not str:
        raise InputError(f"request 'id' must be a string, found {type(request_id).__name__}")
    raw_inputs = obj.get("inputs")
    if type(raw_inputs) is not list or not raw_inputs:
        raise InputError("request: 'inputs' must be a non-empty list of tensors")
    table = iface.input_table
    arrays: list[Any] = [None] * len(table)
    offset = json_length or 0
    rows = -1
    batchable = iface.batchable
    for t in raw_inputs:
        if type(t) is not dict:
            raise InputError(f"request input: expected a JSON object, found {type(t).__name__}")
        name = t.get("name")
        entry = table.get(name) if type(name) is str else None
        if entry is None:
            raise InputError(f"unknown input {name!r}; the model's inputs are {[s.name for s in iface.inputs]}")
        index, spec, dtype, want = entry
        if arrays[index] is not None:
            raise InputError(f"input '{name}' is given twice")
        if t.get("datatype") != spec.datatype:
            raise InputError(f"input '{name}': expected datatype {spec.datatype}, found {t.get('datatype')!r}")
        shape = t.get("shape")
        if type(shape) is not list or len(shape) != len(want):
            raise _shape_error(spec, shape)
        count = 1
        for d, w in zip(shape, want):
            if type(d) is not int or d < 0 or (w != -1 and d != w):
                raise _shape_error(spec, shape)
            count *= d
        if count == 0:
            raise InputError(f"input '{name}': shape {shape} holds no elements")
        params = t.get("parameters")
        size = None if params is None else _object(params, f"input '{name}' 'parameters'").get("binary_data_size")
        if size is None:
            if "data" not in t:
                raise InputError(f"input '{name}': needs 'data' or parameters.binary_data_size")
            arr = _json_array(t["data"], spec, dtype, shape, count)
        else:
            if "data" in t:
                raise InputError(f"input '{name}': has both 'data' and binary_data_size")
            if json_length is None:
                raise InputError(f"input '{name}': binary_data_size needs the Inference-Header-Content-Length header")
            if type(size) is not int or size != count * dtype.itemsize:
                raise InputError(
                    f"input '{name}': shape {shape} of {spec.datatype} needs binary_data_size "
                    f"{count * dtype.itemsize}, found {size!r}"
                )
            if offset + size > len(body):
                raise InputError(
                    f"input '{name}': binary data ends at byte {offset + size}, the body has only {len(body)} bytes"
                )
            arr = np.frombuffer(body, dtype=dtype, count=count, offset=offset).reshape(shape)
            offset += size
        if batchable:
            rows = batch_rows(spec.name, shape, rows)
        arrays[index] = arr
    if json_length is not None and offset != len(body):
        raise InputError(f"binary tensors fill {offset - json_length} bytes, the body carries {len(body) - json_length}")
    check_all_given(iface, arrays, len(raw_inputs))
    if "outputs" not in obj and "parameters" not in obj:
        return InferRequest(request_id, arrays, max(rows, 1), iface.all_outputs, iface.all_json)
    outputs, binary = _requested_outputs(obj, iface)
    return InferRequest(request_id, arrays, max(rows, 1), outputs, binary)


def _requested_outputs(obj: dict[str, Any], iface: Interface) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    params = _parameters(obj, "request")
    all_binary = params.get("binary_data_output", False)
    if type(all_binary) is not bool:
        raise InputError(f"parameters.binary_data_output must be true or false, found {all_binary!r}")
    raw = obj.get("outputs")
    if raw is None:
        return iface.all_outputs, (all_binary,) * len(iface.outputs)
    if type(raw) is not list:
        raise InputError("request: 'outputs' must be a list")
    indices: list[int] = []
    binary: list[bool] = []
    for item in raw:
        o = _object(item, "requested output")
        name = o.get("name")
        index = iface.output_index.get(name) if type(name) is str else None
        if index is None:
            raise InputError(f"unknown output {name!r}; the model's outputs are {[s.name for s in iface.outputs]}")
        p = _parameters(o, f"output '{name}'")
        if p.get("classification"):
            raise InputError(f"output '{name}': the classification extension is not supported")
        b = p.get("binary_data", all_binary)
        if type(b) is not bool:
            raise InputError(f"output '{name}': binary_data must be true or false, found {b!r}")
        indices.append(index)
        binary.append(b)
    if not indices:
        return iface.all_outputs, (all_binary,) * len(iface.outputs)
    return tuple(indices), tuple(binary)


def output_items(
    request: InferRequest, iface: Interface, results: Sequence[np.ndarray]
) -> Iterator[tuple[str, str, np.ndarray, bytes | None]]:
    """The outputs a request asked for, in its order: name, datatype, array and, for one sent as
    raw bytes (HTTP binary data, gRPC raw contents), those bytes, little-endian."""
    meta, dtypes = iface.output_meta, iface.output_dtypes
    for index, binary in zip(request.outputs, request.binary):
        name, datatype = meta[index]
        arr = results[index]
        yield name, datatype, arr, np.ascontiguousarray(arr, dtype=dtypes[index]).tobytes() if binary else None


def encode_response(
    model_name: str,
    model_version: str,
    request: InferRequest,
    iface: Interface,
    results: Sequence[np.ndarray],
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the length of its JSON header."""
    outs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, datatype, arr, raw in output_items(request, iface, results):
        if raw is not None:
            outs.append({"name": name, "datatype": datatype, "shape": list(arr.shape),
                         "parameters": {"binary_data_size": len(raw)}})
            blobs.append(raw)
        else:
            outs.append({"name": name, "datatype": datatype, "shape": list(arr.shape), "data": json_data(arr)})
    resp: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": outs}
    if request.request_id is not None:
        resp["id"] = request.request_id
    head = orjson.dumps(resp, option=JSON_OPTIONS)
    if not blobs:
        return head, None
    return b"".join([head, *blobs]), len(head)


def json_data(arr: np.ndarray) -> np.ndarray:
    """A flat array orjson can write; float32 values keep exactly their float32 precision."""
    if arr.dtype.char == "f" and arr.flags.c_contiguous:
        return arr.reshape(-1)
    if arr.dtype == np.float16:
        arr = arr.astype(np.float32)  # exact: every float16 is a float32
    elif not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return np.ascontiguousarray(arr).reshape(-1)


def error_body(message: str) -> bytes:
    """``{"error": message}``."""
    return orjson.dumps({"error": message})
