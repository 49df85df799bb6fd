"""The KServe v2 / Open Inference Protocol gRPC endpoint (``inference.GRPCInferenceService``).

It runs on the daemon's own event loop, next to the HTTP server, over this package's own
HTTP/2 transport (:mod:`edge_runtime.serving.h2grpc`; grpcio is not used), and adapts the
same :class:`~edge_runtime.serving.cycle.InferCycle` as HTTP: the same loaded versions,
routing (``model_version``, A/B weights, shadow), executors and batching queues,
statistics and Prometheus metrics. Cheap models therefore still run inline on the loop,
and a request never waits between picking its version and being handed to that
version's executor. Nothing here creates a task: an inline model is answered while its
request is being read, a queued one from its future's callback.

RPCs: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata and ModelInfer;
any other method of the service answers UNIMPLEMENTED. A malformed message is
INVALID_ARGUMENT.

Status codes: INVALID_ARGUMENT for a request that does not fit the model (the same
messages as HTTP 400), NOT_FOUND for an unknown model or a version not loaded,
UNAVAILABLE for a full queue, a model with no version loaded or a version being
unloaded; INTERNAL only when a backend fails on a request that passed every check.
Handlers raise the project's errors; :data:`GRPC_STATUS` turns them into codes once, in
:meth:`InferenceService.dispatch`. A message over ``[server] max_request_bytes`` is
RESOURCE_EXHAUSTED.

Tensors: ``raw_input_contents`` (one little-endian, row-major buffer per input, in the
order of ``inputs``) or the typed ``contents`` fields, never both. Outputs are
``raw_output_contents``, as Triton answers, unless the request sent typed contents, in
which case typed contents come back too (FP16 outputs, which have no typed field, are
always raw). See docs/grpc.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
from google.protobuf.message import DecodeError, Message

from edge_runtime.exceptions import EdgeRuntimeError, InputError, NotFoundError, UnavailableError
from edge_runtime.serving.codec import InferRequest, Interface, batch_rows, check_all_given, output_items
from edge_runtime.serving.cycle import Executed, InferCycle, RequestTimes
from edge_runtime.serving.grpc_proto import grpc_predict_v2_pb2 as pb
from edge_runtime.serving.h2deadlines import DEFAULT_TIMEOUTS, Timeouts
from edge_runtime.serving.h2grpc import Connection, Endpoint, Reply, Status
from edge_runtime.serving.models import LoadedVersion, Routing

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
    for name, datatype, arr, raw in output_items(request, iface, results):
        if raw is not None:
            tensors.append(pb.ModelInferResponse.InferOutputTensor(name=name, datatype=datatype, shape=arr.shape))
            blobs.append(raw)
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
# subclasses come before their bases); applied once per call in InferenceService.dispatch.
GRPC_STATUS: tuple[tuple[type[EdgeRuntimeError], Status], ...] = (
    (InputError, Status.INVALID_ARGUMENT),
    (NotFoundError, Status.NOT_FOUND),
    (UnavailableError, Status.UNAVAILABLE),
    (EdgeRuntimeError, Status.INTERNAL),
)


def grpc_status(exc: EdgeRuntimeError) -> Status:
    """The gRPC status code that answers ``exc`` (see :data:`GRPC_STATUS`)."""
    return next(code for cls, code in GRPC_STATUS if isinstance(exc, cls))


def _parse(cls: Any, data: memoryview) -> Any:
    try:
        return cls.FromString(data)
    except DecodeError as exc:
        raise InputError(f"request is not a valid {cls.DESCRIPTOR.name}: {exc}") from None


class Readiness(Protocol):
    """What ServerReady reports (the daemon's serving state)."""

    @property
    def answering(self) -> bool:
        """True when every model is in and the server is not shutting down."""


Handler = Callable[[memoryview, Reply], None]


class InferenceService:
    """The six KServe v2 RPCs, answered from an :class:`InferCycle`'s models, queues and metrics."""

    def __init__(self, cycle: InferCycle, state: Readiness) -> None:
        self.cycle = cycle
        self.state = state
        prefix = f"/{SERVICE}/"
        self.handlers: dict[bytes, Handler] = {
            (prefix + name).encode(): handler
            for name, handler in (
                ("ServerLive", _simple(self.server_live)),
                ("ServerReady", _simple(self.server_ready)),
                ("ModelReady", _simple(self.model_ready)),
                ("ServerMetadata", _simple(self.server_metadata)),
                ("ModelMetadata", _simple(self.model_metadata)),
                ("ModelInfer", self.model_infer),
            )
        }

    def dispatch(self, path: bytes, data: memoryview, reply: Reply) -> None:
        """Answer one call; errors become status codes here, once."""
        handler = self.handlers.get(path)
        if handler is None:
            reply(Status.UNIMPLEMENTED, f"method {path[:200].decode(errors='replace')} is not implemented", b"")
            return
        try:
            handler(data, reply)
        except EdgeRuntimeError as exc:
            reply(grpc_status(exc), str(exc), b"")

    def server_live(self, data: memoryview) -> Message:
        """Always live once the endpoint answers."""
        _parse(pb.ServerLiveRequest, data)
        return pb.ServerLiveResponse(live=True)

    def server_ready(self, data: memoryview) -> Message:
        """Ready once every model is loaded, until shutdown starts (as ``/v2/health/ready``)."""
        _parse(pb.ServerReadyRequest, data)
        return pb.ServerReadyResponse(ready=self.state.answering)

    def model_ready(self, data: memoryview) -> Message:
        """``ready`` false for an unknown, unloaded or malformed model/version, as Triton answers."""
        req = _parse(pb.ModelReadyRequest, data)
        try:
            ready = self.cycle.model_ready(req.name, parse_version(req.version))
        except (NotFoundError, InputError):
            ready = False
        return pb.ModelReadyResponse(ready=ready)

    def server_metadata(self, data: memoryview) -> Message:
        """Name, version and extensions (the same as ``GET /v2``)."""
        _parse(pb.ServerMetadataRequest, data)
        return pb.ServerMetadataResponse(**self.cycle.server_metadata())

    def model_metadata(self, data: memoryview) -> Message:
        """Versions, platform, inputs and outputs (the same as ``GET /v2/models/{m}``)."""
        req = _parse(pb.ModelMetadataRequest, data)
        meta = self.cycle.model_metadata(req.name, parse_version(req.version))
        meta.pop("parameters", None)  # the delegate report: not a field of the gRPC message
        return pb.ModelMetadataResponse(**meta)

    def model_infer(self, data: memoryview, reply: Reply) -> None:
        """One inference, through the same cycle as ``POST /v2/models/{m}/infer``."""
        t0 = time.perf_counter_ns()
        req = _parse(pb.ModelInferRequest, data)
        cycle = self.cycle
        version = parse_version(req.model_version)
        name = req.model_name
        # From here to the hand-over to the executor: no await (see serving/cycle.py).
        sm = cycle.served_model(name)
        routing = sm.routing
        lv = cycle.pick(sm, version)
        try:
            request = decode_infer(req, lv.iface)
        except InputError:
            lv.stats.failed("bad_request", time.perf_counter_ns() - t0)
            raise
        t1 = time.perf_counter_ns()
        cycle.in_flight += 1
        try:
            started = cycle.begin(lv, request, t0)
        except EdgeRuntimeError:
            cycle.in_flight -= 1
            raise
        if isinstance(started, Executed):
            cycle.in_flight -= 1
            reply(Status.OK, "", self._answer(lv, routing, version, request, started, t0, t1))
            return

        def done(fut: asyncio.Future[Any]) -> None:
            cycle.in_flight -= 1
            if fut.cancelled():
                reply(Status.UNAVAILABLE, f"{lv.name} v{lv.version}: the request was cancelled", b"")
                return
            try:
                executed = cycle.settle(lv, fut, t0)
                answer = self._answer(lv, routing, version, request, executed, t0, t1)
            except EdgeRuntimeError as exc:
                reply(grpc_status(exc), str(exc), b"")
                return
            reply(Status.OK, "", answer)

        started.add_done_callback(done)

    def _answer(self, lv: LoadedVersion, routing: Routing | None, version: int | None, request: InferRequest,
                done: Executed, t0: int, t1: int) -> bytes:
        t2 = time.perf_counter_ns()
        answer = encode_infer(lv.name, lv.version_str, request, lv.iface, done.outs).SerializeToString()
        self.cycle.answered(lv, routing, version, request, done, RequestTimes(t0, t1, t2, time.perf_counter_ns()))
        return bytes(answer)


def _simple(method: Callable[[memoryview], Message]) -> Handler:
    """A handler that answers at once with ``method``'s message."""

    def handler(data: memoryview, reply: Reply) -> None:
        reply(Status.OK, "", method(data).SerializeToString())

    return handler


class GrpcEndpoint:
    """The gRPC server of one daemon, running on the daemon's event loop."""

    def __init__(self, cycle: InferCycle, state: Readiness, max_message_bytes: int, max_header_bytes: int,
                 max_connections: int = 256, timeouts: Timeouts = DEFAULT_TIMEOUTS) -> None:
        self.service = InferenceService(cycle, state)
        self.endpoint = Endpoint(self.service.dispatch, max_message_bytes, max_header_bytes, max_connections, timeouts)
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (``-1`` or ``0``: a free port) and return the bound port.

        Raises OSError when the port cannot be bound (a port another process listens on
        is an error: SO_REUSEPORT is not set).
        """
        loop = asyncio.get_running_loop()
        endpoint = self.endpoint
        address = f"[{host}]:{max(port, 0)}" if ":" in host else f"{host}:{max(port, 0)}"
        try:
            server = await loop.create_server(lambda: Connection(endpoint), host, max(port, 0), reuse_port=False)
        except OSError as exc:
            raise OSError(f"gRPC: cannot listen on {address}: {exc.strerror or exc}") from None
        self._server = server
        self.port = int(server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self, grace_s: float) -> None:
        """Refuse new RPCs (GOAWAY) and give running ones ``grace_s`` seconds to finish."""
        if self._server is None:
            return
        self._server.close()
        self._server = None
        ep = self.endpoint
        ep.draining = True
        for conn in list(ep.connections):
            conn.goaway()
        ep.busy_changed()
        try:
            await asyncio.wait_for(ep.idle.wait(), grace_s)
        except TimeoutError:
            log.warning("gRPC: %d call(s) still running after %.1f s; closing", sum(len(c.streams) for c in ep.connections),
                        grace_s)
        for conn in list(ep.connections):
            conn.close_now()
