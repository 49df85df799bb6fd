"""Property tests: any payload a device can send, however hostile (huge ints, NaN and Infinity,
deep nesting, invalid UTF-8, wrong types in every field, non-object JSON), becomes a digest —
malformed or applied — and never an exception; the digest round-trips through the record's
JSON, and the pages that show it render."""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime.fleet.console import pages
from edge_runtime.fleet.console.changes import describe_change
from edge_runtime.fleet.console.digest import (
    MAX_DIGEST_CHARS,
    StateDigest,
    digest_desired,
    digest_event,
    digest_state,
)
from edge_runtime.fleet.console.history import DeviceHistory
from edge_runtime.fleet.console.overview import compute, device_table
from edge_runtime.fleet.console.view import DeviceNow, FleetNow
from edge_runtime.updates.protocol import EVENTS

EXAMPLES = 3000 if os.environ.get("EDGE_TEST_LONG") == "1" else 150  # make test-long: many more
HUGE = st.integers(min_value=-(10**400), max_value=10**400)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), HUGE, st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.sampled_from([2**63, -1, 20250101, "0x50005", "applied", "rejected", *EVENTS]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                      max_leaves=12)
HEALTH_KEYS = ("cpu_temp_c", "throttled", "under_voltage", "throttle_flags", "store_free_bytes", "mem_available_bytes",
               "mem_total_bytes")


@st.composite
def state_docs(draw: st.DrawFn) -> Any:
    """A state-shaped document with any value in any field (or anything at all)."""
    model = st.fixed_dictionaries({}, optional={
        "active": VALUES, "failed": st.dictionaries(st.sampled_from(["1", "2", "20250101", "x"]), VALUES) | VALUES,
        "drift": st.fixed_dictionaries({}, optional={k: VALUES for k in ("score", "alert", "worst_feature", "threshold")}) | VALUES,
        "error": VALUES,
    })
    doc = st.fixed_dictionaries({}, optional={
        "models": st.dictionaries(st.text(max_size=10), model | VALUES, max_size=3) | VALUES,
        "update": st.fixed_dictionaries({}, optional={k: VALUES for k in ("model", "version", "phase", "percent")}) | VALUES,
        "last_error": st.fixed_dictionaries({}, optional={k: VALUES for k in ("model", "version", "reason")}) | VALUES,
        "desired_seq": st.fixed_dictionaries({}, optional={"desired": VALUES}) | VALUES,
        "health": st.fixed_dictionaries({}, optional={k: VALUES for k in HEALTH_KEYS}) | VALUES,
        "desired": st.fixed_dictionaries({}, optional={k: VALUES for k in ("seq", "status", "reason", "sha256")}) | VALUES,
        "runtime": VALUES, "time": VALUES,
    })
    return draw(doc | VALUES)


def encode(doc: Any, nesting: int) -> bytes:
    """JSON as a device might send it: NaN and Infinity allowed, sometimes wrapped very deep."""
    text = json.dumps(doc, allow_nan=True)
    return ("[" * nesting + text + "]" * nesting).encode()


PAYLOADS = st.one_of(
    st.builds(encode, state_docs(), st.sampled_from([0, 0, 0, 1, 900, 5000])),
    st.binary(max_size=64),
    st.just(b'{"models": {"a": {"active": 1}}, "x": ' + b"[" * 3000 + b"]" * 3000 + b"}"),
)


@st.composite
def event_docs(draw: st.DrawFn) -> bytes:
    keys = ("event", "model", "version", "reason", "percent", "previous", "from_version", "root_version", "dropped_before", "time")
    doc = draw(st.fixed_dictionaries({}, optional={k: VALUES for k in keys}) | VALUES)
    return encode(doc, draw(st.sampled_from([0, 0, 1, 900])))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(PAYLOADS, PAYLOADS)
def test_any_state_is_digested_recorded_and_shown(payload: bytes, before: bytes) -> None:
    d = digest_state(payload)
    prev = digest_state(before)
    assert "could not be read" not in d.problem  # the checks handled it: the last-resort net did not have to
    assert StateDigest.from_json(d.to_json()) == d
    assert len(d.to_json()) <= MAX_DIGEST_CHARS
    d.change_key()
    describe_change(prev, d)
    describe_change(None, d)
    now = DeviceNow("pi-1", True, 1.0, 1.0, d, d.tally_state())
    other = DeviceNow("pi-2", None, None, None, prev, prev.tally_state())
    fleet = FleetNow([now, other], None, None, [{"scope": "fleet", "seq": 1, "model": "a", "version": 1, "percent": 50,
                                                 "salt": "s", "verified": None, "time": 1.0}])
    ov = compute(fleet, 10.0)
    ov.as_json()
    for key in ("health", "drift", "error", "models"):
        device_table(fleet.devices, "", key, False, 0)
    pages.overview_main(ov, fleet.devices, {"sort": "health"}, 2.0)
    pages.device_main(now, DeviceHistory([], [], [], []), 2.0)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_docs() | st.binary(max_size=64))
def test_any_event_is_digested(payload: bytes) -> None:
    e = digest_event(payload)
    assert "could not be read" not in e.problem
    e.summary()
    assert e.problem or e.kind in EVENTS
    assert e.from_version is None or 0 <= e.from_version < 2**63


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(VALUES, st.sampled_from([0, 1, 900]))
def test_any_desired_message_is_digested(doc: Any, nesting: int) -> None:
    for payload in (encode(doc, nesting), encode({"desired": json.dumps(doc, allow_nan=True)}, 0)):
        dd = digest_desired(payload)
        assert "could not be read" not in dd.problem
        assert dd.problem or (dd.seq is not None and dd.seq > 0)


def test_a_400_digit_number_in_every_field_is_malformed_or_ignored_never_an_error() -> None:
    n = 10**400
    state = {"models": {"fraud": {"active": n, "failed": {"2": n}, "drift": {"score": n, "threshold": n}}},
             "update": {"model": "fraud", "version": n, "percent": n}, "health": dict.fromkeys(HEALTH_KEYS, n),
             "desired": {"seq": n, "status": "rejected"}, "desired_seq": {"desired": n}}
    d = digest_state(json.dumps(state).encode())
    assert not d.problem and d.models[0].active is None and d.models[0].drift is None
    assert d.health is not None and d.health.cpu_temp_c is None and d.health.store_free_bytes is None
    e = digest_event(json.dumps({"event": "rolled_back", "model": "fraud", "version": n, "from_version": n, "percent": n}).encode())
    assert not e.problem and e.version is None and e.from_version is None and "percent" not in e.summary()
