"""Acceptance 3: a download survives a broker restart and a killed device process, and the
bytes received after the interruption are at most 1.1 x the bytes that were missing.

The device is the real daemon (``edge-runtime serve``), rate-limited so the test can
interrupt it mid-transfer (it kills the device as soon as the download moves again after the
broker restart, with about half of it still to come). Progress is what the device reports:
its state document's ``update`` (published at every 10 % step) counts every chunk byte that
arrived (duplicates and rejected ones included) across restarts. The broker is stopped as soon
as a step is reported, so the counts at the break are those of that report, give or take the
chunks of a few milliseconds.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.bundle.reader import BundleLimits
from edge_runtime.store.store import ModelStore
from harness.daemon import Daemon
from harness.wait import wait_until
from updates.conftest import FLEET, FleetKeys, Releases
from updates.integration.conftest import Mosquitto, Observer, publish

pytestmark = pytest.mark.integration
PAD = 600_000  # ~600 KB model in 4 KiB chunks: 152 chunks
RATE = 150_000  # bytes per second: about 4 s for the whole transfer, so a kill lands in the middle


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

    def progress() -> dict[str, Any] | None:
        """The download of v2 as the device last reported it."""
        update = observer.state("pi-resume").get("update") or {}
        return update if (update.get("model"), update.get("version")) == ("fraud", 2) and "have_bytes" in update else None

    daemon = Daemon(config)
    daemons = [daemon]
    try:
        wait_until(lambda: observer.state("pi-resume"), "the daemon to connect")
        bundle = releases.bundle(2, pad=PAD, chunk_size=4096)
        publish(mosquitto.url, bundle, fleet_keys.models_key)

        at_break = wait_until(lambda: (p := progress()) and p["have_bytes"] >= p["total_bytes"] // 2 and p,
                              "half of the chunks")
        mosquitto.stop()
        assert at_break["have_bytes"] < at_break["total_bytes"]
        # The device notices it is cut off (and retries with backoff) before the broker returns.
        assert daemon.wait_line("disconnected from") is not None, daemon.log()
        mosquitto.start()

        # Killed as soon as the download moves again: about half of it is still to come.
        wait_until(lambda: (p := progress()) and p["have_bytes"] > at_break["have_bytes"], "progress after the restart")
        daemon.kill()
        daemon = Daemon(config)
        daemons.append(daemon)

        verified = wait_until(lambda: observer.of("pi-resume", "verified"), "the download to complete")[-1]
        wait_until(lambda: store.state("fraud").active == 2, "v2 to become active")
    finally:
        daemon.stop()
    log = "\n".join(d.log() for d in daemons)

    missing = at_break["total_bytes"] - at_break["have_bytes"]
    received_after = verified["received_bytes"] - at_break["received_bytes"]
    ratio = received_after / missing
    duplicates = verified["received_bytes"] - verified["total_bytes"] - verified["rejected_bytes"]
    print(f"resume: missing {missing} B at the broker stop, received {received_after} B after it: ratio {ratio:.3f}"
          f" ({duplicates} B of duplicates)")
    assert verified["total_bytes"] == at_break["total_bytes"]
    assert missing <= received_after <= 1.1 * missing, f"ratio {ratio:.3f}; daemon log:\n{log[-3000:]}"
    resumed = re.search(r"resuming fraud v2 at (\d+)%", daemons[-1].log())
    assert resumed is not None and int(resumed.group(1)) < 100, "the kill must land mid-download"
