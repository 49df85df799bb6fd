"""Pure parts of fleet rollouts: how a device's state counts for a release, the halting rule, the
``--steps`` syntax, the ``fleet status`` summary, and the simulator's fault injection."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from updates.conftest import FACTORY

from edge_runtime.bundle.reader import open_bundle
from edge_runtime.cli import main
from edge_runtime.exceptions import SelfTestError, UsageError
from edge_runtime.fleet.rollout import Tally, outcome, over_limit, parse_steps, step_passes, surely_over_limit, tally
from edge_runtime.fleet.simulate import Fault, MiscomputingBackend, device_ids
from edge_runtime.fleet.staged import watch_step
from edge_runtime.fleet.status import DeviceStates, FleetView, summary_lines
from edge_runtime.inference.backend import load_backend
from edge_runtime.inference.selftest import run_selftest
from edge_runtime.updates.protocol import Topics
from edge_runtime.updates.verify import rollout_bucket

SALT = "fraud-2"


def state(active: int | None, failed: tuple[int, ...] = (), update: dict[str, Any] | None = None,
          error: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "models": {"fraud": {"active": active, "failed": {str(v): "self-test failed" for v in failed}}},
        "update": update,
        "last_error": error,
    }


def in_and_out() -> tuple[str, str]:
    ids = device_ids(50)
    inside = next(d for d in ids if rollout_bucket(d, SALT) < 50)
    outside = next(d for d in ids if rollout_bucket(d, SALT) >= 50)
    return inside, outside


def test_each_device_state_counts_as_exactly_one_outcome() -> None:
    inside, outside = in_and_out()
    assert outcome(inside, state(2), "fraud", 2, 50, SALT) == "updated"
    assert outcome(inside, state(1, failed=(2,)), "fraud", 2, 50, SALT) == "failed"
    assert outcome(inside, state(1), "fraud", 2, 50, SALT) == "pending"
    assert outcome(outside, state(1), "fraud", 2, 50, SALT) == "outside"
    assert outcome(inside, None, "fraud", 2, 50, SALT) == "pending"


def test_a_version_still_activating_is_not_yet_updated() -> None:
    inside, _ = in_and_out()
    busy = {"model": "fraud", "version": 2, "phase": "activating"}
    assert outcome(inside, state(2, update=busy), "fraud", 2, 50, SALT) == "pending"


def test_a_refused_release_counts_as_rejected_but_a_bad_chunk_mid_download_does_not() -> None:
    inside, outside = in_and_out()
    refused = {"model": "fraud", "version": 2, "reason": "incompatible: needs aarch64"}
    assert outcome(inside, state(1, error=refused), "fraud", 2, 50, SALT) == "rejected"
    assert outcome(outside, state(1, error=refused), "fraud", 2, 50, SALT) == "rejected"
    downloading = {"model": "fraud", "version": 2, "phase": "downloading", "percent": 40}
    assert outcome(inside, state(1, update=downloading, error=refused), "fraud", 2, 50, SALT) == "pending"
    old = {"model": "fraud", "version": 1, "reason": "chunk dropped"}
    assert outcome(inside, state(2, error=old), "fraud", 2, 50, SALT) == "updated"


def test_tally_skips_devices_without_a_state_and_counts_the_bucket() -> None:
    ids = device_ids(20)
    rows = [{"device": d, "online": True, "state": state(2 if rollout_bucket(d, SALT) < 50 else 1)} for d in ids]
    rows.append({"device": "silent", "online": True, "state": None})
    t = tally(rows, "fraud", 2, 50, SALT)
    expected = sum(rollout_bucket(d, SALT) < 50 for d in ids)
    assert (t.devices, t.in_rollout, t.updated, t.failed, t.pending) == (20, expected, expected, 0, 0)


def test_failure_share_is_of_the_finished_devices_and_must_pass_the_limit() -> None:
    t = Tally("fraud", 2, 50, devices=20, in_rollout=10, updated=8, failed=2, rejected=0, pending=0)
    assert t.failure_percent == 20.0
    assert not over_limit(t, 20.0), "at the limit is not past it"
    assert over_limit(t, 19.9)
    none_finished = Tally("fraud", 2, 50, devices=20, in_rollout=10, updated=0, failed=0, rejected=0, pending=10)
    assert none_finished.failure_percent == 0.0 and not over_limit(none_finished, 0.0)
    with_rejects = Tally("fraud", 2, 50, devices=20, in_rollout=10, updated=6, failed=1, rejected=1, pending=2)
    assert with_rejects.failure_percent == 25.0


def test_a_step_is_surely_over_only_if_it_stays_over_when_every_pending_device_succeeds() -> None:
    early = Tally("fraud", 2, 50, devices=20, in_rollout=10, updated=0, failed=1, rejected=0, pending=9)
    assert over_limit(early, 20.0) and not surely_over_limit(early, 20.0)
    certain = Tally("fraud", 2, 50, devices=20, in_rollout=10, updated=1, failed=3, rejected=0, pending=6)
    assert surely_over_limit(certain, 20.0)


def test_steps_are_increasing_percentages() -> None:
    assert parse_steps("10,50,100") == [10, 50, 100]
    assert parse_steps(" 5%, 25% ,100") == [5, 25, 100]
    for bad in ("10,5", "0,50", "10,101", "ten", "10,,50", "50,50"):
        with pytest.raises(UsageError):
            parse_steps(bad)


def test_status_summary_counts_versions_failures_and_the_desired_release() -> None:
    ids = device_ids(10)
    rows = []
    for i, d in enumerate(ids):
        st = state(2 if i < 2 else 3, failed=(3,) if i < 2 else ())
        if i < 2:
            st["last_error"] = {"model": "fraud", "version": 3, "reason": "differs from golden"}
        rows.append({"device": d, "online": i != 9, "state": st})
    view = FleetView(rows, {"fraud": {"version": 3, "rollout": {"percent": 100, "salt": "fraud-3"}}}, 7)
    lines = summary_lines(view)
    assert lines[0] == "10 devices: 9 online, 1 offline, 0 unknown; 0 updating; 2 reporting a last error"
    assert lines[1] == "fraud: v3 on 8, v2 on 2; failed v3 on 2"
    assert lines[2] == (
        "desired fraud v3 at 100%: 8 updated, 2 failed, 0 rejected, 0 pending of 10 devices in the rollout "
        "(10 reporting); failure share 20.0%"
    )


def test_device_states_keep_the_newest_document_and_forget_cleared_topics() -> None:
    topics = Topics("edge", "f1")
    seen: list[str] = []
    states = DeviceStates(topics, on_state=lambda d, s: seen.append(d))
    states.add(topics.state("pi-1"), b'{"models": {}}')
    states.add(topics.online("pi-1"), b"true")
    states.add(topics.state("pi-2"), b"not json")
    states.add("edge/f1/desired", b"{}")
    assert [(r["device"], r["online"], r["state"]) for r in states.devices()] == [
        ("pi-1", True, {"models": {}}), ("pi-2", None, None)
    ]
    states.add(topics.state("pi-1"), b"")
    assert states.devices()[0]["state"] is None and seen == ["pi-1"]


def test_a_fault_applies_to_its_devices_model_and_versions_only() -> None:
    fault = Fault("fraud", frozenset({3}), frozenset({"sim-0000"}))
    assert fault.applies("sim-0000", "fraud", 3)
    assert not fault.applies("sim-0001", "fraud", 3)
    assert not fault.applies("sim-0000", "fraud", 2)
    assert not fault.applies("sim-0000", "other", 3)


def test_the_demo_model_fails_its_self_test_only_when_miscomputed() -> None:
    with open_bundle(FACTORY / "fraud.bundle", None) as bundle:
        manifest = bundle.manifest
        model = bundle.read_artifact(manifest.model_file)
    assert run_selftest(load_backend(manifest, model), manifest) < 1e-3
    with pytest.raises(SelfTestError, match="differs from golden"):
        run_selftest(MiscomputingBackend(load_backend(manifest, model)), manifest)


def test_publish_rejects_contradictory_rollout_options(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["fleet", "publish", __file__, "--fleet", "f1", "--sign-key", "k.pem"]
    assert main([*base, "--rollout", "10", "--steps", "10,100"]) == 2
    assert "cannot be combined" in capsys.readouterr().err
    assert main([*base, "--steps", "10,100", "--device", "pi-1"]) == 2
    assert "cannot be used with --device" in capsys.readouterr().err
    assert main([*base, "--steps", "50,10"]) == 2
    assert "increasing" in capsys.readouterr().err
    assert main([*base, "--max-failures", "120"]) == 2
    assert "[0, 100]" in capsys.readouterr().err


def _drifting_state(version: int, score: float | None, drift_version: int | None = None) -> dict[str, Any]:
    drift = {"version": drift_version or version, "score": score, "worst_feature": "input_0[7]", "alert": bool(score)}
    return {"models": {"fraud": {"active": version, "failed": {}, "drift": drift}}, "update": None}


def test_max_drift_counts_an_updated_device_whose_release_drifts_as_a_failure() -> None:
    assert outcome("d", _drifting_state(2, 0.4), "fraud", 2, 100, "s", max_drift=0.25) == "drifting"
    assert outcome("d", _drifting_state(2, 0.1), "fraud", 2, 100, "s", max_drift=0.25) == "updated"
    assert outcome("d", _drifting_state(2, 0.4), "fraud", 2, 100, "s") == "updated"  # not watched
    assert outcome("d", _drifting_state(2, None), "fraud", 2, 100, "s", max_drift=0.25) == "updated"  # no score yet
    # The figure is the old version's (the state was sent before the swap): it says nothing of v2.
    assert outcome("d", _drifting_state(2, 0.9, drift_version=1), "fraud", 2, 100, "s", max_drift=0.25) == "updated"
    rows = [{"device": f"d{i}", "state": _drifting_state(2, 0.4 if i < 2 else 0.05)} for i in range(10)]
    t = tally(rows, "fraud", 2, 100, "s", max_drift=0.25)
    assert (t.updated, t.drifting, t.finished, t.bad) == (8, 2, 10, 2)
    assert t.failure_percent == pytest.approx(20.0) and over_limit(t, 10.0) and not over_limit(t, 20.0)
    assert "2 drifting" in t.describe()


def test_fleet_summary_counts_devices_in_drift_alert() -> None:
    rows = [{"device": f"d{i}", "online": True, "state": _drifting_state(2, 0.4 if i == 0 else 0.0)} for i in range(3)]
    lines = summary_lines(FleetView(rows))
    assert any("fraud: v2 on 3; drift alert on 1" in line for line in lines), lines


# -- a device that refused the desired state itself (its state's "desired" names the message) --

PUBLISHED = "ab" * 32


def _refused_desired(active: int | None, sha: str = PUBLISHED, status: str = "rejected") -> dict[str, Any]:
    st = state(active)
    st["desired"] = {"seq": 7, "status": status, "sha256": sha, "scope": "fleet", "reason": "key not trusted"}
    return st


def test_a_device_that_refused_the_published_desired_state_counts_as_rejected_not_pending() -> None:
    inside, outside = in_and_out()
    assert outcome(inside, _refused_desired(1), "fraud", 2, 50, SALT, published=[PUBLISHED]) == "rejected"
    # It never learnt its bucket: it counts wherever its bucket is.
    assert outcome(outside, _refused_desired(1), "fraud", 2, 50, SALT, published=[PUBLISHED]) == "rejected"
    # Before this change (no sha to match) the same device was pending, and a step "reached" 100 %.
    assert outcome(inside, _refused_desired(1), "fraud", 2, 50, SALT) == "pending"
    # Another message refused (an attacker's, an older rollout's) says nothing of this one.
    assert outcome(inside, _refused_desired(1, sha="cd" * 32), "fraud", 2, 50, SALT, published=[PUBLISHED]) == "pending"
    assert outcome(inside, _refused_desired(1, status="applied"), "fraud", 2, 50, SALT, published=[PUBLISHED]) == "pending"
    # A device already serving the release serves it, whatever it made of the new message.
    assert outcome(inside, _refused_desired(2), "fraud", 2, 50, SALT, published=[PUBLISHED]) == "updated"
    # Hostile shapes count as nothing.
    for hostile in ("rejected", {"status": "rejected", "sha256": 5}, {"status": "rejected"}, ["x"]):
        st = state(1)
        st["desired"] = hostile
        assert outcome(inside, st, "fraud", 2, 50, SALT, published=[PUBLISHED]) == "pending"


def test_six_devices_refusing_the_desired_state_make_a_step_that_does_not_pass() -> None:
    ids = device_ids(6)
    rows = [{"device": d, "online": True, "state": _refused_desired(1)} for d in ids]
    t = tally(rows, "fraud", 2, 50, SALT, published=[PUBLISHED])
    assert (t.devices, t.updated, t.rejected, t.pending) == (6, 0, 6, 0)
    assert over_limit(t, 0.0) and surely_over_limit(t, 0.0) and not step_passes(t, 0.0)


def test_a_step_passes_only_with_no_device_pending_and_failures_within_the_limit() -> None:
    done = Tally("fraud", 2, 50, devices=10, in_rollout=5, updated=5, failed=0, rejected=0, pending=0)
    assert step_passes(done, 0.0) and step_passes(done, None)
    waiting = Tally("fraud", 2, 50, devices=10, in_rollout=5, updated=4, failed=0, rejected=0, pending=1)
    assert not step_passes(waiting, 0.0) and not step_passes(waiting, None) and not step_passes(waiting, 100.0)
    failing = Tally("fraud", 2, 50, devices=10, in_rollout=5, updated=4, failed=1, rejected=0, pending=0)
    assert not step_passes(failing, 10.0) and step_passes(failing, 20.0) and step_passes(failing, None)


# -- watching a step (fake clock): the step wait, the pass rule, the bake --------------------


class Clock:
    """A clock that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _t(updated: int, pending: int, failed: int = 0, drifting: int = 0) -> Tally:
    return Tally("fraud", 2, 50, devices=10, in_rollout=updated + pending + failed + drifting, updated=updated,
                 failed=failed, rejected=0, pending=pending, drifting=drifting)


def _script(clock: Clock, timeline: list[tuple[float, Tally]]) -> Callable[[], Tally]:
    """The tally the operator reads at each moment: the last entry whose time has come."""
    def read() -> Tally:
        return [t for at, t in timeline if at <= clock.now][-1]
    return read


def test_a_step_ends_as_soon_as_its_devices_finish_when_there_is_no_bake() -> None:
    clock = Clock()
    v = watch_step(_script(clock, [(0, _t(0, 3)), (2, _t(3, 0))]), step_wait_s=600, max_failures=0,
                   clock=clock, sleep=clock.sleep)
    assert v.passed and v.why == "finished" and 2 <= clock.now < 3 and v.baked_s == 0


def test_devices_still_pending_when_the_step_wait_runs_out_halt_the_rollout() -> None:
    clock = Clock()
    v = watch_step(_script(clock, [(0, _t(0, 3)), (1, _t(2, 1))]), step_wait_s=10, max_failures=0,
                   clock=clock, sleep=clock.sleep)
    assert not v.passed and v.why == "step wait over" and v.tally.pending == 1 and clock.now >= 10
    # Without a failure limit too: a device that never answered is not a success.
    clock = Clock()
    v = watch_step(_script(clock, [(0, _t(2, 1))]), step_wait_s=10, clock=clock, sleep=clock.sleep)
    assert not v.passed


def test_the_bake_holds_after_the_devices_finished_and_then_passes() -> None:
    clock = Clock()
    baked: list[Tally] = []
    v = watch_step(_script(clock, [(0, _t(0, 3)), (2, _t(3, 0))]), step_wait_s=600, bake_s=60, max_failures=0,
                   on_bake=baked.append, clock=clock, sleep=clock.sleep)
    assert v.passed and v.why == "finished, baked" and v.baked_s >= 60 and clock.now >= 62
    assert len(baked) == 1 and baked[0].updated == 3


def test_a_failure_during_the_bake_halts() -> None:
    clock = Clock()
    v = watch_step(_script(clock, [(0, _t(3, 0)), (30, _t(2, 0, failed=1))]), step_wait_s=600, bake_s=60,
                   max_failures=0, clock=clock, sleep=clock.sleep)
    assert not v.passed and v.why == "failed during the bake" and 30 <= v.baked_s < 31
    # Drift counted as a failure (--max-drift) halts the same way.
    clock = Clock()
    v = watch_step(_script(clock, [(0, _t(3, 0)), (5, _t(2, 0, drifting=1))]), step_wait_s=600, bake_s=60,
                   max_failures=0, watch_drift=True, clock=clock, sleep=clock.sleep)
    assert not v.passed and v.why == "failed during the bake" and clock.now < 6
    # Without a limit, a new failure during the bake still halts; failures from before it do not.
    clock = Clock()
    v = watch_step(_script(clock, [(0, _t(2, 0, failed=1)), (5, _t(1, 0, failed=2))]), step_wait_s=600, bake_s=60,
                   clock=clock, sleep=clock.sleep)
    assert not v.passed and v.why == "failed during the bake"
    clock = Clock()
    v = watch_step(_script(clock, [(0, _t(2, 0, failed=1))]), step_wait_s=600, bake_s=60, clock=clock, sleep=clock.sleep)
    assert v.passed


def test_bake_is_refused_without_a_watched_rollout(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["fleet", "publish", __file__, "--fleet", "f1", "--sign-key", "k.pem"]
    assert main([*base, "--bake", "60"]) == 2
    assert "--bake holds the steps" in capsys.readouterr().err
    assert main([*base, "--steps", "50,100", "--bake", "-1"]) == 2
