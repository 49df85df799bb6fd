"""The console's bounds without a broker: the inbox (queue bound, per-device rate, latest-wins
states, the close budget), retention by age and size, the per-device memory of a worst-case
state, and one message of any content never stopping the writer."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from edge_runtime.fleet.console import record as record_module
from edge_runtime.fleet.console.digest import MAX_DIGEST_CHARS, MAX_STATE_BYTES, digest_event, digest_state
from edge_runtime.fleet.console.inbox import Inbox, Incoming
from edge_runtime.fleet.console.limits import MIB, ConsoleLimits, TokenBucket, used_bytes
from edge_runtime.fleet.console.record import Record
from fleet.console.helpers import TOPICS, event, state
from fleet.console.test_record import Clock, feed, render, rows
from harness.wait import wait_until

HUGE = 10**400


class Mono:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def msg(topic: str, payload: bytes = b"{}") -> Incoming:
    return Incoming(topic, payload, len(payload), 0.0)


def put(inbox: Inbox, topic: str, payload: bytes = b"{}") -> bool:
    ref = TOPICS.parse(topic)
    assert ref is not None
    return inbox.put(msg(topic, payload), ref.kind, ref.device)


# ---- the inbox


def test_the_queue_is_bounded_in_messages_and_bytes_and_counts_what_it_drops() -> None:
    inbox = Inbox(ConsoleLimits(max_queue_messages=10, max_queue_bytes=MIB), Mono())
    results = [put(inbox, TOPICS.events(f"pi-{i}")) for i in range(25)]
    assert results.count(True) == 10 and inbox.counts().dropped_full == 15 and inbox.counts().queued == 10
    by_bytes = Inbox(ConsoleLimits(max_queue_bytes=1000), Mono())
    assert put(by_bytes, TOPICS.events("pi-1"), b"x" * 600) and not put(by_bytes, TOPICS.events("pi-2"), b"x" * 600)
    assert by_bytes.counts().queued_bytes == 600 and by_bytes.counts().dropped_full == 1


def test_a_chatty_device_is_held_to_its_rate_and_the_others_are_not() -> None:
    clock = Mono()
    inbox = Inbox(ConsoleLimits(device_messages_per_s=2.0, device_message_burst=5), clock)
    passed = sum(put(inbox, TOPICS.events("chatty")) for _ in range(50))
    assert passed == 5 and inbox.counts().dropped_rate == {"chatty": 45}
    assert all(put(inbox, TOPICS.events(f"quiet-{i}")) for i in range(20))
    clock.t += 1.5  # three tokens
    assert sum(put(inbox, TOPICS.events("chatty")) for _ in range(10)) == 3
    assert inbox.counts().dropped_rate == {"chatty": 52}


def test_states_are_latest_wins_and_one_over_the_rate_waits_for_a_token() -> None:
    clock = Mono()
    inbox = Inbox(ConsoleLimits(device_messages_per_s=1.0, device_message_burst=2), clock)
    for i in range(100):  # queued, not yet taken: each replaces the one before, for free
        put(inbox, TOPICS.state("pi-1"), json.dumps({"n": i}).encode())
    taken = inbox.take(10, 0)
    assert taken is not None and [m.payload for m in taken] == [b'{"n": 99}'] and inbox.counts().replaced == 99
    put(inbox, TOPICS.state("pi-1"), b'{"n": 100}')  # the second token
    assert [m.payload for m in inbox.take(10, 0) or []] == [b'{"n": 100}']
    for i in range(101, 110):  # no token: held aside, latest wins
        assert put(inbox, TOPICS.state("pi-1"), json.dumps({"n": i}).encode())
    assert inbox.take(10, 0) == [] and inbox.counts().held == 1
    clock.t += 1.0
    assert [m.payload for m in inbox.take(10, 0) or []] == [b'{"n": 109}']
    assert inbox.counts().dropped_rate == {}  # a state is never dropped for the rate


def test_at_close_what_is_left_after_the_budget_is_dropped_and_counted() -> None:
    clock = Mono()
    inbox = Inbox(ConsoleLimits(), clock)
    for i in range(30):
        put(inbox, TOPICS.events(f"pi-{i}"))
    inbox.close(budget_s=2.0)
    assert not put(inbox, TOPICS.events("late"))
    assert len(inbox.take(10, 0) or []) == 10  # within the budget: still applied
    clock.t += 3.0
    assert inbox.take(10, 0) is None and inbox.counts().dropped_at_close == 20


def test_the_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    b = TokenBucket(10.0, 3, now=0.0)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.take(0.1) and not b.take(0.1)
    assert sum(b.take(100.0) for _ in range(10)) == 3


# ---- retention


def test_history_older_than_retain_days_is_deleted_and_the_current_version_row_stays(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite"
    clock = Clock()
    r = Record(db, TOPICS, clock=clock, limits=ConsoleLimits(retain_days=30))
    try:
        feed(r, (TOPICS.state("pi-1"), state("pi-1", 1)), (TOPICS.events("pi-1"), event("pi-1", "failed", 2, reason="x")))
        clock.t += 31 * 86400
        feed(r, (TOPICS.events("pi-1"), event("pi-1", "activated", 1)))
        assert r.prune(force=True) > 0
        assert [k for _, k, _, _ in r.history("pi-1").timeline] == ["event"]
        assert rows(db, "SELECT model, version FROM versions") == [("fraud", 1)]  # still says what runs
        assert rows(db, "SELECT COUNT(*) FROM failures") == [(0,)]
    finally:
        r.close()


def test_the_record_is_pruned_oldest_first_under_max_db_mb(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite"
    r = Record(db, TOPICS, clock=Clock(), limits=ConsoleLimits(max_db_mb=0.5))
    try:
        reason = "r" * 290
        for batch in range(10):
            r.apply([Incoming(TOPICS.events(f"pi-{i % 7}"), p := event(f"pi-{i % 7}", "failed", batch * 1000 + i, reason=reason),
                              len(p), r.clock()) for i in range(300)])
        with sqlite3.connect(db) as conn:
            assert used_bytes(conn) > 0.5 * MIB
        assert r.prune(force=True) > 0
        with sqlite3.connect(db) as conn:
            assert used_bytes(conn) <= 0.5 * MIB
        newest = r.history("pi-6", limit=1).timeline[0][2]
        assert "v9299" in newest or "v9293" in newest  # the newest rows stay
    finally:
        r.close()


# ---- one message never stops the writer


NASTY = [
    b'{"event": "failed", "model": "fraud", "version": ' + str(HUGE).encode() + b', "percent": ' + str(HUGE).encode() + b"}",
    b'{"event": "rolled_back", "model": "fraud", "from_version": ' + str(HUGE).encode() + b', "previous": 1e999}',
    b'{"event": "failed", "model": "fraud", "version": 2, "percent": NaN, "reason": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b"\xff\xfe not utf-8",
    b"[1, 2, 3]",
    b'{"event": {"a": 1}, "model": 7, "version": "2"}',
    b'{"event": "failed", "model": ["x"], "version": true, "reason": {"deep": ' + b"[" * 900 + b"]" * 900 + b"}}",
]
NASTY_STATES = [
    b'{"models": {"fraud": {"active": 1, "drift": {"score": ' + str(HUGE).encode() + b', "threshold": NaN}}}}',
    b'{"models": {"fraud": {"active": ' + str(HUGE).encode() + b', "failed": {"3": ' + str(HUGE).encode() + b"}}}}",
    b'{"models": {"fraud": {"active": 1}}, "update": {"percent": ' + str(HUGE).encode() + b', "version": Infinity}}',
    b'{"health": {"cpu_temp_c": ' + str(HUGE).encode() + b', "throttled": "yes", "store_free_bytes": -1}, "desired": [1]}',
    b'{"models": {"fraud": {"active": 1, "error": ' + b"[" * 900 + b"]" * 900 + b"}}}",
]


def test_no_message_of_any_content_stops_the_writer(tmp_path: Path) -> None:
    r = Record(tmp_path / "c.sqlite", TOPICS).start()
    try:
        for payload in NASTY:
            r.submit(TOPICS.events("pi-1"), payload)
        for payload in NASTY_STATES:
            r.submit(TOPICS.state("pi-2"), payload)
        r.submit(TOPICS.events("pi-1"), event("pi-1", "activated", 3))
        r.submit(TOPICS.state("pi-2"), state("pi-2", 4))
        wait_until(lambda: any("activated fraud v3" in s for _, _, s, _ in r.history("pi-1").timeline), "the normal event recorded")
        wait_until(lambda: (d := r.device("pi-2")) is not None and d.digest is not None and d.digest.versions() == {"fraud": 4},
                   "the normal state applied")
        assert r.unreadable == 0 and r.lost == 0  # every one was digested as malformed or applied, none raised
    finally:
        r.close()


def test_a_message_whose_recording_raises_is_recorded_as_malformed_and_the_batch_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = Record(tmp_path / "c.sqlite", TOPICS, clock=Clock())
    real = record_module.describe_change

    def explode(prev: object, new: object) -> str:
        raise OverflowError("int too large to convert to float")

    try:
        monkeypatch.setattr(record_module, "describe_change", explode)
        feed(r, (TOPICS.state("pi-1"), state("pi-1", 1)))
        monkeypatch.setattr(record_module, "describe_change", real)
        feed(r, (TOPICS.events("pi-1"), event("pi-1", "activated", 2)))
        kinds = [(k, s) for _, k, s, _ in r.history("pi-1").timeline]
        assert kinds[0][0] == "event" and kinds[1] == ("malformed", "the console could not record this message (OverflowError)")
        assert r.unreadable == 1
    finally:
        r.close()


def test_a_rolled_back_date_style_version_is_in_the_failures(tmp_path: Path) -> None:
    r = Record(tmp_path / "c.sqlite", TOPICS, clock=Clock())
    try:
        rolled = event("pi-1", "rolled_back", 20241201, from_version=20250101, reason="self-test failed")
        assert digest_event(rolled).from_version == 20250101 and "from_version 20250101" in digest_event(rolled).summary()
        feed(r, (TOPICS.events("pi-1"), rolled))
        assert [(m, v, src) for m, v, src, _, _ in r.history("pi-1").failures] == [("fraud", 20250101, "event.rolled_back")]
        assert [d for d, *_ in r.release("fraud", 20250101).failures] == ["pi-1"]
        # The device page's failures table shows it ("2.02501e+07" once the version went through :g).
        failures = render(r, "/device/pi-1").main.split("<h2>Failures</h2>", 1)[1]
        assert "fraud v20250101" in failures and "e+07" not in failures
    finally:
        r.close()


# ---- per-device memory


def worst_state() -> bytes:
    """A state just under the size limit, as big a digest as a device can make of it."""
    reason = "r" * 400
    models: dict[str, object] = {}
    for i in range(40):
        name = f"m{'x' * 200}{i}"
        if i % 2:
            models[name] = {"error": "e" * 400}
        else:
            models[name] = {"active": i, "failed": {str(v): reason for v in range(8)},
                            "drift": {"score": 1.0, "worst_feature": "f" * 400, "threshold": 2.0}}
    doc = {"models": models, "update": {"model": "m" * 400, "version": 1, "phase": "p" * 400}, "runtime": "r" * 400,
           "last_error": {"model": "m", "version": 1, "reason": reason}, "health": {"throttle_flags": "0x" + "f" * 400},
           "desired": {"seq": 1, "status": "rejected", "reason": reason * 10}, "junk": ""}
    doc["junk"] = "j" * (MAX_STATE_BYTES - len(json.dumps(doc)) - 10)
    return json.dumps(doc).encode()


def test_what_the_console_keeps_of_a_device_is_bounded_whatever_its_state(tmp_path: Path) -> None:
    payload = worst_state()
    assert len(payload) > 100_000
    d = digest_state(payload)
    assert not d.problem
    assert len(d.to_json()) <= MAX_DIGEST_CHARS
    r = Record(tmp_path / "c.sqlite", TOPICS, clock=Clock())
    try:
        feed(r, (TOPICS.state("pi-1"), payload))
        now = r.device("pi-1")
        assert now is not None and now.state is not None and len(json.dumps(now.state)) <= MAX_DIGEST_CHARS
        stored = rows(tmp_path / "c.sqlite", "SELECT length(digest) + length(state) FROM devices")[0][0]
        assert isinstance(stored, int) and stored <= 2 * MAX_DIGEST_CHARS
    finally:
        r.close()
