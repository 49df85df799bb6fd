"""A factory bundle signed by a key the root does not trust, against a real daemon (issue 21):
the daemon logs why it refused it and is not ready. (Tentative activation against a real
daemon, mosquitto and a real crash: tests/updates/integration/test_tentative_activation.py.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from serving.support import Env, request

from harness.wait import wait_until


def test_a_refused_factory_bundle_keeps_the_daemon_unready_and_says_why(
    tmp_path: Path, keys: Any, make_bundle: Any
) -> None:
    env = Env(tmp_path, keys, make_bundle(1, keys=[keys.stranger]))
    try:
        d = env.start(wait=False)
        wait_until(lambda: any(" ready: " in line for line in d.lines), "the daemon to finish loading")
        refused = [line for line in d.lines if "factory bundle" in line and "refused" in line]
        assert refused and "fraud.bundle" in refused[0] and "is not trusted" in refused[0]
        status, _ = request(d.port, "GET", "/v2/health/ready")
        assert status == 503  # not ready, and (before) no log line said why
    finally:
        env.close()
