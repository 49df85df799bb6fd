"""What ``edge-runtime serve`` imports: only what its configuration uses (docs/serving.md, memory).

Every module imported costs resident memory on a 512 MB Pi, and a dependency that creeps back
into the serving path is invisible in a review. One real daemon, with Python's own import log
(``PYTHONPROFILEIMPORTTIME``) on its stderr: without ``[mqtt]`` it must not import paho; it
verifies signatures without ``cryptography`` (trust/ed25519.py, through the system libcrypto);
its gRPC endpoint runs without grpcio; uvicorn does not probe for websocket libraries.
"""

from __future__ import annotations

import re

import pytest

from edge_runtime.trust import ed25519
from serving.support import Env, request

pytestmark = pytest.mark.integration

IMPORTED = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)\s*$")


def test_serve_without_mqtt_imports_only_what_it_uses(env: Env) -> None:
    d = env.start(server_toml="grpc_port = -1\n", env_extra={"PYTHONPROFILEIMPORTTIME": "1"})
    assert request(d.port, "GET", "/v2/models/fraud/ready")[0] == 200
    assert request(d.port, "GET", "/metrics")[0] == 200  # what a scrape loads counts too
    top = {m.group(1).split(".")[0] for line in d.log().splitlines() if (m := IMPORTED.match(line))}
    assert {"numpy", "edge_runtime", "uvicorn"} <= top  # the import log is there: the check below means something
    unwanted = {"paho", "grpc", "websockets", "wsproto"}
    if ed25519.backend().name == "libcrypto":
        unwanted.add("cryptography")
    assert top & unwanted == set()
