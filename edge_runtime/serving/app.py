"""The KServe v2 / Open Inference Protocol HTTP API as a lean raw ASGI app (run by serving/h1.py).

Routes (SPEC section 4): ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2``,
``GET /v2/models/{m}[/versions/{v}]``, ``.../ready``, ``.../config``, ``.../stats``,
``GET /v2/models/stats``, ``POST /v2/models/{m}[/versions/{v}]/infer``,
``POST /v2/repository/index`` and ``GET /metrics``.

Errors are ``{"error": "..."}``: 400 bad input, 404 unknown model, version or route,
405 wrong method, 413 body over ``[server] max_request_bytes``, 503 queue full or not
ready; 500 only when a backend itself fails on a valid request. Handlers raise the
project's errors; :data:`HTTP_STATUS` turns them into statuses once, in :meth:`App.__call__`. No Content-Type is
required (``tritonclient`` sends none with JSON). ``Content-Encoding: gzip|deflate``
request bodies are accepted and ``Accept-Encoding`` is honoured, as Triton does.

The infer path does no awaiting between picking a version and handing the request to
its executor, so a hot swap never sends work to a version already retired.

The steps every protocol shares (finding the model, picking its version, running the
request on the version's executor, recording statistics, shadow scoring, metadata) are
those of :class:`~edge_runtime.serving.cycle.InferCycle` (``App.cycle``); the KServe v2
gRPC endpoint adapts the same cycle, so both protocols use one set of models, queues,
versions, A/B weights, shadows and metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

import orjson

from edge_runtime.config import ServerConfig
from edge_runtime.exceptions import EdgeRuntimeError, InputError, NotFoundError, UnavailableError
from edge_runtime.monitoring.hub import VersionMonitor
from edge_runtime.serving.codec import (
    InferRequest,
    decode_request,
    encode_response,
    error_body,
    header_length,
    json_values_problem,
)
from edge_runtime.serving.cycle import PLATFORMS, Executed, InferCycle, RequestTimes
from edge_runtime.serving.manager import ModelManager
from edge_runtime.serving.metrics import Metrics
from edge_runtime.serving.models import LoadedVersion, Routing, ServedModel
from edge_runtime.serving.workers import Result

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = b"application/json"
OCTET = b"application/octet-stream"
INFLATE_PIECE_BYTES = 1024 * 1024


# The one map from the project's errors to HTTP statuses (the first match wins, so
# subclasses come before their bases); applied once per request in App.__call__.
HTTP_STATUS: tuple[tuple[type[EdgeRuntimeError], int], ...] = (
    (InputError, 400),
    (NotFoundError, 404),
    (UnavailableError, 503),
    (EdgeRuntimeError, 500),
)


def http_status(exc: EdgeRuntimeError) -> int:
    """The HTTP status that answers ``exc`` (see :data:`HTTP_STATUS`)."""
    return next(status for cls, status in HTTP_STATUS if isinstance(exc, cls))


class HTTPError(Exception):
    """An answer that is about HTTP itself (no route, wrong method, body too large)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ServingState:
    """What the health endpoints report; set by the daemon."""

    def __init__(self) -> None:
        self.ready = False
        self.draining = False
        # Models not served and why (set by the daemon at every serving change); empty while
        # the first load runs.
        self.reasons: dict[str, str] = {}

    @property
    def answering(self) -> bool:
        """True when the server is ready and not shutting down."""
        return self.ready and not self.draining

    def not_ready_reason(self) -> str:
        """Why the server is not ready: shutting down, each model not served with its reason, or loading."""
        if self.draining:
            return "shutting down"
        reasons = self.reasons
        if reasons:
            return "; ".join(f"{name}: {why}" for name, why in sorted(reasons.items()))
        return "loading models"


class App:
    """The ASGI application."""

    def __init__(
        self,
        manager: ModelManager,
        metrics: Metrics,
        state: ServingState,
        max_request_bytes: int,
        *,
        max_json_values: int = ServerConfig.max_json_values,
    ) -> None:
        self.manager = manager
        self.metrics = metrics
        self.state = state
        self.max_request_bytes = max_request_bytes
        self.max_json_values = max_json_values
        self.cycle = InferCycle(manager, metrics)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point (serving/h1.py sends only ``http`` scopes; it has no lifespan)."""
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        try:
            if path.endswith("/infer") and path.startswith("/v2/models/"):
                if method != "POST":
                    raise HTTPError(405, f"{path} takes POST, found {method}")
                self.cycle.in_flight += 1
                try:
                    await self._infer(scope, receive, send, path[11:-6])
                finally:
                    self.cycle.in_flight -= 1
                return
            status, body, ctype = await self._route(method, path, scope, receive)
        except HTTPError as exc:
            status, body, ctype = exc.status, error_body(str(exc)), JSON
        except EdgeRuntimeError as exc:
            status, body, ctype = http_status(exc), error_body(str(exc)), JSON
        await _respond(send, status, body, ctype)

    # -- infer --------------------------------------------------------------------------

    async def _infer(self, scope: Scope, receive: Receive, send: Send, target: str) -> None:
        t0 = time.perf_counter_ns()
        name, version = _infer_target(target)
        sm = self.cycle.served_model(name)
        head = _InferHead.scan(scope["headers"])
        body = await self._body(receive, head.declared, head.encoding)
        call, started = self._begin(sm, name, version, head, body, t0)  # no await from pick to hand-over
        done = started if isinstance(started, Executed) else await self._settled(call, started)
        headers, payload = self._encode(call, done)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
        self._answered(call, done)

    def infer_direct(self, target: str, headers: list[tuple[bytes, bytes]], body: bytes | bytearray, t0: int,
                     answer: Answer) -> None:
        """One infer request read by the HTTP protocol itself, answered through ``answer``.

        The HTTP server (serving/h1.py) calls this for a ``POST .../infer`` whose whole body it
        has read (at most ``max_request_bytes``), with no ``Content-Encoding``: the steps of
        :meth:`_infer` without an ASGI task or receive and send coroutines.
        ``answer(status, headers, body)`` is called exactly once: now when the executor answers
        at once, else when the queued request is done. Errors are answered as :meth:`__call__`
        answers them.
        """
        cycle = self.cycle
        cycle.in_flight += 1
        try:
            name, version = _infer_target(target)
            call, started = self._begin(cycle.served_model(name), name, version, _InferHead.scan(headers), body, t0)
        except BaseException as exc:
            cycle.in_flight -= 1
            _answer_error(answer, exc)
            return
        if isinstance(started, Executed):
            cycle.in_flight -= 1
            self._answer_direct(call, started, answer)
            return

        def settled(fut: asyncio.Future[Result]) -> None:
            cycle.in_flight -= 1
            try:
                if fut.cancelled():
                    raise UnavailableError(f"{call.lv.name} v{call.lv.version}: the request was cancelled")
                done = cycle.settle(call.lv, fut, t0)
            except BaseException as exc:
                _answer_error(answer, exc)
                return
            self._answer_direct(call, done, answer)

        started.add_done_callback(settled)

    def _answer_direct(self, call: _InferCall, done: Executed, answer: Answer) -> None:
        try:
            headers, payload = self._encode(call, done)
        except BaseException as exc:
            _answer_error(answer, exc)
            return
        answer(200, headers, payload)
        self._answered(call, done)

    def _begin(self, sm: ServedModel, name: str, version: int | None, head: _InferHead, body: bytes | bytearray,
               t0: int) -> tuple[_InferCall, Executed | asyncio.Future[Result]]:
        """Pick the version, decode and hand the request to its executor, with no await in between."""
        routing = sm.routing
        lv = self.cycle.pick(sm, version)
        try:
            header_len = None if head.json_length is None else header_length(head.json_length, len(body))
            too_many = json_values_problem(body, header_len, lv.iface, self.max_json_values)
            if too_many is not None:
                lv.stats.failed("bad_request", time.perf_counter_ns() - t0)
                raise HTTPError(413, too_many)
            request = decode_request(body, header_len, lv.iface)
        except InputError:
            lv.stats.failed("bad_request", time.perf_counter_ns() - t0)
            raise
        call = _InferCall(name, version, routing, lv, request, head.accept, t0, time.perf_counter_ns())
        return call, self.cycle.begin(lv, request, t0)

    async def _settled(self, call: _InferCall, fut: asyncio.Future[Result]) -> Executed:
        try:
            await fut
        except EdgeRuntimeError:
            pass  # settle() records and raises it
        return self.cycle.settle(call.lv, fut, call.t0)

    def _encode(self, call: _InferCall, done: Executed) -> tuple[list[tuple[bytes, bytes]], bytes]:
        call.executed_ns = time.perf_counter_ns()
        payload, json_len = encode_response(call.name, call.lv.version_str, call.request, call.lv.iface, done.outs)
        if json_len is None:
            headers = [(b"content-type", JSON)]
        else:
            headers = [(b"content-type", OCTET), (b"inference-header-content-length", b"%d" % json_len)]
        if call.accept is not None and len(payload) > 256:
            coding = _accepted(call.accept)
            if coding is not None:
                payload = _compress(payload, coding)
                headers.append((b"content-encoding", coding))
        headers.append((b"content-length", b"%d" % len(payload)))
        return headers, payload

    def _answered(self, call: _InferCall, done: Executed) -> None:
        times = RequestTimes(call.t0, call.decoded_ns, call.executed_ns, time.perf_counter_ns())
        self.cycle.answered(call.lv, call.routing, call.version, call.request, done, times)

    async def _body(self, receive: Receive, declared: bytes | None, encoding: bytes | None) -> bytes | bytearray:
        limit = self.max_request_bytes
        if declared is not None and declared.isdigit() and (len(declared) > 18 or int(declared) > limit):
            raise HTTPError(413, f"request body is {declared[:24].decode()} bytes, max_request_bytes is {limit}")
        msg = await receive()
        body: bytes | bytearray = msg.get("body", b"")
        if msg.get("more_body"):
            # One growing buffer, never a list of chunks and their join: the body is held once.
            buf = bytearray(body)
            while msg.get("more_body"):
                msg = await receive()
                buf += msg.get("body", b"")
                if len(buf) > limit:
                    raise HTTPError(413, f"request body exceeds max_request_bytes ({limit})")
            body = buf
        if encoding is not None:
            coding = encoding.strip().lower()
            if coding != b"identity":
                body = _decompress(body, coding, limit)
        return body

    # -- everything else ------------------------------------------------------------------

    async def _route(self, method: str, path: str, scope: Scope, receive: Receive) -> tuple[int, bytes, bytes]:
        if method == "POST" and path == "/v2/repository/index":
            await _drain(receive)
            return 200, orjson.dumps(self._index()), JSON
        if method not in ("GET", "HEAD"):
            raise HTTPError(405 if _known_get(path) else 404, f"no route for {method} {path}")
        if path == "/v2/health/live":
            return 200, b"", JSON
        if path == "/v2/health/ready":
            if self.state.answering:
                return 200, b"", JSON
            return 503, error_body(f"server not ready: {self.state.not_ready_reason()}"), JSON
        if path == "/v2":
            return 200, orjson.dumps(self.cycle.server_metadata()), JSON
        if path == "/metrics":
            return 200, self.metrics.exposition(self.manager), b"text/plain; version=0.0.4; charset=utf-8"
        if path == "/v2/models/stats":
            return 200, orjson.dumps({"model_stats": self._stats(None, None)}), JSON
        if path.startswith("/v2/models/"):
            return self._model_get(path[11:])
        raise HTTPError(404, f"no route for {method} {path}")

    def _model_get(self, target: str) -> tuple[int, bytes, bytes]:
        action = ""
        for suffix in ("/ready", "/stats", "/config"):
            if target.endswith(suffix):
                target, action = target[: -len(suffix)], suffix[1:]
                break
        name, version = _model_target(target)
        sm = self.cycle.model(name)
        if action == "stats":
            if version is not None and version not in sm.known_versions:
                raise NotFoundError(f"model {name!r} has no version {version} loaded")
            return 200, orjson.dumps({"model_stats": self._stats(name, version)}), JSON
        if action == "ready":
            if sm.routing is None:
                return 503, error_body(f"model {name!r} is not ready: {sm.problem or 'loading'}"), JSON
            sm.route(version)
            return 200, b"", JSON
        if action == "config":
            return 200, orjson.dumps(self._config(sm.route(version))), JSON
        return 200, orjson.dumps(self.cycle.model_metadata(name, version)), JSON

    def _config(self, lv: LoadedVersion) -> dict[str, Any]:
        cfg = lv.config
        batching = lv.iface.batchable and cfg.max_batch_size > 0 and not lv.executor.inline
        out: dict[str, Any] = {
            "name": lv.name,
            "platform": PLATFORMS.get(lv.manifest.format, lv.manifest.format),
            "max_batch_size": cfg.max_batch_size if lv.iface.batchable else 0,
            "input": [{"name": s.name, "data_type": "TYPE_" + s.datatype, "dims": list(s.shape)} for s in lv.iface.inputs],
            "output": [{"name": s.name, "data_type": "TYPE_" + s.datatype, "dims": list(s.shape)} for s in lv.iface.outputs],
            "instance_group": [{"count": 1 if lv.executor.inline else cfg.instances, "kind": "KIND_CPU"}],
            "parameters": {
                "execution": {"string_value": lv.mode},
                "invoke_us": {"string_value": f"{lv.invoke_us:.1f}"},
                "delegate": {"string_value": lv.delegate},
            },
        }
        if batching:
            out["dynamic_batching"] = {
                "preferred_batch_size": list(cfg.preferred_batch_sizes),
                "max_queue_delay_microseconds": cfg.max_queue_delay_us,
                "default_queue_policy": {"max_queue_size": cfg.max_queue_size},
            }
        return out

    def _stats(self, name: str | None, version: int | None) -> list[dict[str, Any]]:
        out = []
        mon = self.metrics.monitoring
        for (m, v), s in sorted(self.metrics.versions.items()):
            if (name is None or m == name) and (version is None or v == version):
                entry = s.to_triton()
                vm = mon.monitors.get((m, v)) if mon is not None else None
                if vm is not None:
                    entry["drift"] = drift_stats(vm)
                out.append(entry)
        return out

    def _index(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for name, sm in sorted(self.manager.served.items()):
            if sm.routing is None:
                out.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": sm.problem or "loading"})
                continue
            for v, _role in sm.routing.roles():
                out.append({"name": name, "version": str(v), "state": "READY"})
        return out


Answer = Callable[[int, list[tuple[bytes, bytes]], bytes], None]


@dataclass(slots=True)
class _InferHead:
    """What an infer request's headers say about its body and answer."""

    declared: bytes | None = None  # Content-Length
    json_length: bytes | None = None  # Inference-Header-Content-Length
    encoding: bytes | None = None  # Content-Encoding
    accept: bytes | None = None  # Accept-Encoding

    @classmethod
    def scan(cls, headers: Iterable[tuple[bytes, bytes]]) -> _InferHead:
        head = cls()
        for key, value in headers:
            if key == b"content-length":
                head.declared = value
            elif key == b"inference-header-content-length":
                head.json_length = value
            elif key == b"content-encoding":
                head.encoding = value
            elif key == b"accept-encoding":
                head.accept = value
        return head


@dataclass(slots=True)
class _InferCall:
    """One infer request from its hand-over to the executor to its answer."""

    name: str
    version: int | None
    routing: Routing | None
    lv: LoadedVersion
    request: InferRequest
    accept: bytes | None
    t0: int
    decoded_ns: int
    executed_ns: int = 0


def _infer_target(target: str) -> tuple[str, int | None]:
    return _model_target(target) if "/" in target else (target, None)


def _answer_error(answer: Answer, exc: BaseException) -> None:
    """Answer a failed direct request as :meth:`App.__call__` answers an ASGI one (500 for a bug, logged)."""
    if isinstance(exc, HTTPError):
        status, message = exc.status, str(exc)
    elif isinstance(exc, EdgeRuntimeError):
        status, message = http_status(exc), str(exc)
    elif isinstance(exc, Exception):
        log.error("inference request failed", exc_info=exc)
        status, message = 500, f"internal server error ({type(exc).__name__})"
    else:
        raise exc  # KeyboardInterrupt, SystemExit
    body = error_body(message)
    answer(status, [(b"content-type", JSON), (b"content-length", b"%d" % len(body))], body)


def drift_stats(vm: VersionMonitor) -> dict[str, Any]:
    """The ``drift`` entry of a version's ``/stats`` (docs/monitoring.md)."""
    r = vm.report()
    if r is None:
        return {"score": None, "problem": vm.profile_problem}
    from edge_runtime.monitoring.drift import worst_features  # loaded once a version has a profile

    out = r.summary()
    out["worst_features"] = [{"feature": f, "psi": p} for f, p in worst_features(r, 10)]
    out["observed_rows"] = r.seen
    if vm.ring is not None:
        out["capture"] = vm.ring.stats()
    return out


def _model_target(target: str) -> tuple[str, int | None]:
    """``name`` or ``name/versions/N`` -> (name, version or None)."""
    name, sep, rest = target.partition("/versions/")
    if not sep:
        return target, None
    # isdigit() alone accepts "²", which int() refuses; 5000 digits would exceed int()'s limit.
    if not (rest.isascii() and rest.isdigit() and len(rest) <= 18) or "/" in name:
        raise NotFoundError(f"no such model version path: {target[:80]!r}")
    return name, int(rest)


def _known_get(path: str) -> bool:
    return path in ("/v2/health/live", "/v2/health/ready", "/v2", "/metrics") or path.startswith("/v2/models/")


def _accepted(accept: bytes) -> bytes | None:
    v = accept.lower()
    return b"gzip" if b"gzip" in v else b"deflate" if b"deflate" in v else None


def _decompress(body: bytes | bytearray, encoding: bytes, limit: int) -> bytearray:
    """Inflate in pieces into one buffer: the output is held once and never grows past ``limit``."""
    if encoding == b"gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == b"deflate":
        wbits = zlib.MAX_WBITS
    else:
        raise InputError(f"Content-Encoding {encoding.decode(errors='replace')!r} not supported; use gzip or deflate")
    d = zlib.decompressobj(wbits)
    out = bytearray()
    data: bytes | bytearray = body
    try:
        while True:
            out += d.decompress(data, INFLATE_PIECE_BYTES)
            if len(out) > limit:
                raise HTTPError(413, f"decompressed request body exceeds max_request_bytes ({limit})")
            data = d.unconsumed_tail
            if not data:
                break
        out += d.flush()
    except zlib.error as exc:
        raise InputError(f"request body is not valid {encoding.decode()} data: {exc}") from None
    if len(out) > limit:
        raise HTTPError(413, f"decompressed request body exceeds max_request_bytes ({limit})")
    return out


def _compress(payload: bytes, accept: bytes) -> bytes:
    if accept == b"gzip":
        c = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        return c.compress(payload) + c.flush()
    return zlib.compress(payload, 1)


async def _drain(receive: Receive) -> None:
    msg = await receive()
    while msg.get("more_body"):
        msg = await receive()


async def _respond(send: Send, status: int, body: bytes, ctype: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})

