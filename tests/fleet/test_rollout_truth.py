"""Issue 21 item 3 on a real mosquitto with simulated devices (the real update client) and the real
``edge-runtime`` command, one fleet through four steps:

1. ``fleet publish --sign-key STRANGER --root root.json`` is refused (exit 1) and retains nothing;
2. a staged rollout whose desired state every device refuses halts (exit 1, 0 % reached), where
   it used to print ``reached 100%``;
3. ``fleet rollback fraud --to 2`` after v3 brings every device back to v2;
4. ``--bake``: a device of the step that fails during the bake halts the rollout.
"""

from __future__ import annotations

import subprocess

import pytest

from edge_runtime.fleet.session import BrokerOptions, FleetSession
from edge_runtime.fleet.simulate import Fault, device_ids
from edge_runtime.trust.keys import key_id
from edge_runtime.updates.verify import rollout_bucket
from fleet.conftest import (
    EDGE,
    FLEET,
    TOPICS,
    FleetKeys,
    Mosquitto,
    Releases,
    SimulateFn,
    Watch,
    cli,
    model_entry,
    retained_desired,
)
from harness.wait import wait_until

pytestmark = pytest.mark.integration


def _retained(url: str, filters: list[str]) -> dict[str, bytes]:
    with FleetSession(BrokerOptions(url=url), TOPICS, timeout_s=30) as session:
        return session.snapshot(filters)


def _all_active(watch: Watch, ids: list[str], version: int) -> bool:
    return all(model_entry(watch.state(d)).get("active") == version and watch.state(d).get("update") is None for d in ids)


def test_rollouts_tell_the_truth(
    mosquitto: Mosquitto, watch: Watch, fleet_keys: FleetKeys, releases: Releases, simulate: SimulateFn
) -> None:
    url = mosquitto.url
    ids = device_ids(4)
    simulate(url, ids)
    wait_until(lambda: all(model_entry(watch.state(d)) for d in ids), "every device's first state")
    common = ["--fleet", FLEET, "--broker", url]

    # 1. A key the root does not trust: refused before anything is published.
    out = cli("fleet", "publish", releases.bundle(2), *common, "--sign-key", fleet_keys.path("stranger.key"),
              "--root", fleet_keys.path("root.json"))
    assert out.returncode == 1, out.stdout + out.stderr
    assert key_id(fleet_keys.stranger)[:16] in out.stderr and key_id(fleet_keys.models_key)[:16] in out.stderr
    assert _retained(url, [TOPICS.desired, f"{TOPICS.base}/models/#"]) == {}, "nothing retained"

    # 2. No root to check against: the devices refuse the desired state, say so, and the rollout halts.
    out = cli("fleet", "publish", releases.bundle(2), *common, "--sign-key", fleet_keys.path("stranger.key"),
              "--steps", "50,100", "--max-failures", "0", "--step-wait", "120", timeout_s=180)
    assert out.returncode == 1, out.stdout + out.stderr
    steps = [line for line in out.stdout.splitlines() if line.startswith("step ")]
    assert len(steps) == 1 and "0 updated" in steps[0] and " 0 rejected" not in steps[0], out.stdout
    assert "halted at 50% (reached 0%)" in out.stderr and "reached 100%" not in out.stdout, out.stderr
    assert all(model_entry(watch.state(d))["active"] is None for d in ids)

    # 3. v2 then v3 everywhere, then the operator orders the fleet back to v2.
    for version in (2, 3):
        out = cli("fleet", "publish", releases.bundle(version), *common, "--sign-key", fleet_keys.path("signing.key"),
                  "--root", fleet_keys.path("root.json"))
        assert out.returncode == 0, out.stdout + out.stderr
        wait_until(lambda v=version: _all_active(watch, ids, v), f"every device on v{version}")
    out = cli("fleet", "rollback", "fraud", "--to", "2", *common, "--sign-key", fleet_keys.path("signing.key"),
              "--step-wait", "120", timeout_s=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 of 4 devices serve fraud v2" in out.stdout, out.stdout
    assert _all_active(watch, ids, 2)
    assert all(model_entry(watch.state(d))["highest_seen"] == 3 for d in ids), "the floor stays"
    assert retained_desired(url)["models"]["fraud"] == {"version": 2, "rollback": True}

    # 4. --bake: once the 50 % step finished, a device of that step joins and fails v4 during the bake.
    late = next(f"late-{i}" for i in range(100) if rollout_bucket(f"late-{i}", "fraud-4") < 50)
    proc = subprocess.Popen(
        [str(EDGE), "fleet", "publish", str(releases.bundle(4)), *common, "--sign-key", str(fleet_keys.path("signing.key")),
         "--steps", "50,100", "--max-failures", "0", "--step-wait", "120", "--bake", "300"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:  # blocks until the command says the bake started
            lines.append(line)
            if line.startswith("baking step 50%"):
                break
        assert lines and lines[-1].startswith("baking step 50%"), "".join(lines)
        simulate(url, [late], [Fault("fraud", frozenset({4}), frozenset({late}))], name="late")
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, "".join(lines) + stdout + stderr
    assert "(failed during the bake)" in stdout and "during the 300 s bake" in stderr, stdout + stderr
    assert "halted at 50% (reached 0%)" in stderr, stderr
    assert retained_desired(url)["models"]["fraud"]["rollout"]["percent"] == 50
    assert "4" in model_entry(watch.state(late))["failed"]

