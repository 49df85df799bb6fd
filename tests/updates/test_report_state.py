"""When ``last_error`` leaves the state document (edge_runtime/updates/report.py, pure)."""

from __future__ import annotations

from typing import Any

from edge_runtime.updates.report import error_is_stale, serving_versions


def _models(**serving: int | None) -> dict[str, Any]:
    return {name: {"serving": v, "active": v} for name, v in serving.items()}


def test_an_error_about_a_version_clears_once_a_newer_one_serves() -> None:
    err = {"model": "fraud", "version": 3, "reason": "self-test failed"}
    at_error = {"fraud": 2}
    assert not error_is_stale(err, _models(fraud=2), at_error)  # rolled back to v2: still the news
    assert not error_is_stale(err, _models(fraud=3), at_error)  # v3 itself is not newer than v3
    assert error_is_stale(err, _models(fraud=4), at_error)


def test_another_model_serving_does_not_clear_it() -> None:
    err = {"model": "fraud", "version": 3, "reason": "x"}
    assert not error_is_stale(err, _models(fraud=2, wine=9), {"fraud": 2, "wine": 1})


def test_an_error_without_a_version_clears_when_its_model_serves_a_newer_one() -> None:
    err = {"model": "fraud", "version": None, "reason": "download aborted"}
    assert not error_is_stale(err, _models(fraud=2), {"fraud": 2})
    assert error_is_stale(err, _models(fraud=3), {"fraud": 2})


def test_an_error_naming_no_model_clears_when_any_model_serves_newer() -> None:
    err = {"model": None, "version": None, "reason": "desired state: bad signature"}
    assert not error_is_stale(err, _models(fraud=2, wine=1), {"fraud": 2, "wine": 1})
    assert error_is_stale(err, _models(fraud=2, wine=2), {"fraud": 2, "wine": 1})


def test_no_error_and_hostile_shapes_are_not_stale() -> None:
    assert not error_is_stale(None, _models(fraud=9), {})
    assert not error_is_stale({"model": "fraud", "version": "3"}, {"fraud": {"serving": "9"}}, {})
    assert serving_versions({"fraud": {"serving": 2}, "bad": "x", "f": {"serving": True}}) == {
        "fraud": 2, "bad": None, "f": None}
