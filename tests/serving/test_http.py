"""The KServe v2 API over real HTTP on loopback, driven by tritonclient and by hand.

Acceptance 1 (tritonclient health, metadata, JSON and binary infer), 2 (the Triton
tutorial request) and 3 (400/404/503, never 500), plus exact FP16/integer round trips,
statistics, metrics, repository index and compressed bodies.
"""

from __future__ import annotations

import gzip
import http.client
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from harness.daemon import Daemon
from harness.wait import wait_until
from serving.support import FACTORY_SRC, Env, held_worker, hold_env, install_onnx_test_models, metric_value, request

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def daemon(
    tmp_path_factory: pytest.TempPathFactory, keys: Any, make_bundle: Callable[..., Path], onnx_models: dict[str, Path]
) -> Iterator[Daemon]:
    """One daemon serving fraud (factory v1, inline), ``types`` (onnxruntime) and ``slow`` (1 worker, queue of 1)."""
    base = tmp_path_factory.mktemp("http")
    env = Env(base, keys, make_bundle(1))
    install_onnx_test_models(env, keys, onnx_models, base)
    d = env.start(
        "[models.slow]\nexecution = \"threads\"\ninstances = 1\nmax_batch_size = 0\nmax_queue_size = 1\n"
        "idle_inline_max_us = 0\n",
        env_extra=hold_env(base),
    )
    yield d
    env.close()


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> httpclient.InferenceServerClient:
    """A tritonclient HTTP client for the daemon."""
    return httpclient.InferenceServerClient(url=daemon.url)


def expected_fraud(litert: Callable[[Path, np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    return litert(FACTORY_SRC / "fraud.tflite", x)


# -- acceptance 1: tritonclient ----------------------------------------------------------


def test_tritonclient_health_and_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("fraud")
    assert client.is_model_ready("fraud", "1")
    assert not client.is_model_ready("fraud", "7")
    assert not client.is_model_ready("nope")
    meta = client.get_model_metadata("fraud")
    assert meta["name"] == "fraud"
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input_0", "datatype": "FP32", "shape": [-1, 30]}]
    assert meta["outputs"] == [{"name": "output_0", "datatype": "FP32", "shape": [-1, 1]}]
    server = client.get_server_metadata()
    assert server["name"] == "edge-runtime"
    assert "binary_tensor_data" in server["extensions"]


@pytest.mark.parametrize("binary_in", [False, True])
@pytest.mark.parametrize("binary_out", [False, True])
def test_tritonclient_infer_matches_the_interpreter(
    client: httpclient.InferenceServerClient, rows: np.ndarray, litert: Any, binary_in: bool, binary_out: bool
) -> None:
    x = rows[:7]
    inp = httpclient.InferInput("input_0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary_in)
    out = httpclient.InferRequestedOutput("output_0", binary_data=binary_out)
    result = client.infer("fraud", [inp], outputs=[out], request_id="req-7")
    got = result.as_numpy("output_0")
    assert got.dtype == np.float32 and got.shape == (7, 1)
    # JSON numbers keep float32 precision: the answer is bit-identical to the interpreter's.
    np.testing.assert_array_equal(got, expected_fraud(litert, x))
    assert result.get_response()["id"] == "req-7"
    assert result.get_response()["model_version"] == "1"


def test_tritonclient_default_outputs_are_binary(client: httpclient.InferenceServerClient, rows: np.ndarray, litert: Any) -> None:
    x = rows[7:8]
    inp = httpclient.InferInput("input_0", [1, 30], "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    result = client.infer("fraud", [inp], model_version="1")  # no outputs named: tritonclient asks for binary
    assert result.get_output("output_0")["parameters"]["binary_data_size"] == 4
    np.testing.assert_array_equal(result.as_numpy("output_0"), expected_fraud(litert, x))


def test_fp16_and_integers_round_trip_exactly(client: httpclient.InferenceServerClient) -> None:
    rng = np.random.default_rng(5)
    arrays = {
        "f16": rng.standard_normal((3, 4)).astype(np.float16),
        "i32": rng.integers(-(2**31), 2**31 - 1, (3, 3), dtype=np.int64).astype(np.int32),
        "u8": rng.integers(0, 256, (3, 5)).astype(np.uint8),
        "i64": np.array([[-(2**62), 2**62 + 12345], [7, -7], [0, 1]], dtype=np.int64),
    }
    datatypes = {"f16": "FP16", "i32": "INT32", "u8": "UINT8", "i64": "INT64"}
    for binary in (True, False):
        inputs = []
        for k, a in arrays.items():
            inp = httpclient.InferInput(f"{k}_in", list(a.shape), datatypes[k])
            inp.set_data_from_numpy(a, binary_data=binary)
            inputs.append(inp)
        outputs = [httpclient.InferRequestedOutput(f"{k}_out", binary_data=binary) for k in arrays]
        result = client.infer("types", inputs, outputs=outputs)
        for k, a in arrays.items():
            got = result.as_numpy(f"{k}_out")
            assert got.dtype == a.dtype, (k, binary)
            np.testing.assert_array_equal(got, a)


# -- acceptance 2: the tutorial request ---------------------------------------------------


def test_triton_tutorial_request(daemon: Daemon, rows: np.ndarray, litert: Any) -> None:
    x = rows[10:11]
    body = json.dumps(
        {"inputs": [{"name": "input_0", "datatype": "FP32", "shape": [1, 30], "data": [float(v) for v in x[0]]}]}
    ).encode()
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    conn.putrequest("POST", "/v2/models/fraud/infer")  # no Content-Type, as tritonclient sends it
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    resp = conn.getresponse()
    assert resp.status == 200
    answer = orjson.loads(resp.read())
    conn.close()
    (out,) = answer["outputs"]
    assert out["name"] == "output_0" and out["datatype"] == "FP32" and out["shape"] == [1, 1]
    assert np.float32(out["data"][0]) == expected_fraud(litert, x)[0, 0]
    assert 0.0 <= out["data"][0] <= 1.0


# -- acceptance 3: error codes -----------------------------------------------------------


def _post(daemon: Daemon, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    status, raw = request(daemon.port, "POST", path, body, headers)
    return status, orjson.loads(raw)


def _fraud_request(**override: Any) -> dict[str, Any]:
    tensor = {"name": "input_0", "datatype": "FP32", "shape": [1, 30], "data": [0.5] * 30}
    tensor.update(override)
    return {"inputs": [tensor]}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (orjson.dumps(_fraud_request(name="input_9")), "unknown input 'input_9'"),
        (orjson.dumps(_fraud_request(shape=[1, 29], data=[0.5] * 29)), "expected shape [-1, 30], found [1, 29]"),
        (orjson.dumps(_fraud_request(datatype="FP64")), "expected datatype FP32, found 'FP64'"),
        (orjson.dumps(_fraud_request(datatype="BYTES")), "expected datatype FP32"),
        (orjson.dumps(_fraud_request(data=[0.5] * 29)), "needs 30 values, 'data' has 29"),
        (orjson.dumps(_fraud_request(data=["a"] * 30)), "found non-numeric values"),
        (orjson.dumps(_fraud_request(data=[[0.5] * 30, [0.5]])), "not a regular array"),
        (b'{"inputs": [{"name": "input_0", "datatype": "FP32", "shape": [1, 30], "data": [0.5, ', "not valid JSON"),
        (b"not json at all", "not valid JSON"),
        (b"[1, 2, 3]", "expected a JSON object"),
        (b'{"inputs": []}', "'inputs' must be a non-empty list"),
        (b"", "not valid JSON"),
        (orjson.dumps({"inputs": [{"name": "input_0", "datatype": "FP32", "shape": [1, 30],
                                   "parameters": {"binary_data_size": 120}}]}), "needs the Inference-Header-Content-Length"),
    ],
)
def test_bad_requests_answer_400(daemon: Daemon, body: bytes, fragment: str) -> None:
    status, answer = _post(daemon, "/v2/models/fraud/infer", body)
    assert status == 400
    assert fragment in answer["error"]


def _binary_request(n_bytes: int, declared: int = 120) -> tuple[bytes, dict[str, str]]:
    head = orjson.dumps({"inputs": [{"name": "input_0", "datatype": "FP32", "shape": [1, 30],
                                     "parameters": {"binary_data_size": declared}}]})
    body = head + np.ones(30, np.float32).tobytes()[:n_bytes]
    return body, {"Inference-Header-Content-Length": str(len(head))}


def test_truncated_and_oversized_binary_bodies_answer_400(daemon: Daemon) -> None:
    body, headers = _binary_request(100)
    status, answer = _post(daemon, "/v2/models/fraud/infer", body, headers)
    assert status == 400 and "the body has only" in answer["error"]
    body, headers = _binary_request(120, declared=100)
    status, answer = _post(daemon, "/v2/models/fraud/infer", body, headers)
    assert status == 400 and "needs binary_data_size 120, found 100" in answer["error"]
    body, headers = _binary_request(120)
    status, answer = _post(daemon, "/v2/models/fraud/infer", body + b"extra", headers)
    assert status == 400 and "binary tensors fill 120 bytes, the body carries 125" in answer["error"]
    status, answer = _post(daemon, "/v2/models/fraud/infer", body, {"Inference-Header-Content-Length": "99999"})
    assert status == 400 and "Inference-Header-Content-Length is 99999" in answer["error"]
    status, _ = _post(daemon, "/v2/models/fraud/infer", body, headers)
    assert status == 200


def test_unknown_model_and_version_answer_404(daemon: Daemon) -> None:
    body = orjson.dumps(_fraud_request())
    for path in ("/v2/models/nope/infer", "/v2/models/fraud/versions/9/infer", "/v2/models/fraud/versions/x/infer"):
        status, answer = _post(daemon, path, body)
        assert status == 404, path
        assert answer["error"]
    status, raw = request(daemon.port, "GET", "/v2/models/nope")
    assert status == 404 and b"unknown model 'nope'" in raw
    status, raw = request(daemon.port, "GET", "/v2/nothing-here")
    assert status == 404
    status, raw = request(daemon.port, "GET", "/v2/models/fraud/infer")
    assert status == 405


def test_full_queue_answers_503_at_once(daemon: Daemon) -> None:
    """``slow`` has one worker and max_queue_size 1: with the worker held, one request of a burst
    of 12 waits and the other 11 are refused at once; released, the waiting one is answered."""
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 256], "data": [0.1] * 256}]})
    with held_worker(daemon) as hold:
        statuses, errors = burst(daemon, body, 12, release_when=lambda statuses: len(statuses) == 11, hold=hold)
    assert sorted(statuses) == [200] + [503] * 11
    assert len(errors) == 11 and all(b"queue full" in e for e in errors)
    metrics = request(daemon.port, "GET", "/metrics")[1].decode()
    assert metric_value(metrics, "edge_requests_total", model="slow", outcome="unavailable") == 11


def burst(
    daemon: Daemon, body: bytes, n: int, release_when: Callable[[list[int]], bool], hold: Path
) -> tuple[list[int], list[bytes]]:
    """``n`` concurrent requests to ``slow``; once ``release_when(statuses so far)`` is true the
    worker is released (``hold`` removed) and every answer collected."""
    barrier = threading.Barrier(n)
    statuses: list[int] = []
    errors: list[bytes] = []

    def one() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=120)
        conn.connect()
        barrier.wait()
        status, raw = request(daemon.port, "POST", "/v2/models/slow/infer", body, conn=conn)
        statuses.append(status)
        if status != 200:
            errors.append(raw)
        conn.close()

    threads = [threading.Thread(target=one, name=f"burst-{i}") for i in range(n)]
    for t in threads:
        t.start()
    wait_until(lambda: release_when(statuses), "the refused requests to be answered")
    hold.unlink()
    for t in threads:
        t.join()
    return statuses, errors


def test_no_500_for_any_bad_request(daemon: Daemon) -> None:
    metrics = request(daemon.port, "GET", "/metrics")[1].decode()
    for model in ("fraud", "types", "slow"):
        assert metric_value(metrics, "edge_requests_total", model=model, outcome="error") == 0.0


# -- the rest of the API -----------------------------------------------------------------


def test_statistics_config_and_repository_index(client: httpclient.InferenceServerClient, rows: np.ndarray) -> None:
    inp = httpclient.InferInput("input_0", [2, 30], "FP32")
    inp.set_data_from_numpy(rows[:2])
    client.infer("fraud", [inp])
    stats = client.get_inference_statistics("fraud")
    (entry,) = stats["model_stats"]
    assert entry["name"] == "fraud" and entry["version"] == "1"
    assert entry["inference_stats"]["success"]["count"] >= 1
    assert entry["inference_count"] >= 2 and entry["execution_count"] >= 1
    assert any(b["batch_size"] == 2 for b in entry["batch_stats"])
    config = client.get_model_config("fraud")
    assert config["max_batch_size"] == 8
    assert config["parameters"]["execution"]["string_value"] == "inline"
    slow = client.get_model_config("slow")
    assert slow["parameters"]["execution"]["string_value"] == "threads"
    index = {(m["name"], m.get("version")): m["state"] for m in client.get_model_repository_index()}
    assert index[("fraud", "1")] == "READY" and index[("types", "1")] == "READY"


def test_metrics_are_prometheus_text(daemon: Daemon, rows: np.ndarray) -> None:
    body = orjson.dumps(_fraud_request(data=rows[0].tolist()))
    before = metric_value(request(daemon.port, "GET", "/metrics")[1].decode(), "edge_requests_total",
                          model="fraud", version="1", outcome="success") or 0.0
    assert _post(daemon, "/v2/models/fraud/infer", body)[0] == 200
    status, raw = request(daemon.port, "GET", "/metrics")
    text = raw.decode()
    assert status == 200
    assert metric_value(text, "edge_requests_total", model="fraud", version="1", outcome="success") == before + 1
    for name in ("edge_compute_seconds_bucket", "edge_queue_seconds_bucket", "edge_batch_size_bucket",
                 "edge_queue_depth", "edge_model_loaded"):
        assert f"{name}{{" in text, name
    assert "# TYPE edge_swaps_total counter" in text or "# TYPE edge_swaps counter" in text


def test_compressed_request_and_response(daemon: Daemon, rows: np.ndarray, litert: Any) -> None:
    x = rows[:40]
    body = gzip.compress(orjson.dumps(_fraud_request(shape=[40, 30], data=x.ravel().tolist())))
    status, raw = request(daemon.port, "POST", "/v2/models/fraud/infer", body,
                          {"Content-Encoding": "gzip", "Accept-Encoding": "gzip"})
    assert status == 200
    answer = orjson.loads(gzip.decompress(raw))
    got = np.asarray(answer["outputs"][0]["data"], np.float32).reshape(40, 1)
    np.testing.assert_array_equal(got, expected_fraud(litert, x))
    status, raw = request(daemon.port, "POST", "/v2/models/fraud/infer", b"\x1f\x8b garbage", {"Content-Encoding": "gzip"})
    assert status == 400


def test_tritonclient_reports_errors(client: httpclient.InferenceServerClient) -> None:
    inp = httpclient.InferInput("input_0", [1, 29], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 29), np.float32))
    with pytest.raises(InferenceServerException, match="expected shape"):
        client.infer("fraud", [inp])
