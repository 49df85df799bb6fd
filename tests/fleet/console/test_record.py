"""The console's SQLite record without a broker: migrations, restarts, state changes, rollout
steps, failures, drift, and devices that send malformed or hostile documents."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_runtime.exceptions import UsageError
from edge_runtime.fleet.console.digest import MAX_STATE_BYTES
from edge_runtime.fleet.console.record import Incoming, Record
from edge_runtime.fleet.console.schema import SCHEMA_VERSION, migrate, schema_version
from edge_runtime.fleet.console.server import ConsoleServer, Rendered
from fleet.console.helpers import TOPICS, desired, event, state


class Clock:
    """A console clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "console.sqlite"


@pytest.fixture
def record(db: Path) -> Iterator[Record]:
    r = Record(db, TOPICS, clock=Clock())
    yield r
    r.close()


def feed(record: Record, *messages: tuple[str, bytes]) -> None:
    """Apply messages as the writer thread would, one transaction each."""
    for topic, payload in messages:
        record.apply([Incoming(topic, payload, len(payload), record.clock())])


def rows(db: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


def test_a_new_database_is_at_the_latest_schema_in_wal_mode(record: Record, db: Path) -> None:
    assert rows(db, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    assert rows(db, "PRAGMA journal_mode") == [("wal",)]


def test_a_version_1_database_is_migrated_and_keeps_its_history(db: Path) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    assert migrate(conn, upto=1) == 1
    conn.execute("INSERT INTO versions (device, model, version, time) VALUES ('pi-1', 'fraud', 1, 5.0)")
    conn.close()
    r = Record(db, TOPICS)
    r.close()
    conn = sqlite3.connect(db)
    assert schema_version(conn) == SCHEMA_VERSION == 2
    assert conn.execute("SELECT device, version FROM versions").fetchall() == [("pi-1", 1)]
    assert conn.execute("SELECT COUNT(*) FROM drift").fetchone() == (0,)
    conn.close()


def test_a_database_from_a_newer_console_is_refused_and_left_alone(db: Path) -> None:
    Record(db, TOPICS).close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(UsageError, match="schema version 99"):
        Record(db, TOPICS)
    assert rows(db, "SELECT version FROM schema_version") == [(99,)]


def test_versions_over_time_and_only_real_changes_in_the_timeline(record: Record, db: Path) -> None:
    feed(record, (TOPICS.state("pi-1"), state("pi-1", None)))
    feed(record, (TOPICS.state("pi-1"), state("pi-1", None, time="2026-12-03T12:00:05Z")))  # republished: same state
    feed(record, (TOPICS.state("pi-1"), state("pi-1", None, update={"model": "fraud", "version": 2, "phase": "downloading", "percent": 40})))
    feed(record, (TOPICS.state("pi-1"), state("pi-1", 2)))
    assert [(m, v) for m, v, _ in record.history("pi-1").versions] == [("fraud", None), ("fraud", 2)]
    summaries = [s for _, kind, s, _ in record.history("pi-1").timeline if kind == "state"]
    assert summaries == ["fraud factory → v2; no update in progress", "update fraud v2 downloading 40%", "fraud factory"]


def test_history_survives_a_restart(db: Path) -> None:
    r = Record(db, TOPICS, clock=Clock())
    feed(r, (TOPICS.state("pi-1"), state("pi-1", 1)), (TOPICS.desired, desired(5, 10)), (TOPICS.online("pi-1"), b"true"))
    feed(r, (TOPICS.events("pi-1"), event("pi-1", "failed", 2, reason="self-test: output differs from golden")))
    feed(r, (TOPICS.state("pi-1"), state("pi-1", 1, failed={"2": "self-test: output differs from golden"})))
    r.close()
    again = Record(db, TOPICS)
    try:
        d = again.device("pi-1")
        assert d is not None and d.online is True and d.digest is not None
        assert d.digest.models[0].failed == {"2": "self-test: output differs from golden"}
        now = again.now()
        assert now.desired is not None and now.desired.seq == 5
        assert [(s["seq"], s["percent"]) for s in now.steps] == [(5, 10)]
        kinds = [kind for _, kind, _, _ in again.history("pi-1").timeline]
        assert kinds.count("event") == 1 and kinds.count("online") == 1 and kinds.count("state") == 2
        sources = {(m, v, src) for m, v, src, _, _ in again.history("pi-1").failures}
        assert sources == {("fraud", 2, "event.failed"), ("fraud", 2, "state.failed")}
    finally:
        again.close()


def test_rollout_steps_are_recorded_once_per_change(record: Record) -> None:
    feed(record, (TOPICS.desired, desired(10, 10)), (TOPICS.desired, desired(10, 10)))  # retained again on reconnect
    feed(record, (TOPICS.desired, desired(11, 50)), (TOPICS.desired, desired(12, 100)), (TOPICS.desired, desired(13, 100)))
    steps = record.release("fraud", 2).steps
    assert [(seq, pct) for _, seq, pct, *_ in steps] == [(10, 10), (11, 50), (12, 100)]


def test_drift_is_recorded_when_it_changes_and_is_na_when_absent(record: Record) -> None:
    drift = {"score": 0.12, "worst_feature": "f3", "alert": False, "threshold": 0.3, "rows": 500, "version": 1}
    feed(record, (TOPICS.state("pi-1"), state("pi-1", 1, drift=drift)))
    feed(record, (TOPICS.state("pi-1"), state("pi-1", 1, drift={**drift, "score": 0.41, "alert": True})))
    feed(record, (TOPICS.state("pi-2"), state("pi-2", 1)))
    feed(record, (TOPICS.state("pi-3"), state("pi-3", 1, drift={"score": "high"})))  # wrong type: n/a, not an error
    assert [(s, a) for _, _, s, a in record.history("pi-1").drift] == [(0.12, 0), (0.41, 1)]
    page = render(record, "/").main
    assert "0.41 (fraud)" in page and page.count(">n/a<") == 2


MALFORMED = [
    (b"{not json", "state is not JSON"),
    (b"[1, 2]", "state is list, not an object"),
    (json.dumps({"models": "fraud"}).encode(), "'models' is str, not an object"),
    (json.dumps({"models": {"fraud": {"active": 1, "failed": ["2"]}}}).encode(), "'failed' must map version numbers"),
    (b"{" + b'"a": "' + b"x" * MAX_STATE_BYTES + b'"}', "over the 262144-byte limit"),
    (b'{"models": ' * 20_000, "not JSON"),  # nested deeper than the parser's recursion limit
]


@pytest.mark.parametrize(("payload", "why"), MALFORMED, ids=["bad-json", "list", "models-str", "failed-list", "huge", "deep"])
def test_a_malformed_state_is_recorded_as_such_and_the_pages_render(record: Record, payload: bytes, why: str) -> None:
    feed(record, (TOPICS.state("pi-1"), state("pi-1", 1)), (TOPICS.state("pi-2"), state("pi-2", 3)))
    feed(record, (TOPICS.state("pi-1"), payload))
    d = record.device("pi-1")
    assert d is not None and d.status == "malformed" and d.digest is not None and why in d.digest.problem
    hist = record.history("pi-1")
    assert hist.timeline[0][1] == "malformed" and why in hist.timeline[0][2]
    assert len(hist.timeline[0][3] or "") <= 2000, "only the start of the payload is kept"
    assert [v for _, v, _ in hist.versions] == [1], "a malformed state changes no version history"
    overview = render(record, "/")
    assert overview.status == 200 and "malformed" in overview.main and "pi-2" in overview.main
    assert render(record, "/device/pi-1").status == 200
    feed(record, (TOPICS.state("pi-1"), state("pi-1", 1)))
    assert record.device("pi-1").status == "ok"  # type: ignore[union-attr]
    assert record.history("pi-1").timeline[0][2].startswith("well-formed again")


def test_malformed_events_online_flags_and_desired_states_are_kept_and_shown(record: Record) -> None:
    feed(
        record,
        (TOPICS.events("pi-1"), b"\xff\xfe garbage"),
        (TOPICS.events("pi-1"), json.dumps({"event": "exploded"}).encode()),
        (TOPICS.events("pi-1"), json.dumps({"event": "failed", "model": 7, "version": "2", "reason": ["x"]}).encode()),
        (TOPICS.online("pi-1"), b"maybe"),
        (TOPICS.desired, b'{"desired": "{\\"seq\\": -1}"}'),
    )
    kinds = [(kind, summary) for _, kind, summary, _ in record.history("pi-1").timeline]
    assert ("malformed", "malformed event: event is not JSON") in kinds
    assert ("malformed", "malformed event: unknown event kind \"exploded\"") in kinds
    assert any(kind == "event" and summary.startswith("failed") for kind, summary in kinds)
    assert record.now().desired.problem  # type: ignore[union-attr]
    assert "unreadable desired state" in render(record, "/").main
    assert render(record, "/device/pi-1").status == 200


def test_device_strings_are_escaped_on_every_page(record: Record) -> None:
    evil = "<script>alert(1)</script>"
    img = '"><img src=x onerror=alert(2)>'
    feed(
        record,
        (TOPICS.desired, desired(3, 100, model="fraud")),
        (TOPICS.state("pi-1"), state("pi-1", 1, model=evil, failed={"2": img},
                                     last_error={"model": evil, "version": 2, "reason": img},
                                     drift={"score": 0.5, "worst_feature": evil, "alert": True, "threshold": None})),
        (TOPICS.events("pi-1"), event("pi-1", "failed", 2, reason=img)),
        (TOPICS.state("pi-2"), state("pi-2", 1, failed={"2": img})),
    )
    for path in ("/", "/device/pi-1", "/release/fraud/2", f"/?q={evil}", "/release/%3Cscript%3E/2"):
        main = render(record, path).main
        assert "<script" not in main and "<img" not in main, path
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in render(record, "/device/pi-1").main
    assert "&quot;&gt;&lt;img src=x onerror=alert(2)&gt;" in render(record, "/release/fraud/2").main


def test_release_page_lists_who_runs_it_and_who_failed_and_why(record: Record) -> None:
    feed(
        record,
        (TOPICS.desired, desired(1, 100)),
        (TOPICS.state("pi-1"), state("pi-1", 2)),
        (TOPICS.state("pi-2"), state("pi-2", 1, failed={"2": "self-test: output differs from golden"})),
        (TOPICS.state("pi-3"), state("pi-3", 1, last_error={"model": "fraud", "version": 2, "reason": "incompatible: needs x86_64"})),
    )
    main = render(record, "/release/fraud/2").main
    assert '<a href="/device/pi-1">pi-1</a>' in main.split("Running it now")[1].split("</section>")[0]
    failures = main.split('id="failures"')[1]
    assert "pi-2" in failures and "self-test: output differs from golden" in failures
    assert "pi-3" in failures and "incompatible: needs x86_64" in failures
    assert "1 updated" in main and "1 failed" in main and "1 rejected" in main


def render(record: Record, path: str) -> Rendered:
    """The page at ``path`` as the server renders it (no HTTP)."""
    server = ConsoleServer(record, "shop-7", port=0, max_failures=10)
    try:
        return server.render(path)
    finally:
        server.stop()
