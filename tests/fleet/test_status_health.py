"""``fleet status`` from hostile states: any retained state lists (a bad one as BAD STATE), a
400-digit number in any field never ends the command, and the devices' health (temperature,
free space, memory, under-voltage and throttling) and a rejected desired state are shown."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime.fleet.health import health_of, size_text
from edge_runtime.fleet.status import DeviceStates, FleetView, format_table, status_rows, summary_lines
from edge_runtime.updates.protocol import Topics

TOPICS = Topics("edge", "shop-7")
HUGE = 10**400
EXAMPLES = 3000 if os.environ.get("EDGE_TEST_LONG") == "1" else 200  # make test-long: many more
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20), st.sampled_from([HUGE, "0x50005", "rejected", 2**64]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                      max_leaves=10)
HEALTH_KEYS = ("cpu_temp_c", "throttled", "under_voltage", "throttle_flags", "store_free_bytes", "mem_available_bytes",
               "mem_total_bytes")
STATES = st.fixed_dictionaries({}, optional={
    "models": st.dictionaries(st.sampled_from(["fraud", "ocr"]), st.fixed_dictionaries({}, optional={
        "active": VALUES, "failed": st.dictionaries(st.sampled_from(["1", "2"]), VALUES) | VALUES,
        "drift": st.fixed_dictionaries({}, optional={"score": VALUES, "alert": VALUES, "worst_feature": VALUES}) | VALUES,
    }) | VALUES, max_size=2) | VALUES,
    "update": st.fixed_dictionaries({}, optional={k: VALUES for k in ("model", "version", "phase", "percent")}) | VALUES,
    "last_error": st.fixed_dictionaries({}, optional={k: VALUES for k in ("model", "version", "reason")}) | VALUES,
    "health": st.fixed_dictionaries({}, optional={k: VALUES for k in HEALTH_KEYS}) | VALUES,
    "desired": st.fixed_dictionaries({}, optional={k: VALUES for k in ("seq", "status", "reason")}) | VALUES,
}) | VALUES


def view(*states: tuple[str, bytes], desired: dict[str, Any] | None = None) -> FleetView:
    ds = DeviceStates(TOPICS)
    for device, payload in states:
        ds.add(TOPICS.state(device), payload)
        ds.add(TOPICS.online(device), b"true")
    return FleetView(ds.devices(), desired or {})


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(STATES, min_size=1, max_size=3), st.sampled_from([0, 0, 1, 900]))
def test_any_state_lists_and_counts(states: list[Any], nesting: int) -> None:
    payloads = [("[" * nesting + json.dumps(s, allow_nan=True) + "]" * nesting).encode() for s in states]
    v = view(*((f"pi-{i}", p) for i, p in enumerate(payloads)),
               desired={"fraud": {"version": 2, "rollout": {"percent": 50, "salt": "s"}}})
    rows = status_rows(v.devices)
    assert len(rows) == len(states) and all("state could not be shown" not in r[-1] for r in rows)
    assert format_table(v.devices).count("\n") == len(states)
    summary_lines(v)


def test_a_400_digit_number_in_any_field_is_shown_as_unknown() -> None:
    n = HUGE
    doc = {"models": {"fraud": {"active": 1, "drift": {"score": n, "alert": True}}},
           "update": {"model": "fraud", "version": n, "percent": n}, "health": dict.fromkeys(HEALTH_KEYS, n)}
    v = view(("pi-1", json.dumps(doc).encode()))
    table = format_table(v.devices)
    assert "pi-1" in table and "fraud v1" in table and "BAD STATE" not in table
    assert summary_lines(v)[0].startswith("1 devices")


def test_health_columns_and_alerts() -> None:
    hot = {"cpu_temp_c": 81.25, "throttled": True, "under_voltage": True, "throttle_flags": "0x50005",
           "store_free_bytes": 1_234_000_000, "mem_available_bytes": 310_000_000, "mem_total_bytes": 1_900_000_000}
    fine = {"cpu_temp_c": 48.0, "throttled": False, "under_voltage": False, "store_free_bytes": None}
    rejected = {"seq": 41, "status": "rejected", "reason": "signature does not verify", "sha256": "ab" * 32}
    v = view(
        ("pi-hot", json.dumps({"models": {"fraud": {"active": 2}}, "health": hot}).encode()),
        ("pi-fine", json.dumps({"models": {"fraud": {"active": 2}}, "health": fine, "desired": rejected}).encode()),
        ("pi-old", json.dumps({"models": {"fraud": {"active": 1}}}).encode()),  # a runtime before health: dashes
    )
    lines = format_table(v.devices).splitlines()
    assert lines[0].split() == ["DEVICE", "ONLINE", "MODELS", "UPDATE", "DRIFT", "TEMP", "FREE", "MEMORY", "ALERTS", "LAST", "ERROR"]
    hot_row = next(line for line in lines if line.startswith("pi-hot"))
    assert "81.2 C" in hot_row and "1.2 GB" in hot_row and "310 MB/1.9 GB" in hot_row
    assert "UNDER-VOLTAGE,THROTTLED (0x50005)" in hot_row
    fine_row = next(line for line in lines if line.startswith("pi-fine"))
    assert "48.0 C" in fine_row and "DESIRED 41 REJECTED" in fine_row and "desired seq 41 rejected: signature" in fine_row
    old_row = next(line for line in lines if line.startswith("pi-old"))
    assert old_row.split()[5:9] == ["-", "-", "-", "-"]
    assert "1 under-voltage; 1 throttled; 1 rejected their desired state" in summary_lines(v)[0]


def test_without_health_reports_the_table_keeps_its_columns() -> None:
    v = view(("pi-1", json.dumps({"models": {"fraud": {"active": 1}}}).encode()))
    assert format_table(v.devices).splitlines()[0].split() == ["DEVICE", "ONLINE", "MODELS", "UPDATE", "DRIFT", "LAST", "ERROR"]


def test_hostile_health_fields_are_unknown() -> None:
    h = health_of({"health": {"cpu_temp_c": float("nan"), "throttled": "yes", "under_voltage": 1, "throttle_flags": "0x5;rm",
                              "store_free_bytes": -5, "mem_available_bytes": 2**70, "mem_total_bytes": True}})
    assert h is not None and dataclasses.asdict(h) == dict.fromkeys(HEALTH_KEYS)
    assert health_of({"health": [1]}) is None and health_of([]) is None
    assert size_text(999) == "999 B" and size_text(1_500_000) == "1.5 MB" and size_text(12_300_000_000) == "12 GB"
