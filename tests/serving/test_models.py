"""Unit tests of routing (A/B weights, versions, shadow), shadow disagreement and the metrics exposition."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from edge_runtime.config import ModelConfig
from edge_runtime.exceptions import NotFoundError, UnavailableError
from edge_runtime.serving.metrics import Histogram, Metrics
from edge_runtime.serving.models import LoadedVersion, ServedModel, batch_policy, build_routing, disagreement


class _Exec:
    inline = True
    closed = False


def version(v: int) -> LoadedVersion:
    """A LoadedVersion stand-in: routing only looks at name, version and identity."""
    lv: Any = object.__new__(LoadedVersion)
    lv.name, lv.version, lv.executor = "m", v, _Exec()
    return lv  # type: ignore[no-any-return]


def test_ab_weights_follow_the_config() -> None:
    random.seed(3)
    v1, v2 = version(1), version(2)
    routing, warnings = build_routing(v1, {1: v1, 2: v2}, ModelConfig(traffic={"1": 80, "2": 20}))
    assert warnings == []
    picks = [routing.pick(None).version for _ in range(20_000)]
    assert abs(picks.count(1) / len(picks) - 0.8) < 0.02
    assert routing.pick(2) is v2 and routing.pick(1) is v1


def test_missing_traffic_and_shadow_versions_are_warned_and_ignored() -> None:
    v1 = version(1)
    routing, warnings = build_routing(v1, {1: v1}, ModelConfig(traffic={"4": 100}, shadow=5))
    assert routing.pick(None) is v1 and routing.shadow is None
    assert any("traffic names v4" in w for w in warnings)
    assert any("shadow v5 is not loaded" in w for w in warnings)


def test_roles_and_version_lookup() -> None:
    v1, v2, v3 = version(1), version(2), version(3)
    routing, _ = build_routing(v2, {1: v1, 2: v2, 3: v3}, ModelConfig(traffic={"1": 1, "2": 1}, shadow=3))
    assert routing.roles() == [(1, "traffic"), (2, "default"), (3, "shadow")]
    with pytest.raises(NotFoundError, match="no version 9 loaded"):
        routing.pick(9)


def test_a_model_without_routing_is_unavailable() -> None:
    with pytest.raises(UnavailableError, match="not ready: loading"):
        ServedModel("m").route(None)


def test_batch_policy_never_merges_a_model_without_batch_dimension() -> None:
    cfg = ModelConfig(max_batch_size=16, preferred_batch_sizes=[4, 8])
    assert batch_policy(cfg, batchable=True).max_batch_size == 16
    flat = batch_policy(cfg, batchable=False)
    assert flat.max_batch_size == 1 and flat.preferred_batch_sizes == ()
    assert batch_policy(ModelConfig(max_batch_size=0), batchable=True).max_batch_size == 1


def test_disagreement_max_error_and_top1() -> None:
    a = [np.array([[0.9], [0.2], [0.6]], np.float32)]
    s = [np.array([[0.8], [0.3], [0.4]], np.float32)]
    worst, differ, rows = disagreement(a, s)
    assert worst == pytest.approx(0.2, abs=1e-6) and differ == 1 and rows == 3
    logits_a = [np.array([[1, 2, 3], [3, 2, 1]], np.float32)]
    logits_s = [np.array([[1, 2, 3], [1, 2, 3]], np.float32)]
    assert disagreement(logits_a, logits_s)[1:] == (1, 2)
    assert disagreement(a, [np.zeros((2, 1), np.float32)])[0] == float("inf")


def test_histogram_and_exposition() -> None:
    h = Histogram((1, 2, 4))
    for v in (1, 1, 3, 9):
        h.observe(v)
    assert h.cumulative() == [("1", 2), ("2", 2), ("4", 3), ("+Inf", 4)]
    m = Metrics()
    s = m.version("fraud", 3)
    s.executed(4, 2000)
    s.answered(4, 10_000, 1000, 500, 2000, 300)
    s.failed("bad_request")
    m.shadow("fraud", 3, 4).compared(0.25, 1, 4)
    m.swap("fraud", "success")
    text = m.exposition().decode()
    assert 'edge_requests_total{model="fraud",outcome="success",version="3"} 1.0' in text
    assert 'edge_requests_total{model="fraud",outcome="bad_request",version="3"} 1.0' in text
    assert 'edge_batch_size_bucket{le="4",model="fraud",version="3"} 1.0' in text
    assert 'edge_shadow_top1_disagreements_total{model="fraud",shadow_version="4",version="3"} 1.0' in text
    assert 'edge_swaps_total{model="fraud",outcome="success"} 1.0' in text
    triton = s.to_triton()
    assert triton["inference_count"] == 4 and triton["execution_count"] == 1
    assert triton["batch_stats"][0]["batch_size"] == 4
    assert triton["inference_stats"]["queue"] == {"count": 1, "ns": 1000}
