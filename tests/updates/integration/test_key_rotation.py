"""Acceptance (issue 21, keys): rotate both the trust root and the models signing key on a live
device with no request failed, and a release signed with the retired key is refused.

Real processes throughout: ``edge-runtime serve`` on real mosquitto, the operator's
``edge-runtime keys root ...`` and ``fleet root publish`` / ``fleet publish`` commands, and
tritonclient threads scoring the whole time. The root is version 1 with three offline root
keys (threshold 2) and models key A; version 2 adds models key B and retires A, signed by
two root-key holders one after the other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest

from edge_runtime.bundle.reader import BundleLimits
from edge_runtime.store.store import ModelStore
from edge_runtime.trust.keys import key_id, load_private_key_pem
from edge_runtime.trust.root import verify_root
from harness.daemon import Daemon
from harness.wait import wait_until
from updates.conftest import FACTORY, FLEET, Releases
from updates.integration.conftest import Mosquitto, Observer, TritonLoad, publish

pytestmark = pytest.mark.integration
pytest.importorskip("tritonclient.http")
pytest.importorskip("edge_runtime.daemon")

DEVICE = "pi-rotate"


Ok = Callable[..., str]


@pytest.fixture(scope="module")
def ok(cli: Callable[..., Any]) -> Ok:
    """``ok(*args, real=False)``: run ``edge-runtime ARGS``; fail the test with its stderr unless it exits 0."""

    def run(*args: str | Path, real: bool = False) -> str:
        r = cli(list(args), real=real)
        assert r.code == 0, f"edge-runtime {' '.join(map(str, args))}: {r.err}"
        return str(r.out)

    return run


@pytest.fixture
def ops(tmp_path: Path, ok: Ok) -> Path:
    """The operator's keys: root-1..3.key (threshold 2), models.key (A) and root.json v1."""
    ok("keys", "root", "init", "--out", tmp_path / "ops", "--root-keys", "3", "--threshold", "2")
    return tmp_path / "ops"


@pytest.fixture
def daemon(tmp_path: Path, ops: Path, mosquitto: Mosquitto, observer: Observer, releases: Releases) -> Iterator[Daemon]:
    """A device serving fraud v1 (signed by A) under root v1, with a trusted clock (root expiry checked)."""
    key_a = load_private_key_pem((ops / "models.key").read_bytes())
    store = ModelStore(tmp_path / "store", verify_root((ops / "root.json").read_bytes()), None, BundleLimits())
    store.install(releases.bundle(1, signers=[key_a]))
    store.activate("fraud", 1)
    config = tmp_path / "config.toml"
    config.write_text(
        f'[device]\nid = "{DEVICE}"\n[store]\npath = "{tmp_path / "store"}"\nfactory = "{tmp_path / "factory"}"\n'
        f'[server]\nport = 0\nswap_poll_ms = 200\n[trust]\nroot = "{ops / "root.json"}"\n'
        f'[mqtt]\nurl = "{mosquitto.url}"\nfleet = "{FLEET}"\nreconnect_min_s = 0.05\nreconnect_max_s = 0.5\n'
        'trusted_clock = "yes"\n',
        encoding="utf-8",
    )
    d = Daemon(config)
    try:
        d.wait_ready()
        wait_until(lambda: observer.state(DEVICE), "the daemon's update client to report")
        yield d
    finally:
        d.stop()


def test_root_and_models_key_rotate_on_a_live_device_with_zero_failed_requests(
    tmp_path: Path, ops: Path, daemon: Daemon, mosquitto: Mosquitto, observer: Observer, releases: Releases, ok: Ok,
    cli: Callable[..., Any],
) -> None:
    broker = ["--fleet", FLEET, "--broker", mosquitto.url]
    key_a = load_private_key_pem((ops / "models.key").read_bytes())
    v1, v2 = ops / "root.json", tmp_path / "root-v2.json"
    assert observer.state(DEVICE)["trust_root_version"] == 1
    with TritonLoad(daemon.url, np.load(FACTORY / "sample.npy"), clients=2, timeout_s=30.0) as load:
        wait_until(lambda: load.count(1) >= 30, "requests answered by v1")

        # The operator makes root v2: models key B in, A out; two of the three root-key holders sign.
        ok("keys", "new-key", "--out", tmp_path / "models-b.key")
        key_b = load_private_key_pem((tmp_path / "models-b.key").read_bytes())
        ok("keys", "root", "add-key", v1, "--role", "models", "--key", tmp_path / "models-b.key", "-o", v2)
        ok("keys", "root", "retire-key", v2, "--role", "models", "--keyid", key_id(key_a)[:12], "-o", v2)
        ok("keys", "root", "sign", v2, "--key", ops / "root-1.key", "--previous", v1)
        half = cli(["fleet", "root", "publish", v2, *broker, "--previous", v1])  # one of two: refused, nothing sent
        assert half.code == 1 and "threshold is 2" in half.err, half.err
        assert "current: root version 1" in ok("fleet", "root", "show", *broker, "--previous", v1)
        ok("keys", "root", "sign", v2, "--key", ops / "root-3.key", "--previous", v1)
        ok("keys", "root", "verify", v2, "--previous", v1)
        out = ok("fleet", "root", "publish", v2, *broker, "--previous", v1, real=True)
        assert f"published root version 2 on edge/{FLEET}/trust/root/2" in out
        wait_until(lambda: observer.state(DEVICE).get("trust_root_version") == 2, "the device to take root v2")
        assert observer.of(DEVICE, "root_updated")[0]["root_version"] == 2
        assert daemon.wait_line("trust root v2 taken (expires ") is not None, daemon.log()
        assert "current: root version 2" in ok("fleet", "root", "show", *broker, "--previous", v1)
        again = ok("fleet", "root", "publish", v2, *broker)  # from the broker's own chain: nothing new to send
        assert "root version 2 is already retained" in again

        # A release signed with B is taken and served.
        ok("fleet", "publish", releases.bundle(2, signers=[key_b]), *broker, "--sign-key", tmp_path / "models-b.key",
           "--root", v2)
        wait_until(lambda: observer.of(DEVICE, "activated"), "v2 (signed by B) to be activated")
        wait_until(lambda: load.count(2) >= 30, "requests answered by v2")

        # v3 signed with the retired key A: fleet publish refuses it against root v2 ...
        by_a = releases.bundle(3, signers=[key_a])
        r = cli(["fleet", "publish", by_a, *broker, "--sign-key", ops / "models.key", "--root", v2])
        assert r.code == 1 and "not trusted" in r.err, r.err
        # ... and pushed anyway (a leaked old key, the tool bypassed), the device refuses it.
        with mock.patch("edge_runtime.fleet.publish.verify_keys_for_fleet"), \
                mock.patch("edge_runtime.fleet.publish.signing_root", return_value=(None, "")):  # the tool's checks bypassed
            publish(mosquitto.url, by_a, key_a)
        rejected = wait_until(
            lambda: [e for e in observer.of(DEVICE, "rejected") if key_id(key_a)[:12] in e.get("reason", "")],
            "the device to reject the release signed by retired key A",
        )
        assert "not trusted" in rejected[0]["reason"]
        answered = load.count(2)
        wait_until(lambda: load.count(2) >= answered + 30, "v2 to keep answering")
    assert load.failures == [], load.failures[:5]
    assert load.count(3) == 0
    state = observer.state(DEVICE)
    assert state["trust_root_version"] == 2 and state["models"]["fraud"]["active"] == 2
    assert daemon.stop() == 0 and daemon.tracebacks() == [], daemon.log()
