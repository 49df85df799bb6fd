"""Tentative activation against a real daemon and a real crash (issue 22, finding 6), and a
refused factory bundle named in the daemon's log (issue 21).

A version whose manifest names a delegate library whose create function segfaults is
activated the way the update client activates (``store.activate`` without a self-test; the
daemon loads it). Before the fix the daemon died and every restart died again. Now the
version is ``trying`` on disk when the process dies, and the next start records it failed
(never retried) and serves the previous version.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serving.support import Env, infer_json, request

from harness.bundles import rebuilt_bundle
from harness.wait import wait_until

SRC = Path(__file__).resolve().parent / "delegate_src" / "crash_delegate.c"


@pytest.fixture(scope="module")
def crash_delegate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("cc")
    if cc is None:
        pytest.fail("no C compiler (cc): run scripts/system-deps.sh")
    out = tmp_path_factory.mktemp("crash") / "libcrash_delegate.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-Wall", "-Wextra", "-Werror", "-o", str(out), str(SRC)],
                   check=True, capture_output=True, timeout=120)
    return out


def test_a_version_whose_load_kills_the_daemon_is_failed_at_the_next_start(
    tmp_path: Path, keys: Any, make_bundle: Any, crash_delegate: Path, sample_x: np.ndarray
) -> None:
    env = Env(tmp_path, keys, make_bundle(1))
    try:
        env.install(make_bundle(2))
        first = env.start()
        state = env.store().state("fraud")
        assert (state.serving, state.trying) == (2, None) and 2 in state.confirmed

        crashing = rebuilt_bundle(make_bundle(2), tmp_path / "crash.bundle", keys, 3,
                                  runtime={"delegates": [str(crash_delegate)]})
        env.install(crashing)  # active v3, last known good v2: what the update client does
        wait_until(lambda: first.proc.poll() is not None, "the daemon to die loading v3")
        assert first.proc.returncode < 0  # killed by a signal (SIGSEGV), not an exit
        state = env.store().state("fraud")
        assert (state.active, state.last_known_good, state.trying) == (3, 2, 3)

        second = env.start()  # before the fix: dies again, and again at every restart
        state = env.store().state("fraud")
        assert state.failed == {3: "the serving process died while trying v3"}
        assert (state.active, state.serving, state.trying) == (2, 2, None)
        assert any("the serving process died while trying v3" in line for line in second.lines)
        status, body = infer_json(second.port, "fraud", sample_x[:1])
        assert status == 200 and body["model_version"] == "2"
    finally:
        env.close()


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
