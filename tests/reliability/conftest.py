"""Fixtures of the reliability suite: real daemons (optionally with a fault injected), device
directories with and without ``[mqtt]``, signed releases of the demo model, a real mosquitto,
and a collector for the figures each test measures.

Short mode (``make test``) and long mode (``make test-long``, ``EDGE_TEST_LONG=1``) run the
same tests with different counts and durations (:func:`scale`). Every figure a test measures
is recorded with the ``figures`` fixture, printed in a "reliability figures" section at the
end of the run and, when ``EDGE_RELIABILITY_FIGURES=FILE`` is set, appended to FILE as JSON
lines (docs/reliability.md is written from those).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from updates.integration.conftest import Mosquitto, Observer

from edge_runtime.bundle.reader import BundleLimits, open_bundle
from edge_runtime.fleet.publish import PublishResult, publish_release
from edge_runtime.fleet.session import BrokerOptions, FleetSession
from edge_runtime.inference.backend import load_backend
from edge_runtime.packaging import PackRequest, pack_model
from edge_runtime.store.store import ModelStore
from edge_runtime.updates.protocol import Topics
from harness.daemon import EDGE, Daemon
from harness.http import request

LONG = os.environ.get("EDGE_TEST_LONG") == "1"
REPO = Path(__file__).resolve().parents[2]
FACTORY_SRC = REPO / "device" / "factory"
FLEET = "rel"

__all__ = ["EDGE", "Daemon", "Mosquitto", "Observer"]


def scale(short: Any, long: Any) -> Any:
    """``long`` under ``make test-long`` (EDGE_TEST_LONG=1), else ``short``."""
    return long if LONG else short


# -- figures -------------------------------------------------------------------------------

_FIGURES: list[dict[str, Any]] = []


class Figures:
    """Records measured figures of one test (name -> value), for the end-of-run summary."""

    def __init__(self, test: str) -> None:
        self.test = test

    def add(self, **values: Any) -> None:
        """Record ``values`` under this test's name."""
        entry = {"test": self.test, "mode": "long" if LONG else "short", **values}
        _FIGURES.append(entry)
        path = os.environ.get("EDGE_RELIABILITY_FIGURES")
        if path:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry, sort_keys=True, default=str) + "\n")


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Figures:
    """``figures.add(name=value, ...)``: report what this test measured."""
    return Figures(request.node.name)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print every recorded figure after the run."""
    if not _FIGURES:
        return
    terminalreporter.section("reliability figures")
    for entry in _FIGURES:
        values = ", ".join(f"{k}={v}" for k, v in entry.items() if k not in ("test", "mode"))
        terminalreporter.write_line(f"{entry['test']} [{entry['mode']}]: {values}")


# -- the daemon ------------------------------------------------------------------------------

# A test-only wrapper around the real CLI: ``os.replace`` and ``os.unlink`` are patched so
# that the process SIGKILLs itself at one chosen point of an update to version N
# (``RELIABILITY_FAULT=KIND:WHEN:N``):
#   install:before|after   the rename of the new version directory into place
#   activate:before|after  the rename of the state.json that makes version N active
#   unstage:after          the unlink of manifest.msg while the finished download of N is
#                          removed from the staging directory
# Nothing in edge_runtime knows about it.
FAULT_WRAPPER = r"""
import json, os, signal, sys
kind, when, version = os.environ.pop("RELIABILITY_FAULT").split(":")
real_replace, real_unlink = os.replace, os.unlink

def _die():
    os.kill(os.getpid(), signal.SIGKILL)

def _hit(src):
    name = os.path.basename(os.fspath(src))
    if kind == "install":
        return name.startswith(".install-" + version + "-")
    if kind == "activate" and name.startswith(".state.json."):
        try:
            with open(src, "rb") as fh:
                return json.load(fh).get("active") == int(version)
        except (OSError, ValueError):
            return False
    return False

def replace(src, dst, *args, **kwargs):
    hit = _hit(src)
    if hit and when == "before":
        _die()
    real_replace(src, dst, *args, **kwargs)
    if hit and when == "after":
        _die()

def unlink(path, *args, **kwargs):
    real_unlink(path, *args, **kwargs)
    if kind == "unstage" and os.path.basename(os.fspath(path)) == "manifest.msg":
        _die()

os.replace, os.unlink = replace, unlink
from edge_runtime.cli import main
sys.exit(main(sys.argv[1:]))
"""


def start_daemon(config: Path, fault: str | None = None) -> Daemon:
    """``edge-runtime serve --config CONFIG``; ``fault="install:before:3"`` runs it through
    :data:`FAULT_WRAPPER` instead."""
    if fault is None:
        return Daemon(config)
    return Daemon(config, command=[sys.executable, "-c", FAULT_WRAPPER, "serve", "--config", str(config)],
                  env_extra={"RELIABILITY_FAULT": fault})


# -- releases --------------------------------------------------------------------------------

MODELS = ("fraud.tflite", "fraud_int8io.tflite")


class Releases:
    """Signed bundles of the demo models (cached); odd versions are the float model, even ones the
    int8 model, so two consecutive versions give different outputs for the same rows."""

    def __init__(self, directory: Path, keys: Any) -> None:
        self.dir = directory
        self.keys = keys
        self._cache: dict[tuple[int, int, int, str], Path] = {}
        self._golden = np.load(FACTORY_SRC / "golden.npy")
        self._outputs: dict[Path, Callable[[np.ndarray], np.ndarray]] = {}

    def bundle(self, version: int, *, pad: int = 0, chunk_size: int = 4096, model: str | None = None) -> Path:
        """``fraud`` v``version``; ``pad`` trailing bytes (LiteRT ignores them) make it bigger."""
        model = model or MODELS[(version + 1) % 2]
        key = (version, pad, chunk_size, model)
        if key not in self._cache:
            src = self.dir / f"model-{len(self._cache)}{Path(model).suffix}"
            seed = hashlib.sha256(f"{version}-{pad}".encode()).digest()
            src.write_bytes((FACTORY_SRC / model).read_bytes() + (seed * (pad // 32 + 1))[:pad])
            out = self.dir / f"fraud-v{version}-{len(self._cache)}.bundle"
            pack_model(PackRequest(src, name="fraud", version=version, keys=[self.keys.key], out=out, chunk_size=chunk_size,
                       input_names=["input_0"], output_names=["output_0"], golden_inputs=[self._golden]))
            self._cache[key] = out
        return self._cache[key]

    def outputs(self, bundle: Path, x: np.ndarray) -> np.ndarray:
        """What the bundle's model answers for the batch ``x`` (one invoke), without the daemon."""
        if bundle not in self._outputs:
            with open_bundle(bundle, self.keys.root, BundleLimits()) as b:
                backend = load_backend(b.manifest, b.read_artifact(b.manifest.model_file))
            self._outputs[bundle] = lambda rows: backend.run([rows])[0]
        return self._outputs[bundle](x)


@pytest.fixture(scope="session")
def releases(tmp_path_factory: pytest.TempPathFactory, keys: Any) -> Releases:
    """Signed demo-model releases for the whole session."""
    return Releases(tmp_path_factory.mktemp("rel-releases"), keys)


# -- device directories ----------------------------------------------------------------------


@dataclass
class DeviceDir:
    """A device: store with ``fraud`` v1 active, factory bundle, config; and the daemons run on it."""

    base: Path
    keys: Any
    device_id: str
    store_path: Path
    factory: Path
    daemons: list[Daemon] = field(default_factory=list)

    def store(self) -> ModelStore:
        """The store, opened in this process."""
        return ModelStore(self.store_path, self.keys.root, self.factory, BundleLimits())

    def write_config(
        self, broker_url: str | None = None, models_toml: str = "", extra_mqtt: str = "", server_toml: str = ""
    ) -> Path:
        """Write the daemon config (``[mqtt]`` only when ``broker_url`` is given)."""
        text = (
            f'[device]\nid = "{self.device_id}"\n'
            f'[store]\npath = "{self.store_path}"\nfactory = "{self.factory}"\n'
            f'[trust]\nroot = "{self.keys.root_path}"\n'
            f"[server]\nport = 0\nswap_poll_ms = 100\ndrain_timeout_s = 10.0\n{server_toml}\n"
        )
        if broker_url is not None:
            text += (
                f'[mqtt]\nurl = "{broker_url}"\nfleet = "{FLEET}"\nreconnect_min_s = 0.05\nreconnect_max_s = 0.5\n'
                f"download_stall_s = 2.0\nactivation_timeout_s = 60.0\n{extra_mqtt}\n"
            )
        config = self.base / "config.toml"
        config.write_text(text + models_toml, encoding="utf-8")
        return config

    def start(self, fault: str | None = None, wait: bool = True) -> Daemon:
        """Start a daemon on the config written last."""
        d = start_daemon(self.base / "config.toml", fault)
        self.daemons.append(d)
        if wait and fault is None:
            d.wait_ready()
        return d

    def close(self) -> None:
        """Stop every daemon still running."""
        for d in self.daemons:
            d.stop()


def new_device(base: Path, keys: Any, releases: Releases, store_path: Path | None = None,
               device_id: str = "rel-1") -> DeviceDir:
    """A device under ``base`` with ``fraud`` v1 installed and active (and in its factory directory)."""
    factory = base / "factory"
    factory.mkdir(parents=True)
    (factory / "fraud.bundle").write_bytes(releases.bundle(1).read_bytes())
    dev = DeviceDir(base, keys, device_id, store_path or base / "store", factory)
    store = dev.store()
    store.install(releases.bundle(1))
    store.activate("fraud", 1)
    return dev


@pytest.fixture
def make_device(tmp_path: Path, keys: Any, releases: Releases) -> Iterator[Callable[..., DeviceDir]]:
    """``make_device(store_path=None, device_id="rel-1")``: see :func:`new_device`; daemons stopped after."""
    made: list[DeviceDir] = []

    def build(store_path: Path | None = None, device_id: str = "rel-1") -> DeviceDir:
        dev = new_device(tmp_path / f"device-{len(made)}", keys, releases, store_path, device_id)
        made.append(dev)
        return dev

    yield build
    for dev in made:
        dev.close()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A mosquitto on a free loopback port, persistence off: after a restart it holds only what
    clients published again."""
    b = Mosquitto(tmp_path / "broker")
    b.config = f"listener {b.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
    b.start()
    yield b
    b.stop()


@pytest.fixture
def observer(broker: Mosquitto) -> Iterator[Observer]:
    """Records the test fleet's device events and states."""
    obs = Observer(broker.port, Topics("edge", FLEET))
    yield obs
    obs.close()


def publish(broker_url: str, bundle: Path, keys: Any, **kw: Any) -> PublishResult:
    """``fleet publish`` through the library (the CLI is exercised in test_disk_full)."""
    with FleetSession(BrokerOptions(url=broker_url), Topics("edge", FLEET), timeout_s=30) as session:
        return publish_release(session, bundle, [keys.key], **kw)


def infer_rows(port: int, x: np.ndarray, conn: Any = None) -> tuple[int, int, np.ndarray]:
    """JSON infer of the rows ``x`` on ``fraud``: (status, model version, outputs)."""
    import orjson

    body = orjson.dumps({"inputs": [{"name": "input_0", "datatype": "FP32", "shape": list(x.shape),
                                     "data": x.ravel().tolist()}]})
    status, raw = request(port, "POST", "/v2/models/fraud/infer", body, conn=conn)
    if status != 200:
        return status, 0, np.empty(0)
    doc = orjson.loads(raw)
    out = doc["outputs"][0]
    return status, int(doc["model_version"]), np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def mosquitto_config(port: int, extra: Sequence[str] = ()) -> str:
    """A plain loopback listener without persistence."""
    return "\n".join([f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false", *extra]) + "\n"
