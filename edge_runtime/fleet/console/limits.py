"""What bounds the console: its limits, the per-device token bucket, and the record's retention.

One chatty device writing only its own topics must not fill the operator's disk or memory,
nor push the rest of the fleet out of the record. So: a device's events pass a token bucket
(the excess is dropped and counted for that device); its state and online flag are
"latest wins" (a newer one replaces the one still queued, and one over the rate waits for a
token instead of being lost); the queue between the MQTT thread and the writer is bounded
in messages and bytes (a message over it is dropped and counted); and the record is pruned
by age (``--retain-days``) and by size (``--max-db-mb``, oldest rows first).

:func:`prune` is the only I/O here (SQL on the writer's connection); the rest is pure.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

MIB = 1024 * 1024
# Over the size limit, the oldest quarter of each of these goes, pass after pass.
PRUNED_TABLES = ("timeline", "drift", "versions", "failures")
MAX_PRUNE_PASSES = 40


@dataclass(frozen=True)
class ConsoleLimits:
    """Every bound of the console (``fleet console`` options set the first ones)."""

    retain_days: float = 30.0
    max_db_mb: float = 256.0
    device_messages_per_s: float = 5.0  # refill of each device's token bucket
    device_message_burst: int = 120  # its size: a rollout's burst of events passes whole
    max_queue_messages: int = 100_000  # a 30,000-device fleet's retained messages fit at start-up
    max_queue_bytes: int = 64 * MIB
    prune_interval_s: float = 60.0  # retention by age; the size is checked after every batch
    close_budget_s: float = 5.0  # at SIGTERM, what is still queued after this is dropped
    max_connections: int = 64  # HTTP connections served at once; more are refused
    read_timeout_s: float = 5.0  # an HTTP client that sends nothing for this long is closed


class TokenBucket:
    """``rate_per_s`` tokens a second up to ``burst``; :meth:`take` spends one if there is one."""

    __slots__ = ("burst", "last", "rate_per_s", "tokens")

    def __init__(self, rate_per_s: float, burst: int, now: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last = now

    def _refill(self, now: float) -> None:
        if now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate_per_s)
        self.last = max(self.last, now)

    def take(self, now: float) -> bool:
        """Spend a token (True), or there is none now (False)."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def ready(self, now: float) -> bool:
        """A token is there (nothing spent)."""
        self._refill(now)
        return self.tokens >= 1.0


def used_bytes(db: sqlite3.Connection) -> int:
    """The bytes of the database's pages in use (free pages are reused before the file grows)."""
    page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
    pages = int(db.execute("PRAGMA page_count").fetchone()[0])
    free = int(db.execute("PRAGMA freelist_count").fetchone()[0])
    return (pages - free) * page_size


def prune_by_age(db: sqlite3.Connection, before: float) -> int:
    """Delete history older than ``before`` (console clock); the newest version row of each
    device and model stays, so "versions over time" still says what runs. Returns rows deleted."""
    n = 0
    n += db.execute("DELETE FROM timeline WHERE time < ?", (before,)).rowcount
    n += db.execute("DELETE FROM drift WHERE time < ?", (before,)).rowcount
    n += db.execute(
        "DELETE FROM versions WHERE time < ? AND id NOT IN (SELECT MAX(id) FROM versions GROUP BY device, model)", (before,)
    ).rowcount
    n += db.execute("DELETE FROM failures WHERE time < ?", (before,)).rowcount
    return n


def prune_by_size(db: sqlite3.Connection, max_bytes: int) -> int:
    """Delete the oldest quarter of every history table, again, until the pages in use fit
    ``max_bytes`` (the newest rows of each table stay; so does the newest version row of each
    device and model). Returns rows deleted."""
    n = 0
    for _ in range(MAX_PRUNE_PASSES):
        if used_bytes(db) <= max_bytes:
            break
        deleted = sum(_delete_oldest_quarter(db, table) for table in PRUNED_TABLES)
        if deleted == 0:
            break
        n += deleted
    return n


def _delete_oldest_quarter(db: sqlite3.Connection, table: str) -> int:
    keep = " AND rowid NOT IN (SELECT MAX(rowid) FROM versions GROUP BY device, model)" if table == "versions" else ""
    count = int(db.execute(f"SELECT COUNT(*) FROM {table} WHERE 1{keep}").fetchone()[0])  # noqa: S608 - constant names
    if count == 0:
        return 0
    row = db.execute(
        f"SELECT time, rowid FROM {table} WHERE 1{keep} ORDER BY time, rowid LIMIT 1 OFFSET ?", (max(0, count // 4 - 1),)  # noqa: S608
    ).fetchone()
    return int(db.execute(
        f"DELETE FROM {table} WHERE (time < ? OR (time = ? AND rowid <= ?)){keep}", (row[0], row[0], row[1])  # noqa: S608
    ).rowcount)


__all__ = ["MIB", "ConsoleLimits", "TokenBucket", "prune_by_age", "prune_by_size", "used_bytes"]
