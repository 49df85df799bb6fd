"""The device state and readiness tell the truth, and the device bounds what it is sent.

One real mosquitto and two real daemons for the whole module (issue 21 item 4, issue 22
finding 8):

* ``pi-truth`` serves fraud v2 (v1 the last known good) with ``[mqtt]``: ``models rollback``
  run by the CLI in another process shows in the retained state; ``last_error`` leaves the
  state once a later update serves; an 8 MiB message is dropped and the daemon keeps serving
  with its RSS bounded; a huge number in an infer request answers 400.
* ``pi-refused`` has only a factory bundle signed by a key its root does not trust and no
  ``[mqtt]``: readiness and the ``ready:`` log line name the model and why; a SIGHUP adding
  ``[mqtt]`` warns naming it.

Plus the MQTT 3.1.1 path of the size cap (no Maximum Packet Size there: discarded on arrival,
counted, reported as an event) with an in-process device, and a bad device id refused before
the daemon listens.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from edge_runtime.bundle.reader import BundleLimits
from edge_runtime.config import MonitoringConfig
from edge_runtime.health import FIRMWARE_THROTTLED
from edge_runtime.store.store import ModelStore
from edge_runtime.updates.protocol import Topics
from edge_runtime.updates.service import UpdateService
from harness.daemon import EDGE, Daemon, clean_env
from harness.http import request
from harness.wait import wait_until
from updates.conftest import FLEET, FleetKeys, Releases
from updates.integration.conftest import Mosquitto, Observer, device_config, free_port, publish, start_device

pytestmark = pytest.mark.integration
pytest.importorskip("edge_runtime.daemon")

TRUTH = "pi-truth"
REFUSED = "pi-refused"
INPUT = {"name": "input_0", "datatype": "FP32", "shape": [1, 30]}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One mosquitto for the module."""
    b = Mosquitto(tmp_path_factory.mktemp("broker")).start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def watcher(broker: Mosquitto) -> Iterator[Observer]:
    """Every device event and the newest state, for the module."""
    obs = Observer(broker.port, Topics("edge", FLEET))
    yield obs
    obs.close()


def _config(base: Path, keys: FleetKeys, device: str, mqtt_url: str | None, extra: str = "") -> Path:
    """A daemon config; with ``[mqtt]`` the periodic state refresh is an hour away, so only an
    event-driven publish can show a change."""
    text = (
        f'[device]\nid = "{device}"\n[store]\npath = "{base / "store"}"\nfactory = "{base / "factory"}"\n'
        f'[server]\nport = 0\nswap_poll_ms = 200\n[trust]\nroot = "{keys.path("root.json")}"\n{extra}'
    )
    if mqtt_url is not None:
        text += (f'[mqtt]\nurl = "{mqtt_url}"\nfleet = "{FLEET}"\nreconnect_min_s = 0.05\nreconnect_max_s = 0.5\n'
                 '[monitoring]\nstate_interval_s = 3600.0\n')
    path = base / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def truth(
    tmp_path_factory: pytest.TempPathFactory, broker: Mosquitto, watcher: Observer, fleet_keys: FleetKeys,
    releases: Releases,
) -> Iterator[Daemon]:
    """``pi-truth``: fraud v1 then v2 activated (v2 active, v1 last known good), reporting to the broker."""
    base = tmp_path_factory.mktemp("truth")
    store = ModelStore(base / "store", fleet_keys.root, None, BundleLimits())
    for v in (1, 2):
        store.install(releases.bundle(v))
        store.activate("fraud", v)
    d = Daemon(_config(base, fleet_keys, TRUTH, broker.url))
    try:
        d.wait_ready()
        wait_until(lambda: watcher.state(TRUTH).get("models", {}).get("fraud", {}).get("serving") == 2,
                   "pi-truth to report serving v2")
        yield d
    finally:
        d.stop()


@pytest.fixture(scope="module")
def refused(tmp_path_factory: pytest.TempPathFactory, fleet_keys: FleetKeys, releases: Releases) -> Iterator[Daemon]:
    """``pi-refused``: no store versions, a factory bundle signed by a stranger's key, no ``[mqtt]``."""
    base = tmp_path_factory.mktemp("refused")
    (base / "factory").mkdir()
    shutil.copy(releases.bundle(1, signers=[fleet_keys.stranger]), base / "factory" / "fraud.bundle")
    d = Daemon(_config(base, fleet_keys, REFUSED, None, extra="[models.wine]\nmax_batch_size = 2\n"))
    try:
        assert d.wait_line("ready: ") is not None, d.log()
        yield d
    finally:
        d.stop()


def _fraud(obs: Observer) -> dict[str, object]:
    return dict(obs.state(TRUTH).get("models", {}).get("fraud", {}))


def test_cli_rollback_shows_in_the_retained_state(truth: Daemon, watcher: Observer, cli: Callable[..., Any]) -> None:
    r = cli(["models", "rollback", "fraud", "--config", truth.config], real=True)
    assert r.code == 0, r.err
    wait_until(lambda: _fraud(watcher).get("active") == 1 and _fraud(watcher).get("serving") == 1,
               "the retained state to show the rolled-back v1 serving")
    assert request(truth.port, "GET", "/v2/models/fraud")[0] == 200


def test_last_error_leaves_the_state_once_a_newer_version_serves(
    truth: Daemon, broker: Mosquitto, watcher: Observer, fleet_keys: FleetKeys, releases: Releases
) -> None:
    publish(broker.url, releases.bundle(3, wrong_golden=True), fleet_keys.models_key)  # fails its self-test
    wait_until(lambda: (watcher.state(TRUTH).get("last_error") or {}).get("version") == 3,
               "last_error naming the failed v3")
    publish(broker.url, releases.bundle(4), fleet_keys.models_key)
    wait_until(lambda: _fraud(watcher).get("serving") == 4, "v4 serving")
    wait_until(lambda: watcher.state(TRUTH).get("last_error") is None, "last_error cleared")
    assert [e for e in watcher.of(TRUTH, "failed") if e.get("version") == 3], "the history stays in the events"


def test_state_carries_device_health(truth: Daemon, watcher: Observer) -> None:
    h = watcher.state(TRUTH)["health"]
    assert set(h) == {"cpu_temp_c", "throttled", "under_voltage", "throttle_flags", "store_free_bytes",
                      "mem_available_bytes", "mem_total_bytes"}
    assert isinstance(h["store_free_bytes"], int) and h["store_free_bytes"] > 0
    assert isinstance(h["mem_total_bytes"], int) and h["mem_total_bytes"] >= (h["mem_available_bytes"] or 0)
    status, body = request(truth.port, "GET", "/metrics")
    assert status == 200 and b"edge_store_free_bytes " in body


def test_huge_numbers_in_data_answer_400(truth: Daemon) -> None:
    for value in ("1" + "0" * 40, "1e39"):  # a JSON integer of 41 digits, a float beyond FP32
        data = "[" + ",".join(["0.5"] * 29 + [value]) + "]"
        body = f'{{"inputs":[{json.dumps(INPUT)[:-1]},"data":{data}}}]}}'.encode()
        status, answer = request(truth.port, "POST", "/v2/models/fraud/infer", body)
        assert status == 400, answer
        assert b"FP32 values must lie within" in answer, answer


def test_oversized_message_is_dropped_and_serving_goes_on(truth: Daemon, broker: Mosquitto, watcher: Observer) -> None:
    before = truth.rss_bytes()
    rejected = len(watcher.of(TRUTH, "rejected"))
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="big-sender")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        # The big one, then a small one behind it (on the fleet's topic: the big one's is not overwritten).
        for topic, payload in ((f"edge/{FLEET}/devices/{TRUTH}/desired", b"x" * (8 * 1024 * 1024)),
                               (f"edge/{FLEET}/desired", b"{}")):
            info = client.publish(topic, payload, qos=1)
            info.wait_for_publish(30)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()
    # The small one (not a signed desired state) is refused: the link went on past the big one.
    wait_until(lambda: len(watcher.of(TRUTH, "rejected")) > rejected, "the small message after the big one refused")
    assert _answers(truth)
    grown = truth.rss_bytes() - before
    assert grown < 8 * 1024 * 1024, f"RSS grew by {grown} bytes after an 8 MiB message"
    assert truth.alive and not truth.tracebacks()


def _answers(d: Daemon) -> bool:
    body = json.dumps({"inputs": [{**INPUT, "data": [0.1] * 30}]}).encode()
    return request(d.port, "POST", "/v2/models/fraud/infer", body)[0] == 200


def test_readiness_names_the_model_and_why(refused: Daemon) -> None:
    line = refused.lines[refused.wait_line("ready: ") or 0]
    assert refused.wait_line("[models.wine]: no model 'wine' is installed", timeout=0) is not None, refused.log()
    assert "0 model(s) served" in line and "fraud:" in line and "loading" not in line, line
    status, body = request(refused.port, "GET", "/v2/health/ready")
    message = json.loads(body)["error"]
    assert status == 503 and "fraud: " in message and "loading models" not in message, message
    assert "fraud: factory bundle fraud.bundle refused: " in message and "not trusted" in message, message
    assert "fraud: factory bundle fraud.bundle refused: " in line, line


def test_sighup_warns_about_each_key_that_needs_a_restart(refused: Daemon, broker: Mosquitto) -> None:
    text = refused.config.read_text(encoding="utf-8")
    refused.config.write_text(
        text + f'[mqtt]\nurl = "{broker.url}"\nfleet = "{FLEET}"\n[monitoring]\nstate_interval_s = 5.0\n'
        '[models.frued]\nmax_batch_size = 4\n',
        encoding="utf-8",
    )
    start = len(refused.lines)
    refused.signal(signal.SIGHUP)
    done = refused.wait_line("SIGHUP: serving config reloaded", start=start)
    assert done is not None, refused.log()
    said = "\n".join(refused.lines[start : done + 1])
    assert "SIGHUP: [mqtt] added; it takes effect after a restart" in said, said
    assert "[models.frued]: no model 'frued' is installed" in said, said
    assert "applied: [monitoring] state_interval_s" in said, said


def test_oversized_message_over_mqtt_311_is_discarded_counted_and_reported(
    tmp_path: Path, broker: Mosquitto, watcher: Observer, fleet_keys: FleetKeys, releases: Releases
) -> None:
    svc, _ = start_device(tmp_path, broker.url, "pi-311", fleet_keys, [releases.bundle(1)], 1,
                          protocol="3.1.1", max_message_bytes=64 * 1024)
    try:
        wait_until(lambda: watcher.state("pi-311"), "pi-311 to report")
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="big-311")
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        try:
            client.publish(f"edge/{FLEET}/devices/pi-311/desired", b"x" * (1024 * 1024), qos=1).wait_for_publish(30)
        finally:
            client.disconnect()
            client.loop_stop()
        event = wait_until(lambda: watcher.of("pi-311", "message_dropped"), "the message_dropped event")[0]
        assert event["topic"] == f"edge/{FLEET}/devices/pi-311/desired" and event["count"] == 1
        assert event["bytes"] > 1024 * 1024  # the size paho was reading, though only its head was kept
        assert svc.dropped_messages == 1 and svc.link.connected
        wait_until(lambda: watcher.state("pi-311").get("dropped_messages") == 1, "the count in the state")
    finally:
        svc.stop()


@pytest.mark.parametrize(("table", "key"), [('[device]\nid = "bad/id"\n', "device.id"),
                                            ('[mqtt]\nfleet = "a+b"\n', "mqtt.fleet")])
def test_bad_identity_is_refused_before_listening(tmp_path: Path, table: str, key: str, fleet_keys: FleetKeys) -> None:
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(f'{table}[server]\nport = {port}\n[store]\npath = "{tmp_path / "store"}"\n'
                      f'[trust]\nroot = "{fleet_keys.path("root.json")}"\n', encoding="utf-8")
    proc = subprocess.run([str(EDGE), "serve", "--config", str(config)], capture_output=True, text=True,
                          env=clean_env(), timeout=60, check=False)
    assert proc.returncode in (1, 2), proc.stderr
    assert key in proc.stderr and "listening" not in proc.stderr, proc.stderr


def test_throttling_that_starts_raises_a_health_alert(
    tmp_path: Path, broker: Mosquitto, watcher: Observer, fleet_keys: FleetKeys, releases: Releases
) -> None:
    root = tmp_path / "sysroot"
    flags = root / FIRMWARE_THROTTLED
    flags.parent.mkdir(parents=True)
    flags.write_text("0\n")
    cfg = device_config(tmp_path, broker.url, "pi-hot", fleet_keys)
    cfg = dataclasses.replace(cfg, monitoring=MonitoringConfig(health_interval_s=0.05))
    store = ModelStore(Path(cfg.store.path), fleet_keys.root, None, BundleLimits())
    store.install(releases.bundle(1))
    store.activate("fraud", 1)
    svc = UpdateService(cfg, store, "pi-hot", selftest_in_process=True)
    svc.health_root = root
    svc.start()
    try:
        wait_until(lambda: (watcher.state("pi-hot").get("health") or {}).get("throttled") is False, "a calm state")
        flags.write_text("50005\n")  # throttled and under-voltage now
        alert = wait_until(lambda: watcher.of("pi-hot", "health_alert"), "the health_alert event")[0]
        assert alert["started"] == ["throttled", "under_voltage"] and alert["throttle_flags"] == "0x50005"
        wait_until(lambda: (watcher.state("pi-hot").get("health") or {}).get("throttled") is True, "the state to say so")
    finally:
        svc.stop()
