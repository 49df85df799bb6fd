"""Acceptance 2: ``fleet publish --steps 10,50,100 --step-wait S --max-failures P`` halts at the first
step whose failure share passes the limit, leaves the desired state at that step's percentage and
exits 1; a rollout whose failures stay within the limit goes on to 100 %. The fleet is simulated
(the real update client, with a self-test that fails on chosen devices)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_runtime.fleet.simulate import Fault, device_ids
from edge_runtime.updates.verify import rollout_bucket
from fleet.conftest import (
    FLEET,
    FleetKeys,
    Mosquitto,
    Releases,
    SimulateFn,
    Watch,
    cli,
    model_entry,
    retained_desired,
    settled,
)
from harness.wait import wait_until

pytestmark = pytest.mark.integration


# The step can only end at its wait (one device never answers), and the three online devices must
# have updated by then: a generous wait, so that a busy machine still gets them there.
AWAY_STEP_WAIT_S = 15


def _publish_steps(url: str, bundle: Path, keys: FleetKeys, limit: str) -> tuple[int, str, str]:
    out = cli(
        "fleet", "publish", bundle, "--fleet", FLEET, "--broker", url, "--sign-key", keys.path("signing.key"),
        "--steps", "10,50,100", "--step-wait", "300", "--max-failures", limit,  # a step ends once all of it reported
        timeout_s=300,
    )
    return out.returncode, out.stdout, out.stderr


def test_rollout_halts_at_the_first_step_over_the_failure_limit(
    mosquitto: Mosquitto, watch: Watch, fleet_keys: FleetKeys, releases: Releases, simulate: SimulateFn
) -> None:
    ids = device_ids(20)
    bucket = {d: rollout_bucket(d, "fraud-2") for d in ids}
    first = [d for d in ids if bucket[d] < 10]
    second = [d for d in ids if 10 <= bucket[d] < 50]
    rest = [d for d in ids if bucket[d] >= 50]
    faulty = set(second[:3])  # none in the 10 % step; 3 of the 10 devices of the 50 % step
    assert first and len(second) >= 3 and rest
    assert 100 * 3 / (len(first) + len(second)) > 20
    simulate(mosquitto.url, ids, [Fault("fraud", frozenset({2}), frozenset(faulty))])
    wait_until(lambda: all(model_entry(watch.state(d)) for d in ids), "every device's first state")

    code, stdout, stderr = _publish_steps(mosquitto.url, releases.bundle(2), fleet_keys, "20")
    assert code == 1, stdout + stderr
    steps = [line for line in stdout.splitlines() if line.startswith("step ")]
    assert [s.split()[1] for s in steps] == ["10%:", "50%:"], stdout
    assert f"{len(first)} updated, 0 failed" in steps[0], steps[0]
    assert "halted at 50%" in stderr and "the rollout stays at 50%" in stderr, stderr
    assert "above --max-failures 20%" in stderr, stderr

    desired = retained_desired(mosquitto.url)
    assert desired["models"]["fraud"]["rollout"]["percent"] == 50, "the percentage is left where it halted"
    wait_until(lambda: settled(watch, ids, desired["seq"]), "every device to settle")
    for d in ids:
        entry = model_entry(watch.state(d))
        if d in faulty:
            assert entry["active"] is None and "2" in entry["failed"], (d, entry)  # rolled back to the factory
        elif d in rest:
            assert entry["active"] is None and not entry["failed"], (d, entry)  # never offered v2
        else:
            assert entry["active"] == 2, (d, entry)


def test_rollout_within_the_failure_limit_reaches_everyone(
    mosquitto: Mosquitto, watch: Watch, fleet_keys: FleetKeys, releases: Releases, simulate: SimulateFn
) -> None:
    ids = device_ids(10)
    late = [d for d in ids if rollout_bucket(d, "fraud-2") >= 50]
    faulty = {late[0]}  # fails only in the last step: 1 of 10, under the 20 % limit
    simulate(mosquitto.url, ids, [Fault("fraud", frozenset({2}), frozenset(faulty))])
    wait_until(lambda: all(model_entry(watch.state(d)) for d in ids), "every device's first state")

    code, stdout, stderr = _publish_steps(mosquitto.url, releases.bundle(2), fleet_keys, "20")
    assert code == 0, stdout + stderr
    steps = [line for line in stdout.splitlines() if line.startswith("step ")]
    assert [s.split()[1] for s in steps] == ["10%:", "50%:", "100%:"], stdout
    assert "9 updated, 1 failed, 0 rejected, 0 pending of 10 devices" in steps[-1], steps[-1]
    assert "failure share 10.0%" in steps[-1] and "reached 100%" in stdout
    assert retained_desired(mosquitto.url)["models"]["fraud"]["rollout"]["percent"] == 100


def test_an_offline_device_stays_pending_and_the_step_does_not_pass_at_step_wait(
    mosquitto: Mosquitto, watch: Watch, fleet_keys: FleetKeys, releases: Releases, simulate: SimulateFn
) -> None:
    online = device_ids(3)
    away = simulate(mosquitto.url, ["sim-away"], name="away")
    simulate(mosquitto.url, online)
    wait_until(lambda: all(model_entry(watch.state(d)) for d in [*online, "sim-away"]), "every device's first state")
    away.stop()  # its retained state stays on the broker: the operator still counts it
    wait_until(lambda: any(r["device"] == "sim-away" and r["online"] is False for r in watch.states.devices()), "the away device's online flag")

    out = cli(
        "fleet", "publish", releases.bundle(2), "--fleet", FLEET, "--broker", mosquitto.url,
        "--sign-key", fleet_keys.path("signing.key"), "--max-failures", "0", "--step-wait", str(AWAY_STEP_WAIT_S),
    )
    # A device that never answered is not a success: the step does not pass (it used to exit 0).
    assert out.returncode == 1, out.stdout + out.stderr
    step = next(line for line in out.stdout.splitlines() if line.startswith("step 100%:"))
    assert "(step wait over)" in step and "3 updated, 0 failed, 0 rejected, 1 pending of 4 devices" in step, step
    assert "halted at 100% (reached 0%)" in out.stderr and "1 of 4 devices of the step still pending" in out.stderr, out.stderr
