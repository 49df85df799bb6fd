"""profile.json is bounded before and while it is parsed: numbers no float holds, and lists
longer than a profile can have, are refused by name (a ManifestError, never OverflowError)."""

from __future__ import annotations

from typing import Any

import pytest

from edge_runtime.bundle.profile import MAX_PROFILE_INT, parse_profile
from edge_runtime.exceptions import ManifestError
from edge_runtime.spec.tensors import TensorSpec
from edge_runtime.trust.canonical import canonical_json

INPUTS = (TensorSpec("x", "FP32", (-1, 3)),)
OUTPUTS = (TensorSpec("y", "FP32", (-1, 1)),)


def _profile(rows: Any = 10, **feature: Any) -> bytes:
    f = {"edges": [0.5], "index": 0, "name": "x[0]", "reference": [0.5, 0.5], "side": "input", "tensor": 0}
    f.update(feature)
    return canonical_json({"_type": "edge-runtime/profile", "bins": 10, "features": [f], "rows": rows})


def test_a_sound_profile_parses() -> None:
    assert parse_profile(_profile(), INPUTS, OUTPUTS).features[0].edges == (0.5,)


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (_profile(rows=10**400), "'rows' must be an integer from 2"),
        (_profile(rows=MAX_PROFILE_INT + 1), "'rows' must be an integer from 2"),
        (_profile(edges=[10**400]), "must hold finite numbers"),
        (_profile(reference=[10**300, 0]), "must hold finite numbers"),
        (_profile(index=10**400), "must be integers"),
        (_profile(edges=list(range(100_000))), "lists of at most 40 and"),
    ],
)
def test_numbers_and_lengths_beyond_a_profile_are_refused_by_name(data: bytes, says: str) -> None:
    with pytest.raises(ManifestError, match=says):
        parse_profile(data, INPUTS, OUTPUTS)
