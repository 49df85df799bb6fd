"""The device store: install, anti-rollback, activation with self-test, rollback, verify,
crash leftovers and the cross-process lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.exceptions import RollbackError, SelfTestError, StoreError
from edge_runtime.inference.backend import load_backend
from edge_runtime.inference.selftest import run_selftest
from edge_runtime.store.store import ModelStore, Resolved


def selftest(resolved: Resolved) -> None:
    """The self-test ``models activate`` runs: load the backend, run the golden samples."""
    run_selftest(load_backend(resolved.manifest, resolved.model), resolved.manifest)


@pytest.fixture
def store(device: Any) -> ModelStore:
    return device.store()


def _events(store: ModelStore, name: str = "fraud") -> list[str]:
    return [e["event"] for e in store.state(name).history]


# -- install -------------------------------------------------------------------------------


def test_install_writes_the_version_dir_and_state_but_does_not_activate(store: ModelStore, make_bundle: Any) -> None:
    result = store.install(make_bundle(1))
    assert (result.name, result.version, result.already_installed) == ("fraud", 1, False)
    d = store.version_dir("fraud", 1)
    assert sorted(p.name for p in d.iterdir()) == ["manifest.json", "manifest.sig", "model.tflite"]
    assert (d / "model.tflite").read_bytes() == (Path(__file__).resolve().parents[2] / "device/factory/fraud.tflite").read_bytes()
    raw = json.loads((store.path / "fraud" / "state.json").read_text())
    assert raw["active"] is None and raw["highest_seen"] == 1 and raw["last_known_good"] is None
    assert set(raw) >= {"active", "last_known_good", "highest_seen", "quarantined", "failed", "history"}
    assert _events(store) == ["installed"]
    assert store.versions("fraud") == [1]
    assert store.models() == ["fraud"]


def test_anti_rollback_refuses_versions_at_or_below_highest_seen(
    device: Any, store: ModelStore, make_bundle: Any
) -> None:
    store.install(make_bundle(3))
    before = device.tree_hash()
    with pytest.raises(RollbackError, match=r"fraud v2 is at or below the anti-rollback floor \(highest seen: v3\)"):
        store.install(make_bundle(2))
    assert device.tree_hash() == before


def test_reinstalling_identical_bytes_is_idempotent(device: Any, store: ModelStore, make_bundle: Any) -> None:
    store.install(make_bundle(2))
    store.install(make_bundle(3))
    before = device.tree_hash()
    again = store.install(make_bundle(2))  # below highest_seen, but the very same bundle
    assert again.already_installed
    assert device.tree_hash() == before


def test_same_version_with_different_bytes_is_refused(device: Any, store: ModelStore, make_bundle: Any) -> None:
    store.install(make_bundle(2))
    before = device.tree_hash()
    with pytest.raises(RollbackError, match="fraud v2 is already installed with different bytes"):
        store.install(make_bundle(2, model="fraud_int8io.tflite"))
    assert device.tree_hash() == before


def test_reinstalling_the_same_bundle_repairs_a_damaged_copy(store: ModelStore, make_bundle: Any) -> None:
    store.install(make_bundle(2))
    model = store.version_dir("fraud", 2) / "model.tflite"
    good = model.read_bytes()
    model.write_bytes(good[:100] + bytes([good[100] ^ 1]) + good[101:])
    result = store.install(make_bundle(2))
    assert not result.already_installed
    assert model.read_bytes() == good
    repaired = [e for e in store.state("fraud").history if e["event"] == "repaired"]
    assert repaired and "does not match its sha256" in repaired[0]["reason"]


def test_lost_state_file_does_not_reopen_old_versions(store: ModelStore, make_bundle: Any) -> None:
    store.install(make_bundle(3))
    (store.path / "fraud" / "state.json").unlink()
    with pytest.raises(RollbackError, match="highest seen: v3"):
        store.install(make_bundle(2))


# -- activation, self-test, rollback -----------------------------------------------------------


def test_activate_runs_the_self_test_and_sets_last_known_good(store: ModelStore, make_bundle: Any) -> None:
    store.install(make_bundle(1))
    store.install(make_bundle(2, model="fraud_int8io.tflite"))
    calls: list[int] = []

    def counting(resolved: Resolved) -> None:
        calls.append(resolved.version)
        selftest(resolved)

    store.activate("fraud", 1, selftest=counting)
    state = store.activate("fraud", 2, selftest=counting)
    assert calls == [1, 2]
    assert (state.active, state.last_known_good) == (2, 1)
    assert store.state("fraud").active == 2


def test_activate_refuses_a_version_whose_self_test_fails(
    device: Any, store: ModelStore, make_bundle: Any, wrong_golden_bundle: Path
) -> None:
    store.install(make_bundle(1))
    store.activate("fraud", 1, selftest=selftest)
    store.install(wrong_golden_bundle)
    with pytest.raises(SelfTestError, match=r"fraud v4: output 'output_0' differs from golden by 0\.2"):
        store.activate("fraud", 4, selftest=selftest)
    state = store.state("fraud")
    assert state.active == 1  # unchanged
    assert "differs from golden" in state.failed[4]
    assert _events(store)[-1] == "failed"


def test_rollback_returns_to_last_known_good(store: ModelStore, make_bundle: Any) -> None:
    for v in (1, 2, 3):
        store.install(make_bundle(v))
        store.activate("fraud", v)
    state = store.rollback("fraud")
    assert (state.active, state.last_known_good) == (2, 1)
    assert state.failed[3] == "rolled back"
    state = store.rollback("fraud")
    assert (state.active, state.last_known_good) == (1, None)
    with pytest.raises(StoreError, match="fraud: no last known good version to roll back to"):
        store.rollback("fraud")
    assert store.state("fraud").active == 1


def test_rollback_refuses_a_damaged_target(store: ModelStore, make_bundle: Any) -> None:
    for v in (1, 2):
        store.install(make_bundle(v))
        store.activate("fraud", v)
    (store.version_dir("fraud", 1) / "model.tflite").write_bytes(b"junk")
    with pytest.raises(Exception, match="model.tflite"):
        store.rollback("fraud")
    assert store.state("fraud").active == 2


def test_record_failure_can_revert(store: ModelStore, make_bundle: Any) -> None:
    for v in (1, 2):
        store.install(make_bundle(v))
        store.activate("fraud", v)
    state = store.record_failure("fraud", 2, "serving crashed", revert_to=1)
    assert (state.active, state.last_known_good, state.failed) == (1, None, {2: "serving crashed"})


def test_activating_again_after_quarantine_clears_it(store: ModelStore, make_bundle: Any) -> None:
    store.install(make_bundle(1))
    store.quarantine("fraud", 1, "read error")
    state = store.activate("fraud", 1)
    assert state.quarantined == {} and state.active == 1


# -- verification and crash leftovers ------------------------------------------------------------


def test_verify_all_rehashes_every_version(store: ModelStore, make_bundle: Any) -> None:
    for v in (1, 2):
        store.install(make_bundle(v))
    assert store.verify_all() == [("fraud", 1, None), ("fraud", 2, None)]
    model = store.version_dir("fraud", 2) / "model.tflite"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0x80
    model.write_bytes(bytes(data))
    (store.version_dir("fraud", 1) / "manifest.sig").unlink()
    results = dict(((n, v), p) for n, v, p in store.verify_all())
    assert results[("fraud", 2)] == "model.tflite: chunk 0 does not match its sha256 in the manifest"
    assert results[("fraud", 1)] == "fraud v1: manifest.sig is missing"


def test_cleanup_partial_removes_interrupted_installs(store: ModelStore, make_bundle: Any) -> None:
    store.install(make_bundle(1))
    parent = store.path / "fraud"
    leftovers = [parent / ".install-2-abc123", parent / ".trash-1"]
    for d in leftovers:
        d.mkdir()
        (d / "model.tflite").write_bytes(b"half")
    assert store.versions("fraud") == [1]  # leftovers are never taken for versions
    removed = store.cleanup_partial()
    assert sorted(removed) == sorted(leftovers)
    assert not any(d.exists() for d in leftovers)
    assert store.versions("fraud") == [1] and store.verify_all() == [("fraud", 1, None)]


def test_failed_install_leaves_no_temporary_directory(store: ModelStore, make_bundle: Any, monkeypatch: Any) -> None:
    store.install(make_bundle(1))
    import edge_runtime.atomic as atomic_module

    def crash(*a: Any, **k: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic_module, "fsync_dir", crash)
    with pytest.raises(OSError, match="No space left"):
        store.install(make_bundle(2))
    assert sorted(p.name for p in (store.path / "fraud").iterdir()) == ["1", "state.json"]
    assert store.state("fraud").highest_seen == 1


def test_non_canonical_version_directories_are_ignored(store: ModelStore, make_bundle: Any) -> None:
    store.install(make_bundle(1))
    (store.path / "fraud" / "007").mkdir()
    assert store.versions("fraud") == [1]


# -- the cross-process lock ---------------------------------------------------------------


HOLDER = """
import sys
from pathlib import Path
from edge_runtime.store.store import ModelStore
from edge_runtime.trust.root import verify_root
store = ModelStore(Path(sys.argv[1]), verify_root(Path(sys.argv[2]).read_bytes()))
with store.lock():
    print("locked", flush=True)
    sys.stdin.readline()
"""


def test_an_install_waits_for_the_lock_held_by_another_process(device: Any, make_bundle: Any) -> None:
    device.store().install(make_bundle(1))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(device.store_path), str(device.keys.root_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        installer = subprocess.Popen(
            [str(Path(sys.executable).parent / "edge-runtime"), "models", "install", str(make_bundle(2)),
             "--no-activate", "--config", str(device.config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        # However long we wait, nothing may be written while the other process holds the lock.
        with pytest.raises(subprocess.TimeoutExpired):
            installer.wait(timeout=2)
        assert device.store().versions("fraud") == [1]
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        out, err = installer.communicate(timeout=60)  # also closes its pipes
        assert installer.returncode == 0, err
        assert "fraud v2 installed" in out
    finally:
        holder.kill()
        holder.communicate()
    assert device.store().versions("fraud") == [1, 2]


INSTALLER = """
import sys
from pathlib import Path
from edge_runtime.store.store import ModelStore
from edge_runtime.trust.root import verify_root
store = ModelStore(Path(sys.argv[1]), verify_root(Path(sys.argv[2]).read_bytes()))
from edge_runtime.exceptions import RollbackError
sys.stdin.readline()  # start together
for bundle in sys.argv[3:]:
    try:
        store.install(Path(bundle))
    except RollbackError:
        print("refused", flush=True)
"""


def test_concurrent_installs_from_two_processes_lose_nothing(device: Any, make_bundle: Any) -> None:
    a = [str(make_bundle(v)) for v in (1, 3, 5, 7)]
    b = [str(make_bundle(v)) for v in (2, 4, 6, 8)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", INSTALLER, str(device.store_path), str(device.keys.root_path), *bundles],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for bundles in (a, b)
    ]
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("\n")
        p.stdin.flush()
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    store = device.store()
    # Interleaving may make some installs fall below the floor (refused); none may be lost or torn.
    installed = store.versions("fraud")
    assert 8 in installed
    assert store.verify_all() == [("fraud", v, None) for v in installed]
    history = [e["version"] for e in store.state("fraud").history if e["event"] == "installed"]
    assert sorted(history) == installed
    assert store.state("fraud").highest_seen == 8
    refused = sum(out.count("refused") for out, _ in outputs)
    assert len(installed) + refused == 8
    assert not [p for p in (device.store_path / "fraud").iterdir() if p.name.startswith(".install-")]


def test_cleanup_waits_for_an_install_in_progress(device: Any, make_bundle: Any) -> None:
    import threading

    store = device.store()
    store.install(make_bundle(1))
    in_progress = store.path / "fraud" / ".install-2-live"
    in_progress.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(device.store_path), str(device.keys.root_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        result: list[list[Path]] = []
        worker = threading.Thread(target=lambda: result.append(store.cleanup_partial()), name="cleanup")
        worker.start()
        worker.join(timeout=1.5)
        assert worker.is_alive() and in_progress.is_dir()  # still waiting: the "install" owns it
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        worker.join(timeout=60)
        assert result == [[in_progress]] and not in_progress.exists()
    finally:
        holder.kill()
        holder.communicate()


def test_atomic_dir_fsyncs_every_file_and_replaces_an_existing_directory(tmp_path: Path, monkeypatch: Any) -> None:
    import edge_runtime.atomic as atomic_module

    synced: list[str] = []
    real_fsync = atomic_module.os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    target = tmp_path / "v1"
    target.mkdir()
    (target / "old").write_bytes(b"old")
    monkeypatch.setattr(atomic_module.os, "fsync", recording_fsync)
    with atomic_module.atomic_dir(target, prefix=".install-") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".install-v1-")
        (tmp / "a").write_bytes(b"a")
        (tmp / "b").write_bytes(b"b")
    assert sorted(p.name for p in target.iterdir()) == ["a", "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1"], "no temporary or trash directory is left"
    names = [Path(s).name for s in synced]  # the files, the new directory (before its rename), the parent
    assert names[:2] == ["a", "b"] and names[2].startswith(".install-v1-") and synced[3] == str(tmp_path)
    assert len(synced) == 4
