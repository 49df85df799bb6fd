"""Fixtures for fleet-scale tests: simulated devices (the real update client, many per test),
a factory bundle they all start from, a live view of their retained state, and the CLI.

The keys, the releases of the demo model and mosquitto come from the update tests' fixtures.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

# The keys, the releases and the broker are the update tests' own fixtures, defined once there.
from updates.conftest import FLEET, FleetKeys, Releases, fleet_keys, releases
from updates.integration.conftest import Mosquitto, mosquitto

from edge_runtime.fleet.session import BrokerOptions, FleetSession
from edge_runtime.fleet.simulate import Fault, SimSettings, SimulatedFleet
from edge_runtime.fleet.status import DeviceStates
from edge_runtime.updates.protocol import Topics
from harness.daemon import EDGE

TOPICS = Topics("edge", FLEET)

__all__ = [
    "EDGE", "FLEET", "TOPICS", "FleetKeys", "Mosquitto", "Releases", "SimulateFn", "Watch", "cli", "fleet_keys",
    "model_entry", "mosquitto", "releases", "retained_desired", "settled",
]


@pytest.fixture
def factory(tmp_path: Path, releases: Releases) -> Path:
    """A factory directory holding ``fraud`` v1, signed by the fleet's key: every device starts there."""
    d = tmp_path / "factory"
    d.mkdir()
    shutil.copyfile(releases.bundle(1), d / "fraud.bundle")
    return d


SimulateFn = Callable[..., SimulatedFleet]


@pytest.fixture
def simulate(tmp_path: Path, fleet_keys: FleetKeys, factory: Path) -> Iterator[SimulateFn]:
    """``simulate(url, ids, faults=(), processes=0)``: a started simulated fleet, stopped after the test."""
    started: list[SimulatedFleet] = []

    def make(url: str, ids: Sequence[str], faults: Sequence[Fault] = (), processes: int = 0, name: str = "sim") -> SimulatedFleet:
        settings = SimSettings(
            url=url,
            fleet=FLEET,
            root_file=fleet_keys.path("root.json"),
            work_dir=tmp_path / name,
            factory_dir=factory,
            faults=tuple(faults),
        )
        fleet = SimulatedFleet(settings, ids, processes=processes)
        started.append(fleet)
        return fleet.start()

    yield make
    for fleet in started:
        fleet.stop()


class Watch:
    """The operator's live view of every device's retained state (FleetSession.watch + DeviceStates)."""

    def __init__(self, url: str) -> None:
        self.session = FleetSession(BrokerOptions(url=url), TOPICS, timeout_s=30).__enter__()
        self.states = DeviceStates(TOPICS)
        self.session.watch([TOPICS.devices_filter("state"), TOPICS.devices_filter("online")], self.states.on_message)

    def state(self, device: str) -> dict[str, Any]:
        """The newest state document of ``device`` ({} before the first)."""
        for row in self.states.devices():
            if row["device"] == device:
                return dict(row["state"] or {})
        return {}

    def close(self) -> None:
        """End the session."""
        self.session.__exit__(None, None, None)


def model_entry(state: dict[str, Any], name: str = "fraud") -> dict[str, Any]:
    """``state["models"][name]`` or {}."""
    entry = (state.get("models") or {}).get(name)
    return dict(entry) if isinstance(entry, dict) else {}


def settled(watch: Watch, ids: Sequence[str], seq: int) -> bool:
    """Every device has taken desired state ``seq`` and has no update in progress."""
    for d in ids:
        s = watch.state(d)
        if (s.get("desired_seq") or {}).get("desired") != seq or s.get("update") is not None:
            return False
    return True


def cli(*args: Any, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real ``edge-runtime`` command."""
    return subprocess.run([str(EDGE), *map(str, args)], capture_output=True, text=True, timeout=timeout_s, check=False)


def retained_desired(url: str) -> dict[str, Any]:
    """The fleet's retained desired-state document (unverified; for assertions)."""
    with FleetSession(BrokerOptions(url=url), TOPICS, timeout_s=30) as session:
        message = session.snapshot([TOPICS.desired])[TOPICS.desired]
    doc: dict[str, Any] = json.loads(json.loads(message)["desired"])
    return doc


@pytest.fixture
def watch(mosquitto: Mosquitto) -> Iterator[Watch]:
    """The live view of the devices on the test's broker."""
    w = Watch(mosquitto.url)
    yield w
    w.close()
