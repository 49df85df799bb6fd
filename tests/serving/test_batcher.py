"""Unit tests of the batch-forming rules (pure logic, driven with plain payloads and threads)."""

from __future__ import annotations

import threading

import pytest

from edge_runtime.exceptions import UnavailableError
from edge_runtime.serving.batcher import BatchPolicy, BatchQueue, Pending
from harness.wait import DEFAULT_TIMEOUT_S, wait_until


def idle_worker(q: BatchQueue) -> tuple[threading.Thread, list[list[Pending] | None]]:
    """A worker blocked in ``take`` (so the queue has an idle worker), recording what it got."""
    got: list[list[Pending] | None] = []
    t = threading.Thread(target=lambda: got.append(q.take()))
    t.start()
    wait_until(lambda: q._idle > 0, "the worker to wait in take()")  # noqa: SLF001 - until it is really idle
    return t, got


def test_request_finding_an_idle_worker_runs_at_once_without_waiting() -> None:
    # The clock never moves: a worker that waited for company would wait for ever.
    q = BatchQueue(BatchPolicy(max_batch_size=8, max_queue_delay_us=5_000_000), clock_ns=lambda: 0)
    t, got = idle_worker(q)
    q.put(Pending(1, "a", enqueued_ns=0))
    t.join(DEFAULT_TIMEOUT_S)
    assert not t.is_alive(), "an idle worker waited for company"
    assert [[p.payload for p in batch] for batch in got if batch] == [["a"]]


def test_backlog_waits_for_company_then_takes_what_is_there() -> None:
    now_ns = [0]  # a clock the test moves: the delay passes when the test says so, not when the CPU gets there
    q = BatchQueue(BatchPolicy(max_batch_size=8, max_queue_delay_us=400_000), clock_ns=lambda: now_ns[0])
    for i in range(3):  # no worker idle: these arrived while every worker was busy
        q.put(Pending(1, i, enqueued_ns=0))
    got: list[list[Pending] | None] = []
    t = threading.Thread(target=lambda: got.append(q.take()), name="worker")
    t.start()
    q.put(Pending(1, 3, enqueued_ns=0))  # arrives before the delay has passed: joins the batch
    assert t.is_alive() and not got, "a batch of 3 of 8 went before the delay passed"
    now_ns[0] = 400_000 * 1000
    t.join()
    assert got and got[0] is not None
    assert [p.payload for p in got[0]] == [0, 1, 2, 3]  # not full, yet taken once the delay passed


def test_full_batch_and_preferred_sizes_go_at_once() -> None:
    q = BatchQueue(BatchPolicy(max_batch_size=4, max_queue_delay_us=10_000_000))
    for i in range(6):
        q.put(Pending(1, i))
    batch = q.take()
    assert batch is not None and [p.payload for p in batch] == [0, 1, 2, 3]
    q = BatchQueue(BatchPolicy(max_batch_size=8, max_queue_delay_us=10_000_000, preferred_batch_sizes=(2, 3)))
    for i in range(5):
        q.put(Pending(1, i))
    batch = q.take()
    assert batch is not None and [p.payload for p in batch] == [0, 1, 2]


def test_rows_count_toward_the_batch_size_and_big_requests_run_alone() -> None:
    q = BatchQueue(BatchPolicy(max_batch_size=4, max_queue_delay_us=0))
    q.put(Pending(3, "three"))
    q.put(Pending(2, "two"))
    q.put(Pending(9, "nine"))
    q.put(Pending(1, "one"))
    batches = [[p.payload for p in q.take() or []] for _ in range(3)]
    assert batches == [["three"], ["two"], ["nine"]]
    assert [p.payload for p in q.take() or []] == ["one"]


def test_no_merging_when_max_batch_size_is_one() -> None:
    q = BatchQueue(BatchPolicy(max_batch_size=1, max_queue_delay_us=1_000_000))
    q.put(Pending(1, "a"))
    q.put(Pending(1, "b"))
    assert [p.payload for p in q.take() or []] == ["a"]


def test_full_queue_is_refused_at_once() -> None:
    q = BatchQueue(BatchPolicy(max_queue_size=2), model="m")
    q.put(Pending(1, 1))
    q.put(Pending(1, 2))
    with pytest.raises(UnavailableError, match="queue full"):
        q.put(Pending(1, 3))
    assert len(q) == 2


def test_close_drains_then_ends() -> None:
    q = BatchQueue(BatchPolicy(max_batch_size=8, max_queue_delay_us=10_000_000))
    q.put(Pending(1, "x"))
    q.close()
    with pytest.raises(UnavailableError, match="being unloaded"):
        q.put(Pending(1, "y"))
    batch = q.take()
    assert batch is not None and [p.payload for p in batch] == ["x"]  # no waiting once closed
    assert q.take() is None


def test_policy_change_applies_to_a_waiting_worker() -> None:
    # The clock never moves: without the policy change the worker would wait for ever.
    q = BatchQueue(BatchPolicy(max_batch_size=8, max_queue_delay_us=60_000_000), clock_ns=lambda: 0)
    q.put(Pending(1, "a", enqueued_ns=0))
    got: list[list[Pending] | None] = []
    t = threading.Thread(target=lambda: got.append(q.take()), name="worker")
    t.start()
    assert t.is_alive() and not got
    q.set_policy(BatchPolicy(max_batch_size=8, max_queue_delay_us=0))
    t.join(DEFAULT_TIMEOUT_S)
    assert not t.is_alive() and got and got[0] is not None
