"""Numbers a datatype cannot hold answer 400, never an answer of null (issue 22 finding 8)."""

from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np
import pytest

from edge_runtime.exceptions import InputError
from edge_runtime.serving.codec import Interface, decode_request
from edge_runtime.spec.tensors import TensorSpec


class _Manifest:
    def __init__(self, datatype: str) -> None:
        self.inputs = (TensorSpec("x", datatype, (-1, 3)),)
        self.outputs = (TensorSpec("y", "FP32", (-1, 1)),)


def _decode(datatype: str, data: str) -> Any:
    body = f'{{"inputs":[{{"name":"x","datatype":"{datatype}","shape":[1,3],"data":{data}}}]}}'.encode()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy overflow warning either
        return decode_request(body, None, Interface(_Manifest(datatype)))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("datatype", "data", "message"),
    [
        ("FP32", "[1, 2, " + "9" * 40 + "]", "FP32 values must lie within"),
        ("FP32", "[1e39, 0, 0]", "FP32 values must lie within"),
        ("FP32", "[-1e39, 0, 0]", "found -1e+39"),
        ("FP16", "[70000, 0, 0]", "FP16 values must lie within ±65504"),
        ("FP16", "[0.5, 1e6, 0]", "FP16 values must lie within"),
        ("INT64", "[1, 2, " + "9" * 30 + "]", "INT64 values must lie in"),
        ("INT32", "[1, 2, 4294967296]", "INT32 values must lie in"),
        ("UINT64", "[-1, 2, 18446744073709551615]", "UINT64 values must lie in"),
        ("INT8", "[1.5, 0, 0]", "found non-integer numbers"),
    ],
)
def test_values_beyond_the_datatype_are_refused(datatype: str, data: str, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("+", r"\+")):
        _decode(datatype, data)


def test_values_within_range_still_decode() -> None:
    req = _decode("FP32", json.dumps([3.4e38, -3.4e38, 1]))
    assert req.arrays[0].dtype == np.float32 and np.isfinite(req.arrays[0]).all()
    assert _decode("FP16", "[65504, -65504, 1]").arrays[0].tolist() == [[65504.0, -65504.0, 1.0]]
    assert _decode("FP64", "[1e300, 0, 0]").arrays[0][0, 0] == 1e300
