"""When the gRPC transport stops waiting for a client: pure decisions on a connection's clocks.

The HTTP server closes connections that send nothing, stop half-way through a request's
head or trickle its body (:mod:`edge_runtime.serving.h1`). An HTTP/2 connection
(:mod:`edge_runtime.serving.h2grpc`) is held open the same way by a client that connects and
sends nothing, stops inside a frame or a header block, never finishes a request's message, or
keeps a connection with no call open. Each of these holds a file descriptor, and an unfinished
message holds its buffer, so each has a deadline:

* the client preface and every frame header, header block and non-DATA frame must be complete
  within ``header_s`` (``[server] request_header_timeout_s``) of the connection's opening or
  of their first byte;
* a request's message must be complete within ``body_s`` (``[server] request_body_timeout_s``)
  of its HEADERS (a DATA frame arriving slowly is covered by this clock, not the header one);
* a connection with no call open is closed (GOAWAY, no error) after ``idle_s``
  (``[server] grpc_idle_timeout_s``); gRPC clients reconnect on their next call. A connection
  in the middle of a frame or header block is judged by the header clock alone (it says why it
  is closed); the idle clock keeps running and applies again once the frame is complete.

:func:`check` takes the clocks and returns what is due and when to look again, so the
connection runs one timer, re-armed only when it fires, and its hot path only records times.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Verdict(Enum):
    """What a connection's deadlines call for now."""

    KEEP = "keep"
    NO_PREFACE = "no preface"  # connected, never sent the client preface: closed without an answer
    HALF_HEADER = "half header"  # a frame header, header block or control frame left incomplete
    STALLED_BODY = "stalled body"  # a request's message not complete in time
    IDLE = "idle"  # no call open for idle_s


@dataclass(frozen=True)
class Timeouts:
    """The limits, in seconds (see the module docstring)."""

    header_s: float = 10.0
    body_s: float = 30.0
    idle_s: float = 300.0


DEFAULT_TIMEOUTS = Timeouts()


@dataclass(frozen=True)
class Clocks:
    """A connection's state as the deadlines see it (times from the event loop's clock)."""

    opened: float
    preface: bool  # the client preface has arrived
    partial_since: float | None  # an incomplete frame header, header block or control frame started then
    oldest_body_since: float | None  # HEADERS time of the oldest request whose message is incomplete
    idle_since: float | None  # no call open since then (None: a call is open)


def check(now: float, c: Clocks, t: Timeouts) -> tuple[Verdict, float]:
    """What is due at ``now``, and when to check again (meaningful for KEEP only)."""
    if not c.preface:
        due = c.opened + t.header_s
        return (Verdict.NO_PREFACE, due) if now >= due else (Verdict.KEEP, due)
    deadlines: list[float] = []
    if c.partial_since is not None:
        due = c.partial_since + t.header_s
        if now >= due:
            return Verdict.HALF_HEADER, due
        deadlines.append(due)
    if c.oldest_body_since is not None:
        due = c.oldest_body_since + t.body_s
        if now >= due:
            return Verdict.STALLED_BODY, due
        deadlines.append(due)
    if c.idle_since is not None and c.partial_since is None:  # mid-frame: the header clock decides
        due = c.idle_since + t.idle_s
        if now >= due:
            return Verdict.IDLE, due
        deadlines.append(due)
    # A clock that starts after this check (a new partial frame or request, the last call
    # ending) runs out no sooner than now + the shortest limit: looking again by then, and at
    # every deadline above, finds each one when it is due.
    deadlines.append(now + min(t.header_s, t.body_s, t.idle_s))
    return Verdict.KEEP, min(deadlines)
