"""The console's SQLite schema and its migrations.

``schema_version`` holds one row, the number of migrations applied. Each migration runs in
its own transaction together with the bump of that number, so a crash leaves the database
at one version or the next, never in between. A database written by a newer console (a
version this code does not know) is refused rather than written to.
"""

from __future__ import annotations

import sqlite3

from edge_runtime.exceptions import UsageError

MIGRATIONS: tuple[str, ...] = (
    # 1: devices now, their timeline, versions over time, failures, rollout steps, releases.
    """
    CREATE TABLE devices (
        device TEXT PRIMARY KEY,
        online INTEGER,            -- 1, 0, NULL (never said)
        last_seen REAL,            -- console clock, Unix seconds: any message from the device
        state_time REAL,           -- when the current state arrived
        digest TEXT,               -- StateDigest JSON (problem set: malformed)
        state TEXT                 -- the raw state document when it was well formed
    );
    CREATE TABLE timeline (
        id INTEGER PRIMARY KEY,
        device TEXT NOT NULL,
        time REAL NOT NULL,
        kind TEXT NOT NULL,        -- state, event, online, malformed
        summary TEXT NOT NULL,
        raw TEXT                   -- the start of a malformed payload
    );
    CREATE INDEX timeline_device ON timeline (device, id);
    CREATE TABLE versions (
        id INTEGER PRIMARY KEY,
        device TEXT NOT NULL,
        model TEXT NOT NULL,
        version INTEGER,           -- NULL: the factory bundle
        time REAL NOT NULL         -- from then on the device ran it
    );
    CREATE INDEX versions_device ON versions (device, model, id);
    CREATE TABLE failures (
        device TEXT NOT NULL,
        model TEXT NOT NULL,
        version INTEGER NOT NULL,
        source TEXT NOT NULL,      -- state.failed, state.last_error, event.failed, event.rejected, event.rolled_back
        reason TEXT NOT NULL,
        time REAL NOT NULL,        -- first seen
        PRIMARY KEY (device, model, version, source)
    );
    CREATE INDEX failures_release ON failures (model, version);
    CREATE TABLE rollout_steps (
        id INTEGER PRIMARY KEY,
        scope TEXT NOT NULL,       -- fleet, or device:<id> for an override
        seq INTEGER NOT NULL,
        model TEXT NOT NULL,
        version INTEGER NOT NULL,
        percent INTEGER NOT NULL,
        salt TEXT NOT NULL,
        verified INTEGER,          -- 1/0 against --root, NULL without one
        time REAL NOT NULL
    );
    CREATE INDEX rollout_steps_release ON rollout_steps (model, version, id);
    CREATE TABLE desired (
        scope TEXT PRIMARY KEY,
        seq INTEGER,
        digest TEXT NOT NULL,      -- DesiredDigest JSON
        verified INTEGER,
        time REAL NOT NULL
    );
    CREATE TABLE releases (
        model TEXT NOT NULL,
        version INTEGER NOT NULL,
        first_seen REAL NOT NULL,  -- its manifest appeared on the broker
        PRIMARY KEY (model, version)
    );
    """,
    # 2: drift figures over time (the field-monitoring state fields came after the first schema).
    """
    CREATE TABLE drift (
        id INTEGER PRIMARY KEY,
        device TEXT NOT NULL,
        model TEXT NOT NULL,
        time REAL NOT NULL,
        score REAL NOT NULL,
        alert INTEGER NOT NULL
    );
    CREATE INDEX drift_device ON drift (device, model, id);
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    """The number of migrations applied (0 for an empty database)."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'").fetchone() is None:
        return 0
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    return int(row[0]) if row else 0


def migrate(conn: sqlite3.Connection, upto: int = SCHEMA_VERSION) -> int:
    """Apply the missing migrations up to ``upto``; returns the version now in force.

    The connection must be in autocommit mode (``isolation_level=None``): each migration is
    its own explicit transaction.
    """
    current = schema_version(conn)
    if current > SCHEMA_VERSION:
        raise UsageError(
            f"the console database has schema version {current}; this edge-runtime knows up to {SCHEMA_VERSION} "
            "(written by a newer console: upgrade edge-runtime or use another --db)"
        )
    for number in range(current + 1, upto + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[number - 1].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return max(current, upto)


__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate", "schema_version"]
