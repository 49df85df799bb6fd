"""Acceptance 4: 16 concurrent keep-alive clients on a batching model get merged batches,
and every answer equals the unbatched answer for its own input.
"""

from __future__ import annotations

import http.client
import threading
from typing import Any

import numpy as np
import orjson
import pytest

from harness.wait import wait_until
from serving.support import HOLD_FILE, Env, hold_env, metric_value, pack_onnx, queue_depth, reference, request

pytestmark = pytest.mark.integration

CLIENTS = 16
PER_CLIENT = 30


def test_concurrent_clients_are_batched_and_answers_stay_per_request(
    env: Env, tmp_path: Any, onnx_models: dict[str, Any]
) -> None:
    # Whether requests queue behind a busy worker depends on the CPU's speed, so the test
    # holds the worker (the test-only hook in edge_runtime/serving/hooks.py) until every
    # client's first request is waiting, then lets it go: the first batches are then full
    # on any machine. The lone-request shortcut on the loop is off for the same reason.
    hold = env.base / HOLD_FILE
    hold.touch()
    bundle = pack_onnx(onnx_models["slow"], "slow", 1, env.keys, tmp_path / "slow.bundle",
                       [np.zeros((1, 256), np.float32)])
    env.install(bundle)
    d = env.start(
        '[models.slow]\nexecution = "threads"\ninstances = 1\nmax_batch_size = 8\nmax_queue_delay_us = 2000\n'
        "stack_max_us = 1000000\n"
        "idle_inline_max_us = 0\n",
        env_extra=hold_env(env.base),
    )
    rows = np.random.default_rng(1).standard_normal((CLIENTS * PER_CLIENT, 256)).astype(np.float32)
    expected = reference(bundle, env.keys.root, rows)
    answers: dict[int, list[tuple[int, np.ndarray]]] = {i: [] for i in range(CLIENTS)}
    failures: list[str] = []

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=300)
        for k in range(PER_CLIENT):
            row = (i * PER_CLIENT + k) % len(rows)
            body = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 256],
                                             "data": rows[row].tolist()}]})
            status, raw = request(d.port, "POST", "/v2/models/slow/infer", body, conn=conn)
            if status != 200:
                failures.append(f"{status} {raw[:200]!r}")
                continue
            out = orjson.loads(raw)["outputs"][0]
            answers[i].append((row, np.asarray(out["data"], np.float32).reshape(out["shape"])))
        conn.close()

    threads = [threading.Thread(target=client, args=(i,), name=f"client-{i}") for i in range(CLIENTS)]
    for t in threads:
        t.start()

    wait_until(lambda: queue_depth(d.port, "slow") == CLIENTS, what=f"all {CLIENTS} first requests queued behind the held worker")
    hold.unlink()
    for t in threads:
        t.join()
    assert failures == []
    assert sum(len(a) for a in answers.values()) == CLIENTS * PER_CLIENT
    for got in answers.values():
        for row, out in got:
            assert out.shape == (1, 256)
            np.testing.assert_allclose(out[0], expected[row], rtol=0, atol=1e-5)

    text = request(d.port, "GET", "/metrics")[1].decode()
    total = metric_value(text, "edge_batch_size_count", model="slow", version="1")
    singles = metric_value(text, "edge_batch_size_bucket", model="slow", version="1", le="1")
    assert total is not None and singles is not None
    assert total > singles, "no batch held more than one request"
    assert metric_value(text, "edge_inferences_total", model="slow", version="1") == CLIENTS * PER_CLIENT
    stats = orjson.loads(request(d.port, "GET", "/v2/models/slow/stats")[1])["model_stats"][0]
    assert max(b["batch_size"] for b in stats["batch_stats"]) == 8, "the 16 queued requests ran as two full batches"
    assert stats["execution_count"] < CLIENTS * PER_CLIENT


def test_batching_config_is_reported(env: Env) -> None:
    d = env.start('[models.fraud]\nexecution = "threads"\nmax_batch_size = 4\npreferred_batch_sizes = [2, 4]\n')
    config = orjson.loads(request(d.port, "GET", "/v2/models/fraud/config")[1])
    assert config["dynamic_batching"]["preferred_batch_size"] == [2, 4]
    assert config["max_batch_size"] == 4
    assert config["parameters"]["execution"]["string_value"] == "threads"


def test_a_request_alone_in_the_server_skips_the_worker_threads(env: Env, rows: np.ndarray, make_bundle: Any) -> None:
    """A threaded model answers a lone request on the loop's own interpreter (no queue time);
    with ``idle_inline_max_us = 0`` every request goes through the queue."""
    expected = reference(make_bundle(1), env.keys.root, rows[:20])
    for idle_max, queued in ((10_000_000, False), (0, True)):  # "always" whatever the CPU, and never
        d = env.start(f'[models.fraud]\nexecution = "threads"\nidle_inline_max_us = {idle_max}\n')
        conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
        for i in range(20):
            status, raw = request(d.port, "POST", "/v2/models/fraud/infer", orjson.dumps(
                {"inputs": [{"name": "input_0", "datatype": "FP32", "shape": [1, 30], "data": rows[i].tolist()}]}), conn=conn)
            assert status == 200
            np.testing.assert_allclose(orjson.loads(raw)["outputs"][0]["data"], expected[i], rtol=0, atol=1e-6)
        conn.close()
        stats = orjson.loads(request(d.port, "GET", "/v2/models/fraud/stats")[1])["model_stats"][0]
        assert stats["inference_stats"]["success"]["count"] == 20
        assert (stats["inference_stats"]["queue"]["ns"] > 0) == queued
        d.stop()
