"""The daemon process: SIGTERM drains in-flight requests and exits 0, SIGHUP reloads the
serving config without dropping requests, command-line overrides, start-up errors.
"""

from __future__ import annotations

import http.client
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from harness.daemon import EDGE, Daemon
from harness.wait import wait_until
from serving.support import HOLD_FILE, Env, Load, hold_env, infer_json, pack_onnx, request, sigterm_while_queued

pytestmark = pytest.mark.integration


def test_sigterm_drains_in_flight_requests_and_exits_0(env: Env, keys: Any, onnx_models: dict[str, Path]) -> None:
    golden = [np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32)]
    env.install(pack_onnx(onnx_models["slow"], "slow", 1, keys, env.base / "slow.bundle", golden))
    # The worker is held (test-only hook) so that all six requests are still in flight at SIGTERM.
    hold = env.base / HOLD_FILE
    hold.touch()
    d = env.start('[models.slow]\nexecution = "threads"\ninstances = 1\nmax_batch_size = 0\nidle_inline_max_us = 0\n',
                  env_extra=hold_env(env.base))
    x = np.random.default_rng(1).standard_normal((64, 256)).astype(np.float32)
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [64, 256], "data": x.ravel().tolist()}]})
    statuses: list[int] = []

    def one() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=120)
        statuses.append(request(d.port, "POST", "/v2/models/slow/infer", body, conn=conn)[0])
        conn.close()

    sigterm_while_queued(d, hold, [threading.Thread(target=one, name=f"in-flight-{i}") for i in range(6)])
    assert statuses == [200] * 6


def test_sighup_reloads_serving_config_without_dropping_requests(env: Env, rows: np.ndarray, make_bundle: Any) -> None:
    env.install(make_bundle(1))
    env.install(make_bundle(2, model="fraud_int8io.tflite"), activate=False)
    d = env.start()
    assert orjson.loads(request(d.port, "GET", "/v2/models/fraud/config")[1])["parameters"]["execution"]["string_value"] == "inline"
    with Load(d.port, rows, clients=4) as load:
        wait_until(lambda: load.count(1) >= 100, "answers before the reload")
        d.config.write_text(
            env.config_text('[models.fraud]\nexecution = "threads"\ninstances = 2\nmax_batch_size = 4\n'
                            'traffic = { "1" = 50, "2" = 50 }\n'), encoding="utf-8")
        d.signal(signal.SIGHUP)
        wait_until(lambda: load.count(2) >= 100, "v2 answering after the reload")
        config = orjson.loads(request(d.port, "GET", "/v2/models/fraud/config")[1])
        assert config["parameters"]["execution"]["string_value"] == "threads"
        assert config["instance_group"][0]["count"] == 2
        n = load.count(1) + load.count(2)
        d.config.write_text("[models.fraud]\nnot_a_key = 1\n", encoding="utf-8")
        d.signal(signal.SIGHUP)
        wait_until(lambda: "config not reloaded" in d.log(), "the bad config to be refused")
        wait_until(lambda: load.count(1) + load.count(2) >= n + 100, "answers after the bad reload")
    assert load.failures == []
    assert "unknown key(s) 'not_a_key'" in d.log()


def test_command_line_overrides_and_start_up_errors(env: Env, tmp_path: Path) -> None:
    config = tmp_path / "bare.toml"
    config.write_text('[server]\nport = 1\n[models.fraud]\nmax_batch_size = 4\n', encoding="utf-8")
    d = Daemon(config, ["--store", str(env.store_path), "--factory", str(env.factory),
                               "--root", str(env.keys.root_path), "--port", "0", "--host", "127.0.0.1"])
    try:
        d.wait_ready()
        status, body = infer_json(d.port, "fraud", np.zeros((1, 30), np.float32))
        assert status == 200 and body["model_version"] == "1"
    finally:
        assert d.stop() == 0

    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nport = \"eighty\"\n", encoding="utf-8")
    proc = subprocess.run([str(EDGE), "serve", "--config", str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "server.port: expected int" in proc.stderr

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [str(EDGE), "serve", "--config", str(config), "--store",
             str(env.store_path), "--factory", str(env.factory), "--root", str(env.keys.root_path), "--port", str(port)],
            capture_output=True, text=True, timeout=60,
        )
    assert proc.returncode == 1
    assert "in use" in proc.stderr.lower()


def test_a_model_that_cannot_load_is_not_ready_until_a_good_version_arrives(
    env: Env, make_bundle: Any, bad_golden_bundle: Any
) -> None:
    (env.factory / "fraud.bundle").unlink()  # no factory fallback
    env.install(bad_golden_bundle(3))
    d = env.start(wait=False)
    wait_until(lambda: "cannot serve v3" in d.log(), "the failed load")
    assert request(d.port, "GET", "/v2/health/live")[0] == 200
    assert request(d.port, "GET", "/v2/health/ready")[0] == 503
    status, raw = request(d.port, "GET", "/v2/models/fraud/ready")
    assert status == 503 and b"not ready" in raw
    status, _ = infer_json(d.port, "fraud", np.zeros((1, 30), np.float32))
    assert status == 503
    assert "differs from golden" in env.store().state("fraud").failed[3]
    env.install(make_bundle(4))
    wait_until(lambda: request(d.port, "GET", "/v2/health/ready")[0] == 200, "ready after a good version")
    status, body = infer_json(d.port, "fraud", np.zeros((1, 30), np.float32))
    assert status == 200 and body["model_version"] == "4"


def test_systemd_notifications_and_watchdog(env: Env, tmp_path: Path) -> None:
    """READY=1 only once HTTP answers and the model is loaded, STATUS= with the versions,
    WATCHDOG=1 pings while the loop answers, STOPPING=1 on SIGTERM."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    config = tmp_path / "sd.toml"
    config.write_text(env.config_text(), encoding="utf-8")
    d = Daemon(config, env_extra={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"})
    try:
        messages: list[str] = []
        while not any("READY=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
        ready = next(m for m in messages if "READY=1" in m)
        assert "STATUS=serving fraud:1" in ready
        wait_until(lambda: d.port != 0, "the listening line")
        assert request(d.port, "GET", "/v2/health/ready")[0] == 200  # ready over HTTP by the time READY=1 is sent
        while not any("WATCHDOG=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
        d.signal(signal.SIGTERM)
        while not any("STOPPING=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
        assert d.proc.wait(30) == 0
    finally:
        d.stop()
        sock.close()
