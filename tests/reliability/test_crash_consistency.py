"""Crash consistency of MQTT updates: SIGKILL the daemon while it downloads, installs and
activates a release, restart it, and check every time that

* ``edge-runtime models verify`` passes;
* a verified version answers infer requests soon after the restart (the time is recorded;
  docs/reliability.md has the distribution against the 5 s target);
* the version answering is the old one or the new one, and its outputs are exactly that
  version's outputs (consecutive versions are different models, so a mix would show);
* the update then completes: the new version is active and serving. What the interrupted
  attempt left behind (a temporary install directory, a staging directory) is counted and
  reported; the deterministic tests below assert that a restart leaves none.

Random kills (20 in ``make test``, 200 in ``make test-long``) land at a random delay after a
random step of the update (publish, notified, downloading, verified, installed, swap,
activated). Five kills are deterministic, through a wrapper that patches ``os.replace`` and
``os.unlink`` in the daemon process (see ``FAULT_WRAPPER`` in conftest.py): right before and
right after the rename of the new version directory, right before and right after the rename
of the state.json that makes it active, and in the middle of removing the finished download
from the staging directory. The second is the kill between the rename and the state update.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.wait import DEFAULT_TIMEOUT_S, wait_until
from reliability.conftest import Daemon, DeviceDir, Figures, Mosquitto, Releases, infer_rows, publish, scale

pytestmark = pytest.mark.integration

RANDOM_RUNS = scale(20, 200)
PAD = 96 * 1024  # ~57 chunks of 2 KiB ...
CHUNK = 2048
RATE = 256 * 1024  # ... fetched at [mqtt] max_download_bytes_per_s: a download of about 0.45 s to be killed in
# Where a random kill lands: this long (uniformly) after a step of the update appears in the log.
ANCHORS = {"publish": 0.6, "notified": 0.05, "downloading": 0.45, "verified": 0.01, "installed": 0.01,
           "now serving": 0.02, "activated": 0.02}
SERVING_TARGET_S = 5.0


@dataclass
class Harness:
    """One device following a chain of releases v2, v3, ... through kills and restarts."""

    dev: DeviceDir
    broker: Mosquitto
    releases: Releases
    keys: Any
    cli: Callable[..., Any]
    probe: np.ndarray
    daemon: Daemon | None = None
    version: int = 1
    landed: Counter[str] = field(default_factory=Counter)
    serving_s: list[float] = field(default_factory=list)
    settle_s: list[float] = field(default_factory=list)
    answered_by: Counter[str] = field(default_factory=Counter)
    staging_leftovers: int = 0

    def bundle(self, version: int) -> Path:
        """The release of ``version`` (v1 is the unpadded factory one)."""
        return self.releases.bundle(version) if version == 1 else self.releases.bundle(version, pad=PAD, chunk_size=CHUNK)

    @property
    def staging(self) -> Path:
        """The updater's staging directory."""
        return self.dev.store_path / ".updates" / "staging"

    def state(self) -> dict[str, Any]:
        """``fraud/state.json`` as JSON."""
        return dict(json.loads((self.dev.store_path / "fraud" / "state.json").read_bytes()))

    def where(self, new: int) -> str:
        """Which step of the update a kill interrupted, judged from the disk."""
        state = self.state()
        model_dir = self.dev.store_path / "fraud"
        if list(model_dir.glob(f".install-{new}-*")):
            return "install: temporary directory written"
        if (model_dir / str(new)).is_dir():
            if state["active"] != new:
                return "installed, not active" if state["highest_seen"] == new else "renamed, state.json not updated"
            return "active and serving" if state["serving"] == new else "active, swap not confirmed"
        if (self.staging / f"fraud-{new}").is_dir():
            # What the device said before the kill: a download is complete once verified.
            verified = self.daemon is not None and any(f"update verified fraud v{new}" in line for line in self.daemon.lines)
            return "downloaded, not installed" if verified else "downloading"
        return "before the download"

    def start(self, fault: str | None = None) -> Daemon:
        """Start the daemon (through the fault wrapper when ``fault`` is given)."""
        self.daemon = self.dev.start(fault=fault, wait=False)
        return self.daemon

    def recover(self, old: int, new: int) -> None:
        """Restart after a kill and check everything the module docstring promises."""
        daemon = self.start()

        def answered() -> tuple[int, int, np.ndarray] | None:
            assert daemon.alive, daemon.log()
            try:
                status, version, out = infer_rows(daemon.port, self.probe) if daemon.port else (0, 0, None)
            except OSError:
                return None
            return (status, version, out) if status == 200 and out is not None else None

        # A verified version answers: the old or the new one, with exactly its outputs.
        _, version, out = wait_until(answered, "an answer after the restart")
        self.serving_s.append(time.monotonic() - daemon.started)  # a figure, not a check
        assert version in (old, new), f"answered by v{version}, expected v{old} or v{new}"
        np.testing.assert_array_equal(out, self.releases.outputs(self.bundle(version), self.probe))
        self.answered_by["new" if version == new else "old"] += 1
        assert self.state()["active"] in (old, new)
        verify = self.cli(["models", "verify", "--config", self.dev.base / "config.toml"])
        assert verify.code == 0, verify.out + verify.err

        def settled() -> bool:
            assert daemon.alive, daemon.log()
            state = self.state()
            return bool(state["active"] == new and state["serving"] == new)

        # The interrupted update completes.
        t0 = time.monotonic()
        wait_until(settled, f"v{new} active and serving after the restart")
        self.settle_s.append(time.monotonic() - t0)  # a figure, not a check
        status, version, out = infer_rows(daemon.port, self.probe)
        assert status == 200 and version == new
        np.testing.assert_array_equal(out, self.releases.outputs(self.bundle(new), self.probe))
        assert daemon.tracebacks() == [], daemon.log()
        # The staged download is removed before activation: one still here is a leftover.
        self.staging_leftovers += self.staged(new)
        self.version = new

    def staged(self, version: int) -> bool:
        """Whether anything of the download of ``version`` is still in the staging directory."""
        return (self.staging / f"fraud-{version}").exists()

    def leftovers(self) -> list[str]:
        """Temporary install directories nobody removed."""
        return sorted(p.name for p in (self.dev.store_path / "fraud").glob(".install-*"))


@pytest.fixture
def harness(make_device: Callable[..., DeviceDir], broker: Mosquitto, releases: Releases, keys: Any,
            cli: Callable[..., Any], holdout_x: np.ndarray) -> Harness:
    dev = make_device()
    dev.write_config(broker.url, extra_mqtt=f"max_download_bytes_per_s = {RATE}")
    probe = holdout_x[:8]
    # Consecutive versions are different models: a mix of the two could not pass for either.
    assert np.abs(releases.outputs(releases.bundle(1), probe) - releases.outputs(releases.bundle(2), probe)).max() > 1e-4
    return Harness(dev, broker, releases, keys, cli, probe)


def test_random_sigkills_during_updates(harness: Harness, figures: Figures) -> None:
    rng = random.Random(0xED6E)
    h = harness
    daemon = h.start()
    daemon.wait_ready()
    for run in range(RANDOM_RUNS):
        old, new = h.version, h.version + 1
        bundle = h.bundle(new)
        anchor = rng.choice(sorted(ANCHORS))
        mark = len(daemon.lines)
        publish(h.broker.url, bundle, h.keys)
        if anchor != "publish":
            needle = f"now serving v{new}" if anchor == "now serving" else f"update {anchor} fraud v{new}"
            assert daemon.wait_line(needle, start=mark) is not None, f"run {run}: no {needle!r}:\n" + daemon.log()
        time.sleep(rng.uniform(0.0, ANCHORS[anchor]))
        daemon.kill()
        h.landed[h.where(new)] += 1
        h.recover(old, new)
        daemon = h.daemon  # type: ignore[assignment]
    serving = sorted(h.serving_s)
    figures.add(
        runs=RANDOM_RUNS, kills_landed=dict(h.landed), answered_first_by=dict(h.answered_by),
        restart_to_serving_s_median=round(serving[len(serving) // 2], 2), restart_to_serving_s_max=round(serving[-1], 2),
        runs_over_5s=sum(s > SERVING_TARGET_S for s in serving),
        restart_to_update_done_s_max=round(max(h.settle_s), 2), install_leftovers=len(h.leftovers()),
        staging_leftovers=h.staging_leftovers,
    )
    assert h.state()["active"] == RANDOM_RUNS + 1


FAULTS = {
    "install:before": "install: temporary directory written",
    "install:after": "renamed, state.json not updated",
    "activate:before": "installed, not active",
    "activate:after": "active, swap not confirmed",
    "unstage:after": "installed, not active",
}


def _kill_at(h: Harness, fault: str) -> None:
    """Run the update to v2 in a daemon that SIGKILLs itself at ``fault``, then recover."""
    daemon = h.start(fault=f"{fault}:2")
    daemon.wait_ready()
    publish(h.broker.url, h.bundle(2), h.keys)
    daemon.proc.wait(DEFAULT_TIMEOUT_S)
    assert daemon.proc.returncode == -9, f"the fault never fired (exit {daemon.proc.returncode}):\n" + daemon.log()
    daemon.kill()
    assert h.where(2) == FAULTS[fault]
    h.recover(1, 2)


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_sigkill_at_each_rename(harness: Harness, fault: str, figures: Figures) -> None:
    """Deterministic kills: right before/after the version directory rename and the activating state write."""
    _kill_at(harness, fault)
    figures.add(fault=fault, restart_to_serving_s=round(harness.serving_s[-1], 2), leftovers=harness.leftovers(),
                staging_leftover=harness.staged(2), highest_seen_after=harness.state()["highest_seen"])


def test_killed_install_leaves_no_temporary_directory(harness: Harness) -> None:
    _kill_at(harness, "install:before")
    assert harness.leftovers() == []


def test_kill_between_rename_and_state_update_still_records_the_floor(harness: Harness) -> None:
    _kill_at(harness, "install:after")
    assert harness.state()["highest_seen"] == 2


def test_kill_while_removing_the_staged_download_leaves_nothing(harness: Harness) -> None:
    _kill_at(harness, "unstage:after")
    assert not harness.staged(2)
