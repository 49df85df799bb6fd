"""The monitoring hub: what serving hands it, what it writes, what the device state carries."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from edge_runtime.bundle.profile import build_profile
from edge_runtime.config import CaptureConfig, DriftConfig
from edge_runtime.monitoring.capture import decode_array, read_records
from edge_runtime.monitoring.hub import Monitoring
from edge_runtime.serving.app import drift_stats
from edge_runtime.serving.cycle import _compared
from edge_runtime.serving.metrics import ShadowStats
from edge_runtime.spec.tensors import TensorSpec

X = TensorSpec("input_0", "FP32", (-1, 4))
Y = TensorSpec("output_0", "FP32", (-1, 1))


def _profile_bytes() -> bytes:
    x = np.random.default_rng(0).normal(size=(500, 4)).astype(np.float32)
    return build_profile([X], [Y], [([x], [x[:, :1]])]).to_bytes()


def _hub(tmp_path: Path, capture: CaptureConfig) -> tuple[Monitoring, Any]:
    hub = Monitoring(tmp_path / "capture", min_free_bytes=0)
    mon = hub.attach("m", 3, ["input_0"], ["output_0"], _profile_bytes(), DriftConfig(window_rows=100, min_rows=10, max_sketched_per_s=0),
                     capture, [X], [Y])
    return hub, mon


def _records(hub: Monitoring) -> list[dict[str, Any]]:
    hub.seal_all()
    out = []
    for seg in hub.rings["m"].segments():
        out += read_records(seg.path.read_bytes())[0]
    return out


def test_capture_off_by_default_writes_nothing(tmp_path: Path) -> None:
    hub, mon = _hub(tmp_path, CaptureConfig())
    x = np.ones((2, 4), np.float32)
    for _ in range(50):
        mon.observe([x], [x[:, :1]])
    assert mon.ring is None and not (tmp_path / "capture").exists()
    assert hub.summary()["m"]["version"] == 3 and "capture" not in hub.summary()["m"]


def test_rate_one_captures_every_request_in_order(tmp_path: Path) -> None:
    hub, mon = _hub(tmp_path, CaptureConfig(rate=1.0, max_mb=1))
    for i in range(20):
        x = np.full((2, 4), i, np.float32)
        mon.observe([x], [x[:, :1] * 2])
    records = _records(hub)
    assert [int(decode_array(r["inputs"]["input_0"])[0, 0]) for r in records] == list(range(20))
    assert {r["reason"] for r in records} == {"sample"} and records[0]["version"] == 3
    np.testing.assert_array_equal(decode_array(records[5]["outputs"]["output_0"]), np.full((2, 1), 10, np.float32))
    hub.stop()


def test_a_shadow_disagreement_is_captured_with_both_answers_even_at_rate_zero(tmp_path: Path) -> None:
    hub, mon = _hub(tmp_path, CaptureConfig(enabled=True))
    answered = SimpleNamespace(monitor=mon)
    shadow = SimpleNamespace(version=4)
    st = ShadowStats()
    x = np.zeros((3, 4), np.float32)
    ours = [np.array([[0.9], [0.2], [0.4]], np.float32)]
    agree = [np.array([[0.8], [0.1], [0.3]], np.float32)]
    differ = [np.array([[0.9], [0.7], [0.4]], np.float32)]  # row 1 crosses 0.5
    _compared(st, answered, shadow, [x], ours, agree, 3)  # type: ignore[arg-type]
    _compared(st, answered, shadow, [x], ours, differ, 3)  # type: ignore[arg-type]
    (rec,) = _records(hub)
    assert rec["reason"] == "shadow_disagreement" and rec["shadow"]["version"] == 4
    assert rec["shadow"]["rows_differing"] == 1
    np.testing.assert_array_equal(decode_array(rec["shadow"]["outputs"]["output_0"]), differ[0])
    assert st.comparisons == 6 and st.top1_disagreements == 1


def test_stats_and_state_carry_the_figures_and_a_missing_profile_says_why(tmp_path: Path) -> None:
    hub, mon = _hub(tmp_path, CaptureConfig(rate=1.0, max_mb=1))
    x = np.random.default_rng(1).normal(size=(40, 4)).astype(np.float32)
    x[:, 2] += 4.0
    for i in range(0, 40, 4):
        mon.observe([x[i:i + 4]], [x[i:i + 4, :1]])
    stats = drift_stats(mon)
    assert stats["worst_feature"] == "input_0[2]" and stats["alert"] is True and stats["capture"]["written_records"] >= 0
    assert json.loads(json.dumps(hub.summary()))["m"]["worst_feature"] == "input_0[2]"
    plain = hub.attach("n", 1, ["input_0"], ["output_0"], None, DriftConfig(), CaptureConfig(), [X], [Y])
    assert drift_stats(plain) == {"score": None, "problem": "the bundle carries no reference profile"}
    broken = hub.attach("o", 1, ["input_0"], ["output_0"], b"{}", DriftConfig(), CaptureConfig(), [X], [Y])
    assert "profile.json" in (broken.profile_problem or "")
    hub.detach("n", 1, plain)
    assert ("n", 1) not in hub.monitors
    hub.stop()
