"""Reference profiles of degenerate data: a constant feature, values that round together, an output
with no rows (issue: a profile error must never end a conversion that passed)."""

from __future__ import annotations

import json

import numpy as np

from edge_runtime.bundle.profile import build_profile, parse_profile
from edge_runtime.spec.tensors import TensorSpec

X = TensorSpec("x", "FP32", (-1, 3))
LABEL = TensorSpec("label", "INT64", (-1,))


def test_constant_and_near_constant_features_parse_back_and_say_so() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3)).astype(np.float64)
    x[:, 1] = 7.0  # constant
    x[:, 2] = 1.0 + np.arange(300) * 1e-9  # distinct values that round to the same 6 digits
    label = (x[:, 0] > 0).astype(np.int64)
    prof = build_profile([X], [LABEL], [([x], [label])])
    doc = json.loads(prof.to_bytes())
    parsed = parse_profile(prof.to_bytes(), [X], [LABEL])
    by_name = {f["name"]: f for f in doc["features"]}
    assert by_name["x[1]"].get("constant") is True and "constant" not in by_name["x[0]"]
    assert all(b > a for f in doc["features"] for a, b in zip(f["edges"], f["edges"][1:]))
    assert {f.name for f in parsed.features} >= {"x[0]", "x[1]", "x[2]", "label"}


def test_an_output_with_no_finite_value_is_left_out_not_fatal() -> None:
    x = np.random.default_rng(1).normal(size=(300, 3))
    y = np.full((300,), np.nan)
    prof = build_profile([X], [TensorSpec("y", "FP32", (-1,))], [([x], [y])])
    parse_profile(prof.to_bytes(), [X], [TensorSpec("y", "FP32", (-1,))])
    assert [f.name for f in prof.features] == ["x[0]", "x[1]", "x[2]"]
