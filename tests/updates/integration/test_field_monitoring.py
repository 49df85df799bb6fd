"""Field monitoring end to end: the real daemon, mosquitto, tritonclient and the CLI.

* Rows from the model's own validation distribution keep the drift under the threshold;
  rows with one feature scaled cross it within the window, the feature is named in
  ``/stats`` and ``/metrics``, a ``drift`` event goes out, and ``fleet status`` shows it.
* ``fleet capture pull`` interrupted by a broker restart resumes and the files it writes
  equal what the daemon scored.
* kill -9 of the daemon while it captures leaves no corrupt segment.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

from edge_runtime.bundle.reader import BundleLimits
from edge_runtime.fleet.capture import CapturePull
from edge_runtime.fleet.session import BrokerOptions
from edge_runtime.monitoring.capture import OPEN_SUFFIX, decode_array, read_records
from edge_runtime.packaging import PackRequest, pack_model
from edge_runtime.store.store import ModelStore
from edge_runtime.updates.protocol import Topics
from harness.daemon import Daemon
from harness.http import request
from harness.wait import wait_until
from updates.conftest import FACTORY, FLEET, FleetKeys
from updates.integration.conftest import Mosquitto, Observer

pytestmark = pytest.mark.integration

DEVICE = "pi-drift"
SHIFTED = 7  # the feature the shifted rows scale


@pytest.fixture(scope="module")
def profiled_bundle(tmp_path_factory: pytest.TempPathFactory, fleet_keys: FleetKeys) -> Path:
    """fraud v1 with a reference profile of its calibration rows."""
    out = tmp_path_factory.mktemp("profiled") / "fraud-v1.bundle"
    calib = np.load(FACTORY / "calibration.npy").astype(np.float32)
    manifest = pack_model(PackRequest(
        FACTORY / "fraud.tflite", name="fraud", version=1, keys=[fleet_keys.models_key], out=out,
        input_names=["input_0"], output_names=["output_0"], golden_inputs=[np.load(FACTORY / "golden.npy")],
        profile_calls=[[calib[i:i + 50]] for i in range(0, len(calib), 50)],
    ))
    assert manifest.profile_file == "profile.json"
    return out


def _device(base: Path, mosquitto: Mosquitto, keys: FleetKeys, bundle: Path, *, rate: float = 1.0,
            kbps: float = 2000.0, threshold: float = 0.25) -> Path:
    store = ModelStore(base / "store", keys.root, None, BundleLimits())
    store.install(bundle)
    store.activate("fraud", 1)
    config = base / "config.toml"
    config.write_text(
        f'[device]\nid = "{DEVICE}"\n[store]\npath = "{base / "store"}"\nfactory = "{base / "factory"}"\n'
        f'[server]\nport = 0\n[trust]\nroot = "{keys.path("root.json")}"\n'
        f'[mqtt]\nurl = "{mosquitto.url}"\nfleet = "{FLEET}"\nreconnect_min_s = 0.05\nreconnect_max_s = 0.5\n'
        f'[monitoring]\nstate_interval_s = 0.5\ncapture_max_kbps = {kbps}\n'
        f'[models.fraud.drift]\nthreshold = {threshold}\nclear = 0.1\nwindow_rows = 400\nmin_rows = 200\nmax_sketched_per_s = 0\n'
        f'[models.fraud.capture]\nrate = {rate}\nmax_mb = 20\n',
        encoding="utf-8",
    )
    return config


@pytest.fixture
def daemon(tmp_path: Path, mosquitto: Mosquitto, fleet_keys: FleetKeys, profiled_bundle: Path,
           observer: Observer) -> Iterator[Daemon]:
    d = Daemon(_device(tmp_path, mosquitto, fleet_keys, profiled_bundle))
    try:
        d.wait_ready()
        wait_until(lambda: observer.state(DEVICE), "the daemon's first state")
        yield d
    finally:
        d.stop()


def _score(url: str, rows: np.ndarray, per_request: int = 10) -> list[np.ndarray]:
    """Score ``rows`` in order, ``per_request`` at a time, with tritonclient; the answers."""
    client = httpclient.InferenceServerClient(url)
    answers = []
    try:
        for i in range(0, len(rows), per_request):
            batch = rows[i:i + per_request]
            inp = httpclient.InferInput("input_0", list(batch.shape), "FP32")
            inp.set_data_from_numpy(batch, binary_data=True)
            answers.append(client.infer("fraud", [inp]).as_numpy("output_0"))
    finally:
        client.close()
    return answers


def _normal_rows(n: int, seed: int) -> np.ndarray:
    """Rows from the calibration distribution (resampled, with a little noise)."""
    calib = np.load(FACTORY / "calibration.npy").astype(np.float32)
    rng = np.random.default_rng(seed)
    return (calib[rng.integers(0, len(calib), n)] + rng.normal(0, 0.02, (n, calib.shape[1]))).astype(np.float32)


def _drift(d: Daemon) -> dict[str, Any]:
    status, body = request(d.port, "GET", "/v2/models/fraud/stats")
    assert status == 200, body
    drift: dict[str, Any] = json.loads(body)["model_stats"][0]["drift"]
    return drift


def test_drift_crosses_the_threshold_names_the_feature_and_fleet_status_shows_it(
    daemon: Daemon, mosquitto: Mosquitto, observer: Observer, tmp_path: Path, fleet_keys: FleetKeys,
    cli: Callable[..., Any],
) -> None:
    _score(daemon.url, _normal_rows(400, seed=1))
    calm = _drift(daemon)
    assert calm["rows"] >= 400 and calm["score"] is not None
    assert calm["score"] < 0.25 and calm["alert"] is False, calm
    assert observer.of(DEVICE, "drift") == []

    shifted = _normal_rows(400, seed=2)
    shifted[:, SHIFTED] *= 4.0
    _score(daemon.url, shifted)
    wait_until(lambda: _drift(daemon)["alert"], "the drift alert")
    hot = _drift(daemon)
    assert hot["score"] >= 0.25 and hot["worst_feature"] == f"input_0[{SHIFTED}]", hot
    assert hot["worst_features"][0]["feature"] == f"input_0[{SHIFTED}]"
    status, metrics = request(daemon.port, "GET", "/metrics")
    text = metrics.decode()
    assert 'edge_drift_alert{model="fraud",version="1"} 1.0' in text
    assert f'edge_drift_feature_psi{{feature="input_0[{SHIFTED}]",model="fraud",version="1"}}' in text

    wait_until(lambda: observer.of(DEVICE, "drift"), "the drift event")
    (event,) = observer.of(DEVICE, "drift")
    assert event["model"] == "fraud" and event["version"] == 1 and event["worst_feature"] == f"input_0[{SHIFTED}]"
    wait_until(lambda: (observer.state(DEVICE)["models"]["fraud"].get("drift") or {}).get("alert"),
               "the retained state to carry the alert")

    js = cli(["fleet", "status", "--fleet", FLEET, "--broker", mosquitto.url, "--json"])
    assert js.code == 0, js.err
    (row,) = json.loads(js.out)
    drift = row["state"]["models"]["fraud"]["drift"]
    assert drift["alert"] is True and drift["worst_feature"] == f"input_0[{SHIFTED}]" and drift["version"] == 1
    table = cli(["fleet", "status", "--fleet", FLEET, "--broker", mosquitto.url])
    assert f"input_0[{SHIFTED}] ALERT" in table.out and "drift alert on 1" in table.out, table.out

    # The CLI pull of everything captured (rate 1): every scored row is in inputs.npz, in order.
    out = tmp_path / "pulled"
    pulled = cli(["fleet", "capture", "pull", "--fleet", FLEET, "--broker", mosquitto.url, "--device", DEVICE,
                      "--out", out, "--sign-key", fleet_keys.path("signing.key"), "--wait", "120"])
    assert pulled.code == 0, pulled.err
    got = np.load(out / DEVICE / "fraud" / "v1" / "inputs.npz")["input_0"]
    np.testing.assert_array_equal(got, np.concatenate([_normal_rows(400, seed=1), shifted]))


def test_capture_pull_resumes_across_a_broker_restart_and_equals_what_was_scored(
    tmp_path: Path, mosquitto: Mosquitto, fleet_keys: FleetKeys, profiled_bundle: Path, observer: Observer,
) -> None:
    # 64 kB/s: the ~200 kB answer takes seconds, so the broker restart lands mid-transfer.
    d = Daemon(_device(tmp_path, mosquitto, fleet_keys, profiled_bundle, kbps=512.0))
    try:
        d.wait_ready()
        wait_until(lambda: observer.state(DEVICE), "the daemon's first state")
        rows = _normal_rows(1000, seed=5)
        answers = _score(d.url, rows, per_request=10)

        restarted = threading.Event()

        def progress(done: int, total: int) -> None:
            if done >= 1 and not restarted.is_set():
                restarted.set()
                threading.Thread(target=mosquitto.restart, daemon=True).start()

        topics = Topics("edge", FLEET)
        pull = CapturePull(BrokerOptions(url=mosquitto.url), topics, DEVICE, [fleet_keys.models_key],
                           tmp_path / "out", stall_s=3.0, progress=progress, timeout_s=20)
        result = pull.run(timeout_s=180)
        assert restarted.is_set()
        assert result.attempts >= 2, "the pull should have asked again after the restart"
        assert result.records == 100 and result.missing == []
        base = tmp_path / "out" / DEVICE / "fraud" / "v1"
        np.testing.assert_array_equal(np.load(base / "inputs.npz")["input_0"], rows)
        np.testing.assert_array_equal(np.load(base / "outputs.npz")["output_0"], np.concatenate(answers))
        meta = [json.loads(line) for line in (base / "records.jsonl").read_text().splitlines()]
        assert len(meta) == 100 and {m["reason"] for m in meta} == {"sample"} and all(m["rows"] == 10 for m in meta)
        assert not list((tmp_path / "out").glob(".pull-*"))  # the work directory is gone once done
    finally:
        d.stop()


def test_kill_9_while_capturing_leaves_no_corrupt_segment(
    tmp_path: Path, mosquitto: Mosquitto, fleet_keys: FleetKeys, profiled_bundle: Path,
) -> None:
    config = _device(tmp_path, mosquitto, fleet_keys, profiled_bundle)
    ring = tmp_path / "store" / ".capture" / "fraud"
    d = Daemon(config)
    stop = threading.Event()
    try:
        d.wait_ready()

        def load() -> None:
            rows = _normal_rows(200, seed=3)
            while not stop.is_set():
                try:
                    _score(d.url, rows, per_request=20)
                except Exception:  # noqa: BLE001 - the daemon is killed under this load
                    return

        t = threading.Thread(target=load, daemon=True)
        t.start()
        wait_until(lambda: any(p.stat().st_size > 50_000 for p in ring.glob(f"*{OPEN_SUFFIX}")),
                   "records being written to the open segment")
        os.kill(d.proc.pid, signal.SIGKILL)
        d.proc.wait(30)
    finally:
        stop.set()
        d.stop()
    d2 = Daemon(config)  # the ring is recovered when the daemon opens it again
    try:
        d2.wait_ready()
        _score(d2.url, _normal_rows(20, seed=4), per_request=20)
        wait_until(lambda: not list(ring.glob(f"*{OPEN_SUFFIX}")) or len(list(ring.glob("seg-*.jsonl"))) >= 1,
                   "the recovered segment")
    finally:
        assert d2.stop() == 0
    assert not list(ring.glob(f"*{OPEN_SUFFIX}"))  # sealed at the clean stop
    total = 0
    for seg in sorted(ring.glob("seg-*.jsonl")):
        data = seg.read_bytes()
        records, good = read_records(data)
        assert good == len(data), f"{seg.name} has a torn record"
        for r in records:
            assert decode_array(r["inputs"]["input_0"]).shape[1] == 30
        total += len(records)
    assert total >= 2
