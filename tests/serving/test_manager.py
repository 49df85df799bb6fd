"""The model manager in this process (no daemon): the order of what a swap records and reports."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_runtime.config import parse_config
from edge_runtime.serving.manager import ModelManager
from edge_runtime.serving.metrics import Metrics
from harness.wait import wait_until
from serving.support import Env


def test_serving_is_recorded_before_the_old_version_is_reported_unloaded(
    env: Env, make_bundle: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    env.install(make_bundle(1))
    env.install(make_bundle(2, model="fraud_int8io.tflite"), activate=False)
    store = env.store()
    serving_when_unloaded: list[int | None] = []

    class OnUnload(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("fraud: v1 unloaded"):
                serving_when_unloaded.append(store.state("fraud").serving)

    caplog.set_level(logging.INFO, logger="edge_runtime.serving")
    handler = OnUnload()
    logging.getLogger("edge_runtime.serving").addHandler(handler)
    loop = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=loop.run_forever, name="test-loop", daemon=True)
    loop_thread.start()
    # Threaded execution: the old version has worker threads to drain, as in the daemon test.
    manager = ModelManager(store, parse_config({"models": {"fraud": {"execution": "threads"}}}), Metrics(), loop)
    try:
        manager.start()
        assert store.state("fraud").serving == 1
        store.activate("fraud", 2)
        manager.wake()
        wait_until(lambda: serving_when_unloaded, what="fraud: v1 unloaded")
    finally:
        manager.stop(10.0)
        logging.getLogger("edge_runtime.serving").removeHandler(handler)
        loop.call_soon_threadsafe(loop.stop)
        loop_thread.join()
        loop.close()
    assert serving_when_unloaded == [2], "state.json still named v1 when v1 was reported unloaded"
