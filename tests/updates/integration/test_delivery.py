"""Delivery through a real mosquitto: the happy path with every event, offline-first
catch-up from retained messages alone, and the fleet CLI (publish, status, prune)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from edge_runtime.fleet.prune import prune_releases
from edge_runtime.fleet.session import BrokerOptions, FleetSession
from edge_runtime.updates.protocol import Topics
from harness.daemon import EDGE
from harness.wait import wait_until
from updates.conftest import FLEET, FleetKeys, Releases
from updates.integration.conftest import Mosquitto, Observer, publish, start_device

pytestmark = pytest.mark.integration


def _cli(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EDGE), *map(str, args)], capture_output=True, text=True, timeout=timeout, check=False)


def test_happy_path_reports_each_step_and_state(
    tmp_path: Path, mosquitto: Mosquitto, observer: Observer, fleet_keys: FleetKeys, releases: Releases
) -> None:
    svc, store = start_device(tmp_path / "d", mosquitto.url, "pi-1", fleet_keys, [releases.bundle(1)], 1)
    try:
        wait_until(lambda: observer.state("pi-1"), "the device's first state")
        result = publish(mosquitto.url, releases.bundle(2, pad=50_000), fleet_keys.models_key)
        assert result.chunks_sent == 68 and not result.chunks_already_published
        wait_until(lambda: observer.of("pi-1", "activated"), "the activated event")
        assert store.state("fraud").active == 2
        kinds = [e["event"] for e in observer.of("pi-1")]
        order = [kinds.index(k) for k in ("notified", "downloading", "verified", "installed", "activated")]
        assert order == sorted(order), kinds
        percents = [e["percent"] for e in observer.of("pi-1", "downloading")]
        assert percents[0] < 100 and percents[-1] == 100
        state = wait_until(lambda: (s := observer.state("pi-1")) and s["models"]["fraud"]["active"] == 2 and s, "state v2")
        assert state["update"] is None and state["runtime"] and state["trust_root_version"] == 1
    finally:
        svc.stop()


def test_offline_first_device_catches_up_from_retained_messages(
    tmp_path: Path, mosquitto: Mosquitto, fleet_keys: FleetKeys, releases: Releases
) -> None:
    out = _cli(
        "fleet", "publish", releases.bundle(2), "--fleet", FLEET, "--broker", mosquitto.url,
        "--sign-key", fleet_keys.path("signing.key"), "--root", fleet_keys.path("root.json"),
    )
    assert out.returncode == 0, out.stderr
    assert "published fraud v2: 19 chunks" in out.stdout
    # The operator tool has exited; the device starts only now.
    svc, store = start_device(tmp_path / "d", mosquitto.url, "pi-late", fleet_keys, [releases.bundle(1)], 1)
    try:
        wait_until(lambda: store.state("fraud").active == 2, "the late device to reach v2")
    finally:
        svc.stop()


def test_fleet_status_and_prune_cli(
    tmp_path: Path, mosquitto: Mosquitto, observer: Observer, fleet_keys: FleetKeys, releases: Releases
) -> None:
    svc, store = start_device(tmp_path / "d", mosquitto.url, "pi-7", fleet_keys, [releases.bundle(1)], 1)
    try:
        publish(mosquitto.url, releases.bundle(2), fleet_keys.models_key)
        wait_until(lambda: store.state("fraud").active == 2, "v2")
        publish(mosquitto.url, releases.bundle(3), fleet_keys.models_key)
        wait_until(lambda: store.state("fraud").active == 3, "v3")
        wait_until(lambda: observer.state("pi-7").get("models", {}).get("fraud", {}).get("active") == 3, "state v3")
        out = _cli("fleet", "status", "--fleet", FLEET, "--broker", mosquitto.url)
        assert out.returncode == 0, out.stderr
        header, row = out.stdout.splitlines()[:2]
        assert header.split()[:3] == ["DEVICE", "ONLINE", "MODELS"]
        assert row.split()[:4] == ["pi-7", "yes", "fraud", "v3"]
        js = json.loads(_cli("fleet", "status", "--fleet", FLEET, "--broker", mosquitto.url, "--json").stdout)
        assert js[0]["device"] == "pi-7" and js[0]["online"] is True and js[0]["state"]["models"]["fraud"]["active"] == 3
    finally:
        svc.stop()
    out = _cli("fleet", "status", "--fleet", FLEET, "--broker", mosquitto.url)
    assert out.stdout.splitlines()[1].split()[:2] == ["pi-7", "no"], "a clean stop leaves online=false"

    dry = _cli("fleet", "prune", "--fleet", FLEET, "--broker", mosquitto.url, "--dry-run")
    assert dry.returncode == 0 and "would clear fraud v2: 20 retained topics" in dry.stdout
    topics = Topics("edge", FLEET)
    with FleetSession(BrokerOptions(url=mosquitto.url), topics) as session:
        pruned = prune_releases(session)
        assert [(p.name, p.version) for p in pruned] == [("fraud", 2)]
        left = session.snapshot([topics.manifests_filter, "edge/f1/models/fraud/+/chunks/#"])
    assert not any("/fraud/2/" in t for t in left)
    assert topics.manifest("fraud", 3) in left and len([t for t in left if "/fraud/3/chunks/" in t]) == 19


def test_publishing_the_same_version_with_other_bytes_is_refused(
    mosquitto: Mosquitto, fleet_keys: FleetKeys, releases: Releases
) -> None:
    publish(mosquitto.url, releases.bundle(2), fleet_keys.models_key)
    out = _cli(
        "fleet", "publish", releases.bundle(2, pad=10, tag="x"), "--fleet", FLEET, "--broker", mosquitto.url,
        "--sign-key", fleet_keys.path("signing.key"),
    )
    assert out.returncode == 1
    assert "already published with different bytes" in out.stderr
