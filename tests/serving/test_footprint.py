"""What ``edge-runtime serve`` imports: only what its configuration uses (docs/serving.md, memory).

Every module imported costs resident memory on a 512 MB Pi, and a dependency that creeps back
into the serving path is invisible in a review. One real daemon, with Python's own import log
(``PYTHONPROFILEIMPORTTIME``) on its stderr: without ``[mqtt]`` it must not import paho; it
verifies signatures without ``cryptography`` (trust/ed25519.py, through the system libcrypto);
its gRPC endpoint runs without grpcio; its HTTP server is serving/h1.py, not uvicorn.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from edge_runtime.trust import ed25519
from serving.support import Env, request

pytestmark = pytest.mark.integration

IMPORTED = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)\s*$")


def test_serve_without_mqtt_imports_only_what_it_uses(env: Env) -> None:
    d = env.start(server_toml="grpc_port = -1\n", env_extra={"PYTHONPROFILEIMPORTTIME": "1"})
    assert request(d.port, "GET", "/v2/models/fraud/ready")[0] == 200
    assert request(d.port, "GET", "/metrics")[0] == 200  # what a scrape loads counts too
    names = {m.group(1) for line in d.log().splitlines() if (m := IMPORTED.match(line))}
    top = {n.split(".")[0] for n in names}
    assert {"numpy", "edge_runtime", "httptools"} <= top  # the import log is there: the check below means something
    # /metrics is printed by serving/promtext.py; statistics only for a several-variant bundle.
    # (tarfile is not checked: this first start installs the factory bundle.)
    # No uvicorn (serving/h1.py serves HTTP), so none of its command line (click, multiprocessing).
    unwanted = {"paho", "grpc", "uvicorn", "websockets", "wsproto", "prometheus_client", "statistics", "click",
                "multiprocessing"}
    if ed25519.backend().name == "libcrypto":
        unwanted.add("cryptography")
    assert top & unwanted == set()
    # No profile, no capture: no drift sketches, capture ring or profile parser; no MQTT: no
    # update-message checks.
    assert names & set(UNUSED_WITHOUT_MONITORING) == set()


UNUSED_WITHOUT_MONITORING = ("edge_runtime.monitoring.drift", "edge_runtime.monitoring.capture",
                             "edge_runtime.bundle.profile", "edge_runtime.updates.verify")


def test_the_update_client_verifies_without_the_signing_library() -> None:
    """With ``[mqtt]`` the daemon also loads the update client: it verifies and applies deltas
    but never signs, so ``cryptography`` (about 6 MB of RSS) stays out (docs/serving.md, memory)."""
    if ed25519.backend().name != "libcrypto":
        pytest.skip("signatures are verified with cryptography here")
    # The download and delta code loads with the first update (docs/updates.md): imported here too.
    code = ("import sys\nimport edge_runtime.cli.serve, edge_runtime.daemon, edge_runtime.updates.service\n"
            "import edge_runtime.updates.download\nprint(' '.join(sorted(sys.modules)))\n")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    assert "edge_runtime.updates.delta" in loaded and "paho" in loaded
    # zoneinfo (it reads sysconfig: about 0.8 MB) only once a maintenance window names a time zone;
    # tarfile only when an update is installed.
    unwanted = ("cryptography", "prometheus_client", "zoneinfo", "tarfile", "click", "uvicorn")
    assert {n for n in loaded if n.split(".")[0] in unwanted} == set()
