"""The KServe v2 / Open Inference Protocol gRPC endpoint (``inference.GRPCInferenceService``).

It runs with ``grpc.aio`` on the daemon's own event loop, next to the HTTP server, and
calls the same :class:`~edge_runtime.serving.app.App` methods as the HTTP infer path: the
same loaded versions, routing (``model_version``, A/B weights, shadow), executors and
batching queues, statistics and Prometheus metrics. Cheap models therefore still run
inline on the loop, and a request never waits between picking its version and being
handed to that version's executor.

RPCs: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata and ModelInfer;
any other method of the service answers UNIMPLEMENTED. Requests arrive as bytes and are
parsed here, so a malformed message is INVALID_ARGUMENT rather than grpc's own INTERNAL.

Status codes: INVALID_ARGUMENT for a request that does not fit the model (the same
messages as HTTP 400), NOT_FOUND for an unknown model or a version not loaded,
UNAVAILABLE for a full queue, a model with no version loaded or a version being
unloaded; INTERNAL only when a backend fails on a request that passed every check.
Handlers raise the project's errors; :data:`GRPC_STATUS` turns them into codes once, in
the wrapper every RPC goes through.
A message over ``[server] max_request_bytes`` is refused by grpc with RESOURCE_EXHAUSTED.

Tensors: ``raw_input_contents`` (one little-endian, row-major buffer per input, in the
order of ``inputs``) or the typed ``contents`` fields, never both. Outputs are
``raw_output_contents``, as Triton answers, unless the request sent typed contents, in
which case typed contents come back too (FP16 outputs, which have no typed field, are
always raw). See docs/grpc.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError, Message

from edge_runtime.exceptions import EdgeRuntimeError, InputError, NotFoundError, UnavailableError
from edge_runtime.serving.app import App, RequestTimes
from edge_runtime.serving.codec import InferRequest, Interface, batch_rows, check_all_given
from edge_runtime.serving.grpc_proto import grpc_predict_v2_pb2 as pb

log = logging.getLogger("edge_runtime.serving")

SERVICE = "inference.GRPCInferenceService"

# KServe datatype -> the InferTensorContents field that carries it (FP16 has none: raw only).
TYPED_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
_NARROW = frozenset({"INT8", "INT16", "UINT8", "UINT16"})  # carried in 32-bit fields: range-checked


# -- pure request/response conversion ----------------------------------------------------


def parse_version(text: str) -> int | None:
    """``model_version``: empty = let the server choose, else a decimal version number."""
    if not text:
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise InputError(f"model_version: expected a version number or nothing, found {text[:64]!r}")
    return int(text)


def _shape_error(name: str, want: tuple[int, ...], shape: list[int]) -> InputError:
    return InputError(f"input '{name}': expected shape {list(want)}, found {shape}")


def _typed_array(t: Any, spec: Any, dtype: np.dtype[Any], shape: list[int], count: int) -> np.ndarray:
    """The values of an input sent in the typed ``contents`` fields."""
    name, datatype = spec.name, spec.datatype
    field = TYPED_FIELD.get(datatype)
    if field is None:
        raise InputError(f"input '{name}': {datatype} has no typed contents field; send it in raw_input_contents")
    given = [fd.name for fd, _ in t.contents.ListFields()]
    if not given:
        raise InputError(f"input '{name}': no data; expected raw_input_contents or contents.{field}")
    if given != [field]:
        raise InputError(f"input '{name}': {datatype} values go in contents.{field}, found {', '.join(given)}")
    values = getattr(t.contents, field)
    if len(values) != count:
        raise InputError(f"input '{name}': shape {shape} needs {count} values, contents.{field} has {len(values)}")
    if datatype in _NARROW:
        wide = np.fromiter(values, dtype=np.int64, count=count)
        info = np.iinfo(dtype)
        low, high = int(wide.min()), int(wide.max())
        if low < info.min or high > info.max:
            raise InputError(f"input '{name}': {datatype} values must lie in [{info.min}, {info.max}], found [{low}, {high}]")
        return wide.astype(dtype).reshape(shape)
    return np.fromiter(values, dtype=dtype, count=count).reshape(shape)


def decode_infer(req: Any, iface: Interface) -> InferRequest:
    """A ``ModelInferRequest`` checked against the model's inputs; InputError says what is wrong."""
    inputs = req.inputs
    if not inputs:
        raise InputError("request: 'inputs' must list at least one tensor")
    raw = req.raw_input_contents
    n_raw = len(raw)
    if n_raw and n_raw != len(inputs):
        raise InputError(
            f"raw_input_contents holds {n_raw} tensor(s), 'inputs' lists {len(inputs)}; give one per input, in order"
        )
    table = iface.input_table
    arrays: list[Any] = [None] * len(table)
    rows = -1
    batchable = iface.batchable
    for k, t in enumerate(inputs):
        name = t.name
        entry = table.get(name)
        if entry is None:
            raise InputError(f"unknown input {name!r}; the model's inputs are {[s.name for s in iface.inputs]}")
        index, spec, dtype, want = entry
        if arrays[index] is not None:
            raise InputError(f"input '{name}' is given twice")
        if t.datatype != spec.datatype:
            raise InputError(f"input '{name}': expected datatype {spec.datatype}, found {t.datatype!r}")
        if "shared_memory_region" in t.parameters:
            raise InputError(f"input '{name}': the shared-memory extension is not supported; send the tensor data")
        shape = list(t.shape)
        if len(shape) != len(want):
            raise _shape_error(name, want, shape)
        count = 1
        for d, w in zip(shape, want):
            if d < 0 or (w != -1 and d != w):
                raise _shape_error(name, want, shape)
            count *= d
        if count == 0:
            raise InputError(f"input '{name}': shape {shape} holds no elements")
        if n_raw:
            if t.HasField("contents") and t.contents.ByteSize():
                raise InputError(f"input '{name}': has typed contents while the request uses raw_input_contents")
            data = raw[k]
            if len(data) != count * dtype.itemsize:
                raise InputError(
                    f"input '{name}': shape {shape} of {spec.datatype} needs {count * dtype.itemsize} bytes "
                    f"in raw_input_contents[{k}], found {len(data)}"
                )
            arr = np.frombuffer(data, dtype=dtype).reshape(shape)
        else:
            arr = _typed_array(t, spec, dtype, shape, count)
        if batchable:
            rows = batch_rows(name, shape, rows)
        arrays[index] = arr
    check_all_given(iface, arrays, len(inputs))
    outputs = _requested_outputs(req, iface)
    raw_out = n_raw > 0 or any(iface.outputs[i].datatype not in TYPED_FIELD for i in outputs)
    return InferRequest(req.id or None, arrays, max(rows, 1), outputs, (raw_out,) * len(outputs))


def _requested_outputs(req: Any, iface: Interface) -> tuple[int, ...]:
    if not req.outputs:
        return iface.all_outputs
    indices: list[int] = []
    for o in req.outputs:
        index = iface.output_index.get(o.name)
        if index is None:
            raise InputError(f"unknown output {o.name!r}; the model's outputs are {[s.name for s in iface.outputs]}")
        if "classification" in o.parameters:
            raise InputError(f"output '{o.name}': the classification extension is not supported")
        if "shared_memory_region" in o.parameters:
            raise InputError(f"output '{o.name}': the shared-memory extension is not supported")
        indices.append(index)
    return tuple(indices)


def encode_infer(
    model_name: str, model_version: str, request: InferRequest, iface: Interface, results: list[np.ndarray]
) -> Any:
    """The ``ModelInferResponse`` for ``results`` (raw or typed contents, as decided at decode)."""
    tensors = []
    blobs: list[bytes] = []
    meta = iface.output_meta
    for index, raw in zip(request.outputs, request.binary):
        name, datatype = meta[index]
        arr = results[index]
        if raw:
            tensors.append(pb.ModelInferResponse.InferOutputTensor(name=name, datatype=datatype, shape=arr.shape))
            blobs.append(np.ascontiguousarray(arr, dtype=iface.output_dtypes[index]).tobytes())
        else:
            contents = pb.InferTensorContents(**{TYPED_FIELD[datatype]: arr.ravel().tolist()})
            tensors.append(
                pb.ModelInferResponse.InferOutputTensor(name=name, datatype=datatype, shape=arr.shape, contents=contents)
            )
    return pb.ModelInferResponse(
        model_name=model_name,
        model_version=model_version,
        id=request.request_id or "",
        outputs=tensors,
        raw_output_contents=blobs,
    )


# -- the service ---------------------------------------------------------------------------


# The one map from the project's errors to gRPC status codes (the first match wins, so
# subclasses come before their bases); applied once per call in _unary.
GRPC_STATUS: tuple[tuple[type[EdgeRuntimeError], grpc.StatusCode], ...] = (
    (InputError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (EdgeRuntimeError, grpc.StatusCode.INTERNAL),
)


def grpc_status(exc: EdgeRuntimeError) -> grpc.StatusCode:
    """The gRPC status code that answers ``exc`` (see :data:`GRPC_STATUS`)."""
    return next(code for cls, code in GRPC_STATUS if isinstance(exc, cls))


def _parse(cls: Any, data: bytes) -> Any:
    try:
        return cls.FromString(data)
    except DecodeError as exc:
        raise InputError(f"request is not a valid {cls.DESCRIPTOR.name}: {exc}") from None


class InferenceService:
    """The six KServe v2 RPCs, answered from an :class:`App`'s models, queues and metrics."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def server_live(self, data: bytes) -> Message:
        """Always live once the endpoint answers."""
        _parse(pb.ServerLiveRequest, data)
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, data: bytes) -> Message:
        """Ready once every model is loaded, until shutdown starts (as ``/v2/health/ready``)."""
        _parse(pb.ServerReadyRequest, data)
        return pb.ServerReadyResponse(ready=self.app.state.answering)

    async def model_ready(self, data: bytes) -> Message:
        """``ready`` false for an unknown, unloaded or malformed model/version, as Triton answers."""
        req = _parse(pb.ModelReadyRequest, data)
        try:
            ready = self.app.model_ready(req.name, parse_version(req.version))
        except (NotFoundError, InputError):
            ready = False
        return pb.ModelReadyResponse(ready=ready)

    async def server_metadata(self, data: bytes) -> Message:
        """Name, version and extensions (the same as ``GET /v2``)."""
        _parse(pb.ServerMetadataRequest, data)
        return pb.ServerMetadataResponse(**self.app.server_metadata())

    async def model_metadata(self, data: bytes) -> Message:
        """Versions, platform, inputs and outputs (the same as ``GET /v2/models/{m}``)."""
        req = _parse(pb.ModelMetadataRequest, data)
        meta = self.app.model_metadata(req.name, parse_version(req.version))
        meta.pop("parameters", None)  # the delegate report: not a field of the gRPC message
        return pb.ModelMetadataResponse(**meta)

    async def model_infer(self, data: bytes) -> Message:
        """One inference, through the same path as ``POST /v2/models/{m}/infer``."""
        t0 = time.perf_counter_ns()
        req = _parse(pb.ModelInferRequest, data)
        app = self.app
        app.in_flight += 1
        try:
            version = parse_version(req.model_version)
            name = req.model_name
            # From here to the hand-over to the executor: no await (see serving/app.py).
            sm = app.served_model(name)
            routing = sm.routing
            lv = app.pick(sm, version)
            try:
                request = decode_infer(req, lv.iface)
            except InputError:
                lv.stats.failed("bad_request", time.perf_counter_ns() - t0)
                raise
            t1 = time.perf_counter_ns()
            done = await app.execute(lv, request, t0)
            t2 = time.perf_counter_ns()
            response = encode_infer(name, lv.version_str, request, lv.iface, done.outs)
            app.answered(lv, routing, version, request, done, RequestTimes(t0, t1, t2, time.perf_counter_ns()))
            return response
        finally:
            app.in_flight -= 1


Handler = Callable[[bytes], Awaitable[Message]]


def _unary(handler: Handler) -> Any:
    """A grpc method handler taking the request as bytes (parsed by ``handler``)."""

    async def call(data: bytes, context: Any) -> Message:
        try:
            return await handler(data)
        except EdgeRuntimeError as exc:
            await context.abort(grpc_status(exc), str(exc))
            raise  # not reached: abort raises

    return grpc.unary_unary_rpc_method_handler(call, request_deserializer=None, response_serializer=_serialize)


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def service_handler(service: InferenceService) -> Any:
    """The generic handler of ``inference.GRPCInferenceService``; unknown methods get UNIMPLEMENTED."""
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "ServerLive": _unary(service.server_live),
            "ServerReady": _unary(service.server_ready),
            "ModelReady": _unary(service.model_ready),
            "ServerMetadata": _unary(service.server_metadata),
            "ModelMetadata": _unary(service.model_metadata),
            "ModelInfer": _unary(service.model_infer),
        },
    )


class GrpcEndpoint:
    """The gRPC server of one daemon, running on the daemon's event loop."""

    def __init__(self, app: App, max_message_bytes: int) -> None:
        self.app = app
        self.max_message_bytes = max_message_bytes
        self.port = 0
        self._server: Any = None

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (``-1`` or ``0``: a free port) and return the bound port.

        Raises OSError when the port cannot be bound. SO_REUSEPORT is off, so a port
        another process listens on is an error rather than shared traffic.
        """
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 0),
            ]
        )
        server.add_generic_rpc_handlers((service_handler(InferenceService(self.app)),))
        address = f"[{host}]:{max(port, 0)}" if ":" in host else f"{host}:{max(port, 0)}"
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"gRPC: cannot listen on {address}: {exc}") from None
        if not bound:
            raise OSError(f"gRPC: cannot listen on {address}: the port is in use or not allowed")
        await server.start()
        self._server = server
        self.port = bound
        return int(bound)

    async def stop(self, grace_s: float) -> None:
        """Refuse new RPCs and give running ones ``grace_s`` seconds to finish."""
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
