"""Acceptance 3: a download survives a broker restart and a killed device process, and the
bytes received after the interruption are at most 1.1 x the bytes that were missing.

The device is the real daemon (``edge-runtime serve``), rate-limited so the test can
interrupt it mid-transfer. Progress is
read from the device's staging directory, whose have-set header counts every chunk byte
that arrived (duplicates and rejected ones included) across restarts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_runtime.bundle.reader import BundleLimits
from edge_runtime.store.store import ModelStore
from edge_runtime.updates.download import Download, Progress, release_dir
from harness.wait import wait_until

from ..conftest import FLEET, FleetKeys, Releases
from .conftest import Mosquitto, Observer, publish

pytestmark = pytest.mark.integration
EDGE = Path(sys.executable).parent / "edge-runtime"
PAD = 600_000  # ~600 KB model in 4 KiB chunks: 152 chunks
RATE = 250_000  # bytes per second: about 2.5 s for the whole transfer


def _daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_", "NOTIFY_SOCKET", "WATCHDOG_"))}
    with open(log, "ab") as fh:
        return subprocess.Popen([str(EDGE), "serve", "--config", str(config)], stdout=fh, stderr=fh, env=env)


def test_resume_after_broker_restart_and_device_kill(
    tmp_path: Path, mosquitto: Mosquitto, observer: Observer, fleet_keys: FleetKeys, releases: Releases
) -> None:
    store_path = tmp_path / "store"
    store = ModelStore(store_path, fleet_keys.root, None, BundleLimits())
    store.install(releases.bundle(1))
    store.activate("fraud", 1)
    config = tmp_path / "config.toml"
    config.write_text(
        f'[device]\nid = "pi-resume"\n[store]\npath = "{store_path}"\nfactory = "{tmp_path / "factory"}"\n'
        f'[server]\nport = 0\n[trust]\nroot = "{fleet_keys.path("root.json")}"\n'
        f'[mqtt]\nurl = "{mosquitto.url}"\nfleet = "{FLEET}"\nreconnect_min_s = 0.05\nreconnect_max_s = 0.3\n'
        f"download_stall_s = 5.0\nmax_download_bytes_per_s = {RATE}\n",
        encoding="utf-8",
    )
    log = tmp_path / "daemon.log"
    staging = release_dir(store_path / ".updates" / "staging", "fraud", 2)

    def progress() -> Progress | None:
        try:
            return Download.peek(staging)
        except (OSError, ValueError, KeyError):
            return None

    daemon = _daemon(config, log)
    try:
        wait_until(lambda: observer.state("pi-resume"), "the daemon to connect")
        bundle = releases.bundle(2, pad=PAD, chunk_size=4096)
        publish(mosquitto.url, bundle, fleet_keys.models_key)

        wait_until(lambda: (p := progress()) and p.have_bytes >= p.total_bytes // 2, "half of the chunks")
        mosquitto.stop()
        at_break = progress()
        assert at_break is not None and at_break.have_bytes < at_break.total_bytes
        time.sleep(0.5)  # the device is cut off and retries with backoff
        mosquitto.start()

        wait_until(lambda: (p := progress()) and p.have_bytes >= 3 * p.total_bytes // 4, "three quarters")
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
        at_kill = progress()
        assert at_kill is not None and at_kill.have_bytes < at_kill.total_bytes, "the kill must land mid-download"
        daemon = _daemon(config, log)

        verified = wait_until(lambda: observer.of("pi-resume", "verified"), "the download to complete")[-1]
        wait_until(lambda: store.state("fraud").active == 2, "v2 to become active")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(15)

    missing = at_break.total_bytes - at_break.have_bytes
    received_after = verified["received_bytes"] - at_break.received_bytes
    ratio = received_after / missing
    duplicates = verified["received_bytes"] - verified["total_bytes"] - verified["rejected_bytes"]
    print(f"resume: missing {missing} B at the broker stop, received {received_after} B after it: ratio {ratio:.3f}"
          f" ({duplicates} B of duplicates)")
    assert verified["total_bytes"] == at_break.total_bytes
    assert missing <= received_after <= 1.1 * missing, f"ratio {ratio:.3f}; daemon log:\n{log.read_text()[-3000:]}"
    assert "resuming fraud v2" in log.read_text()
