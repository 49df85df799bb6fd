"""The gRPC transport's deadlines as pure decisions (serving/h2deadlines.py), on a stepped clock."""

from __future__ import annotations

import pytest

from edge_runtime.serving.h2deadlines import Clocks, Timeouts, Verdict, check

T = Timeouts(header_s=10.0, body_s=30.0, idle_s=300.0)


def clocks(preface: bool = True, partial: float | None = None, body: float | None = None,
           idle: float | None = None) -> Clocks:
    return Clocks(opened=0.0, preface=preface, partial_since=partial, oldest_body_since=body, idle_since=idle)


def test_a_connection_that_never_sends_the_preface_is_closed_after_the_header_timeout() -> None:
    assert check(9.9, clocks(preface=False, idle=0.0), T) == (Verdict.KEEP, 10.0)
    assert check(10.0, clocks(preface=False, idle=0.0), T)[0] is Verdict.NO_PREFACE


def test_a_half_sent_frame_or_header_block_is_closed_after_the_header_timeout_of_its_first_byte() -> None:
    assert check(14.9, clocks(partial=5.0), T) == (Verdict.KEEP, 15.0)
    assert check(15.0, clocks(partial=5.0), T)[0] is Verdict.HALF_HEADER


def test_a_request_message_not_complete_within_the_body_timeout_is_closed() -> None:
    assert check(31.0, clocks(body=2.0), T) == (Verdict.KEEP, 32.0)
    assert check(32.0, clocks(body=2.0), T)[0] is Verdict.STALLED_BODY


def test_a_connection_without_an_open_call_is_closed_after_the_idle_timeout() -> None:
    assert check(400.0, clocks(idle=100.0), T)[0] is Verdict.IDLE
    verdict, then = check(395.0, clocks(idle=100.0), T)
    assert verdict is Verdict.KEEP and then == 400.0


def test_a_call_in_flight_keeps_the_connection_however_long_it_runs() -> None:
    # dispatched (no body clock), not idle, no partial frame: nothing is ever due
    verdict, then = check(1e6, clocks(), T)
    assert verdict is Verdict.KEEP and then == 1e6 + 10.0


@pytest.mark.parametrize("start", [0.0, 3.0, 9.999])
def test_a_clock_started_after_a_check_is_found_when_it_runs_out(start: float) -> None:
    """The timer is re-armed only when it fires: the next look must come before any new deadline."""
    _, then = check(0.0, clocks(idle=0.0), T)  # armed with nothing but the idle clock running
    assert then <= start + T.header_s  # a frame left half-sent at ``start`` is seen by its deadline
    verdict, then = check(then, clocks(partial=start), T)
    if verdict is Verdict.KEEP:
        assert then == start + T.header_s
        assert check(then, clocks(partial=start), T)[0] is Verdict.HALF_HEADER


@pytest.mark.parametrize("value", [0, -1.0, float("inf"), float("nan")])
def test_grpc_idle_timeout_s_must_be_a_positive_finite_number(value: float) -> None:
    from edge_runtime.config import parse_config
    from edge_runtime.exceptions import ConfigError

    assert parse_config({"server": {"grpc_idle_timeout_s": 12.5}}).server.grpc_idle_timeout_s == 12.5
    with pytest.raises(ConfigError, match="grpc_idle_timeout_s"):
        parse_config({"server": {"grpc_idle_timeout_s": value}})


def test_a_connection_stopped_inside_a_frame_is_closed_by_the_header_clock_not_as_idle() -> None:
    short = Timeouts(header_s=0.2, body_s=0.2, idle_s=0.2)
    assert check(0.35, clocks(idle=0.0, partial=0.2), short) == (Verdict.KEEP, pytest.approx(0.4))
    assert check(0.4, clocks(idle=0.0, partial=0.2), short)[0] is Verdict.HALF_HEADER
    assert check(0.35, clocks(idle=0.0), short)[0] is Verdict.IDLE  # the frame done: idle again
