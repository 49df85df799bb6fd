"""Acceptance 6 and version routing: A/B weights, shadow scoring, ``/versions/{v}``, version policy."""

from __future__ import annotations

import http.client
from typing import Any

import numpy as np
import orjson
import pytest

from harness.wait import wait_until
from serving.support import Env, infer_json, metric_value, output_of, reference, request

pytestmark = pytest.mark.integration


@pytest.fixture
def two_versions(env: Env, make_bundle: Any) -> tuple[Any, Any]:
    """fraud v1 (float) active, v2 (int8 I/O) installed."""
    v1, v2 = make_bundle(1), make_bundle(2, model="fraud_int8io.tflite")
    env.install(v1)
    env.install(v2, activate=False)
    return v1, v2


def test_ab_weights_split_traffic_80_20(env: Env, two_versions: Any, rows: np.ndarray) -> None:
    v1, v2 = two_versions
    d = env.start('[models.fraud]\ntraffic = { "1" = 80, "2" = 20 }\n')
    expected = {1: reference(v1, env.keys.root, rows), 2: reference(v2, env.keys.root, rows)}
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
    counts = {1: 0, 2: 0}
    for i in range(2000):
        row = i % len(rows)
        status, body = infer_json(d.port, "fraud", rows[row : row + 1], conn=conn)
        assert status == 200
        version = int(body["model_version"])
        counts[version] += 1
        np.testing.assert_allclose(output_of(body)[0], expected[version][row], rtol=0, atol=1e-6)
    conn.close()
    share = counts[1] / 2000
    assert 0.75 <= share <= 0.85, counts
    # Versioned requests bypass the weights.
    for v in (1, 2):
        status, body = infer_json(d.port, "fraud", rows[:1], version=v)
        assert status == 200 and body["model_version"] == str(v)


def test_shadow_disagreement_is_in_metrics_never_in_a_response(env: Env, two_versions: Any, rows: np.ndarray) -> None:
    v1, v2 = two_versions
    d = env.start("[models.fraud]\nshadow = 2\n")
    expected = reference(v1, env.keys.root, rows)
    shadow = reference(v2, env.keys.root, rows)
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
    n = 300
    sent = [i % len(rows) for i in range(n)]
    for row in sent:
        status, body = infer_json(d.port, "fraud", rows[row : row + 1], conn=conn)
        assert status == 200
        assert body["model_version"] == "1"
        assert [o["name"] for o in body["outputs"]] == ["output_0"]
        np.testing.assert_array_equal(output_of(body)[0], expected[row])
    conn.close()
    # What the shadow comparisons must add up to, from the two versions' own outputs (the
    # fraud model's single output is a probability: top-1 is the decision at 0.5).
    worst_expected = float(np.max(np.abs(expected[sent].astype(np.float64) - shadow[sent].astype(np.float64))))
    flips_expected = int(np.count_nonzero((expected[sent, 0] >= 0.5) != (shadow[sent, 0] >= 0.5)))
    labels = {"model": "fraud", "version": "1", "shadow_version": "2"}

    def all_compared() -> str:
        text = request(d.port, "GET", "/metrics")[1].decode()
        return text if metric_value(text, "edge_shadow_comparisons_total", **labels) == n else ""

    # Shadow runs are scored after the answer is sent: wait for the daemon to count all of them.
    text = wait_until(all_compared, f"{n} shadow comparisons")
    assert metric_value(text, "edge_shadow_max_abs_error_count", **labels) == n
    worst = metric_value(text, "edge_shadow_max_abs_error_worst", **labels)
    assert worst is not None and 0 < worst < 0.2  # int8 I/O against float: small but not zero
    assert worst == pytest.approx(worst_expected, abs=1e-6)
    assert metric_value(text, "edge_shadow_top1_disagreements_total", **labels) == flips_expected
    assert metric_value(text, "edge_model_loaded", model="fraud", version="2", role="shadow") == 1
    # The shadow version answered nothing: all successes are v1's.
    assert metric_value(text, "edge_requests_total", model="fraud", version="2", outcome="success") in (None, 0.0)


def test_version_policies(env: Env, two_versions: Any, make_bundle: Any) -> None:
    env.install(make_bundle(3), activate=True)
    d = env.start("[models.fraud]\nversion_policy = \"latest\"\nnum_versions = 2\n")
    meta = orjson.loads(request(d.port, "GET", "/v2/models/fraud")[1])
    assert meta["versions"] == ["2", "3"]
    assert request(d.port, "GET", "/v2/models/fraud/versions/1/ready")[0] == 404
    assert request(d.port, "GET", "/v2/models/fraud/versions/2/ready")[0] == 200
    d.stop()
    d = env.start("[models.fraud]\nversion_policy = \"specific\"\nversions = [1]\n")
    assert orjson.loads(request(d.port, "GET", "/v2/models/fraud")[1])["versions"] == ["1", "3"]
    status, body = infer_json(d.port, "fraud", np.zeros((1, 30), np.float32))
    assert status == 200 and body["model_version"] == "3"
    d.stop()
    d = env.start("[models.fraud]\nversion_policy = \"all\"\n")
    assert orjson.loads(request(d.port, "GET", "/v2/models/fraud")[1])["versions"] == ["1", "2", "3"]
