"""``edge-convert --accuracy-budget``: a number is the budget; ``thresholds`` signs none (any variant that
passed validation may serve); without it the budget is relative to the chosen variant (the default)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from converter.cli import _options, build_parser
from edge_runtime.bundle.budget import PRIMARY_ERROR_FACTOR
from edge_runtime.exceptions import UsageError


@pytest.mark.parametrize(("given", "budget", "factor"), [
    ([], None, PRIMARY_ERROR_FACTOR),
    (["--accuracy-budget", "0.25"], 0.25, PRIMARY_ERROR_FACTOR),
    (["--accuracy-budget", "thresholds"], None, None),
])
def test_the_accuracy_budget_option(given: list[str], budget: float | None, factor: float | None, keys: Any,
                                    tmp_path: Path) -> None:
    args = build_parser().parse_args([str(tmp_path / "m.onnx"), "--name", "m", "--version", "1", "-o",
                                      str(tmp_path / "m.bundle"), "--sign-key", str(keys.key_path), *given])
    opts = _options(args)
    assert (opts.accuracy_budget, opts.budget_factor) == (budget, factor)


@pytest.mark.parametrize("bad", ["-1", "nan", "inf", "loose"])
def test_a_bad_accuracy_budget_is_a_usage_error(bad: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="expected a max abs error >= 0 or 'thresholds'"):
        build_parser().parse_args([str(tmp_path / "m.onnx"), "--name", "m", "--version", "1", "-o", "x",
                                   "--accuracy-budget", bad])
