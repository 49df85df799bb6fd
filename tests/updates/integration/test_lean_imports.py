"""The real daemon with ``[mqtt]``, connected and reporting, holds no module it has not used.

Daemon RSS with ``[mqtt]`` is bounded (docs/serving.md, "Memory"): once it is connected and has
published its state, the daemon must not have imported what only a capture request, a
download, a delta or an HTTP proxy needs, nor the ``idna`` codec for an ASCII broker name.
The modules are read from ``sys.modules`` inside the daemon (a thread that waits for
SIGUSR1 writes them to stderr), so what is checked is what the daemon imported, not a figure.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_runtime.bundle.reader import BundleLimits
from edge_runtime.store.store import ModelStore
from harness.daemon import Daemon
from harness.wait import wait_until
from updates.conftest import FLEET, FleetKeys, Releases
from updates.integration.conftest import Mosquitto, Observer

pytestmark = pytest.mark.integration

DEVICE = "pi-lean"
# The real daemon (edge-runtime serve), plus a thread that reports sys.modules on SIGUSR1. The
# signal is blocked before any other thread exists, so only sigwait below ever receives it.
REPORTER = """
import json, signal, sys, threading
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
def report():
    signal.sigwait({signal.SIGUSR1})
    request = sys.modules.get("urllib.request")  # vars(): reads the stand-in without loading it
    doc = {"modules": sorted(sys.modules), "urllib.request ran": request is not None and "urlopen" in vars(request)}
    print("MODULES " + json.dumps(doc), file=sys.stderr, flush=True)
threading.Thread(target=report, daemon=True).start()
from edge_runtime.cli import main
sys.exit(main(sys.argv[1:]))
"""
# Loaded only by what an idle connected device never does (docs/updates.md, "Memory: what the client loads").
NOT_LOADED = (
    "http.client",  # with urllib.request: paho reads proxy settings through it, with PySocks only
    "email.parser",
    "encodings.idna",  # getaddrinfo of a str host name
    "stringprep",
    "edge_runtime.updates.capture",  # a capture request
    "edge_runtime.updates.nonces",
    "edge_runtime.updates.download",  # an update to download, or one staged at start-up
    "edge_runtime.updates.delta",  # a delta update
)


@pytest.fixture
def daemon(tmp_path: Path, mosquitto: Mosquitto, observer: Observer, fleet_keys: FleetKeys,
           releases: Releases) -> Iterator[Daemon]:
    """The daemon serving fraud v1, connected to the test broker and reporting its state."""
    store = ModelStore(tmp_path / "store", fleet_keys.root, None, BundleLimits())
    store.install(releases.bundle(1))
    store.activate("fraud", 1)
    config = tmp_path / "config.toml"
    config.write_text(
        f'[device]\nid = "{DEVICE}"\n[store]\npath = "{tmp_path / "store"}"\nfactory = ""\n'
        f'[server]\nport = 0\n[trust]\nroot = "{fleet_keys.path("root.json")}"\n'
        f'[mqtt]\nurl = "{mosquitto.url}"\nfleet = "{FLEET}"\n',
        encoding="utf-8",
    )
    d = Daemon(config, command=[sys.executable, "-c", REPORTER, "serve", "--config", str(config)])
    try:
        d.wait_ready()
        wait_until(lambda: observer.state(DEVICE), "the daemon's update client to report its state")
        yield d
    finally:
        d.stop()


def test_a_connected_daemon_has_not_imported_what_it_did_not_use(daemon: Daemon, observer: Observer) -> None:
    daemon.signal(signal.SIGUSR1)
    line = daemon.wait_line("MODULES ")
    assert line is not None, daemon.log()
    doc = json.loads(daemon.lines[line].split("MODULES ", 1)[1])
    modules = set(doc["modules"])
    assert {"paho.mqtt.client", "edge_runtime.updates.service"} <= modules, "the update client runs"
    assert observer.state(DEVICE)["models"]["fraud"]["serving"] == 1
    loaded = [m for m in NOT_LOADED if m in modules] + (["urllib.request"] if doc["urllib.request ran"] else [])
    assert loaded == [], f"imported without being used: {loaded}"
