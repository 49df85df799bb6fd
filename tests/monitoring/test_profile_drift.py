"""Reference profiles and streaming drift: pure code, no files, no daemon."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from edge_runtime.bundle.profile import build_profile, layout_of, parse_profile
from edge_runtime.config import DriftConfig
from edge_runtime.exceptions import ManifestError
from edge_runtime.monitoring.drift import BUCKETS, FLUSH_REQUESTS, FLUSH_VALUES, DriftTracker, psi, worst_features
from edge_runtime.spec.tensors import TensorSpec
from edge_runtime.trust.canonical import canonical_json

X = TensorSpec("x", "FP32", (-1, 6))
PROBS = TensorSpec("probs", "FP32", (-1, 3))
IMAGE = TensorSpec("image", "FP32", (1, 8, 8, 3))
TOKENS = TensorSpec("ids", "INT64", (-1, 128))


def _model(x: np.ndarray) -> np.ndarray:
    """A fixed 3-class softmax of the first three features."""
    z = x[:, :3] * 1.5
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _rows(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    x[:, 5] = rng.integers(0, 2, size=n)  # a binary feature: ties in the quantiles
    return x


def _profile(n: int = 2000) -> Any:
    x = _rows(n, 0)
    calls = [([x[i:i + 64]], [_model(x[i:i + 64])]) for i in range(0, n, 64)]
    return build_profile([X], [PROBS], calls)


def _tracker(threshold: float = 0.25, window: int = 1000) -> tuple[DriftTracker, list[tuple[str, dict[str, Any]]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    cfg = DriftConfig(threshold=threshold, clear=0.1, window_rows=window, min_rows=200, max_sketched_per_s=0)
    return DriftTracker(_profile(), cfg, lambda kind, fields: events.append((kind, fields))), events


def _feed(tracker: DriftTracker, x: np.ndarray, rows_per_request: int = 10) -> None:
    for i in range(0, len(x), rows_per_request):
        b = x[i:i + rows_per_request]
        tracker.observe([b], [_model(b)])


def test_layouts_cover_columns_images_and_long_vectors() -> None:
    assert (layout_of(X).kind, layout_of(X).count) == ("columns", 6)
    assert (layout_of(IMAGE).kind, layout_of(IMAGE).count) == ("channels_last", 3)
    assert layout_of(TensorSpec("chw", "FP32", (-1, 3, 32, 32))).kind == "channels_first"
    assert (layout_of(TOKENS).kind, layout_of(TOKENS).count) == ("whole", 1)
    assert layout_of(TensorSpec("s", "FP32", (-1,))).kind == "scalar"


def test_profile_is_small_canonical_and_parses_back() -> None:
    prof = _profile()
    blob = prof.to_bytes()
    assert len(blob) < 8 * 1024
    names = [f.name for f in prof.features]
    assert names == [f"x[{i}]" for i in range(6)] + [f"probs[{i}]" for i in range(3)] + ["probs:class"]
    back = parse_profile(blob, [X], [PROBS])
    assert back.rows == 2000 and [f.name for f in back.features] == names
    binary = back.features[5]
    assert len(binary.reference) == 2 + 1 and abs(binary.reference[0] - 0.5) < 0.05  # zeros, (0, 1), ones
    assert back.features[-1].classes == 3 and abs(sum(back.features[-1].reference) - 1) < 1e-6


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(_type="other"), "_type"),
        (lambda d: d["features"][0].update(tensor=3), "'tensor'"),
        (lambda d: d["features"][0].update(index=40), "'index'"),
        (lambda d: d["features"][0].update(edges=[2.0, 1.0] + d["features"][0]["edges"][2:]), "ascending"),
        (lambda d: d["features"][0].update(reference=[1.0]), "one more reference share"),
        (lambda d: d["features"][0].update(reference=[0.5] * len(d["features"][0]["reference"])), "sum to 1"),
        (lambda d: d["features"][-1].update(classes=7), "class feature"),
        (lambda d: d.update(rows=1), "'rows'"),
    ],
)
def test_malformed_profile_is_refused(mutate: Any, message: str) -> None:
    doc = json.loads(_profile().to_bytes())
    mutate(doc)
    with pytest.raises(ManifestError, match=message):
        parse_profile(canonical_json(doc), [X], [PROBS])


def test_psi_is_zero_for_the_reference_and_grows_with_shift() -> None:
    ref = np.full(10, 0.1)
    assert psi(ref, np.full(10, 100.0)) == pytest.approx(0.0, abs=1e-9)
    shifted = np.array([0, 0, 0, 0, 0, 100, 200, 300, 200, 200], dtype=float)
    assert psi(ref, shifted) > 1.0


def test_rows_from_the_reference_distribution_stay_under_the_threshold() -> None:
    tracker, events = _tracker()
    _feed(tracker, _rows(1000, seed=7))
    r = tracker.report()
    assert r.rows == 1000 and r.score is not None and r.score < 0.1, r.features
    assert not r.alert and events == []


def test_one_scaled_feature_crosses_the_threshold_names_it_and_alerts_once() -> None:
    tracker, events = _tracker()
    _feed(tracker, _rows(1000, seed=7))
    shifted = _rows(2000, seed=8)
    shifted[:, 4] *= 3.0
    _feed(tracker, shifted[:1000])
    r = tracker.report()
    assert r.alert and r.score is not None and r.score >= 0.25
    assert r.worst_feature == "x[4]" and worst_features(r, 1)[0][0] == "x[4]"
    _feed(tracker, shifted[1000:])  # still drifting: no second event
    tracker.report()
    assert [k for k, _ in events] == ["drift"]
    assert events[0][1]["worst_feature"] == "x[4]"
    _feed(tracker, _rows(1200, seed=9))  # back to normal: the window forgets the shift, the alert clears
    r = tracker.report()
    assert not r.alert and [k for k, _ in events] == ["drift", "drift_cleared"]


def test_a_shift_in_the_outputs_shows_in_the_class_feature() -> None:
    tracker, _ = _tracker()
    x = _rows(1000, seed=3)
    x[:, 0] += 3.0  # class 0 wins far more often
    _feed(tracker, x)
    r = tracker.report()
    assert r.features["probs:class"] > 0.25 and r.features["x[0]"] > 0.25


def test_memory_is_fixed_whatever_is_fed() -> None:
    tracker, _ = _tracker(window=500)
    _feed(tracker, _rows(5000, seed=1), rows_per_request=25)
    r = tracker.report()
    assert r.rows <= 500 and r.seen == 5000
    assert len(tracker._buckets) <= BUCKETS + 1 and tracker._pending == []


def test_image_channels_are_features() -> None:
    rng = np.random.default_rng(0)
    imgs = rng.uniform(0, 1, size=(40, 1, 8, 8, 3)).astype(np.float32)
    calls = [([im], [np.zeros((1, 3), np.float32)]) for im in imgs]
    prof = build_profile([IMAGE], [TensorSpec("y", "FP32", (1, 3))], calls)
    assert [f.name for f in prof.features][:3] == ["image[c=0]", "image[c=1]", "image[c=2]"]
    tracker = DriftTracker(prof, DriftConfig(window_rows=100, min_rows=10, max_sketched_per_s=0), None)
    for im in imgs[:20]:
        bright = im.copy()
        bright[..., 1] = np.clip(bright[..., 1] + 0.5, 0, 1.5)
        tracker.observe([bright], [np.zeros((1, 3), np.float32)])
    r = tracker.report()
    assert r.worst_feature == "image[c=1]"


def test_above_the_sketch_rate_a_uniform_sample_is_sketched() -> None:
    now = [0.0]
    cfg = DriftConfig(window_rows=1000, min_rows=10, max_sketched_per_s=500)
    tracker = DriftTracker(_profile(), cfg, None, clock=lambda: now[0])
    x = _rows(1, seed=0)
    for _ in range(FLUSH_REQUESTS):  # 64 requests in 0.01 s: 6400 a second
        now[0] += 0.01 / FLUSH_REQUESTS
        tracker.observe([x], [_model(x)])
    for _ in range(13 * FLUSH_REQUESTS):  # one in ceil(6400 / 500) = 13 is sketched
        now[0] += 1 / 6400
        tracker.observe([x], [_model(x)])
    assert tracker.report().seen == 2 * FLUSH_REQUESTS
    for _ in range(FLUSH_REQUESTS * 13):  # the load drops to 100 a second: every request again
        now[0] += 0.01
        tracker.observe([x], [_model(x)])
    seen = tracker.report().seen
    for _ in range(FLUSH_REQUESTS):
        now[0] += 0.01
        tracker.observe([x], [_model(x)])
    tracker.flush()
    assert tracker.report().seen == seen + FLUSH_REQUESTS


def test_big_requests_flush_the_buffer_early_so_it_never_holds_much() -> None:
    tracker, _ = _tracker()
    big = np.zeros((1, 6), np.float32)
    flushed = []
    tracker._bin = lambda pending, rows: flushed.append(len(pending))  # type: ignore[method-assign]
    huge = np.zeros((1, FLUSH_VALUES // 2 + 1), np.float32)
    tracker.observe([huge], [_model(big)])
    assert flushed == []
    tracker.observe([huge], [_model(big)])  # over FLUSH_VALUES held: binned now, not at 64 requests
    assert flushed == [2]
