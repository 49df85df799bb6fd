"""The KServe v2 gRPC endpoint of a real daemon on loopback, driven by ``tritonclient.grpc``.

Issue 8, acceptance 4: live, ready, metadata and infer (batch 1 and 8) answer the same over
gRPC as over HTTP; bad requests give INVALID_ARGUMENT, NOT_FOUND or UNAVAILABLE and never
INTERNAL. Also: typed contents, exact FP16/integer round trips, the shared queues, versions,
shadow and metrics, a model that cannot load, draining at SIGTERM, a port in use, and a
daemon without the grpc extra.

Raw protobuf requests (typed contents, malformed messages) are built with tritonclient's own
generated modules, so the wire format is the client's, not ours.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2 as tpb
from tritonclient.grpc import service_pb2_grpc as tpb_grpc
from tritonclient.utils import InferenceServerException

from edge_runtime.config import parse_config
from edge_runtime.exceptions import ConfigError
from harness.daemon import EDGE, Daemon
from harness.wait import wait_until
from serving.support import (
    FACTORY_SRC,
    HOLD_FILE,
    Env,
    held_worker,
    hold_env,
    install_onnx_test_models,
    metric_value,
    pack_onnx,
    reference,
    request,
    sigterm_while_queued,
)

pytestmark = pytest.mark.integration

GRPC_LINE = "gRPC (KServe v2) listening on "
SLOW = '[models.slow]\nexecution = "threads"\ninstances = 1\nmax_batch_size = 0\nmax_queue_size = 1\nidle_inline_max_us = 0\n'


def grpc_url(d: Daemon) -> str:
    """``host:port`` of a daemon's gRPC endpoint, from its log."""
    wait_until(lambda: any(GRPC_LINE in line for line in d.lines), "the gRPC endpoint")
    line = next(line for line in d.lines if GRPC_LINE in line)
    return line.split(GRPC_LINE, 1)[1].strip()


def status_of(exc: InferenceServerException) -> str:
    """The gRPC status name of a tritonclient error (``NOT_FOUND`` ...)."""
    return str(exc.status()).rsplit(".", 1)[-1]


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, keys: Any, make_bundle: Callable[..., Path], onnx_models: dict[str, Path]
) -> Iterator[tuple[Daemon, str]]:
    """One daemon with HTTP and gRPC: fraud v1 (inline) with v2 as its shadow, ``types`` and ``slow``."""
    base = tmp_path_factory.mktemp("grpc")
    env = Env(base, keys, make_bundle(1))
    env.install(make_bundle(1))
    env.install(make_bundle(2, model="fraud_int8io.tflite"), activate=False)
    install_onnx_test_models(env, keys, onnx_models, base)
    d = env.start("[models.fraud]\nshadow = 2\n" + SLOW, server_toml="grpc_port = -1\n", env_extra=hold_env(base))
    yield d, grpc_url(d)
    env.close()


@pytest.fixture(scope="module")
def gclient(served: tuple[Daemon, str]) -> Iterator[grpcclient.InferenceServerClient]:
    """A tritonclient gRPC client for the daemon."""
    client = grpcclient.InferenceServerClient(url=served[1])
    yield client
    client.close()


@pytest.fixture(scope="module")
def hclient(served: tuple[Daemon, str]) -> httpclient.InferenceServerClient:
    """A tritonclient HTTP client for the same daemon."""
    return httpclient.InferenceServerClient(url=served[0].url)


@pytest.fixture(scope="module")
def stub(served: tuple[Daemon, str]) -> Iterator[Any]:
    """tritonclient's generated stub on a raw channel, for hand-built requests."""
    channel = grpc.insecure_channel(served[1])
    yield tpb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def _shapes_as_ints(meta: dict[str, Any]) -> dict[str, Any]:
    """gRPC metadata as JSON carries int64 shapes as strings; HTTP carries numbers."""
    for key in ("inputs", "outputs"):
        for t in meta[key]:
            t["shape"] = [int(d) for d in t["shape"]]
    return meta


# -- acceptance 4: the same answers as HTTP -------------------------------------------------


def test_health_and_metadata_match_http(
    gclient: grpcclient.InferenceServerClient, hclient: httpclient.InferenceServerClient
) -> None:
    assert gclient.is_server_live() is True and hclient.is_server_live() is True
    assert gclient.is_server_ready() is True and hclient.is_server_ready() is True
    for args in [("fraud",), ("fraud", "1"), ("fraud", "2"), ("fraud", "7"), ("nope",), ("types", "1")]:
        assert gclient.is_model_ready(*args) == hclient.is_model_ready(*args), args
    assert gclient.is_model_ready("fraud", "1") and not gclient.is_model_ready("fraud", "7")
    assert gclient.get_server_metadata(as_json=True) == hclient.get_server_metadata()
    for model, version in [("fraud", ""), ("fraud", "2"), ("types", ""), ("slow", "1")]:
        got = _shapes_as_ints(gclient.get_model_metadata(model, version, as_json=True))
        over_http = hclient.get_model_metadata(model, version)
        # The delegate report is an HTTP-only extra: gRPC's ModelMetadataResponse has no such field.
        assert "delegate" in over_http.pop("parameters"), (model, version)
        assert got == over_http, (model, version)
    meta = gclient.get_model_metadata("fraud", as_json=True)
    assert meta["versions"] == ["1", "2"] and meta["platform"] == "litert_tflite"


@pytest.mark.parametrize("batch", [1, 8])
def test_infer_matches_http_and_the_interpreter(
    gclient: grpcclient.InferenceServerClient,
    hclient: httpclient.InferenceServerClient,
    rows: np.ndarray,
    litert: Any,
    batch: int,
) -> None:
    x = rows[20 : 20 + batch]
    ginp = grpcclient.InferInput("input_0", list(x.shape), "FP32")
    ginp.set_data_from_numpy(x)
    result = gclient.infer("fraud", [ginp], request_id=f"g{batch}")
    hinp = httpclient.InferInput("input_0", list(x.shape), "FP32")
    hinp.set_data_from_numpy(x, binary_data=True)
    expected = hclient.infer("fraud", [hinp]).as_numpy("output_0")
    got = result.as_numpy("output_0")
    assert got.dtype == np.float32 and got.shape == (batch, 1)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got, litert(FACTORY_SRC / "fraud.tflite", x))
    response = result.get_response()
    assert response.id == f"g{batch}" and response.model_name == "fraud" and response.model_version == "1"
    assert len(response.raw_output_contents) == 1  # raw in, raw out, as Triton answers


def test_versioned_requests_and_requested_outputs(
    gclient: grpcclient.InferenceServerClient, rows: np.ndarray, make_bundle: Callable[..., Path], keys: Any
) -> None:
    x = rows[:3]
    inp = grpcclient.InferInput("input_0", [3, 30], "FP32")
    inp.set_data_from_numpy(x)
    v1 = gclient.infer("fraud", [inp], model_version="1", outputs=[grpcclient.InferRequestedOutput("output_0")])
    v2 = gclient.infer("fraud", [inp], model_version="2")
    assert v1.get_response().model_version == "1" and v2.get_response().model_version == "2"
    for version, result, model in ((1, v1, "fraud.tflite"), (2, v2, "fraud_int8io.tflite")):
        expected = reference(make_bundle(version, model=model), keys.root, x)
        np.testing.assert_allclose(result.as_numpy("output_0"), expected, rtol=0, atol=1e-6)


def test_fp16_and_integers_round_trip_exactly(gclient: grpcclient.InferenceServerClient) -> None:
    rng = np.random.default_rng(5)
    arrays = {
        "f16": rng.standard_normal((3, 4)).astype(np.float16),
        "i32": rng.integers(-(2**31), 2**31 - 1, (3, 3), dtype=np.int64).astype(np.int32),
        "u8": rng.integers(0, 256, (3, 5)).astype(np.uint8),
        "i64": np.array([[-(2**62), 2**62 + 12345], [7, -7], [0, 1]], dtype=np.int64),
    }
    datatypes = {"f16": "FP16", "i32": "INT32", "u8": "UINT8", "i64": "INT64"}
    inputs = []
    for k, a in arrays.items():
        inp = grpcclient.InferInput(f"{k}_in", list(a.shape), datatypes[k])
        inp.set_data_from_numpy(a)
        inputs.append(inp)
    result = gclient.infer("types", inputs)
    for k, a in arrays.items():
        got = result.as_numpy(f"{k}_out")
        assert got.dtype == a.dtype, k
        np.testing.assert_array_equal(got, a)


def test_typed_contents_are_answered_with_typed_contents(stub: Any, rows: np.ndarray, litert: Any) -> None:
    x = rows[30:32]
    req = tpb.ModelInferRequest(model_name="fraud", id="typed")
    t = req.inputs.add(name="input_0", datatype="FP32", shape=[2, 30])
    t.contents.fp32_contents.extend(x.ravel().tolist())
    resp = stub.ModelInfer(req)
    assert not resp.raw_output_contents and resp.id == "typed"
    (out,) = resp.outputs
    assert out.name == "output_0" and out.datatype == "FP32" and list(out.shape) == [2, 1]
    got = np.asarray(out.contents.fp32_contents, np.float32).reshape(2, 1)
    np.testing.assert_array_equal(got, litert(FACTORY_SRC / "fraud.tflite", x))
    # FP16 has no typed field: the ``types`` model (which needs an FP16 input) takes raw data only.
    req = tpb.ModelInferRequest(model_name="types")
    for name, datatype, shape, field, values in (
        ("i32_in", "INT32", [1, 3], "int_contents", [-(2**31), 0, 2**31 - 1]),
        ("u8_in", "UINT8", [1, 5], "uint_contents", [0, 1, 127, 128, 255]),
        ("i64_in", "INT64", [1, 2], "int64_contents", [-(2**63), 2**63 - 1]),
        ("f16_in", "FP16", [1, 4], "fp32_contents", [0.5] * 4),
    ):
        t = req.inputs.add(name=name, datatype=datatype, shape=shape)
        getattr(t.contents, field).extend(values)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(req)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "FP16 has no typed contents field; send it in raw_input_contents" in info.value.details()


def _fraud(**override: Any) -> Any:
    """A raw-contents fraud request built with tritonclient's messages, with fields overridden."""
    req = tpb.ModelInferRequest(model_name="fraud")
    t = req.inputs.add(name="input_0", datatype="FP32", shape=[1, 30])
    for key, value in override.items():
        if key in ("name", "datatype"):
            setattr(t, key, value)
        elif key == "shape":
            del t.shape[:]
            t.shape.extend(value)
    req.raw_input_contents.append(override.get("raw", np.full(30, 0.5, np.float32).tobytes()))
    return req


def _twice() -> Any:
    req = _fraud()
    req.inputs.add(name="input_0", datatype="FP32", shape=[1, 30])
    req.raw_input_contents.append(np.zeros(30, np.float32).tobytes())
    return req


def _no_data() -> Any:
    req = _fraud()
    del req.raw_input_contents[:]
    return req


def _raw_and_typed() -> Any:
    req = _fraud()
    req.inputs[0].contents.fp32_contents.extend([0.5] * 30)
    return req


def _output(name: str, param: str | None = None) -> Any:
    req = _fraud()
    o = req.outputs.add(name=name)
    if param is not None:
        o.parameters[param].int64_param = 1
    return req


def _typed_count(n: int) -> Any:
    req = _no_data()
    req.inputs[0].contents.fp32_contents.extend([0.5] * n)
    return req


def _typed_range() -> Any:
    req = tpb.ModelInferRequest(model_name="types")
    for name, datatype, n in (("f16_in", "FP16", 4), ("i32_in", "INT32", 3), ("u8_in", "UINT8", 5), ("i64_in", "INT64", 2)):
        req.inputs.add(name=name, datatype=datatype, shape=[1, n])
        req.raw_input_contents.append(b"\0" * (n * {"FP16": 2, "INT32": 4, "UINT8": 1, "INT64": 8}[datatype]))
    return req


def _u8_over_range() -> Any:
    req = tpb.ModelInferRequest(model_name="types")
    t = req.inputs.add(name="u8_in", datatype="UINT8", shape=[1, 5])
    t.contents.uint_contents.extend([0, 1, 2, 3, 300])
    return req


def _version(text: str) -> Any:
    req = _fraud()
    req.model_version = text
    return req


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: _fraud(name="input_9"), "unknown input 'input_9'"),
        (lambda: _fraud(shape=[1, 29], raw=b"\0" * 116), "expected shape [-1, 30], found [1, 29]"),
        (lambda: _fraud(shape=[1, 30, 1]), "expected shape [-1, 30], found [1, 30, 1]"),
        (lambda: _fraud(shape=[0, 30], raw=b""), "holds no elements"),
        (lambda: _fraud(datatype="FP64"), "expected datatype FP32, found 'FP64'"),
        (lambda: _fraud(datatype="BYTES"), "expected datatype FP32"),
        (lambda: _fraud(raw=b"\0" * 119), "needs 120 bytes in raw_input_contents[0], found 119"),
        (lambda: _fraud(shape=[2, 30]), "needs 240 bytes"),
        (_twice, "is given twice"),
        (_no_data, "no data"),
        (_raw_and_typed, "has typed contents while the request uses raw_input_contents"),
        (lambda: _typed_count(29), "needs 30 values, contents.fp32_contents has 29"),
        (lambda: _output("output_9"), "unknown output 'output_9'"),
        (lambda: _output("output_0", "classification"), "classification extension is not supported"),
        (lambda: _version("x1"), "model_version: expected a version number"),
        (_u8_over_range, "UINT8 values must lie in [0, 255], found [0, 300]"),
    ],
)
def test_bad_requests_give_invalid_argument(stub: Any, build: Callable[[], Any], fragment: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(build())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert fragment in info.value.details()


def test_missing_and_miscounted_raw_inputs_give_invalid_argument(stub: Any) -> None:
    req = _typed_range()
    del req.inputs[1]  # four raw buffers, three inputs
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(req)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw_input_contents holds 4 tensor(s), 'inputs' lists 3" in info.value.details()
    del req.raw_input_contents[1]
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(req)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "missing input(s) ['i32_in']" in info.value.details()
    assert stub.ModelInfer(_typed_range()).model_name == "types"


def test_malformed_messages_give_invalid_argument(served: tuple[Daemon, str]) -> None:
    with grpc.insecure_channel(served[1]) as channel:
        for method in ("ModelInfer", "ModelMetadata", "ModelReady"):
            call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
            with pytest.raises(grpc.RpcError) as info:
                call(b"\xff\xff\xff\xff not protobuf")
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
            assert "is not a valid" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary("/inference.GRPCInferenceService/ModelConfig")(b"")
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_unknown_model_or_version_gives_not_found(gclient: grpcclient.InferenceServerClient) -> None:
    inp = grpcclient.InferInput("input_0", [1, 30], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 30), np.float32))
    for model, version, fragment in (("nope", "", "unknown model 'nope'"), ("fraud", "9", "has no version 9 loaded")):
        with pytest.raises(InferenceServerException) as info:
            gclient.infer(model, [inp], model_version=version)
        assert status_of(info.value) == "NOT_FOUND" and fragment in info.value.message()
        with pytest.raises(InferenceServerException) as info:
            gclient.get_model_metadata(model, version)
        assert status_of(info.value) == "NOT_FOUND" and fragment in info.value.message()


def test_full_queue_gives_unavailable(served: tuple[Daemon, str]) -> None:
    """``slow`` has one worker and max_queue_size 1: with the worker held, one request of a burst
    of 12 waits and the other 11 are refused at once; released, the waiting one is answered."""
    d, url = served
    x = np.full((1, 256), 0.1, np.float32)
    barrier = threading.Barrier(12)
    outcomes: list[str] = []
    messages: list[str] = []

    def one() -> None:
        client = grpcclient.InferenceServerClient(url=url)
        inp = grpcclient.InferInput("x", [1, 256], "FP32")
        inp.set_data_from_numpy(x)
        assert client.is_server_live()  # connected before the burst
        barrier.wait()
        try:
            client.infer("slow", [inp])
            outcomes.append("OK")
        except InferenceServerException as exc:
            outcomes.append(status_of(exc))
            messages.append(exc.message())
        client.close()

    with held_worker(d) as hold:
        threads = [threading.Thread(target=one, name=f"burst-{i}") for i in range(12)]
        for t in threads:
            t.start()
        wait_until(lambda: len(outcomes) == 11, "the refused requests to be answered")
        hold.unlink()
        for t in threads:
            t.join()
    assert sorted(outcomes) == ["OK"] + ["UNAVAILABLE"] * 11, outcomes
    assert all("queue full" in m for m in messages)
    metrics = request(d.port, "GET", "/metrics")[1].decode()
    assert metric_value(metrics, "edge_requests_total", model="slow", outcome="unavailable") == 11


def test_shared_metrics_statistics_and_shadow(
    served: tuple[Daemon, str], gclient: grpcclient.InferenceServerClient, rows: np.ndarray
) -> None:
    """gRPC requests land in the same per-version statistics, Prometheus counters and shadow
    comparisons as HTTP ones; no request of this module was answered with INTERNAL."""
    d = served[0]

    def counts() -> tuple[float, float]:
        text = request(d.port, "GET", "/metrics")[1].decode()
        ok = metric_value(text, "edge_requests_total", model="fraud", version="1", outcome="success") or 0.0
        compared = metric_value(text, "edge_shadow_comparisons_total", model="fraud", version="1", shadow_version="2")
        return ok, compared or 0.0

    before_ok, before_cmp = counts()
    inp = grpcclient.InferInput("input_0", [4, 30], "FP32")
    inp.set_data_from_numpy(rows[40:44])
    for _ in range(5):
        gclient.infer("fraud", [inp])
    after_ok, after_cmp = counts()
    assert after_ok == before_ok + 5
    assert after_cmp == before_cmp + 20  # every row of every unversioned request, scored by v2 and compared
    text = request(d.port, "GET", "/metrics")[1].decode()
    for model in ("fraud", "types", "slow"):
        assert metric_value(text, "edge_requests_total", model=model, outcome="error") == 0.0, model


# -- a model that cannot load, draining, configuration -----------------------------------------


def test_a_model_that_cannot_load_gives_unavailable(env: Env, bad_golden_bundle: Any) -> None:
    (env.factory / "fraud.bundle").unlink()  # no factory fallback
    env.install(bad_golden_bundle(3))
    d = env.start(server_toml="grpc_port = -1\n", wait=False)
    wait_until(lambda: "cannot serve v3" in d.log(), "the failed load")
    client = grpcclient.InferenceServerClient(url=grpc_url(d))
    assert client.is_server_live() and not client.is_server_ready()
    assert not client.is_model_ready("fraud")
    inp = grpcclient.InferInput("input_0", [1, 30], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 30), np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("fraud", [inp])
    assert status_of(info.value) == "UNAVAILABLE" and "not ready" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("fraud")
    assert status_of(info.value) == "UNAVAILABLE"
    client.close()


def test_sigterm_lets_running_grpc_requests_finish(env: Env, keys: Any, onnx_models: dict[str, Path]) -> None:
    golden = [np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32)]
    env.install(pack_onnx(onnx_models["slow"], "slow", 1, keys, env.base / "slow.bundle", golden))
    # The worker is held (test-only hook) so that all four requests are still in flight at SIGTERM.
    hold = env.base / HOLD_FILE
    hold.touch()
    d = env.start(SLOW.replace("max_queue_size = 1", "max_queue_size = 16"), server_toml="grpc_port = -1\n",
                  env_extra=hold_env(env.base))
    url = grpc_url(d)
    x = np.random.default_rng(1).standard_normal((64, 256)).astype(np.float32)
    answers: list[str] = []

    def one() -> None:
        client = grpcclient.InferenceServerClient(url=url)
        inp = grpcclient.InferInput("x", [64, 256], "FP32")
        inp.set_data_from_numpy(x)
        try:
            answers.append(client.infer("slow", [inp]).get_response().model_version)
        except InferenceServerException as exc:
            answers.append(status_of(exc))
        client.close()

    sigterm_while_queued(d, hold, [threading.Thread(target=one, name=f"in-flight-{i}") for i in range(4)])
    assert answers == ["1"] * 4


def test_a_grpc_port_in_use_stops_start_up(env: Env) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        config = env.base / "busy.toml"
        config.write_text(env.config_text(server_toml=f"grpc_port = {port}\n"), encoding="utf-8")
        proc = subprocess.run([str(EDGE), "serve", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert f"gRPC: cannot listen on 127.0.0.1:{port}" in proc.stderr


def test_without_the_grpc_extra_the_daemon_serves_http_only(env: Env, tmp_path: Path) -> None:
    # The endpoint needs only protobuf (the grpc extra); grpcio is not used by the daemon.
    hidden = tmp_path / "no-grpc" / "google"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text('raise ImportError("No module named \'google.protobuf\' (hidden by the test)")\n')
    config = env.base / "no-grpc.toml"
    config.write_text(env.config_text(server_toml="grpc_port = -1\n"), encoding="utf-8")
    pythonpath = os.pathsep.join(filter(None, [str(hidden.parent), os.environ.get("PYTHONPATH")]))
    d = Daemon(config, env_extra={"PYTHONPATH": pythonpath})
    env.daemons.append(d)
    d.wait_ready()
    assert "grpc_port is -1 but gRPC is not available" in d.log() and "install the grpc extra" in d.log()
    assert GRPC_LINE not in d.log()
    assert request(d.port, "GET", "/v2/models/fraud/ready")[0] == 200


def test_grpc_is_off_by_default_and_minus_one_picks_a_port() -> None:
    assert parse_config({}).server.grpc_port == 0
    assert parse_config({"server": {"grpc_port": -1}}).server.grpc_port == -1
    with pytest.raises(ConfigError, match="grpc_port"):
        parse_config({"server": {"grpc_port": -2}})
