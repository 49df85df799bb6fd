"""Executors: where a loaded version's interpreters run.

LiteRT interpreters are not thread-safe, so each one has exactly one owner:

* :class:`InlineExecutor` - one interpreter owned by the event-loop thread. For cheap
  models (the demo MLP invokes in about 1.5 µs while the HTTP work around it is about
  50 µs) any thread hop or wait only adds latency, so they run where the request was
  decoded, at once.
* :class:`ThreadedExecutor` - ``instances`` interpreters, each owned by one named worker
  thread that takes merged batches from a :class:`~edge_runtime.serving.batcher.BatchQueue`.
  ``invoke`` releases the GIL, so two interpreters keep two cores busy with an image model.
  Results go back to the loop with one ``call_soon_threadsafe`` per batch; all statistics
  are recorded there, on the loop thread.

How a merged batch runs depends on the model. A cheap model (batch-1 invoke up to
``[models.X] stack_max_us``, 100 µs by default) runs it as one invoke on the stacked inputs: its fixed cost per
call dominates, so one call for eight rows is far cheaper than eight. An expensive one (an
image model) runs its requests one after the other at their own shape, still one hand-off
each way for the whole batch: on the CPU its cost per row hardly falls with the batch (7 %
at batch 4 for the 96x96 CNN with XNNPACK), while stacking copies every input once more
and every change of the batch size makes the interpreter re-plan its graph (about 150 µs
for that CNN, and under load the size changes with nearly every batch).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from edge_runtime.exceptions import UnavailableError
from edge_runtime.inference.base import Backend
from edge_runtime.inference.selftest import GoldenSet
from edge_runtime.serving.batcher import BatchPolicy, BatchQueue, Pending
from edge_runtime.serving.hooks import hold_workers_file, wait_while_held
from edge_runtime.serving.metrics import VersionStats

log = logging.getLogger("edge_runtime.serving")

# (outputs, queue_ns, infer_ns, batch_rows) handed back to a request
Result = tuple[list[np.ndarray], int, int, int]
Invoke = Callable[[Sequence[np.ndarray]], list[np.ndarray]]


def invoker(backend: Backend) -> Invoke:
    """``backend.run`` without its per-call checks, unless a tensor is quantized.

    The codec has already checked every input's datatype and shape against the same
    manifest specs, so on the hot path those checks would only run twice; quantized
    tensors still need ``run`` for the float <-> integer conversion.
    """
    if any(s.quantization is not None for s in (*backend.inputs, *backend.outputs)):
        return backend.run
    return backend._invoke  # noqa: SLF001 - the checked entry point minus the checks (see above)


class InlineExecutor:
    """One interpreter, used only by the event-loop thread."""

    inline = True

    def __init__(self, backend: Backend, stats: VersionStats) -> None:
        self.backend = backend
        self.stats = stats
        self.closed = False
        self._invoke = invoker(backend)

    def run(self, arrays: Sequence[np.ndarray]) -> tuple[list[np.ndarray], int]:
        """Score one request now and return its outputs and run time; loop thread only.

        The caller records the statistics (``VersionStats.answered_inline``).
        """
        t0 = time.perf_counter_ns()
        outs = self._invoke(arrays)
        return outs, time.perf_counter_ns() - t0

    def queue_depth(self) -> int:
        """Always 0: nothing waits."""
        return 0

    def set_policy(self, policy: BatchPolicy) -> None:
        """Nothing to change: inline execution never merges requests."""

    def retire(self) -> None:
        """Stop using the interpreter; loop thread only (the thread that owns it)."""
        self.closed = True
        self.backend.close()

    def join(self, timeout_s: float) -> bool:
        """Nothing runs elsewhere: always drained."""
        return True


class ThreadedExecutor:
    """Worker threads, one interpreter each, fed merged batches by a bounded queue.

    ``loop_backend``, when given, is one more interpreter owned by the event-loop thread:
    a request that arrives while nothing else is in flight in the whole server runs on it
    at once (:meth:`run_here`), saving the two thread hops; under load every request goes
    through the queue and the workers.
    """

    inline = False

    def __init__(
        self,
        backends: Sequence[Backend],
        policy: BatchPolicy,
        stats: VersionStats,
        loop: asyncio.AbstractEventLoop,
        label: str,
        loop_backend: Backend | None = None,
        stack: bool = True,
    ) -> None:
        self.stats = stats
        self.stack = stack  # a merged batch is one stacked invoke (else: request by request, see above)
        self.loop = loop
        self.queue = BatchQueue(policy, label)
        self.closed = False
        self.loop_backend = loop_backend
        self._loop_invoke = invoker(loop_backend) if loop_backend is not None else None
        self._n_inputs = len(backends[0].inputs)
        self._threads = [
            threading.Thread(target=self._work, args=(b,), name=f"edge-worker-{label}-{i}", daemon=True)
            for i, b in enumerate(backends)
        ]
        for t in self._threads:
            t.start()

    def submit(self, arrays: list[np.ndarray], rows: int) -> asyncio.Future[Result]:
        """Queue one request; loop thread only. Raises UnavailableError when the queue is full."""
        fut: asyncio.Future[Result] = self.loop.create_future()
        self.queue.put(Pending(rows, (arrays, fut)))
        return fut

    def queue_depth(self) -> int:
        """Requests waiting (not running)."""
        return len(self.queue)

    def run_here(self, arrays: Sequence[np.ndarray]) -> tuple[list[np.ndarray], int] | None:
        """Run on the loop's own interpreter when the queue is empty; None = submit instead. Loop thread only."""
        run = self._loop_invoke
        if run is None or self.closed or len(self.queue):
            return None
        t0 = time.perf_counter_ns()
        outs = run(arrays)
        return outs, time.perf_counter_ns() - t0

    def set_policy(self, policy: BatchPolicy) -> None:
        """New batching parameters, effective for the next batch."""
        self.queue.set_policy(policy)

    def retire(self) -> None:
        """Refuse new requests; queued ones still run. On the loop thread (or once it no longer serves)."""
        self.closed = True
        self.queue.close()
        if self.loop_backend is not None:
            self._loop_invoke = None
            self.loop_backend.close()

    def join(self, timeout_s: float) -> bool:
        """Wait for the workers to drain the queue and exit; fail leftovers after the timeout."""
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self._threads):
            left = self.queue.fail_all()
            if left:
                log.error("%d queued request(s) failed: drain timeout of %.1f s", len(left), timeout_s)
                self._post(left, None, UnavailableError("the model version was unloaded before this request ran"), 0, 0)
            return False
        return True

    # -- worker threads --------------------------------------------------------------

    def _work(self, backend: Backend) -> None:
        run = invoker(backend)
        hold = hold_workers_file()
        try:
            while True:
                wait_while_held(hold)  # test-only, None in production (serving/hooks.py)
                batch = self.queue.take()
                if batch is None:
                    return
                self._run_batch(run, batch)
        finally:
            backend.close()

    def _run_batch(self, run: Invoke, batch: list[Pending]) -> None:
        if len(batch) > 1 and not self.stack:
            self._run_each(run, batch)
            return
        start = time.perf_counter_ns()
        outs: list[np.ndarray] | None = None
        error: BaseException | None = None
        try:
            if len(batch) == 1:
                inputs = batch[0].payload[0]
            else:
                inputs = [np.concatenate([p.payload[0][i] for p in batch]) for i in range(self._n_inputs)]
            outs = run(inputs)
        except Exception as exc:  # delivered to every request of the batch
            error = exc
        end = time.perf_counter_ns()
        self._post(batch, outs, error, start, end)

    def _run_each(self, run: Invoke, batch: list[Pending]) -> None:
        """Run the requests of a merged batch one by one at their own shape; one hand-off back."""
        done: list[tuple[list[np.ndarray] | None, BaseException | None, int, int]] = []
        for p in batch:
            start = time.perf_counter_ns()
            try:
                done.append((run(p.payload[0]), None, start, time.perf_counter_ns()))
            except Exception as exc:  # this request's own failure; the others still run
                done.append((None, exc, start, time.perf_counter_ns()))
        try:
            self.loop.call_soon_threadsafe(self._deliver_each, batch, done)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    def _post(
        self, batch: list[Pending], outs: list[np.ndarray] | None, error: BaseException | None, start: int, end: int
    ) -> None:
        try:
            self.loop.call_soon_threadsafe(self._deliver, batch, outs, error, start, end)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    # -- back on the loop thread -----------------------------------------------------

    def _deliver_each(
        self, batch: list[Pending], done: list[tuple[list[np.ndarray] | None, BaseException | None, int, int]]
    ) -> None:
        for p, (outs, error, start, end) in zip(batch, done):
            self._deliver([p], outs, error, start, end)

    def _deliver(
        self, batch: list[Pending], outs: list[np.ndarray] | None, error: BaseException | None, start: int, end: int
    ) -> None:
        infer_ns = end - start
        rows = sum(p.rows for p in batch)
        if outs is not None:
            self.stats.executed(rows, infer_ns)
        offset = 0
        for p in batch:
            fut: asyncio.Future[Result] = p.payload[1]
            if fut.done():
                offset += p.rows
                continue
            if outs is None:
                fut.set_exception(error or UnavailableError("not run"))
                continue
            if len(batch) == 1:
                mine = outs
            else:
                mine = [o[offset : offset + p.rows] for o in outs]
            offset += p.rows
            fut.set_result((mine, start - p.enqueued_ns, infer_ns, rows))


Executor = InlineExecutor | ThreadedExecutor


def sample_inputs(backend: Backend, golden: GoldenSet | None) -> list[np.ndarray]:
    """One batch-1 input set: the first golden row when there is one, else zeros."""
    from edge_runtime.spec.tensors import numpy_dtype

    if golden is not None:
        arrays = golden.inputs
        return [a[:1] if s.has_batch_dim and a.shape and a.shape[0] >= 1 else a for s, a in zip(backend.inputs, arrays)]
    return [
        np.zeros(tuple(1 if d == -1 else d for d in s.shape), dtype=numpy_dtype(s.datatype)) for s in backend.inputs
    ]


def measure_invoke_us(backend: Backend, arrays: Sequence[np.ndarray], budget_s: float = 0.05, runs: int = 21) -> float:
    """Median time of one batch-1 run after a warm-up, in microseconds (bounded by ``budget_s``)."""
    backend.run(arrays)
    times = []
    stop = time.perf_counter() + budget_s
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        backend.run(arrays)
        times.append(time.perf_counter_ns() - t0)
        if time.perf_counter() > stop:
            break
    times.sort()
    return times[len(times) // 2] / 1000
