"""The one error -> status table per protocol: every error family has the status the docs promise."""

from __future__ import annotations

import json
import subprocess
import sys

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

CASES = [
    (InputError, 400, "INVALID_ARGUMENT"),
    (NotFoundError, 404, "NOT_FOUND"),  # a StoreError subclass: must not become 500
    (UnavailableError, 503, "UNAVAILABLE"),
    (InferenceError, 500, "INTERNAL"),
    (SelfTestError, 500, "INTERNAL"),
    (StoreError, 500, "INTERNAL"),
    (EdgeRuntimeError, 500, "INTERNAL"),
]

# grpc_server's generated protobuf module and tritonclient's (imported by other tests in this
# process) define the same 'inference.*' symbols in protobuf's one default pool: ask a fresh process.
GRPC_CODES = """
import json
from edge_runtime import exceptions
from edge_runtime.serving.grpc_server import grpc_status
names = %r
print(json.dumps({n: grpc_status(getattr(exceptions, n)("x")).name for n in names}))
"""


@pytest.mark.parametrize(("cls", "status"), [(c, s) for c, s, _ in CASES], ids=[c.__name__ for c, _, _ in CASES])
def test_each_error_family_maps_to_its_http_status(cls: type[EdgeRuntimeError], status: int) -> None:
    assert http_status(cls("x")) == status


def test_each_error_family_maps_to_its_grpc_code() -> None:
    names = [c.__name__ for c, _, _ in CASES]
    proc = subprocess.run([sys.executable, "-c", GRPC_CODES % names], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {c.__name__: code for c, _, code in CASES}
