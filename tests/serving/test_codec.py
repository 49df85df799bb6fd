"""Unit tests of the KServe v2 codec: JSON and binary tensors in, responses out, every bad request an InputError."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.bundle.writer import build_manifest
from edge_runtime.exceptions import EdgeRuntimeError, InputError
from edge_runtime.serving.codec import Interface, decode_request, encode_response, header_length

ARTIFACT = {"model.tflite": {"length": 1, "sha256": "0" * 64, "chunk_size": 1024, "chunk_sha256": ["0" * 64]}}


def interface(inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> Interface:
    manifest = build_manifest({
        "name": "m", "version": 1, "format": "tflite", "artifacts": ARTIFACT, "inputs": inputs, "outputs": outputs,
        "compatible": {"runtime_major": 0, "architectures": ["any"]},
    })
    return Interface(manifest)


FRAUD = interface([{"name": "input_0", "datatype": "FP32", "shape": [-1, 30]}],
                  [{"name": "output_0", "datatype": "FP32", "shape": [-1, 1]}])
TWO = interface(
    [{"name": "a", "datatype": "INT32", "shape": [-1, 2]}, {"name": "b", "datatype": "FP16", "shape": [-1, 3]}],
    [{"name": "y", "datatype": "UINT8", "shape": [-1, 2]}, {"name": "z", "datatype": "FP16", "shape": [-1]}],
)
FIXED = interface([{"name": "img", "datatype": "FP32", "shape": [1, 4]}], [{"name": "p", "datatype": "FP32", "shape": [1, 2]}])


def binary_body(tensors: list[tuple[dict[str, Any], bytes]], extra: dict[str, Any] | None = None) -> tuple[bytes, int]:
    head = orjson.dumps({"inputs": [t for t, _ in tensors], **(extra or {})})
    return head + b"".join(raw for _, raw in tensors), len(head)


def test_json_request_decodes_to_model_order_and_types() -> None:
    body = orjson.dumps({"id": "r1", "inputs": [
        {"name": "b", "datatype": "FP16", "shape": [2, 3], "data": [[0.5, 1, 2], [3, 4, 5]]},
        {"name": "a", "datatype": "INT32", "shape": [2, 2], "data": [1, -2, 3, 2147483647]},
    ]})
    req = decode_request(body, None, TWO)
    assert req.request_id == "r1" and req.rows == 2
    assert req.arrays[0].dtype == np.int32 and req.arrays[0].tolist() == [[1, -2], [3, 2147483647]]
    assert req.arrays[1].dtype == np.float16 and req.arrays[1].shape == (2, 3)
    assert req.outputs == (0, 1) and req.binary == (False, False)


def test_binary_request_is_read_in_listed_order() -> None:
    a = np.array([[1, 2], [3, 4]], np.int32)
    b = np.arange(6, dtype=np.float16).reshape(2, 3)
    body, n = binary_body([
        ({"name": "b", "datatype": "FP16", "shape": [2, 3], "parameters": {"binary_data_size": b.nbytes}}, b.tobytes()),
        ({"name": "a", "datatype": "INT32", "shape": [2, 2], "parameters": {"binary_data_size": a.nbytes}}, a.tobytes()),
    ], {"parameters": {"binary_data_output": True}})
    req = decode_request(body, header_length(str(n).encode(), len(body)), TWO)
    np.testing.assert_array_equal(req.arrays[0], a)
    np.testing.assert_array_equal(req.arrays[1], b)
    assert req.binary == (True, True)


@given(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=30, max_size=30))
@settings(max_examples=200, deadline=None)
def test_json_keeps_float32_precision_both_ways(values: list[float]) -> None:
    x = np.asarray(values, np.float32).reshape(1, 30)
    req = decode_request(orjson.dumps({"inputs": [{"name": "input_0", "datatype": "FP32", "shape": [1, 30],
                                                    "data": x.ravel().tolist()}]}), None, FRAUD)
    np.testing.assert_array_equal(req.arrays[0], x)
    body, n = encode_response("m", "1", req, FRAUD, [x[:, :1]])
    assert n is None
    out = orjson.loads(body)["outputs"][0]
    np.testing.assert_array_equal(np.asarray(out["data"], np.float32), x[0, :1])


def test_response_binary_outputs_and_selection() -> None:
    body, n = binary_body([
        ({"name": "a", "datatype": "INT32", "shape": [1, 2], "parameters": {"binary_data_size": 8}}, np.zeros(2, np.int32).tobytes()),
        ({"name": "b", "datatype": "FP16", "shape": [1, 3], "parameters": {"binary_data_size": 6}}, np.zeros(3, np.float16).tobytes()),
    ], {"outputs": [{"name": "z", "parameters": {"binary_data": True}}, {"name": "y"}]})
    req = decode_request(body, n, TWO)
    y = np.array([[7, 255]], np.uint8)
    z = np.array([0.1, 65504.0], np.float16)
    payload, json_len = encode_response("two", "3", req, TWO, [y, z])
    assert json_len is not None
    head = orjson.loads(payload[:json_len])
    assert [o["name"] for o in head["outputs"]] == ["z", "y"]
    assert head["outputs"][0]["parameters"]["binary_data_size"] == 4
    np.testing.assert_array_equal(np.frombuffer(payload[json_len:], np.float16), z)
    assert head["outputs"][1]["data"] == [7, 255] and head["model_version"] == "3"


def test_fp16_json_output_is_exact() -> None:
    req = decode_request(orjson.dumps({"inputs": [
        {"name": "a", "datatype": "INT32", "shape": [1, 2], "data": [0, 0]},
        {"name": "b", "datatype": "FP16", "shape": [1, 3], "data": [0, 0, 0]}]}), None, TWO)
    z = np.array([0.1, -3.14, 1e-4], np.float16)
    payload, _ = encode_response("two", "1", req, TWO, [np.zeros((1, 2), np.uint8), z])
    np.testing.assert_array_equal(np.asarray(orjson.loads(payload)["outputs"][1]["data"], np.float32).astype(np.float16), z)


def fraud_json(**override: Any) -> bytes:
    t: dict[str, Any] = {"name": "input_0", "datatype": "FP32", "shape": [1, 30], "data": [0.0] * 30}
    t.update(override)
    return orjson.dumps({"inputs": [t]})


@pytest.mark.parametrize(("body", "iface", "fragment"), [
    (fraud_json(name="x"), FRAUD, "unknown input 'x'"),
    (fraud_json(datatype="INT32"), FRAUD, "expected datatype FP32, found 'INT32'"),
    (fraud_json(shape=[1, 31]), FRAUD, "expected shape [-1, 30], found [1, 31]"),
    (fraud_json(shape=[30]), FRAUD, "expected shape [-1, 30], found [30]"),
    (fraud_json(shape=[0, 30], data=[]), FRAUD, "holds no elements"),
    (fraud_json(shape=[1, -30]), FRAUD, "non-negative integers"),
    (fraud_json(shape="1,30"), FRAUD, "non-negative integers"),
    (fraud_json(data=[True] * 30), FRAUD, "found booleans"),
    (fraud_json(data=None), FRAUD, "non-numeric"),
    (fraud_json(data=[{"a": 1}] * 30), FRAUD, "non-numeric"),
    (orjson.dumps({"inputs": [{"name": "img", "datatype": "FP32", "shape": [2, 4], "data": [0] * 8}]}), FIXED,
     "expected shape [1, 4], found [2, 4]"),
    (orjson.dumps({"inputs": [{"name": "a", "datatype": "INT32", "shape": [1, 2], "data": [1.5, 2]},
                              {"name": "b", "datatype": "FP16", "shape": [1, 3], "data": [0, 0, 0]}]}), TWO,
     "found non-integer numbers"),
    (orjson.dumps({"inputs": [{"name": "a", "datatype": "INT32", "shape": [1, 2], "data": [2**31, 2]},
                              {"name": "b", "datatype": "FP16", "shape": [1, 3], "data": [0, 0, 0]}]}), TWO,
     "values must lie in [-2147483648, 2147483647]"),
    (orjson.dumps({"inputs": [{"name": "a", "datatype": "INT32", "shape": [1, 2], "data": [1, 2]}]}), TWO,
     "missing input(s) ['b']"),
    (orjson.dumps({"inputs": [{"name": "a", "datatype": "INT32", "shape": [1, 2], "data": [1, 2]},
                              {"name": "a", "datatype": "INT32", "shape": [1, 2], "data": [1, 2]}]}), TWO, "given twice"),
    (orjson.dumps({"inputs": [{"name": "a", "datatype": "INT32", "shape": [1, 2], "data": [1, 2]},
                              {"name": "b", "datatype": "FP16", "shape": [2, 3], "data": [0] * 6}]}), TWO,
     "batch dimension is 2, other inputs have 1"),
    (orjson.dumps({"inputs": [{"name": "a", "datatype": "INT32", "shape": [1, 2], "data": [1, 2]},
                              {"name": "b", "datatype": "FP16", "shape": [1, 3], "data": [0] * 3}],
                   "outputs": [{"name": "nope"}]}), TWO, "unknown output 'nope'"),
    (orjson.dumps({"inputs": [{"name": "a", "datatype": "INT32", "shape": [1, 2], "data": [1, 2]},
                              {"name": "b", "datatype": "FP16", "shape": [1, 3], "data": [0] * 3}],
                   "outputs": [{"name": "y", "parameters": {"classification": 3}}]}), TWO, "classification"),
    (orjson.dumps({"id": 5, "inputs": []}), FRAUD, "'id' must be a string"),
    (orjson.dumps({"inputs": [{"name": "input_0", "datatype": "FP32", "shape": [1, 30], "data": [0] * 30}],
                   "parameters": {"binary_data_output": "yes"}}), FRAUD, "binary_data_output must be true or false"),
])
def test_bad_requests_raise_input_error(body: bytes, iface: Interface, fragment: str) -> None:
    with pytest.raises(InputError) as info:
        decode_request(body, None, iface)
    assert fragment in str(info.value)


def test_header_length_checks() -> None:
    assert header_length(None, 10) is None
    assert header_length(b"4", 10) == 4
    for bad in (b"x", b"0", b"11", b"-1"):
        with pytest.raises(InputError, match="Inference-Header-Content-Length"):
            header_length(bad, 10)


@given(st.binary(max_size=300), st.integers(1, 300))
@settings(max_examples=300, deadline=None)
def test_arbitrary_bytes_never_raise_anything_but_our_errors(data: bytes, split: int) -> None:
    for n in (None, split):
        try:
            decode_request(data, header_length(None if n is None else str(n).encode(), len(data)), TWO)
        except EdgeRuntimeError:
            pass
