"""Acceptance 1, the short version of ``make bench-fleet``: 20 simulated devices (the real update
client, in two worker processes) follow a release raised from 10 % to 50 % to 100 %, and exactly
the devices whose rollout bucket is below each percentage update. Then 10 % of them reject a
release whose self-test fails on them, and ``fleet status`` shows the failures and the counts."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from pathlib import Path

import pytest
from updates.integration.conftest import publish

from edge_runtime.fleet.simulate import Fault, device_ids
from edge_runtime.updates.verify import rollout_bucket
from fleet.conftest import FLEET, FleetKeys, Mosquitto, Releases, SimulateFn, Watch, cli, model_entry, settled
from harness.wait import wait_until

pytestmark = pytest.mark.integration


def all_on(watch: Watch, ids: Iterable[str], version: int) -> bool:
    """Every device in ``ids`` reports ``version`` active."""
    return all(model_entry(watch.state(d)).get("active") == version for d in ids)


def test_twenty_devices_update_exactly_by_bucket_then_ten_percent_fail(
    tmp_path: Path, mosquitto: Mosquitto, watch: Watch, fleet_keys: FleetKeys, releases: Releases, simulate: SimulateFn
) -> None:
    ids = device_ids(20)
    faulty = set(ids[::10])  # 10 %: their interpreter mis-computes v3
    fleet = simulate(mosquitto.url, ids, [Fault("fraud", frozenset({3}), frozenset(faulty))], processes=2)
    wait_until(lambda: all(model_entry(watch.state(d)) for d in ids), "every device's first state")
    assert all(model_entry(watch.state(d))["active"] is None for d in ids), "devices start on the factory bundle"

    buckets = {d: rollout_bucket(d, "fraud-2") for d in ids}
    previous: set[str] = set()
    for percent in (10, 50, 100):
        in_bucket = {d for d in ids if buckets[d] < percent}
        assert previous < in_bucket or percent == 100 and in_bucket == set(ids)
        r = publish(mosquitto.url, releases.bundle(2), fleet_keys.models_key, percent=percent)
        wait_until(partial(settled, watch, ids, r.seq), f"every device to settle at {percent}%")
        wait_until(partial(all_on, watch, in_bucket, 2), f"the {percent}% bucket's state")
        reported = {d for d in ids if model_entry(watch.state(d)).get("active") == 2}
        on_disk = {d for d in ids if fleet.active(d, "fraud") == 2}
        assert reported == in_bucket, f"at {percent}%: reported {sorted(reported)}, bucket {sorted(in_bucket)}"
        assert on_disk == in_bucket, f"at {percent}%: stores hold {sorted(on_disk)}, bucket {sorted(in_bucket)}"
        previous = in_bucket

    r3 = publish(mosquitto.url, releases.bundle(3), fleet_keys.models_key)
    wait_until(lambda: settled(watch, ids, r3.seq), "every device to settle on v3")
    wait_until(lambda: all(model_entry(watch.state(d)).get("active") == (2 if d in faulty else 3) for d in ids), "v3 state")
    failed = {d for d in ids if "3" in model_entry(watch.state(d)).get("failed", {})}
    assert failed == faulty
    for d in ids:
        state = fleet.store(d).state("fraud")
        assert (state.active, 3 in state.failed) == ((2, True) if d in faulty else (3, False)), d

    out = cli("fleet", "status", "--fleet", FLEET, "--broker", mosquitto.url)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    rows = {line.split()[0]: line for line in lines[1:21]}
    for d in faulty:
        assert "fraud v2 (failed v3)" in rows[d] and "differs from golden" in rows[d], rows[d]
    summary = lines[22:]
    assert summary[0].startswith("20 devices: 20 online, 0 offline, 0 unknown; 0 updating;"), summary
    assert "fraud: v3 on 18, v2 on 2; failed v3 on 2" in summary, summary
    assert (
        "desired fraud v3 at 100%: 18 updated, 2 failed, 0 rejected, 0 pending of 20 devices in the rollout "
        "(20 reporting); failure share 10.0%"
    ) in summary, summary
