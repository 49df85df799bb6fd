"""Issue 22, finding 6, over MQTT with the real daemon and mosquitto: a signed release whose
manifest names a delegate library whose create function segfaults. Before: the daemon
activated it, died, and died again at every restart. Now it dies once; the restart records
the release failed (``the serving process died while trying v2``), serves v1 and reports it.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import orjson
import pytest

from edge_runtime.bundle.reader import BundleLimits
from edge_runtime.store.store import ModelStore
from harness.bundles import rebuilt_bundle
from harness.daemon import Daemon
from harness.http import request
from harness.wait import wait_until
from updates.conftest import FACTORY, FLEET, FleetKeys, Releases
from updates.integration.conftest import Mosquitto, Observer, publish

pytestmark = pytest.mark.integration
pytest.importorskip("edge_runtime.daemon")

CRASH_SRC = Path(__file__).resolve().parents[2] / "store" / "delegate_src" / "crash_delegate.c"


@pytest.fixture
def crash_library(tmp_path: Path) -> Path:
    cc = shutil.which("cc")
    if cc is None:
        pytest.fail("no C compiler (cc): run scripts/system-deps.sh")
    out = tmp_path / "libcrash_delegate.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-Wall", "-Wextra", "-Werror", "-o", str(out), str(CRASH_SRC)],
                   check=True, capture_output=True, timeout=120)
    return out


@pytest.fixture
def device_dir(tmp_path: Path, mosquitto: Mosquitto, fleet_keys: FleetKeys, releases: Releases) -> Iterator[Path]:
    store = ModelStore(tmp_path / "store", fleet_keys.root, None, BundleLimits())
    store.install(releases.bundle(1))
    store.activate("fraud", 1)
    (tmp_path / "config.toml").write_text(
        f'[device]\nid = "pi-crash"\n[store]\npath = "{tmp_path / "store"}"\nfactory = "{tmp_path / "factory"}"\n'
        f'[server]\nport = 0\nswap_poll_ms = 100\n[trust]\nroot = "{fleet_keys.path("root.json")}"\n'
        f'[mqtt]\nurl = "{mosquitto.url}"\nfleet = "{FLEET}"\nreconnect_min_s = 0.05\nreconnect_max_s = 0.5\n'
        # the manifest asks for "crashy" by name; the device's config says which library that is
        f'[inference]\ndelegate_dirs = ["{tmp_path}"]\ndelegate_libraries = {{ crashy = "libcrash_delegate.so" }}\n',
        encoding="utf-8",
    )
    yield tmp_path


def test_a_release_whose_delegate_segfaults_kills_the_daemon_once_then_v1_serves(
    device_dir: Path, mosquitto: Mosquitto, observer: Observer, fleet_keys: FleetKeys, releases: Releases,
    crash_library: Path,
) -> None:
    first = Daemon(device_dir / "config.toml")
    second: Daemon | None = None
    try:
        first.wait_ready()
        wait_until(lambda: observer.state("pi-crash"), "the update client to report")
        signer = SimpleNamespace(key=fleet_keys.models_key)
        crashing = rebuilt_bundle(releases.bundle(1), device_dir / "crash.bundle", signer, 2,
                                  runtime={"delegates": ["crashy"]})
        publish(mosquitto.url, crashing, fleet_keys.models_key)
        wait_until(lambda: first.proc.poll() is not None, "the daemon to die loading v2")
        assert first.proc.returncode < 0, first.log()  # killed by SIGSEGV
        on_disk = ModelStore(device_dir / "store", fleet_keys.root, None, BundleLimits()).state("fraud")
        assert (on_disk.active, on_disk.last_known_good, on_disk.trying) == (2, 1, 2)  # the marker survived

        second = Daemon(device_dir / "config.toml")  # what systemd's Restart= does
        second.wait_ready()
        failed = wait_until(lambda: [e for e in observer.of("pi-crash", "failed") if e["version"] == 2],
                            "the failed event for v2")[0]
        assert "the serving process died while trying v2" in failed["reason"]
        state = wait_until(lambda: (observer.state("pi-crash") or {}).get("models", {}).get("fraud", {}).get("serving") == 1
                           and observer.state("pi-crash")["models"]["fraud"], "the state to show v1 serving")
        assert state["active"] == 1 and "2" in state["failed"]
        x = np.load(FACTORY / "sample.npy").astype(np.float32)[:1]
        body = orjson.dumps({"inputs": [{"name": "input_0", "datatype": "FP32", "shape": [1, 30], "data": x.ravel().tolist()}]})
        status, raw = request(second.port, "POST", "/v2/models/fraud/infer", body)
        assert status == 200 and b'"model_version":"1"' in raw
        assert second.proc.poll() is None  # and it stays up: v2 is never tried again
    finally:
        first.stop()
        if second is not None:
            second.stop()
