"""Acceptance (issue 24): an encrypted release to 3 of 4 devices over the real broker.

One real daemon (``edge-runtime serve``) and three in-process update clients each serve fraud
v1 in plaintext. ``fleet publish --encrypt-to`` (the real CLI) sends v2 encrypted to the
daemon and two of the clients: those three install and activate it (the daemon after its
self-test, hot swapped, serving with drift and capture on the release's encrypted profile);
the fourth refuses it as soon as the signed manifest arrives (no chunk fetched; install would
refuse it too), naming its key id and the recipients', and keeps v1.
While the update runs and after it, no 64-byte window of the v2 model's plaintext is in any
store, in /tmp or /dev/shm, or in a file the daemon holds open.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.bundle.reader import BundleLimits
from edge_runtime.packaging import PackRequest, pack_model
from edge_runtime.store.store import ModelStore
from edge_runtime.trust.device_keys import device_key_id, generate_device_key, private_pem, public_pem
from harness.daemon import EDGE, Daemon
from harness.http import request
from harness.wait import wait_until
from updates.conftest import FACTORY, FLEET, FleetKeys, Releases
from updates.integration.conftest import Mosquitto, Observer, start_device

pytestmark = pytest.mark.integration
pytest.importorskip("edge_runtime.daemon")

WINDOW = 64
MAX_SCANNED_FILE_BYTES = 256 * 1024 * 1024
SERVE = "pi-serve"
RECIPIENTS = ("pi-a", "pi-b")
LEFT_OUT = "pi-x"


class PlaintextScan:
    """Looks for windows of a plaintext in files: the stores, new files under /tmp and
    /dev/shm, every regular file a process holds open (through /proc/PID/fd, so a deleted
    or memfd file is read too) and every file it maps from tmpfs, a memfd or the test's tree. Runs in a thread while an update goes on, and once more at the end."""

    def __init__(self, plaintext: bytes, stores: list[Path], pid: int, exclude: Path) -> None:
        unique = plaintext[len((FACTORY / "fraud.tflite").read_bytes()):]  # v1 (plaintext) shares the head
        step = (len(unique) - WINDOW) // 16
        self.windows = [unique[i : i + WINDOW] for i in range(0, 16 * step, step)]
        self.stores, self.pid, self.exclude = stores, pid, exclude
        self.since = os.stat(stores[0].parent).st_mtime - 1
        self.hits: list[str] = []
        self.scans = 0
        self.files_read = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="plaintext-scan", daemon=True)

    def _check(self, path: Path, label: str) -> None:
        try:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_SCANNED_FILE_BYTES:
                return
            data = path.read_bytes()
        except OSError:  # gone, or not ours to read
            return
        self.files_read += 1
        if any(w in data for w in self.windows):
            self.hits.append(label)

    def _new_files(self, top: Path) -> Iterator[Path]:
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [d for d in dirnames if Path(dirpath, d) != self.exclude]
            for f in filenames:
                p = Path(dirpath, f)
                try:
                    if os.lstat(p).st_mtime >= self.since:
                        yield p
                except OSError:
                    continue

    def scan(self, everything: bool) -> None:
        """One pass; ``everything`` adds /tmp (slow: every file written since the test began)."""
        proc = Path(f"/proc/{self.pid}")
        for fd in (proc / "fd").iterdir() if proc.exists() else []:
            self._check(fd, f"daemon fd {fd.name} -> {os.readlink(fd) if fd.is_symlink() else '?'}")
        try:  # file-backed mappings outside the system's own files (a memfd, tmpfs, a store file)
            maps = (proc / "maps").read_text().splitlines()
        except OSError:
            maps = []
        for line in maps:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].startswith(("/tmp", "/dev/shm", "/memfd:", str(self.stores[0].parent))):
                self._check(proc / "map_files" / parts[0], f"daemon mapping {parts[5]}")
        for top in [*self.stores, Path("/dev/shm"), *([Path("/tmp")] if everything else [])]:
            for p in self._new_files(top) if top.is_dir() else []:
                self._check(p, str(p))
        self.scans += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self.scan(everything=False)

    def __enter__(self) -> PlaintextScan:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


@pytest.fixture
def fleet(tmp_path: Path, mosquitto: Mosquitto, observer: Observer, fleet_keys: FleetKeys,
          releases: Releases) -> Iterator[dict[str, object]]:
    """The four devices on v1, their keys, and the directory of the three recipients' *.pub."""
    v1 = releases.bundle(1)
    keys = {d: generate_device_key() for d in (SERVE, *RECIPIENTS, LEFT_OUT)}
    pubs = tmp_path / "operator" / "recipients"
    pubs.mkdir(parents=True)
    for d in (SERVE, *RECIPIENTS):
        (pubs / f"{d}.pub").write_bytes(public_pem(keys[d]))
    base = tmp_path / SERVE
    base.mkdir()
    key_file = base / "device.key"
    key_file.write_bytes(private_pem(keys[SERVE]))
    key_file.chmod(0o600)
    store = ModelStore(base / "store", fleet_keys.root, None, BundleLimits())
    store.install(v1)
    store.activate("fraud", 1)
    (base / "config.toml").write_text(
        f'[device]\nid = "{SERVE}"\n[store]\npath = "{base / "store"}"\nfactory = "{base / "factory"}"\n'
        f'[server]\nport = 0\nswap_poll_ms = 200\n'
        f'[trust]\nroot = "{fleet_keys.path("root.json")}"\ndevice_key = "{key_file}"\n'
        f'[mqtt]\nurl = "{mosquitto.url}"\nfleet = "{FLEET}"\nreconnect_min_s = 0.05\nreconnect_max_s = 0.5\n'
        f'[monitoring]\nstate_interval_s = 0.5\n'
        f'[models.fraud.drift]\nwindow_rows = 200\nmin_rows = 50\nmax_sketched_per_s = 0\n'
        f'[models.fraud.capture]\nrate = 1.0\nmax_mb = 5\n',
        encoding="utf-8",
    )
    services, stores = [], {SERVE: base / "store"}
    for d in (*RECIPIENTS, LEFT_OUT):
        svc, st = start_device(tmp_path / d, mosquitto.url, d, fleet_keys, [v1], 1)
        st.device_key = keys[d]  # before any release is published: nothing is encrypted yet
        services.append(svc)
        stores[d] = st.path
    daemon = Daemon(base / "config.toml")
    try:
        daemon.wait_ready()
        for d in (SERVE, *RECIPIENTS, LEFT_OUT):
            wait_until(lambda d=d: observer.state(d), f"{d} to report")  # type: ignore[misc]
        yield {"keys": keys, "pubs": pubs, "daemon": daemon, "stores": stores, "operator": tmp_path / "operator"}
    finally:
        daemon.stop()
        for svc in services:
            svc.stop()


def _infer(port: int, rows: np.ndarray) -> dict[str, object]:
    body = {"inputs": [{"name": "input_0", "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel().tolist()}]}
    status, out = request(port, "POST", "/v2/models/fraud/infer", json.dumps(body).encode())
    assert status == 200, out
    answer: dict[str, object] = json.loads(out)
    return answer


def test_encrypted_release_to_three_of_four_devices(
    fleet: dict[str, object], mosquitto: Mosquitto, observer: Observer, fleet_keys: FleetKeys,
) -> None:
    keys, daemon, stores = fleet["keys"], fleet["daemon"], fleet["stores"]
    assert isinstance(keys, dict) and isinstance(daemon, Daemon) and isinstance(stores, dict)
    operator = fleet["operator"]
    assert isinstance(operator, Path)
    # v2: the demo model with 300 KB of random bytes behind it (LiteRT ignores them), so every
    # scanned window is unique to this release; a reference profile so drift runs on it.
    model = (FACTORY / "fraud.tflite").read_bytes() + np.random.default_rng(24).bytes(300_000)
    (operator / "fraud-v2.tflite").write_bytes(model)
    calib = np.load(FACTORY / "calibration.npy").astype(np.float32)
    pack_model(PackRequest(
        operator / "fraud-v2.tflite", name="fraud", version=2, keys=[fleet_keys.models_key], out=operator / "fraud-v2.bundle",
        input_names=["input_0"], output_names=["output_0"], golden_inputs=[np.load(FACTORY / "golden.npy")],
        profile_calls=[[calib[i:i + 50]] for i in range(0, len(calib), 50)], chunk_size=64 * 1024,
    ))
    with PlaintextScan(model, list(stores.values()), daemon.proc.pid, operator) as scan:
        out = subprocess.run(
            [str(EDGE), "fleet", "publish", str(operator / "fraud-v2.bundle"), "--encrypt-to", str(fleet["pubs"]),
             "--sign-key", str(fleet_keys.path("signing.key")), "--root", str(fleet_keys.path("root.json")),
             "--fleet", FLEET, "--broker", mosquitto.url],
            capture_output=True, text=True, timeout=120, check=False,
        )
        assert out.returncode == 0, out.stderr
        assert "encrypted fraud v2 to 3 devices" in out.stdout
        wait_until(lambda: observer.of(SERVE, "activated"), "the daemon to activate the encrypted v2")
        for d in RECIPIENTS:
            wait_until(lambda d=d: observer.of(d, "activated"), f"{d} to activate v2")  # type: ignore[misc]
        rejected = wait_until(lambda: observer.of(LEFT_OUT, "rejected"), "the left-out device to refuse v2")[0]
        wait_until(lambda: _infer(daemon.port, calib[:1])["model_version"] == "2", "the daemon to serve v2")
        wait_until(lambda: scan.scans >= 3, "a few scans while v2 is loaded")
    # The left-out device: refused as soon as the signed manifest arrived (no chunk fetched),
    # one line naming its key id and the recipients'.
    assert [e for e in observer.of(LEFT_OUT) if e.get("version") == 2 and e["event"] == "downloading"] == []
    reason = str(rejected["reason"])
    assert rejected["version"] == 2 and "\n" not in reason
    assert device_key_id(keys[LEFT_OUT]) in reason
    assert all(device_key_id(keys[d]) in reason for d in (SERVE, *RECIPIENTS))
    left = ModelStore(stores[LEFT_OUT], fleet_keys.root, None, BundleLimits())
    assert left.state("fraud").active == 1 and left.versions("fraud") == [1]
    assert observer.state(LEFT_OUT)["models"]["fraud"]["active"] == 1
    # The recipients: active and serving v2; the daemon after its self-test, with drift and
    # capture figures for v2 (its profile was encrypted too).
    for d in (SERVE, *RECIPIENTS):
        st = ModelStore(stores[d], fleet_keys.root, None, BundleLimits()).state("fraud")
        assert st.active == 2, (d, st)
    for i in range(0, 200, 20):
        _infer(daemon.port, calib[i:i + 20])

    def drift() -> dict[str, object]:
        status, body = request(daemon.port, "GET", "/v2/models/fraud/versions/2/stats")
        assert status == 200, body
        entry: dict[str, object] = json.loads(body)["model_stats"][0]["drift"]
        return entry

    seen = wait_until(lambda: (d := drift()).get("observed_rows", 0) >= 200 and d, "drift figures for v2")  # type: ignore[operator]
    assert seen["score"] is not None, seen
    wait_until(lambda: drift()["capture"]["written_records"] >= 10, "v2's requests in the capture ring")  # type: ignore[index]
    # Nothing on disk: a last scan after the load, /tmp included.
    scan.scan(everything=True)
    assert scan.files_read > 0
    assert scan.hits == [], scan.hits
    scan._check(operator / "fraud-v2.bundle", "control")  # the scan does find the plaintext where it is
    assert scan.hits == ["control"]
    assert daemon.alive
