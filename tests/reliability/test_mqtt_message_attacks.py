"""Attacks through MQTT messages, one test each, against the real daemon, CLI and mosquitto:
forged, unsigned and oversized desired states and trust roots (retained or flooded), hostile
device states in front of ``fleet status``, a forged desired state in front of ``fleet prune``.
The operator signs only what it verified; the device rejects, bounded, and keeps serving.
Peak RSS and times go to the ``figures`` fixture (docs/security.md quotes them).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime.fleet.session import BrokerOptions, FleetSession
from edge_runtime.trust.keys import generate_private_key, private_key_pem
from edge_runtime.trust.root import make_root, sign_root
from edge_runtime.updates.protocol import MAX_SEQ
from edge_runtime.updates.verify import verify_desired
from harness.wait import wait_until
from reliability.attack_support import (
    HUGE,
    MIB,
    TOPICS,
    cli,
    peak_rss,
    retain,
    retained,
    serving,
    signed_desired,
    unsigned_desired,
)
from reliability.conftest import FLEET, Daemon, DeviceDir, Figures, Mosquitto, Observer, Releases, scale

pytestmark = pytest.mark.integration


# -- the operator signs only what it verified --------------------------------------------

JUNK_STATES = {
    "unsigned_extra_model_and_huge_seq": unsigned_desired(5_000_000_000, {"aaa": {"version": 1}, "fraud": {"version": 1}}),
    "unsigned_4300_digit_seq": unsigned_desired(HUGE, {"fraud": {"version": 1}}),
    "not_json": b"\xff garbage {",
    "json_but_not_a_desired_state": b'{"desired": 5, "signatures": 7}',
}


@pytest.mark.parametrize("with_root", [False, True], ids=["signing_keys_root", "fleet_root"])
@pytest.mark.parametrize("junk", sorted(JUNK_STATES))
def test_publish_over_a_forged_retained_desired_state_ignores_it(
    broker: Mosquitto, releases: Releases, keys: Any, junk: str, with_root: bool
) -> None:
    retain(broker, {TOPICS.desired: JUNK_STATES[junk]})
    extra = ["--root", str(keys.root_path)] if with_root else []
    out = cli("fleet", "publish", releases.bundle(2), "--fleet", FLEET, "--broker", broker.url,
               "--sign-key", keys.key_path, *extra)
    assert out.returncode == 0, out.stderr
    assert "ignoring the retained desired state" in out.stderr and "--seq" not in out.stderr
    assert len(out.stderr) < 2000, "the warning must not echo the forged message"
    desired = verify_desired(retained(broker, TOPICS.desired) or b"", keys.root, fleet=FLEET, device=None)
    assert set(desired.models) == {"fraud"} and desired.models["fraud"].version == 2
    assert desired.seq < 10**12, "the forged seq must not be copied"


def test_publish_keeps_a_verified_retained_state_and_the_device_follows(
    make_device: Callable[..., DeviceDir], broker: Mosquitto, observer: Observer, releases: Releases, keys: Any,
    holdout_x: np.ndarray,
) -> None:
    other = {"other": {"version": 3, "rollout": {"percent": 0, "salt": "other-3"}}}  # no device takes it
    retain(broker, {TOPICS.desired: signed_desired(keys, 7_000_000_000, {"fraud": {"version": 1}, **other})})
    dev = make_device()
    dev.write_config(broker.url)
    daemon = dev.start()
    out = cli("fleet", "publish", releases.bundle(2), "--fleet", FLEET, "--broker", broker.url,
               "--sign-key", keys.key_path, "--config", dev.base / "config.toml")
    assert out.returncode == 0 and "ignoring" not in out.stderr, out.stderr
    desired = verify_desired(retained(broker, TOPICS.desired) or b"", keys.root, fleet=FLEET, device=None)
    assert desired.seq == 7_000_000_001 and desired.models["other"].version == 3
    wait_until(lambda: observer.of(dev.device_id, "activated"), "v2 activated")
    assert serving(dev, daemon.port, holdout_x) == 2
    assert daemon.tracebacks() == []


def test_publish_refuses_a_seq_beyond_64_bits(broker: Mosquitto, releases: Releases, keys: Any) -> None:
    for seq in (str(MAX_SEQ + 1), "1" * 5000):
        out = cli("fleet", "publish", releases.bundle(2), "--fleet", FLEET, "--broker", broker.url,
                   "--sign-key", keys.key_path, "--seq", seq)
        assert out.returncode == 2 and "64 bits" in out.stderr and len(out.stderr) < 500, out.stderr
    assert retained(broker, TOPICS.desired) is None
    # A verified retained state at the limit leaves no larger seq: refused, with a reason.
    retain(broker, {TOPICS.desired: signed_desired(keys, MAX_SEQ, {"fraud": {"version": 1}})})
    out = cli("fleet", "publish", releases.bundle(2), "--fleet", FLEET, "--broker", broker.url, "--sign-key", keys.key_path)
    assert out.returncode == 2 and "no larger 64-bit seq" in out.stderr, out.stderr


def test_device_rejects_a_signed_desired_seq_beyond_64_bits(
    make_device: Callable[..., DeviceDir], broker: Mosquitto, observer: Observer, keys: Any, holdout_x: np.ndarray
) -> None:
    dev, daemon = _serving_on_broker(make_device, broker, observer)
    retain(broker, {TOPICS.desired: signed_desired(keys, MAX_SEQ + 1, {"fraud": {"version": 1}})})
    event = wait_until(lambda: observer.of(dev.device_id, "rejected"), "a rejected event")[0]
    assert "seq" in event["reason"] and str(MAX_SEQ) in event["reason"]
    assert serving(dev, daemon.port, holdout_x) == 1
    assert daemon.tracebacks() == []


# -- a number Python refuses to read is a rejection, not a lost root ------------------------


def test_huge_number_next_to_a_valid_root_rotation_keeps_the_rotation(
    make_device: Callable[..., DeviceDir], broker: Mosquitto, observer: Observer, keys: Any, holdout_x: np.ndarray,
    tmp_path: Path,
) -> None:
    dev, daemon = _serving_on_broker(make_device, broker, observer)
    new_root_key = generate_private_key()
    (tmp_path / "new-root.key").write_bytes(private_key_pem(new_root_key))
    v2 = sign_root(make_root(2, [new_root_key], [keys.key]), [keys.key, new_root_key])
    garbage = b'{"signed": {"version": ' + b"9" * 5000 + b"}, \"signatures\": []}"
    # Garbage first (it waits for v2), then the valid v2, then a desired state and a manifest
    # with such a number: every one a `rejected` event, and the rotation applied.
    retain(broker, {TOPICS.root(3): garbage})
    retain(broker, {TOPICS.root(2): v2})
    wait_until(lambda: observer.of(dev.device_id, "root_updated"), "root v2 applied")
    wait_until(lambda: observer.state(dev.device_id).get("trust_root_version") == 2, "state naming root v2")
    retain(broker, {TOPICS.desired: unsigned_desired("9" * 5000, {})})
    wait_until(
        lambda: [e for e in observer.of(dev.device_id, "rejected") if "desired" in e["reason"]], "desired rejected"
    )
    assert any("trust root 3" in e["reason"] for e in observer.of(dev.device_id, "rejected"))
    assert serving(dev, daemon.port, holdout_x) == 1
    assert daemon.tracebacks() == [], daemon.log()
    daemon.stop()
    assert (dev.store_path / ".updates" / "roots" / "root.2.json").read_bytes() == v2

def _serving_on_broker(make_device: Callable[..., DeviceDir], broker: Mosquitto,
                       observer: Observer) -> tuple[DeviceDir, Daemon]:
    """A device whose daemon runs against ``broker`` and has published its first state."""
    dev = make_device()
    dev.write_config(broker.url)
    daemon = dev.start()
    wait_until(lambda: observer.state(dev.device_id), "the daemon's first state")
    return dev, daemon


# -- unsigned garbage over MQTT costs CPU, not memory ----------------------------------------


def test_unsigned_desired_flood_with_unique_huge_field_names_is_bounded(
    make_device: Callable[..., DeviceDir], broker: Mosquitto, observer: Observer, holdout_x: np.ndarray,
    figures: Figures,
) -> None:
    dev, daemon = _serving_on_broker(make_device, broker, observer)
    rss_before, peak_before = daemon.rss_bytes(), peak_rss(daemon)
    count = scale(100, 300)
    t0 = time.monotonic()
    with FleetSession(BrokerOptions(url=broker.url), TOPICS, timeout_s=60) as session:
        for i in range(count):
            name = f"{i:06d}" + "k" * MIB  # a unique 1 MB field name the device would echo
            payload = json.dumps({"desired": "{}", "signatures": [], name: 1}).encode()
            session.publish(TOPICS.desired, payload).wait(60)
    last = f"{count - 1:06d}"
    wait_until(lambda: any(last in e["reason"] for e in observer.of(dev.device_id, "rejected")),
               "the last message's rejection")
    took = time.monotonic() - t0
    rss_after, peak_after = daemon.rss_bytes(), peak_rss(daemon)
    rejected = observer.of(dev.device_id, "rejected")
    # Messages on one topic that arrive faster than they are verified are coalesced (newest
    # wins), so at most one event per message, and always one for the last.
    assert 1 <= len(rejected) <= count
    assert max(len(e["reason"]) for e in rejected) <= 400
    state = wait_until(lambda: (s := observer.state(dev.device_id)).get("last_error") and last in
                       s["last_error"]["reason"] and s, "last_error naming the last message")
    assert len(json.dumps(state)) < 4096
    assert (dev.store_path / ".updates" / "updater.json").stat().st_size < 4096
    assert rss_after - rss_before < 40 * MIB, (rss_before, rss_after)
    assert serving(dev, daemon.port, holdout_x) == 1
    assert daemon.tracebacks() == []
    figures.add(messages=count, message_bytes=MIB, rss_before_mb=rss_before // MIB, rss_after_mb=rss_after // MIB,
                peak_before_mb=peak_before // MIB, peak_after_mb=peak_after // MIB, seconds=round(took, 1))

# -- one device's malformed state does not stop `fleet status` --------------------------------


def test_fleet_status_shows_malformed_device_states_as_bad_and_lists_the_rest(
    make_device: Callable[..., DeviceDir], broker: Mosquitto
) -> None:
    dev = make_device(device_id="good-1")
    dev.write_config(broker.url)
    daemon = dev.start()  # (no observer: the test helper itself would choke on the bad states)
    wait_until(lambda: retained(broker, TOPICS.state("good-1")), "the real device's state")
    bad = {
        "bad-models-list": b'{"models": [1]}',
        "bad-failed-superscript": json.dumps({"models": {"fraud": {"active": 1, "failed": {"\u00b2": "x"}}}}).encode(),
        "bad-not-json": b"\xff{",
        "bad-huge-number": b'{"models": {"fraud": {"active": ' + b"9" * 5000 + b"}}}",
        "bad-update-string": b'{"update": "x", "last_error": 7}',
    }
    retain(broker, {TOPICS.state(d): payload for d, payload in bad.items()})
    out = cli("fleet", "status", "--fleet", FLEET, "--broker", broker.url)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    good = next(line for line in lines if line.startswith("good-1"))
    assert "fraud v1" in good
    for device in bad:
        row = next(line for line in lines if line.startswith(device))
        assert "BAD STATE" in row, row
    assert f"{len(bad)} with a malformed state" in out.stdout
    as_json = cli("fleet", "status", "--fleet", FLEET, "--broker", broker.url, "--json")
    assert as_json.returncode == 0 and len(json.loads(as_json.stdout)) == len(bad) + 1, as_json.stderr
    assert daemon.alive

def test_prune_ignores_a_forged_desired_state_naming_a_higher_version(
    broker: Mosquitto, releases: Releases, keys: Any
) -> None:
    for v in (1, 2):
        out = cli("fleet", "publish", releases.bundle(v), "--fleet", FLEET, "--broker", broker.url,
                   "--sign-key", keys.key_path, "--root", keys.root_path)
        assert out.returncode == 0, out.stderr
    retain(broker, {TOPICS.desired: unsigned_desired(7, {"fraud": {"version": 99}})})
    out = cli("fleet", "prune", "--fleet", FLEET, "--broker", broker.url, "--root", keys.root_path)
    assert out.returncode == 0 and "nothing to prune" in out.stdout, out.stdout + out.stderr
    assert "does not verify" in out.stderr
    assert retained(broker, TOPICS.manifest("fraud", 2)) and retained(broker, TOPICS.manifest("fraud", 1))
    unverified = cli("fleet", "prune", "--fleet", FLEET, "--broker", broker.url, "--dry-run")
    assert "not verified" in unverified.stderr
