"""ModelState transitions: pure, so no filesystem (the store only reads, applies and writes)."""

from __future__ import annotations

import pytest

from edge_runtime.exceptions import StoreError
from edge_runtime.store.state import MAX_HISTORY, ModelState


def events(state: ModelState) -> list[str]:
    return [e["event"] for e in state.history]


# -- queries ------------------------------------------------------------------------------


def test_usable_excludes_failed_quarantined_and_none() -> None:
    s = ModelState(failed={2: "bad"}, quarantined={3: "hash"})
    assert s.usable(1)
    assert not s.usable(2)
    assert not s.usable(3)
    assert not s.usable(None)


def test_older_good_is_the_newest_usable_below() -> None:
    s = ModelState(failed={4: "bad"}, quarantined={3: "hash"})
    assert s.older_good(5, [1, 2, 3, 4, 5, 6]) == 2
    assert s.older_good(1, [1, 2]) is None
    assert s.older_good(9, []) is None


# -- install and floor ---------------------------------------------------------------------


def test_record_install_raises_floor_and_clears_quarantine() -> None:
    s = ModelState(highest_seen=3, quarantined={5: "hash"})
    s.record_install(5, repair="hash")
    assert s.highest_seen == 5
    assert 5 not in s.quarantined
    assert events(s) == ["repaired", "installed"]


def test_record_install_of_an_older_version_keeps_the_floor() -> None:
    s = ModelState(highest_seen=7)
    s.record_install(2)
    assert s.highest_seen == 7
    assert events(s) == ["installed"]


def test_raise_floor_only_upwards() -> None:
    s = ModelState(highest_seen=4)
    assert not s.raise_floor(4)
    assert s.history == []
    assert s.raise_floor(6)
    assert s.highest_seen == 6
    assert s.history[-1]["recovered"] is True


# -- activate ------------------------------------------------------------------------------


def test_activate_makes_the_previous_version_last_known_good() -> None:
    s = ModelState(active=1)
    assert s.activate(2, [1, 2])
    assert (s.active, s.last_known_good, s.serving_factory) == (2, 1, False)
    assert s.history[-1] == {**s.history[-1], "event": "activated", "version": 2, "previous": 1}


def test_activate_does_not_keep_a_failed_previous_as_last_known_good() -> None:
    s = ModelState(active=2, last_known_good=1, failed={2: "selftest"})
    s.activate(3, [1, 2, 3])
    assert (s.active, s.last_known_good) == (3, 1)


def test_activate_of_the_last_known_good_moves_it_down() -> None:
    s = ModelState(active=3, last_known_good=2, failed={3: "bad"})
    s.activate(2, [1, 2, 3])
    assert (s.active, s.last_known_good) == (2, 1)


def test_activate_clears_failure_and_quarantine_of_the_version() -> None:
    s = ModelState(active=1, failed={2: "old"}, quarantined={2: "hash"}, serving_factory=True)
    s.activate(2, [1, 2])
    assert 2 not in s.failed and 2 not in s.quarantined
    assert not s.serving_factory
    assert events(s) == ["unquarantined", "activated"]


def test_activate_only_if_newer_leaves_a_newer_active_version() -> None:
    s = ModelState(active=5, last_known_good=4)
    assert not s.activate(3, [3, 4, 5], only_if_newer=True)
    assert (s.active, s.last_known_good, s.history) == (5, 4, [])


def test_activate_only_if_newer_replaces_a_factory_fallback() -> None:
    s = ModelState(active=5, serving_factory=True)
    assert s.activate(3, [3, 5], only_if_newer=True)
    assert s.active == 3


# -- fail ----------------------------------------------------------------------------------


def test_fail_without_revert_only_records() -> None:
    s = ModelState(active=2, last_known_good=1)
    s.fail(2, "selftest", [1, 2])
    assert (s.active, s.last_known_good, s.failed) == (2, 1, {2: "selftest"})
    assert s.history[-1]["reverted_to"] is None


def test_fail_with_revert_restores_and_moves_last_known_good_down() -> None:
    s = ModelState(active=3, last_known_good=2)
    s.fail(3, "crash", [1, 2, 3], revert_to=2)
    assert (s.active, s.last_known_good) == (2, 1)
    assert s.history[-1]["reverted_to"] == 2


def test_fail_of_an_inactive_version_does_not_revert() -> None:
    s = ModelState(active=3, last_known_good=2)
    s.fail(4, "crash", [2, 3, 4], revert_to=2)
    assert (s.active, s.last_known_good) == (3, 2)
    assert s.failed == {4: "crash"}


# -- serving -------------------------------------------------------------------------------


def test_set_serving_records_changes_only() -> None:
    s = ModelState()
    assert s.set_serving(3)
    assert not s.set_serving(3)
    assert s.serving == 3
    assert events(s) == ["serving"]


# -- rollback ------------------------------------------------------------------------------


def test_rollback_marks_current_failed_and_moves_down() -> None:
    s = ModelState(active=3, last_known_good=2)
    assert s.rollback([1, 2, 3]) == 2
    assert (s.active, s.last_known_good) == (2, 1)
    assert s.failed == {3: "rolled back"}
    assert s.history[-1]["event"] == "rolled_back"


def test_rollback_without_last_known_good_is_refused_and_changes_nothing() -> None:
    s = ModelState(active=3)
    with pytest.raises(StoreError, match="no last known good"):
        s.rollback([3])
    assert s == ModelState(active=3)


# -- quarantine ----------------------------------------------------------------------------


def test_quarantine_records_reason() -> None:
    s = ModelState(active=2)
    s.quarantine(2, "hash mismatch")
    assert s.quarantined == {2: "hash mismatch"}
    assert not s.usable(2)
    assert s.active == 2  # start-up resolution decides what to serve instead


# -- fall back -----------------------------------------------------------------------------


def test_fall_back_to_factory_drops_quarantined_versions() -> None:
    s = ModelState(active=3, last_known_good=2, quarantined={3: "hash", 2: "hash"})
    s.fall_back(3, None, "both damaged", [2, 3])
    assert (s.active, s.last_known_good, s.serving_factory) == (None, None, True)
    assert s.history[-1]["to"] == "factory"


def test_fall_back_to_factory_keeps_an_intact_active_version() -> None:
    s = ModelState(active=None, last_known_good=None)
    s.fall_back(None, None, "nothing active", [])
    assert s.serving_factory and s.active is None


def test_fall_back_to_a_store_version() -> None:
    s = ModelState(active=3, last_known_good=2, quarantined={3: "hash"}, serving_factory=True)
    s.fall_back(3, 2, "v3 damaged", [1, 2, 3])
    assert (s.active, s.last_known_good, s.serving_factory) == (2, 1, False)
    assert s.history[-1]["to"] == "v2"


# -- history and the on-disk form -------------------------------------------------------


def test_history_is_bounded() -> None:
    s = ModelState()
    for v in range(MAX_HISTORY + 10):
        s.quarantine(v, "x")
    assert len(s.history) == MAX_HISTORY
    assert s.history[-1]["version"] == MAX_HISTORY + 9


def test_json_round_trip_after_transitions() -> None:
    s = ModelState(active=1)
    s.activate(2, [1, 2])
    s.fail(2, "bad", [1, 2], revert_to=1)
    s.quarantine(3, "hash")
    assert ModelState.from_json(s.to_json(), "test") == s


@pytest.mark.parametrize("bad", [{"active": -1}, {"active": True}, {"failed": {"x": "y"}}, {"history": {}}, []])
def test_from_json_refuses_other_shapes(bad: object) -> None:
    with pytest.raises(StoreError, match="unreadable state"):
        ModelState.from_json(bad, "test")


# -- tentative activation ------------------------------------------------------------------


def test_begin_trying_marks_an_unconfirmed_version_only() -> None:
    s = ModelState(active=3, last_known_good=2, confirmed={2})
    assert s.begin_trying(3)
    assert s.trying == 3 and events(s)[-1] == "trying"
    assert not ModelState(confirmed={2}).begin_trying(2)  # confirmed: no marker, nothing to write


def test_end_trying_confirms_and_clears_the_marker() -> None:
    s = ModelState(active=3, trying=3)
    assert s.end_trying(3, confirmed=True)
    assert s.trying is None and 3 in s.confirmed and events(s)[-1] == "confirmed"
    assert not s.end_trying(3, confirmed=True)  # already confirmed: nothing changed


def test_end_trying_after_an_error_clears_without_confirming() -> None:
    s = ModelState(active=3, trying=3)
    assert s.end_trying(3, confirmed=False)
    assert s.trying is None and 3 not in s.confirmed


def test_a_process_dying_while_trying_fails_the_version_and_reverts_to_the_previous() -> None:
    s = ModelState(active=3, last_known_good=2, trying=3, confirmed={1, 2})
    assert s.crashed_while_trying([1, 2, 3]) == 3
    assert s.failed == {3: "the serving process died while trying v3"}
    assert s.active == 2 and s.last_known_good == 1 and s.trying is None
    assert not s.usable(3)  # never retried
    assert s.history[-1]["event"] == "failed" and s.history[-1]["reverted_to"] == 2


def test_a_crash_with_no_previous_version_falls_back_to_the_factory() -> None:
    s = ModelState(active=1, trying=1)
    assert s.crashed_while_trying([1]) == 1
    assert s.active is None and s.serving_factory and s.failed[1].endswith("while trying v1")


def test_a_crash_while_trying_an_extra_version_leaves_the_active_one() -> None:
    s = ModelState(active=3, last_known_good=2, trying=4, confirmed={2, 3})  # e.g. traffic to v4
    assert s.crashed_while_trying([2, 3, 4]) == 4
    assert s.active == 3 and s.last_known_good == 2 and 4 in s.failed


def test_no_marker_left_means_nothing_to_recover() -> None:
    s = ModelState(active=3, last_known_good=2)
    assert s.crashed_while_trying([2, 3]) is None
    assert s == ModelState(active=3, last_known_good=2)


def test_fail_and_quarantine_clear_the_marker() -> None:
    s = ModelState(active=3, trying=3)
    s.fail(3, "self-test", [3])
    assert s.trying is None
    q = ModelState(trying=4)
    q.quarantine(4, "hash")
    assert q.trying is None


def test_state_written_before_tentative_activation_counts_what_it_served_as_confirmed() -> None:
    s = ModelState.from_json({"active": 3, "last_known_good": 2, "serving": 3, "highest_seen": 4}, "old")
    assert s.confirmed == {2, 3} and s.trying is None
    assert s.begin_trying(4) and not s.begin_trying(3)


def test_tentative_fields_round_trip_and_refuse_other_shapes() -> None:
    s = ModelState(active=3, trying=3, confirmed={1, 2})
    assert ModelState.from_json(s.to_json(), "x") == s
    for bad in ({"trying": "3"}, {"confirmed": {"1": 1}}, {"confirmed": [-1]}):
        with pytest.raises(StoreError, match="unreadable state"):
            ModelState.from_json(bad, "x")


# -- removal -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "role"),
    [(5, "active"), (4, "the last known good"), (6, "being tried"), (3, "serving")],
)
def test_remove_refuses_a_protected_version(version: int, role: str) -> None:
    s = ModelState(active=5, last_known_good=4, trying=6, serving=3)
    before = s.to_json()
    with pytest.raises(StoreError, match=f"v{version} is {role}"):
        s.remove(version, "operator")
    assert s.to_json() == before


def test_remove_records_the_removal() -> None:
    s = ModelState(active=5, last_known_good=4, confirmed={2, 4, 5})
    s.remove(2, "retention")
    assert 2 not in s.confirmed and s.history[-1] == {**s.history[-1], "event": "removed", "version": 2}
