"""The real daemon on a model whose config lists delegates: what runs the model, and why the
others were skipped, in the model metadata (HTTP), /metrics, ``models list`` and the fleet
state's models summary. The delegates are the C libraries of tests/inference/delegate_src.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from edge_runtime.updates.job import models_summary
from harness.bundles import DelegateLibs
from harness.http import request
from harness.wait import wait_until
from serving.support import Env, infer_json, metric_value


def _metadata(port: int) -> dict[str, Any]:
    status, body = request(port, "GET", "/v2/models/fraud")
    assert status == 200, body
    return orjson.loads(body)  # type: ignore[no-any-return]


def test_daemon_serves_on_the_first_delegate_that_loads_and_says_why_others_were_skipped(
    env: Env, make_bundle: Callable[..., Path], delegate_libs: DelegateLibs, sample_x: np.ndarray,
    cli: Callable[..., Any],
) -> None:
    env.install(make_bundle(2))
    record = env.base / "delegate-options.txt"
    d = env.start(
        "[models.fraud]\nthreads = 2\ndelegates = ["
        f'{{ library = "{delegate_libs.missing}" }}, {{ library = "{delegate_libs.no_entry_points}" }}, '
        f'{{ library = "{delegate_libs.stub}", options = {{ record = "{record}", device = "usb" }} }}]\n'
    )
    meta = _metadata(d.port)
    assert meta["parameters"]["delegate"] == "stub_delegate"
    skipped = meta["parameters"]["skipped_delegates"]
    assert [(s["delegate"], s["kind"]) for s in skipped] == [("absent", "missing"), ("no_entry_points", "not_a_delegate")]
    assert delegate_libs.missing.name in skipped[0]["reason"] and "no tflite_plugin_create_delegate" in skipped[1]["reason"]
    assert {"name", "versions", "platform", "inputs", "outputs"} <= set(meta)  # still KServe's shape
    # The daemon process created the delegate with the configured options.
    assert "device=usb" in record.read_text().splitlines()

    status, body = infer_json(d.port, "fraud", sample_x[:3])
    assert status == 200 and len(body["outputs"][0]["data"]) == 3

    metrics = request(d.port, "GET", "/metrics")[1].decode()
    assert metric_value(metrics, "edge_model_delegate", model="fraud", version="2", delegate="stub_delegate") == 1
    assert metric_value(metrics, "edge_model_delegate_skipped", model="fraud", version="2", delegate="absent",
                        reason="missing") == 1
    assert metric_value(metrics, "edge_model_delegate_skipped", delegate="no_entry_points", reason="not_a_delegate") == 1

    # What the daemon recorded in the store: models list and the fleet state read it.
    store = env.store()
    wait_until(lambda: store.state("fraud").serving_delegate is not None, "the delegate recorded in state.json")
    listing = cli(["models", "list", "--config", d.config])
    assert listing.code == 0, listing.err
    line = next(x for x in listing.out.splitlines() if x.split()[:2] == ["fraud", "2"])
    assert "serving on stub_delegate" in line
    assert "delegate absent skipped (missing)" in listing.out
    assert "delegate no_entry_points skipped (not_a_delegate)" in listing.out
    summary = models_summary(store)["fraud"]["delegate"]
    assert summary["delegate"] == "stub_delegate" and [s["kind"] for s in summary["skipped"]] == ["missing", "not_a_delegate"]


def test_a_missing_delegate_library_falls_back_to_the_cpu_and_still_serves(
    env: Env, make_bundle: Callable[..., Path], delegate_libs: DelegateLibs, sample_x: np.ndarray
) -> None:
    env.install(make_bundle(2))
    d = env.start(f'[models.fraud]\ndelegates = [{{ library = "{delegate_libs.missing}", options = {{ device = "usb" }} }}]\n')
    meta = _metadata(d.port)
    assert meta["parameters"]["delegate"] == "xnnpack"
    (skip,) = meta["parameters"]["skipped_delegates"]
    assert skip["kind"] == "missing" and "cannot load" in skip["reason"]
    status, _ = infer_json(d.port, "fraud", sample_x[:1])
    assert status == 200
    assert any("delegate absent skipped (missing)" in line for line in d.lines)
    metrics = request(d.port, "GET", "/metrics")[1].decode()
    assert metric_value(metrics, "edge_model_delegate", model="fraud", version="2", delegate="xnnpack") == 1
