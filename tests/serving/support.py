"""Helpers for the daemon tests: a device directory to run ``edge-runtime serve`` on (the
process itself is :class:`harness.daemon.Daemon`), small HTTP helpers, a client load and
reference outputs computed without the daemon.
"""

from __future__ import annotations

import http.client
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from edge_runtime.bundle.reader import BundleLimits, open_bundle
from edge_runtime.inference.backend import load_backend
from edge_runtime.packaging import PackRequest, pack_model
from edge_runtime.serving.hooks import HOLD_WORKERS_ENV
from edge_runtime.store.store import ModelStore
from edge_runtime.trust.root import TrustRoot
from harness.daemon import Daemon
from harness.http import request
from harness.load import ClientThreads
from harness.wait import wait_until

FACTORY_SRC = Path(__file__).resolve().parents[2] / "device" / "factory"


def infer_json(port: int, model: str, x: np.ndarray, conn: http.client.HTTPConnection | None = None,
               version: int | None = None) -> tuple[int, Any]:
    """POST a JSON infer request for the fraud-shaped model; returns (status, parsed body)."""
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    body = orjson.dumps(
        {"inputs": [{"name": "input_0", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    )
    status, raw = request(port, "POST", path, body, conn=conn)
    return status, orjson.loads(raw) if raw else None


def output_of(body: Any) -> np.ndarray:
    """The first output of a JSON infer response as float32."""
    out = body["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def queue_depth(port: int, model: str, version: int = 1) -> float | None:
    """Requests waiting in the batching queue of ``model`` v``version`` (``edge_queue_depth``)."""
    text = request(port, "GET", "/metrics")[1].decode()
    return metric_value(text, "edge_queue_depth", model=model, version=str(version))


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """One sample from Prometheus text (labels must all match); None when absent."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return None


class Env:
    """A device directory (store, factory with fraud v1, trust root) and the daemons started on it."""

    def __init__(self, base: Path, keys: Any, factory_bundle: Path) -> None:
        self.base = base
        self.keys = keys
        self.store_path = base / "store"
        self.factory = base / "factory"
        self.factory.mkdir(parents=True, exist_ok=True)
        (self.factory / "fraud.bundle").write_bytes(factory_bundle.read_bytes())
        self.daemons: list[Daemon] = []

    def store(self) -> ModelStore:
        """The store, opened in this process."""
        return ModelStore(self.store_path, self.keys.root, self.factory, BundleLimits())

    def install(self, bundle: Path, activate: bool = True) -> None:
        """Install a bundle (and make it active, without the CLI's self-test)."""
        store = self.store()
        result = store.install(bundle)
        if activate:
            store.activate(result.name, result.version)

    def config_text(self, models_toml: str = "", server_toml: str = "") -> str:
        """A config file naming this device's directories, port 0 and fast swap polling."""
        return (
            f'[store]\npath = "{self.store_path}"\nfactory = "{self.factory}"\n'
            f'[trust]\nroot = "{self.keys.root_path}"\n'
            "[server]\nport = 0\nswap_poll_ms = 50\ndrain_timeout_s = 10.0\n" + server_toml + "\n" + models_toml
        )

    def start(
        self, models_toml: str = "", server_toml: str = "", wait: bool = True, env_extra: dict[str, str] | None = None
    ) -> Daemon:
        """Write a config and start ``edge-runtime serve`` on it (``env_extra``: e.g. a test hook)."""
        config = self.base / f"serve-{len(self.daemons)}.toml"
        config.write_text(self.config_text(models_toml, server_toml), encoding="utf-8")
        d = Daemon(config, env_extra=env_extra)
        self.daemons.append(d)
        if wait:
            d.wait_ready()
        return d

    def close(self) -> None:
        """Stop every daemon started here."""
        for d in self.daemons:
            d.stop()


def pack_onnx(model: Path, name: str, version: int, keys: Any, out: Path, golden: list[np.ndarray]) -> Path:
    """Pack an ONNX model (onnxruntime backend) into a signed bundle."""
    pack_model(PackRequest(model, name=name, version=version, keys=[keys.key], out=out, golden_inputs=golden))
    return out


def install_onnx_test_models(env: Env, keys: Any, onnx_models: dict[str, Path], base: Path) -> None:
    """Install v1 of ``types`` (identity on FP16/INT32/UINT8/INT64) and ``slow`` (a MatMul chain)."""
    rng = np.random.default_rng(1)
    golden_types = [
        rng.standard_normal((2, 4)).astype(np.float16),
        rng.integers(-5, 5, (2, 3)).astype(np.int32),
        rng.integers(0, 255, (2, 5)).astype(np.uint8),
        rng.integers(-5, 5, (2, 2)).astype(np.int64),
    ]
    env.install(pack_onnx(onnx_models["types"], "types", 1, keys, base / "types.bundle", golden_types))
    golden_slow = [rng.standard_normal((1, 256)).astype(np.float32)]
    env.install(pack_onnx(onnx_models["slow"], "slow", 1, keys, base / "slow.bundle", golden_slow))


def reference(bundle: Path, root: TrustRoot, x: np.ndarray) -> np.ndarray:
    """Outputs of a bundle's model for each row of ``x`` run alone (batch 1), without the daemon."""
    with open_bundle(bundle, root, BundleLimits()) as b:
        manifest = b.manifest
        data = b.read_artifact(manifest.model_file)
    backend = load_backend(manifest, data)
    return np.concatenate([backend.run([x[i : i + 1]])[0] for i in range(len(x))])




class Load(ClientThreads):
    """Client threads sending fraud rows in a loop on keep-alive connections."""

    def __init__(self, port: int, rows: np.ndarray, clients: int = 8) -> None:
        super().__init__(clients, "load")
        self.port = port
        self.rows = rows
        self.answers: list[list[tuple[int, int, np.ndarray]]] = [[] for _ in range(clients)]
        self.failures: list[str] = []

    def _run(self, i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        k = i
        while not self.stop.is_set():
            row = k % len(self.rows)
            k += len(self.threads)
            body = orjson.dumps({"inputs": [{"name": "input_0", "datatype": "FP32", "shape": [1, 30],
                                             "data": self.rows[row].tolist()}]})
            try:
                status, raw = request(self.port, "POST", "/v2/models/fraud/infer", body, conn=conn)
            except OSError as exc:
                self.failures.append(f"client {i}: {exc!r}")
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                continue
            if status != 200:
                self.failures.append(f"client {i}: {status} {raw[:200]!r}")
                continue
            answer = orjson.loads(raw)
            self.answers[i].append((int(answer["model_version"]), row, np.float32(answer["outputs"][0]["data"][0])))
        conn.close()

    def versions_seen(self) -> set[int]:
        return {v for answers in self.answers for v, _, _ in answers}

    def count(self, version: int) -> int:
        return sum(1 for answers in self.answers for v, _, _ in answers if v == version)


# -- holding the workers (the test-only hook in edge_runtime/serving/hooks.py, docs/testing.md) --

HOLD_FILE = "hold-workers"


def hold_env(base: Path) -> dict[str, str]:
    """The environment that lets a test hold the workers of a daemon whose config is in ``base``;
    they run freely until :func:`held_worker` creates the file."""
    return {HOLD_WORKERS_ENV: str(base / HOLD_FILE)}


@contextmanager
def held_worker(daemon: Daemon) -> Iterator[Path]:
    """Hold ``slow``'s worker (test-only hook, docs/testing.md) until the block ends.

    The worker checks the hold before each take; one request run first makes sure it is
    past an earlier take and held before the block's requests arrive."""
    hold = daemon.config.parent / HOLD_FILE
    hold.touch()
    try:
        body = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 256], "data": [0.0] * 256}]})
        assert request(daemon.port, "POST", "/v2/models/slow/infer", body)[0] == 200
        yield hold
    finally:
        hold.unlink(missing_ok=True)


def sigterm_while_queued(d: Daemon, hold: Path, clients: list[threading.Thread], model: str = "slow") -> None:
    """Start ``clients`` (one request to ``model`` each) against a daemon whose worker is held by
    ``hold``; once all are queued, SIGTERM; once the daemon says it drains, release the worker.
    The clients are joined and the daemon must exit 0."""
    for t in clients:
        t.start()
    wait_until(lambda: queue_depth(d.port, model) == len(clients), f"{len(clients)} requests queued behind the worker")
    d.signal(signal.SIGTERM)
    assert d.wait_line("draining in-flight requests") is not None, d.log()
    hold.unlink()
    for t in clients:
        t.join()
    assert d.proc.wait() == 0, d.log()
