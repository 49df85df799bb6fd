"""Disk full: the store (and the updater's staging directory inside it) on a 1 MiB tmpfs.

An update that does not fit must abort cleanly: nothing half-written stays in the store,
the staging space is freed, the reason reaches the operator (a ``rejected`` event and
``last_error`` in the retained state, over MQTT), and the old model keeps answering every
request. Two sizes: a release whose download fits but whose install copy does not (the
store needs the staged bytes and the installed copy at once), and one that does not even
fit the staging directory.

Needs root (``mount -t tmpfs``); skipped otherwise.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serving.support import Load

from harness.wait import wait_until
from reliability.conftest import EDGE, FLEET, DeviceDir, Figures, Mosquitto, Observer, Releases

pytestmark = pytest.mark.integration

TMPFS_BYTES = 1024 * 1024
CHUNK = 16 * 1024


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, unmounted after the test."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES},mode=0755", "tmpfs", str(mnt)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


def free_bytes(path: Path) -> int:
    """Bytes available on the file system holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _publish_cli(broker: Mosquitto, bundle: Path, keys: Any) -> None:
    """The real ``edge-runtime fleet publish``."""
    out = subprocess.run(
        [str(EDGE), "fleet", "publish", str(bundle), "--fleet", FLEET, "--broker", broker.url,
         "--sign-key", str(keys.key_path), "--root", str(keys.root_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert out.returncode == 0, out.stderr


def _check_clean_abort(dev: DeviceDir, observer: Observer, version: int, free_before: int, load: Load,
                       cli: Callable[..., Any], timeout_s: float = 60.0) -> dict[str, Any]:
    """The abort left nothing behind, was reported, and v1 kept serving."""
    rejected = wait_until(lambda: [e for e in observer.of(dev.device_id, "rejected") if e.get("version") == version], f"the rejected event of v{version}")[0]
    assert "No space left on device" in rejected["reason"], rejected
    state = wait_until(lambda: (s := observer.state(dev.device_id)).get("last_error")
                       and s["last_error"].get("version") == version and s, "last_error in the retained state")
    assert "No space left on device" in state["last_error"]["reason"]
    assert state["update"] is None and state["models"]["fraud"]["active"] == 1
    store = dev.store()
    model_dir = dev.store_path / "fraud"
    assert store.versions("fraud") == [1] and list(model_dir.glob(".install-*")) == []
    assert not (dev.store_path / ".updates" / "staging" / f"fraud-{version}").exists()
    # Staging space is given back (small files such as state.json may have changed size).
    wait_until(lambda: free_bytes(dev.store_path) >= free_before - 16 * 1024, "the staging space to be freed")
    assert store.state("fraud").active == 1
    verify = cli(["models", "verify", "--config", dev.base / "config.toml"])
    assert verify.code == 0, verify.out + verify.err
    answered = load.count(1)
    wait_until(lambda: load.count(1) >= answered + 20, "v1 to keep answering")
    return {"reason": rejected["reason"][:120], "free_before": free_before, "free_after": free_bytes(dev.store_path)}


def test_update_whose_install_does_not_fit_aborts_cleanly(
    small_fs: Path, make_device: Callable[..., DeviceDir], broker: Mosquitto, observer: Observer,
    releases: Releases, keys: Any, cli: Callable[..., Any], holdout_x: np.ndarray, figures: Figures,
) -> None:
    dev = make_device(store_path=small_fs / "store")
    dev.write_config(broker.url)
    daemon = dev.start()
    wait_until(lambda: observer.state(dev.device_id), "the daemon's first state")
    free_before = free_bytes(dev.store_path)
    # Fits once (the staged download) but not twice (staging + installed copy).
    bundle = releases.bundle(2, pad=int(free_before * 0.6), chunk_size=CHUNK)
    with Load(daemon.port, holdout_x, clients=4) as load:
        wait_until(lambda: load.count(1) >= 20, "v1 answering")
        _publish_cli(broker, bundle, keys)
        found = _check_clean_abort(dev, observer, 2, free_before, load, cli)
    assert load.failures == [], load.failures[:5]
    assert daemon.tracebacks() == [], daemon.log()
    figures.add(artifact_bytes=int(free_before * 0.6), answered_during=load.count(1), **found)


def test_update_that_does_not_fit_the_staging_area_aborts_cleanly(
    small_fs: Path, make_device: Callable[..., DeviceDir], broker: Mosquitto, observer: Observer,
    releases: Releases, keys: Any, cli: Callable[..., Any], holdout_x: np.ndarray,
) -> None:
    dev = make_device(store_path=small_fs / "store")
    dev.write_config(broker.url)
    daemon = dev.start()
    wait_until(lambda: observer.state(dev.device_id), "the daemon's first state")
    free_before = free_bytes(dev.store_path)
    bundle = releases.bundle(2, pad=int(free_before * 1.5), chunk_size=CHUNK)
    with Load(daemon.port, holdout_x, clients=4) as load:
        wait_until(lambda: load.count(1) >= 20, "v1 answering")
        _publish_cli(broker, bundle, keys)
        # Three stall periods ([mqtt] download_stall_s = 2) are ample for a device that gives up.
        _check_clean_abort(dev, observer, 2, free_before, load, cli, timeout_s=10.0)
    assert load.failures == [], load.failures[:5]
    assert daemon.tracebacks() == [], daemon.log()
