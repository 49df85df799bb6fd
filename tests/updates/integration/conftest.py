"""Real mosquitto for the update tests: a broker per test on a free loopback port, with a
config file written by the test, persistence on, and stop/restart on the same port.
Plus an MQTT observer that collects device events and state, and in-process devices."""

from __future__ import annotations

import getpass
import json
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import pytest
import tritonclient.http as httpclient

from edge_runtime.bundle.reader import BundleLimits
from edge_runtime.config import Config, parse_config
from edge_runtime.fleet.publish import PublishResult, publish_release
from edge_runtime.fleet.session import BrokerOptions, FleetSession
from edge_runtime.store.store import ModelStore
from edge_runtime.trust.keys import PrivateKey
from edge_runtime.updates.protocol import Topics
from edge_runtime.updates.service import UpdateService
from harness.load import ClientThreads
from harness.wait import wait_until
from updates.conftest import FLEET, FleetKeys

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    """A free loopback port (bind port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Mosquitto:
    """One mosquitto process with a test-written config; restartable on the same port."""

    def __init__(self, directory: Path, port: int | None = None, config: str | None = None) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.config = config  # a complete listener/TLS/ACL/persistence config, or None for the plain one
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf = self.dir / "mosquitto.conf"
        self.log = self.dir / "mosquitto.log"

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT``."""
        return f"mqtt://127.0.0.1:{self.port}"

    def write_config(self) -> None:
        """By default a plain listener on loopback, anonymous, persistence in the test directory."""
        body = self.config or (
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence true\npersistence_location {self.dir}/\nautosave_interval 0\n"
        )
        # Started as root, mosquitto switches to the user named here (default "mosquitto", which
        # could not write the test's private directory); not root, it ignores the option.
        self.conf.write_text(
            f"user {getpass.getuser()}\nlog_dest file {self.log}\nlog_type error\nlog_type warning\n"
            f"log_type notice\n{body}\n",
            encoding="utf-8",
        )

    def start(self) -> Mosquitto:
        """Start and wait until the port accepts connections."""
        self.write_config()
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        def listening() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                log = self.log.read_text() if self.log.exists() else ""
                pytest.fail(f"mosquitto exited with {self.proc.returncode}: {err} {log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    return True
            except OSError:
                return False

        wait_until(listening, f"mosquitto to listen on {self.port}")
        return self

    def stop(self) -> None:
        """SIGTERM (mosquitto saves its persistence file) and wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def restart(self) -> None:
        """Stop, then start again on the same port with the saved state."""
        self.stop()
        self.start()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A running broker for one test."""
    broker = Mosquitto(tmp_path / "broker").start()
    yield broker
    broker.stop()


class Observer:
    """A test client that records every device event and the latest state of each device."""

    def __init__(self, url_port: int, topics: Topics) -> None:
        self.events: list[dict[str, Any]] = []
        self.states: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"observer-{url_port}-{time.monotonic_ns()}")
        self.client.on_message = self._on_message
        self.filters = [(topics.devices_filter("events"), 1), (topics.devices_filter("state"), 1)]
        self.client.on_connect = lambda c, *_: c.subscribe(self.filters)  # again after a broker restart
        self.client.reconnect_delay_set(0.05, 0.2)
        self.client.connect("127.0.0.1", url_port)
        self.client.loop_start()

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        if not msg.payload:
            return
        doc = json.loads(msg.payload)
        with self.lock:
            if msg.topic.endswith("/events"):
                self.events.append(doc)
            else:
                self.states[doc["device"]] = doc

    def of(self, device: str, kind: str | None = None) -> list[dict[str, Any]]:
        """Events of one device (optionally one kind), in arrival order."""
        with self.lock:
            return [e for e in self.events if e["device"] == device and (kind is None or e["event"] == kind)]

    def state(self, device: str) -> dict[str, Any]:
        """The newest state of ``device`` ({} before the first)."""
        with self.lock:
            return dict(self.states.get(device, {}))

    def close(self) -> None:
        """Disconnect (first, so the loop thread ends at once)."""
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def observer(mosquitto: Mosquitto) -> Iterator[Observer]:
    """Records the fleet's device events and state."""
    obs = Observer(mosquitto.port, Topics("edge", FLEET))
    yield obs
    obs.close()


def device_config(base: Path, url: str, device: str, keys: FleetKeys, **mqtt: Any) -> Config:
    """A config for one test device (store under ``base``); ``mqtt`` overrides [mqtt] keys."""
    table: dict[str, Any] = {
        "url": url,
        "fleet": FLEET,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.5,
        "download_stall_s": 2.0,
        "activation_timeout_s": 60.0,
    }
    table.update(mqtt)
    return parse_config(
        {
            "device": {"id": device},
            "store": {"path": str(base / "store"), "factory": str(base / "factory")},
            "trust": {"root": str(keys.path("root.json"))},
            "mqtt": table,
        }
    )


def start_device(
    base: Path, url: str, device: str, keys: FleetKeys, installed: list[Path], active: int | None, **mqtt: Any
) -> tuple[UpdateService, ModelStore]:
    """An in-process device (self-test in-process, no daemon) with ``installed`` bundles."""
    cfg = device_config(base, url, device, keys, **mqtt)
    store = ModelStore(Path(cfg.store.path), keys.root, Path(cfg.store.factory), BundleLimits())
    for b in installed:
        store.install(b)
    if active is not None:
        store.activate("fraud", active)
    return UpdateService(cfg, store, device, selftest_in_process=True).start(), store


def publish(url: str, bundle: Path, key: PrivateKey, **kw: Any) -> PublishResult:
    """``fleet publish`` through the library (the CLI is tested separately)."""
    with FleetSession(BrokerOptions(url=url), Topics("edge", FLEET), timeout_s=20) as session:
        return publish_release(session, bundle, [key], **kw)


class TritonLoad(ClientThreads):
    """tritonclient threads scoring ``rows`` of the demo model in a loop (binary and JSON
    alternately); answers are counted by model version and every failure is kept."""

    def __init__(self, url: str, rows: np.ndarray, clients: int = 3, timeout_s: float = 60.0) -> None:
        super().__init__(clients, "triton")
        self.url = url
        self.rows = rows.astype(np.float32)
        self.timeout_s = timeout_s
        self.versions: Counter[str] = Counter()
        self.failures: list[str] = []

    def _run(self, i: int) -> None:
        client = httpclient.InferenceServerClient(self.url, network_timeout=self.timeout_s)
        k = i
        while not self.stop.is_set():
            row = self.rows[k % len(self.rows)][None, :]
            k += 1
            inp = httpclient.InferInput("input_0", [1, 30], "FP32")
            inp.set_data_from_numpy(row, binary_data=bool(k % 2))
            try:
                result = client.infer("fraud", [inp])
                version = str(result.get_response()["model_version"])
                assert result.as_numpy("output_0").shape == (1, 1)
            except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
                with self.lock:
                    self.failures.append(f"client {i}: {exc!r}")
                continue
            with self.lock:
                self.versions[version] += 1
        client.close()

    def total(self) -> int:
        """Answers so far."""
        with self.lock:
            return sum(self.versions.values())

    def count(self, version: int) -> int:
        """Answers from ``version`` so far."""
        with self.lock:
            return self.versions[str(version)]

