"""The real daemon on a bundle with two variants, one of which fails its self-test on this device:
it serves the other, says so in the model metadata, /metrics, ``models list`` and the fleet
state's models summary, and after a restart serves the same variant from its record without
timing anything again."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from edge_runtime.store.variants import RECORD_FILE
from edge_runtime.updates.job import models_summary
from harness.http import request
from harness.wait import wait_until
from serving.support import Env, infer_json, metric_value

TIMING = "\n[inference]\nvariant_timing_ms = 20\n"


def test_the_daemon_serves_the_variant_that_passes_and_keeps_the_choice_across_a_restart(
    env: Env, variant_bundle: Callable[..., Path], sample_x: np.ndarray, cli: Callable[..., Any],
) -> None:
    env.install(variant_bundle(2, broken="tflite-fp32"))
    d = env.start(server_toml=TIMING)
    assert d.wait_line("fraud v2: trying each variant on this device (tflite-fp32, onnx)") is not None
    status, body = request(d.port, "GET", "/v2/models/fraud")
    meta = orjson.loads(body)
    assert status == 200 and meta["platform"] == "onnxruntime_onnx"
    choice = meta["parameters"]["variant"]
    assert (choice["variant"], choice["pinned"]) == ("onnx", False)
    verdicts = {v["variant"]: v for v in choice["variants"]}
    assert verdicts["tflite-fp32"]["outcome"] == "failed" and "SelfTestError" in verdicts["tflite-fp32"]["reason"]
    assert verdicts["onnx"]["outcome"] == "chosen" and verdicts["onnx"]["ms_per_row"] > 0

    status, answer = infer_json(d.port, "fraud", sample_x[:2])
    assert status == 200 and len(answer["outputs"][0]["data"]) == 2
    metrics = request(d.port, "GET", "/metrics")[1].decode()
    assert (metric_value(metrics, "edge_model_variant_ms_per_row", model="fraud", version="2", variant="onnx",
                         outcome="chosen") or 0) > 0

    store = env.store()
    wait_until(lambda: (store.state("fraud").serving_delegate or {}).get("variant") is not None,
               "the variant recorded in state.json")
    assert models_summary(store)["fraud"]["delegate"]["variant"]["variant"] == "onnx"  # the fleet state's form
    listing = cli(["models", "list", "--config", d.config])
    assert listing.code == 0, listing.err
    assert "serving variant onnx on onnxruntime" in listing.out
    assert "variant tflite-fp32: failed, not timed: SelfTestError" in listing.out

    record = (store.model_dir("fraud") / RECORD_FILE).read_bytes()
    assert d.stop() == 0
    again = env.start(server_toml=TIMING)
    status, body = request(again.port, "GET", "/v2/models/fraud")
    assert orjson.loads(body)["parameters"]["variant"] == choice
    assert "trying each variant" not in again.log(), "the restart timed the variants again"
    assert (store.model_dir("fraud") / RECORD_FILE).read_bytes() == record
