"""The one error -> status table per protocol: every error family has the status the docs promise."""

from __future__ import annotations

import grpc
import pytest

from edge_runtime.exceptions import (
    EdgeRuntimeError,
    InferenceError,
    InputError,
    NotFoundError,
    SelfTestError,
    StoreError,
    UnavailableError,
)
from edge_runtime.serving.app import http_status
from edge_runtime.serving.grpc_server import grpc_status

CASES = [
    (InputError("x"), 400, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError("x"), 404, grpc.StatusCode.NOT_FOUND),  # a StoreError subclass: must not become 500
    (UnavailableError("x"), 503, grpc.StatusCode.UNAVAILABLE),
    (InferenceError("x"), 500, grpc.StatusCode.INTERNAL),
    (SelfTestError("x"), 500, grpc.StatusCode.INTERNAL),
    (StoreError("x"), 500, grpc.StatusCode.INTERNAL),
    (EdgeRuntimeError("x"), 500, grpc.StatusCode.INTERNAL),
]


@pytest.mark.parametrize(("exc", "status", "code"), CASES, ids=[type(c[0]).__name__ for c in CASES])
def test_each_error_family_maps_to_its_status(exc: EdgeRuntimeError, status: int, code: grpc.StatusCode) -> None:
    assert http_status(exc) == status
    assert grpc_status(exc) == code
