"""Acceptance 5: hot swap under load. Activating a new version while 8 clients send
requests in a loop fails no request and switches the answers from the old version's to
the new one's; a version whose self-test fails is never served and is recorded as failed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from edge_runtime.store.state import write_state
from harness.wait import wait_until
from serving.support import Env, Load, metric_value, reference, request

pytestmark = pytest.mark.integration

def test_swap_under_load_fails_no_request_and_never_serves_a_failing_version(
    env: Env, rows: np.ndarray, make_bundle: Any, bad_golden_bundle: Any, cli: Any
) -> None:
    v1, v2, v3 = make_bundle(1), make_bundle(2, model="fraud_int8io.tflite"), bad_golden_bundle(3)
    env.install(v1)
    env.install(v2, activate=False)
    env.install(v3, activate=False)
    expected = {1: reference(v1, env.keys.root, rows), 2: reference(v2, env.keys.root, rows)}
    assert np.mean(expected[1] != expected[2]) > 0.5, "the two versions must answer differently"
    d = env.start()
    store = env.store()
    with Load(d.port, rows) as load:
        wait_until(lambda: load.count(1) >= 200, "v1 answers")
        result = cli(["models", "activate", "fraud", "2", "--config", d.config])
        assert result.code == 0, result.err
        wait_until(lambda: all(a and a[-1][0] == 2 for a in load.answers), "every client answered by v2")
        n2 = load.count(2)
        wait_until(lambda: load.count(2) >= n2 + 200, "more v2 answers")
        store.activate("fraud", 3)  # as an update client would: no self-test before activation
        wait_until(lambda: 3 in store.state("fraud").failed, "v3 recorded as failed")
        n2 = load.count(2)
        wait_until(lambda: load.count(2) >= n2 + 200, "v2 answering after the failed swap")
    assert load.failures == []
    assert 3 not in load.versions_seen()
    for answers in load.answers:
        versions = [v for v, _, _ in answers]
        assert versions == sorted(versions), "a client went back to the old version"
        assert versions[0] == 1 and versions[-1] == 2
        for version, row, value in answers:
            np.testing.assert_allclose(value, expected[version][row, 0], rtol=0, atol=1e-6)
    state = store.state("fraud")
    assert state.active == 2 and state.serving == 2
    assert "differs from golden" in state.failed[3]
    text = request(d.port, "GET", "/metrics")[1].decode()
    assert metric_value(text, "edge_swaps_total", model="fraud", outcome="success") == 1
    assert metric_value(text, "edge_swaps_total", model="fraud", outcome="failed") == 1
    assert orjson.loads(request(d.port, "GET", "/v2/models/fraud")[1])["versions"] == ["2"]


def test_swap_on_threaded_executor_drains_the_old_version(env: Env, rows: np.ndarray, make_bundle: Any) -> None:
    v1, v2 = make_bundle(1), make_bundle(2, model="fraud_int8io.tflite")
    env.install(v1)
    env.install(v2, activate=False)
    d = env.start('[models.fraud]\nexecution = "threads"\ninstances = 2\nmax_batch_size = 8\nmax_queue_delay_us = 1000\n')
    store = env.store()
    with Load(d.port, rows) as load:
        wait_until(lambda: load.count(1) >= 200, "v1 answers")
        store.activate("fraud", 2)
        wait_until(lambda: all(a and a[-1][0] == 2 for a in load.answers), "every client answered by v2")
    assert load.failures == []
    wait_until(lambda: "fraud: v1 unloaded" in d.log(), "v1 unloaded")
    assert store.state("fraud").serving == 2


def test_rollback_and_a_corrupted_version_are_handled(env: Env, rows: np.ndarray, make_bundle: Any) -> None:
    v1, v2 = make_bundle(1), make_bundle(2, model="fraud_int8io.tflite")
    env.install(v1)
    env.install(v2)
    d = env.start()
    store = env.store()
    assert orjson.loads(request(d.port, "GET", "/v2/models/fraud")[1])["versions"] == ["2"]
    store.rollback("fraud")
    wait_until(lambda: orjson.loads(request(d.port, "GET", "/v2/models/fraud")[1])["versions"] == ["1"], "rollback")
    wait_until(lambda: store.state("fraud").serving == 1, "serving v1 recorded")
    # A version whose files were altered on disk fails verification: never served, quarantined.
    model_file = store.version_dir("fraud", 2) / "model.tflite"
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_file.write_bytes(bytes(data))
    state = store.state("fraud")
    state.failed.pop(2, None)

    state.active = 2
    write_state(store.path / "fraud" / "state.json", state)
    wait_until(lambda: 2 in store.state("fraud").quarantined and store.state("fraud").active == 1, "v2 quarantined and v1 active again")
    status, raw = request(d.port, "POST", "/v2/models/fraud/infer", orjson.dumps(
        {"inputs": [{"name": "input_0", "datatype": "FP32", "shape": [1, 30], "data": rows[0].tolist()}]}))
    assert status == 200 and orjson.loads(raw)["model_version"] == "1"
    assert "verification failed" in store.state("fraud").failed[2]
