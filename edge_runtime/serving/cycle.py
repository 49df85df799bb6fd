"""The protocol-neutral infer cycle: the steps every protocol takes to answer one request.

HTTP (:mod:`edge_runtime.serving.app`) and KServe v2 gRPC
(:mod:`edge_runtime.serving.grpc_server`) are thin adapters around one :class:`InferCycle`:
they parse and answer in their own wire format, and in between call the same steps here -
find the model (:meth:`InferCycle.served_model`), pick its version (:meth:`InferCycle.pick`:
``model_version``, A/B weights), hand the decoded request to that version's executor
(:meth:`InferCycle.begin` / :meth:`InferCycle.execute`), and record the answer
(:meth:`InferCycle.answered`: statistics, drift monitoring, shadow scoring). So both protocols
use one set of models, queues, versions, A/B weights, shadows and metrics, and requests of
both are merged into the same batches. The adapters never import each other.

Between picking a version and handing the request to its executor nothing is awaited, so
a hot swap never sends work to a version already retired.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_runtime import __version__
from edge_runtime.exceptions import EdgeRuntimeError, InferenceError, InputError, NotFoundError, UnavailableError
from edge_runtime.serving.codec import InferRequest
from edge_runtime.serving.manager import ModelManager
from edge_runtime.serving.metrics import Metrics
from edge_runtime.serving.models import LoadedVersion, Routing, ServedModel, disagreement
from edge_runtime.serving.workers import InlineExecutor, Result

EXTENSIONS = ["binary_tensor_data", "statistics", "model_repository", "model_configuration"]
PLATFORMS = {"tflite": "litert_tflite", "onnx": "onnxruntime_onnx"}


@dataclass(slots=True)
class RequestTimes:
    """Where one request was when (``time.perf_counter_ns``)."""

    arrived_ns: int
    decoded_ns: int
    executed_ns: int
    answered_ns: int


@dataclass(slots=True)
class Executed:
    """A request run by its version's executor: outputs and where the time went."""

    outs: list[np.ndarray]
    queue_ns: int
    infer_ns: int
    inline: bool  # ran on the event loop (no queue)


class InferCycle:
    """Models, routing, execution and accounting shared by every protocol; loop thread only."""

    def __init__(self, manager: ModelManager, metrics: Metrics) -> None:
        self.manager = manager
        self.metrics = metrics
        # Infer requests being handled by any protocol (the loop runs one at a time; others
        # await): a request alone in the server may run on the loop's own interpreter.
        self.in_flight = 0

    def served_model(self, name: str) -> ServedModel:
        """The model called ``name``; NotFoundError (counted) when it is not served."""
        try:
            return self.model(name)
        except NotFoundError:
            self.metrics.not_found_requests += 1
            raise

    def model(self, name: str) -> ServedModel:
        """The model called ``name``; NotFoundError (not counted: not a request) when it is not served."""
        sm = self.manager.served.get(name)
        if sm is None:
            raise NotFoundError(f"unknown model {name!r}; served: {sorted(self.manager.served)}")
        return sm

    def pick(self, sm: ServedModel, version: int | None) -> LoadedVersion:
        """The version that answers a request (A/B weights when ``version`` is None); errors are counted.

        NotFoundError for a version that is not loaded, UnavailableError while nothing is.
        Call :meth:`execute` without awaiting anything in between (see the module docstring).
        """
        try:
            return sm.route(version)
        except NotFoundError:
            self.metrics.not_found_requests += 1
            raise
        except UnavailableError:
            self.metrics.not_ready(sm.name)
            raise

    def begin(self, lv: LoadedVersion, request: InferRequest, t0: int) -> Executed | asyncio.Future[Result]:
        """Hand a decoded request to ``lv``'s executor: its outputs now, or the queue's future.

        Inline executors (and a threaded one whose loop interpreter is free while this is
        the only request in the server) answer at once; otherwise the request is queued and
        the future resolves on the loop: pass it to :meth:`settle`. Errors raised here are
        recorded like those of :meth:`settle` (``t0``: when the request arrived).
        """
        executor = lv.executor
        try:
            if isinstance(executor, InlineExecutor):
                outs, infer_ns = executor.run(request.arrays)
                return Executed(outs, 0, infer_ns, True)
            here = executor.run_here(request.arrays) if self.in_flight == 1 else None
            if here is not None:
                return Executed(here[0], 0, here[1], True)
            return executor.submit(request.arrays, request.rows)
        except EdgeRuntimeError as exc:
            err = self._failed(lv, exc, t0)
            if err is exc:
                raise
            raise err from exc

    def settle(self, lv: LoadedVersion, fut: asyncio.Future[Result], t0: int) -> Executed:
        """The outcome of a queued request (``fut`` is done); failures recorded and raised as in :meth:`execute`."""
        try:
            outs, queue_ns, infer_ns, _ = fut.result()
        except EdgeRuntimeError as exc:
            err = self._failed(lv, exc, t0)
            if err is exc:
                raise
            raise err from exc
        return Executed(outs, queue_ns, infer_ns, False)

    async def execute(self, lv: LoadedVersion, request: InferRequest, t0: int) -> Executed:
        """Run a decoded request on ``lv``: on the event loop when the executor allows, else queued.

        The hand-over happens before the first await. A failure is recorded in the
        version's statistics (``t0``: when the request arrived) and re-raised:
        InputError (bad input found by the backend), UnavailableError (queue full,
        version unloading), InferenceError (the backend failed, named in the message).
        """
        started = self.begin(lv, request, t0)
        if isinstance(started, Executed):
            return started
        try:
            await started
        except EdgeRuntimeError:
            pass  # settle() records and raises it
        return self.settle(lv, started, t0)

    def _failed(self, lv: LoadedVersion, exc: EdgeRuntimeError, t0: int) -> EdgeRuntimeError:
        """Record a failed request in ``lv``'s statistics; the error to raise for it."""
        if isinstance(exc, InputError):
            lv.stats.failed("bad_request", time.perf_counter_ns() - t0)
            return exc
        if isinstance(exc, UnavailableError):
            lv.stats.failed("unavailable", time.perf_counter_ns() - t0)
            return exc
        lv.stats.failed("error", time.perf_counter_ns() - t0)
        return InferenceError(f"{lv.name} v{lv.version}: inference failed: {exc}")

    def answered(
        self,
        lv: LoadedVersion,
        routing: Routing | None,
        version: int | None,
        request: InferRequest,
        done: Executed,
        times: RequestTimes,
    ) -> None:
        """Record a request answered by ``lv`` and shadow it when the routing has a shadow.

        ``routing`` is the one the version was picked from. Versioned requests are not shadowed.
        """
        total_ns = times.answered_ns - times.arrived_ns
        decode_ns = times.decoded_ns - times.arrived_ns
        encode_ns = times.answered_ns - times.executed_ns
        if done.inline:
            lv.stats.answered_inline(request.rows, total_ns, decode_ns, done.infer_ns, encode_ns)
        else:
            lv.stats.answered(request.rows, total_ns, done.queue_ns, decode_ns, done.infer_ns, encode_ns)
        monitor = lv.monitor
        if monitor is not None:
            monitor.observe(request.arrays, done.outs)
        if routing is not None and routing.shadow is not None and version is None and routing.shadow is not lv:
            self._shadow(routing.shadow, lv, request, done.outs)

    def server_metadata(self) -> dict[str, Any]:
        """The KServe server metadata: ``name``, ``version``, ``extensions``."""
        return {"name": "edge-runtime", "version": __version__, "extensions": EXTENSIONS}

    def model_ready(self, name: str, version: int | None) -> bool:
        """True when ``name`` (and ``version``, when given) can answer now; NotFoundError when unknown."""
        sm = self.model(name)
        if sm.routing is None:
            return False
        sm.route(version)  # NotFoundError for a version that is not loaded
        return True

    def model_metadata(self, name: str, version: int | None) -> dict[str, Any]:
        """The KServe model metadata; NotFoundError (unknown model or version), UnavailableError (not loaded)."""
        sm = self.model(name)
        lv = sm.route(version)
        return {
            "name": name,
            "versions": [str(v) for v in sm.known_versions] if version is None else [str(version)],
            "platform": PLATFORMS.get(lv.manifest.format, lv.manifest.format),
            **lv.iface.metadata(),
            # Not in KServe's metadata schema, which clients ignore beyond: what runs this version.
            "parameters": {"delegate": lv.delegate, "skipped_delegates": [s.to_json() for s in lv.skipped],
                           **({"variant": lv.variant.to_json()} if lv.variant is not None else {})},
        }

    def _shadow(self, shadow: LoadedVersion, answered: LoadedVersion, request: InferRequest, outs: list[Any]) -> None:
        """Score a copy of the request with the shadow version, off the answer path, and compare."""
        st = self.metrics.shadow(answered.name, answered.version, shadow.version)
        if shadow.closed or shadow.iface.input_signature != answered.iface.input_signature:
            st.dropped += 1
            return
        arrays, rows = request.arrays, request.rows
        executor = shadow.executor
        if isinstance(executor, InlineExecutor):
            try:
                theirs, infer_ns = executor.run(arrays)
                shadow.stats.executed(rows, infer_ns)
            except EdgeRuntimeError:
                st.failed += 1
                return
            _compared(st, answered, shadow, arrays, outs, theirs, rows)
            return
        try:
            fut = executor.submit(arrays, rows)
        except UnavailableError:
            st.dropped += 1
            return

        def done(f: Any) -> None:
            if f.cancelled() or f.exception() is not None:
                st.failed += 1
                return
            _compared(st, answered, shadow, arrays, outs, f.result()[0], rows)

        fut.add_done_callback(done)


def _compared(st: Any, answered: LoadedVersion, shadow: LoadedVersion, arrays: list[Any], outs: list[Any],
              theirs: list[Any], rows: int) -> None:
    """Count a shadow comparison; a request the two versions answered differently is captured."""
    worst, differ, _ = disagreement(outs, theirs)
    st.compared(worst, differ, rows)
    if differ and answered.monitor is not None:
        answered.monitor.shadow_disagreed(arrays, outs, shadow.version, theirs, differ)
