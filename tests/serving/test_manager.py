"""The model manager in this process (no daemon): every state change is in ``state.json``
before the log reports it, so a reader that waits for a log line never finds the store behind."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.config import parse_config
from edge_runtime.serving.manager import ModelManager
from edge_runtime.serving.metrics import Metrics
from edge_runtime.store.state import ModelState
from edge_runtime.store.store import ModelStore
from harness.wait import wait_until
from serving.support import Env


class StateWhenLogged(logging.Handler):
    """Reads ``fraud``'s state.json at the moment a message starting with ``prefix`` is logged."""

    def __init__(self, store: ModelStore, prefix: str) -> None:
        super().__init__()
        self.store = store
        self.prefix = prefix
        self.seen: list[ModelState] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(self.prefix):
            self.seen.append(self.store.state("fraud"))


@contextmanager
def running_manager(store: ModelStore, caplog: pytest.LogCaptureFixture, *watches: StateWhenLogged,
                    metrics: Metrics | None = None) -> Iterator[ModelManager]:
    """A started manager (threaded execution: old versions have workers to drain) on its own loop."""
    caplog.set_level(logging.INFO, logger="edge_runtime.serving")
    logger = logging.getLogger("edge_runtime.serving")
    for w in watches:
        logger.addHandler(w)
    loop = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=loop.run_forever, name="test-loop", daemon=True)
    loop_thread.start()
    manager = ModelManager(store, parse_config({"models": {"fraud": {"execution": "threads"}}}), metrics or Metrics(),
                           loop)
    try:
        manager.start()
        yield manager
    finally:
        manager.stop(10.0)
        for w in watches:
            logger.removeHandler(w)
        loop.call_soon_threadsafe(loop.stop)
        loop_thread.join()
        loop.close()


def test_serving_is_recorded_before_the_swap_is_reported(
    env: Env, make_bundle: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    env.install(make_bundle(1))
    env.install(make_bundle(2, model="fraud_int8io.tflite"), activate=False)
    store = env.store()
    now_serving = StateWhenLogged(store, "fraud: now serving v2")
    unloaded = StateWhenLogged(store, "fraud: v1 unloaded")
    with running_manager(store, caplog, now_serving, unloaded) as manager:
        assert store.state("fraud").serving == 1
        store.activate("fraud", 2)
        manager.wake()
        wait_until(lambda: unloaded.seen, "fraud: v1 unloaded")
    assert [s.serving for s in now_serving.seen] == [2], "state.json named v1 when v2 was reported serving"
    assert [s.serving for s in unloaded.seen] == [2], "state.json still named v1 when v1 was reported unloaded"


def test_a_failed_start_is_recorded_before_it_is_reported(
    env: Env, make_bundle: Callable[..., Path], bad_golden_bundle: Any, caplog: pytest.LogCaptureFixture
) -> None:
    env.install(make_bundle(1))
    env.install(bad_golden_bundle(2))  # active, but its self-test fails
    store = env.store()
    cannot = StateWhenLogged(store, "fraud: cannot serve v2")
    with running_manager(store, caplog, cannot):
        pass  # start() loads every model before it returns
    assert len(cannot.seen) == 1
    assert "differs from golden" in cannot.seen[0].failed[2], "v2's failure was reported before it was recorded"


def test_the_manager_leaves_its_metrics_alone_and_a_scrape_asks_it_what_is_loaded(
    env: Env, make_bundle: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    env.install(make_bundle(1))
    metrics = Metrics()
    hooks = {k: v for k, v in vars(metrics).items() if callable(v)}
    with running_manager(env.store(), caplog, metrics=metrics) as manager:
        assert {k: v for k, v in vars(metrics).items() if callable(v)} == hooks  # nothing assigned into it
        text = metrics.exposition(manager).decode()
    assert 'edge_model_loaded{model="fraud",role="default",version="1"} 1.0' in text
    assert 'edge_queue_depth{model="fraud",version="1"} 0.0' in text
    assert 'edge_model_delegate{delegate=' in text
