"""Attacks on the model store and what it installs, one test each, through the real CLI and
daemon: a read-only, full or unreadable store, hostile tar headers, racing installs, names with
a trailing newline, hostile trust roots and file modes. The device keeps serving the verified
version. Peak RSS goes to the ``figures`` fixture (docs/security.md quotes it).
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime.trust.canonical import canonical_json
from edge_runtime.trust.root import make_root, sign_root
from harness.http import request
from harness.wait import wait_until
from reliability.attack_support import MIB, cli, serving
from reliability.conftest import EDGE, FLEET, Daemon, DeviceDir, Figures, Mosquitto, Observer, Releases

pytestmark = pytest.mark.integration


# -- a store that cannot be written or read does not stop serving -----------------------------


def _mount(args: list[str], what: str) -> None:
    proc = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount {what} (needs root): {proc.stderr.strip()}")


def _umount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def _serves_and_reports(dev: DeviceDir, daemon: Daemon, x: np.ndarray, version: int, needle: str) -> None:
    assert serving(dev, daemon.port, x) == version
    assert daemon.wait_line(needle, timeout=10) is not None, daemon.log()
    assert daemon.alive and daemon.tracebacks() == [], daemon.log()


def test_read_only_store_still_serves_the_verified_version(
    make_device: Callable[..., DeviceDir], broker: Mosquitto, observer: Observer, holdout_x: np.ndarray
) -> None:
    dev = make_device()
    dev.write_config(broker.url)
    _mount(["--bind", str(dev.store_path), str(dev.store_path)], "a bind mount")
    try:
        _mount(["-o", "remount,ro,bind", str(dev.store_path)], "a read-only bind mount")
        daemon = dev.start()
        _serves_and_reports(dev, daemon, holdout_x, 1, "cannot record serving v1 of fraud")
        # The fault is reported in the device's retained state, too.
        state = wait_until(lambda: (s := observer.state(dev.device_id)).get("store_fault") and s, "store_fault")
        assert "Read-only file system" in state["store_fault"], state
        assert daemon.stop() == 0
    finally:
        _umount(dev.store_path)


def test_full_disk_before_serving_is_recorded_still_serves(
    make_device: Callable[..., DeviceDir], tmp_path: Path, holdout_x: np.ndarray
) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    _mount(["-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], "a tmpfs")
    try:
        dev = make_device(store_path=mnt / "store")
        dev.write_config()
        fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:  # fill the file system to the last byte
            while os.write(fd, b"\0" * 512):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        daemon = dev.start()
        _serves_and_reports(dev, daemon, holdout_x, 1, "No space left on device")
        assert daemon.stop() == 0
    finally:
        _umount(mnt)


BAD_STATES = {
    "not_json": b"\x00\xffnot json",
    "highest_seen_1e400": b'{"active": 1, "highest_seen": 1e400}',
    "active_is_a_list": b'{"active": [1], "highest_seen": 1}',
    "failed_key_superscript": '{"active": 1, "failed": {"\u00b2": "x"}}'.encode(),
    "not_an_object": b"[1, 2]",
}


@pytest.mark.parametrize("kind", sorted(BAD_STATES))
def test_unreadable_state_file_serves_the_factory_bundle(
    make_device: Callable[..., DeviceDir], holdout_x: np.ndarray, kind: str
) -> None:
    dev = make_device()
    dev.write_config()
    state_file = dev.store_path / "fraud" / "state.json"
    state_file.write_bytes(BAD_STATES[kind])
    daemon = dev.start()
    _serves_and_reports(dev, daemon, holdout_x, 1, "only the factory bundle is served")
    status, body = request(daemon.port, "GET", "/v2/models/fraud")
    assert status == 200, body
    assert state_file.read_bytes() == BAD_STATES[kind], "the damaged file is left for the operator to see"
    assert daemon.stop() == 0

# -- tar headers are capped before tarfile reads them ----------------------------------------

# VmHWM, not ru_maxrss: on Linux ru_maxrss survives fork and exec, so it would report pytest's own.
PEAK_WRAPPER = (
    "import sys\n"
    "from edge_runtime.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "hwm = [x for x in open('/proc/self/status') if x.startswith('VmHWM:')][0].split()[1]\n"
    "print('peak_rss_kb', hwm, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def _install_measured(dev: DeviceDir, bundle: Path) -> tuple[subprocess.CompletedProcess[str], int]:
    """``edge-runtime models install`` in a subprocess; returns it and its peak RSS in bytes."""
    out = subprocess.run([sys.executable, "-c", PEAK_WRAPPER, "models", "install", str(bundle), "--config",
                          str(dev.base / "config.toml")], capture_output=True, text=True, timeout=120, check=False)
    line = next(x for x in out.stderr.splitlines() if x.startswith("peak_rss_kb"))
    return out, int(line.split()[1]) * 1024


def _pax_bomb(path: Path, claimed: int) -> Path:
    """A tar whose first header is a pax header claiming ``claimed`` bytes (a sparse file on disk)."""
    header = tarfile.TarInfo("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    header.size = claimed
    with open(path, "wb") as fh:
        fh.write(header.tobuf(tarfile.USTAR_FORMAT))
        fh.write(b"%d path=manifest.json\n" % 22)
        fh.truncate(512 + claimed + 1024)
    return path


def _gnu_sparse_1_0(path: Path) -> Path:
    info = tarfile.TarInfo("model.tflite")
    data = b"not a sparse map\n" + bytes(495)
    info.size = len(data)
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "model.tflite",
                        "GNU.sparse.realsize": "4096"}
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("kind", ["pax_header_300_mb", "gnu_sparse_1_0", "gnu_long_name_300_mb"])
def test_hostile_tar_headers_are_refused_before_tarfile_reads_them(
    make_device: Callable[..., DeviceDir], tmp_path: Path, figures: Figures, kind: str,
    hash_tree: Callable[[Path], str],
) -> None:
    dev = make_device()
    dev.write_config()
    before = hash_tree(dev.store_path)
    if kind == "pax_header_300_mb":
        bundle = _pax_bomb(tmp_path / "bomb.bundle", 300 * MIB)
    elif kind == "gnu_long_name_300_mb":
        bundle = _pax_bomb(tmp_path / "longname.bundle", 300 * MIB)
        with open(bundle, "r+b") as fh:  # the same header as a GNU long-name header ('L')
            block = bytearray(fh.read(512))
            block[156:157] = tarfile.GNUTYPE_LONGNAME
            block[148:156] = b"        "
            block[148:155] = b"%06o\0" % sum(block)
            fh.seek(0)
            fh.write(block)
    else:
        bundle = _gnu_sparse_1_0(tmp_path / "sparse.bundle")
    out, peak = _install_measured(dev, bundle)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr and ("header of" in out.stderr or "sparse" in out.stderr or "tar" in out.stderr)
    assert peak < 120 * MIB, peak
    assert hash_tree(dev.store_path) == before
    figures.add(kind=kind, file_bytes=bundle.stat().st_size, cli_peak_rss_mb=peak // MIB,
                reason=out.stderr.strip().splitlines()[0][:120])


# -- concurrent installs end with the newer version active -----------------------------------


def _lock_free(dev: DeviceDir) -> bool:
    fd = os.open(dev.store_path / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing releases the lock
    return True


def _installed_and_unlocked(dev: DeviceDir, version: int) -> bool:
    try:
        installed = dev.store().state("fraud").highest_seen >= version
    except Exception:  # noqa: BLE001 - a state file being replaced: look again
        return False
    return installed and _lock_free(dev)


def test_concurrent_installs_leave_the_newer_version_active(
    make_device: Callable[..., DeviceDir], releases: Releases, holdout_x: np.ndarray
) -> None:
    dev = make_device()
    config = dev.write_config()
    daemon = dev.start()
    raced = 0
    for older in range(2, 14, 2):
        newer = older + 1
        # The older install is frozen (SIGSTOP) between its install and its activation, the
        # newer one installs and activates, then the older one goes on: the worst interleaving.
        slow = subprocess.Popen([str(EDGE), "models", "install", str(releases.bundle(older)), "--config", str(config)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while slow.poll() is None and not _installed_and_unlocked(dev, older):
            time.sleep(0.0005)
        slow.send_signal(signal.SIGSTOP)
        if not _lock_free(dev):  # stopped inside the lock (its activation): let it finish first
            slow.send_signal(signal.SIGCONT)
            slow.wait(120)
        caught = slow.poll() is None and dev.store().state("fraud").active != older
        fast = cli("models", "install", releases.bundle(newer), "--config", config)
        slow.send_signal(signal.SIGCONT)
        _, slow_err = slow.communicate(timeout=120)
        assert fast.returncode == 0 and slow.returncode == 0, (fast.stderr, slow_err)
        assert dev.store().state("fraud").active == newer, slow_err
        wait_until(lambda n=newer: serving(dev, daemon.port, holdout_x) == n, f"the daemon serving v{newer}")
        raced += caught
        if raced >= 2:
            break
    assert raced >= 1, "the older install was never caught between its install and its activation"
    assert daemon.tracebacks() == []

# -- names, roots and file modes -------------------------------------------------------------


def test_names_and_ids_with_a_trailing_newline_are_refused(
    make_device: Callable[..., DeviceDir], releases: Releases, broker: Mosquitto, keys: Any
) -> None:
    dev = make_device()
    config = dev.write_config()
    for argv in (["models", "activate", "fraud\n", "1"], ["models", "rollback", "fraud\n"]):
        out = cli(*argv, "--config", config)
        assert out.returncode in (1, 2) and "Traceback" not in out.stderr, out.stderr
    assert sorted(p.name for p in dev.store_path.iterdir() if not p.name.startswith(".")) == ["fraud"]
    for option in ("--device", "--fleet"):
        args = {"--fleet": FLEET, "--device": None}
        args[option] = "pi-1\n"
        extra = [a for k, v in args.items() if v is not None for a in (k, v)]
        out = cli("fleet", "publish", releases.bundle(2), "--broker", broker.url, "--sign-key", keys.key_path, *extra)
        assert out.returncode == 2 and "must match" in out.stderr, out.stderr


def _root_variants(keys: Any) -> dict[str, bytes]:
    stranger_signed = make_root(1, [keys.stranger], [keys.stranger])
    real = json.loads(keys.root_bytes)
    forged = canonical_json({"signed": stranger_signed, "signatures": real["signatures"]})
    # "signed" twice: a parser that keeps the first sees the stranger's root, one that keeps
    # the last sees the real one the signatures are for.
    twice = forged[:-1] + b',"signed":' + canonical_json(real["signed"]) + b"}"
    small = make_root(1, [keys.key], [keys.key])
    weak_id = "00" * 8
    small["keys"][weak_id] = {"keytype": "ed25519", "public": "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"}
    return {"signed_twice": twice, "small_order_key": sign_root(small, [keys.key])}


@pytest.mark.parametrize("kind", ["signed_twice", "small_order_key"])
def test_hostile_trust_roots_are_refused(releases: Releases, keys: Any, tmp_path: Path, kind: str) -> None:
    root = tmp_path / "root.json"
    root.write_bytes(_root_variants(keys)[kind])
    out = cli("bundle", "verify", releases.bundle(1), "--root", root)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert ("twice" if kind == "signed_twice" else "small order") in out.stderr, out.stderr


def test_store_files_follow_the_umask(make_device: Callable[..., DeviceDir], releases: Releases) -> None:
    dev = make_device()
    config = dev.write_config()
    out = subprocess.run([str(EDGE), "models", "install", str(releases.bundle(2)), "--config", str(config)],
                         capture_output=True, text=True, timeout=120, check=False, preexec_fn=lambda: os.umask(0o077))
    assert out.returncode == 0, out.stderr
    state = dev.store_path / "fraud" / "state.json"
    assert state.stat().st_mode & 0o777 == 0o600
    assert (dev.store_path / "fraud" / "2").stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o077 == 0 for p in (dev.store_path / "fraud" / "2").iterdir())
