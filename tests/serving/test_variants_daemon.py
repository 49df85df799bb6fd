"""The real daemon on a bundle with two variants, one of which fails its self-test on this device:
it serves the other, says so in the model metadata, /metrics, ``models list`` and the fleet
state's models summary, and after a restart serves the same variant from its record without
timing anything again. A pin changed by SIGHUP is served from the record without timing again;
a pin naming a variant that failed, or one the bundle does not have, is warned of and ignored."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from edge_runtime.store.variants import RECORD_FILE
from edge_runtime.updates.job import models_summary
from harness.daemon import Daemon
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

    # SIGHUP with a pin of the variant that failed its self-test: warned of, ignored, onnx served on.
    mark = _repin(env, again, "tflite-fp32")
    assert again.wait_line("[models.fraud] variant = 'tflite-fp32' is ignored: the pinned variant 'tflite-fp32' "
                           "cannot serve (SelfTestError", start=mark) is not None
    served = _choice(again)
    assert (served["variant"], served["pinned"]) == ("onnx", False)
    assert infer_json(again.port, "fraud", sample_x[:2])[0] == 200

    # v3, both variants good, activated under that pin: the pinned TFLite variant serves ...
    env.install(variant_bundle(3))
    wait_until(lambda: _choice(again).get("pinned") is True, "v3 served with the pin")
    assert store.state("fraud").serving == 3 and _platform(again) == "litert_tflite"
    # ... and a new pin by SIGHUP switches to the ONNX variant from the record, timing nothing again.
    mark = _repin(env, again, "onnx")
    wait_until(lambda: _choice(again).get("variant") == "onnx", "the onnx variant served after the new pin")
    assert _choice(again)["pinned"] is True and _platform(again) == "onnxruntime_onnx"
    assert {v["variant"]: (v["outcome"], v["reason"]) for v in _choice(again)["variants"]} == {
        "onnx": ("chosen", "pinned by the operator"), "tflite-fp32": ("not-pinned", "the operator pinned onnx")}
    assert infer_json(again.port, "fraud", sample_x[:2])[0] == 200
    assert again.log().count("fraud v3: trying each variant") == 1, "the pin timed the variants again"
    assert again.log().count("fraud v2: trying each variant") == 0
    wait_until(lambda: ((store.state("fraud").serving_delegate or {}).get("variant") or {}).get("pinned") is True,
               "the pinned variant recorded in state.json")
    listing = cli(["models", "list", "--config", again.config])
    assert "serving variant onnx (pinned) on onnxruntime" in listing.out
    assert "variant onnx: chosen" in listing.out and "pinned by the operator" in listing.out
    assert "variant tflite-fp32: not-pinned" in listing.out and "the operator pinned onnx" in listing.out

    # A pin of a variant the bundle does not have: warned of, the device chooses as if unpinned.
    mark = _repin(env, again, "tflite-int8")
    assert again.wait_line("[models.fraud] variant = 'tflite-int8' is ignored: the pinned variant 'tflite-int8' "
                           "is not in the bundle (tflite-fp32, onnx)", start=mark) is not None
    wait_until(lambda: _choice(again).get("pinned") is False, "the unknown pin ignored")
    assert infer_json(again.port, "fraud", sample_x[:2])[0] == 200
    assert again.log().count("trying each variant") == 1
    assert again.tracebacks() == []


def _repin(env: Env, d: Daemon, pin: str) -> int:
    """Rewrite the daemon's config with ``[models.fraud] variant = pin`` and SIGHUP it; the log line to wait from."""
    mark = len(d.lines)
    d.config.write_text(env.config_text(f'[models.fraud]\nvariant = "{pin}"\n', TIMING), encoding="utf-8")
    d.signal(signal.SIGHUP)
    return mark


def _meta(d: Daemon) -> dict[str, Any]:
    status, body = request(d.port, "GET", "/v2/models/fraud")
    assert status == 200, body
    meta: dict[str, Any] = orjson.loads(body)
    return meta


def _choice(d: Daemon) -> dict[str, Any]:
    choice: dict[str, Any] = _meta(d)["parameters"].get("variant") or {}
    return choice


def _platform(d: Daemon) -> str:
    return str(_meta(d)["platform"])
