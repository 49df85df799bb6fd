"""Start-up resolution: active -> last known good -> factory, each re-verified; failures are
quarantined and every fallback is recorded with its reason."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.exceptions import BundleError, NotFoundError, SignatureError
from edge_runtime.store.store import ModelStore


def _damage(path: Path, offset: int = 200) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.fixture
def two_versions(device: Any, make_bundle: Any) -> ModelStore:
    """v1 (float) then v2 (int8) installed and activated: v2 active, v1 last known good."""
    store = device.store()
    store.install(make_bundle(1))
    store.activate("fraud", 1)
    store.install(make_bundle(2, model="fraud_int8io.tflite"))
    store.activate("fraud", 2)
    return store


def test_intact_active_version_is_served_without_any_fallback(two_versions: ModelStore) -> None:
    events = len(two_versions.state("fraud").history)
    r = two_versions.resolve("fraud")
    assert (r.version, r.source, r.fallback_reason) == (2, "store", None)
    assert r.model_path == two_versions.version_dir("fraud", 2) / "model.tflite"
    assert len(two_versions.state("fraud").history) == events


def test_corrupted_active_falls_back_to_last_known_good(two_versions: ModelStore) -> None:
    _damage(two_versions.version_dir("fraud", 2) / "model.tflite")
    r = two_versions.resolve("fraud")
    assert (r.version, r.source) == (1, "store")
    assert r.fallback_reason is not None and "v2 failed verification" in r.fallback_reason
    state = two_versions.state("fraud")
    assert state.active == 1 and state.last_known_good is None and not state.serving_factory
    assert "does not match its sha256" in state.quarantined[2]
    last = state.history[-1]
    assert (last["event"], last["previous"], last["to"]) == ("fallback", 2, "v1")
    assert "v2 failed verification" in last["reason"]


def test_with_last_known_good_corrupted_too_the_factory_is_served(two_versions: ModelStore) -> None:
    _damage(two_versions.version_dir("fraud", 2) / "model.tflite")
    two_versions.resolve("fraud")
    _damage(two_versions.version_dir("fraud", 1) / "manifest.json", offset=30)
    r = two_versions.resolve("fraud")
    assert (r.version, r.source, r.model_path) == (1, "factory", None)
    assert r.model_bytes == (Path(__file__).resolve().parents[2] / "device/factory/fraud.tflite").read_bytes()
    state = two_versions.state("fraud")
    assert state.serving_factory and state.active is None and state.last_known_good is None
    assert set(state.quarantined) == {1, 2}
    assert state.history[-1]["to"] == "factory" and "v1 failed verification" in state.history[-1]["reason"]


def test_both_corrupted_at_once_fall_through_to_the_factory_in_one_start(two_versions: ModelStore) -> None:
    _damage(two_versions.version_dir("fraud", 2) / "model.tflite")
    shutil.rmtree(two_versions.version_dir("fraud", 1))
    r = two_versions.resolve("fraud")
    assert r.source == "factory"
    assert r.fallback_reason is not None
    assert "v2 failed verification" in r.fallback_reason and "v1 failed verification" in r.fallback_reason
    state = two_versions.state("fraud")
    assert state.quarantined[1] == "fraud v1: manifest.json is missing"


def test_repeated_start_ups_on_the_factory_record_the_fallback_once(two_versions: ModelStore) -> None:
    for v in (1, 2):
        _damage(two_versions.version_dir("fraud", v) / "model.tflite")
    two_versions.resolve("fraud")
    history = list(two_versions.state("fraud").history)
    for _ in range(3):
        assert two_versions.resolve("fraud").source == "factory"
    assert two_versions.state("fraud").history == history


def test_reinstall_after_quarantine_repairs_and_reactivates(two_versions: ModelStore, make_bundle: Any) -> None:
    _damage(two_versions.version_dir("fraud", 2) / "model.tflite")
    two_versions.resolve("fraud")
    result = two_versions.install(make_bundle(2, model="fraud_int8io.tflite"))
    assert not result.already_installed
    state = two_versions.activate("fraud", 2)
    assert 2 not in state.quarantined and state.active == 2
    assert two_versions.resolve("fraud").version == 2


def test_factory_only_device_resolves_without_writing(device: Any) -> None:
    store = device.store()
    r = store.resolve("fraud")
    assert (r.source, r.version) == ("factory", 1)
    assert not device.store_path.exists()


def test_no_good_version_and_no_factory_is_an_error(device: Any, make_bundle: Any) -> None:
    store = ModelStore(device.store_path, device.keys.root, None)
    store.install(make_bundle(1))
    store.activate("fraud", 1)
    _damage(store.version_dir("fraud", 1) / "model.tflite")
    with pytest.raises(NotFoundError, match="no factory bundle for model 'fraud'"):
        store.resolve("fraud")
    assert 1 in store.state("fraud").quarantined


def test_factory_bundle_is_verified_too(device: Any, make_bundle: Any) -> None:
    factory = device.factory / "fraud.bundle"
    _damage(factory, offset=factory.stat().st_size - 11000)
    with pytest.raises(BundleError):
        device.store().resolve("fraud")
    other = ModelStore(device.store_path, device.keys.root, device.factory)
    shutil.copyfile(make_bundle(1, keys=[device.keys.stranger]), factory)
    with pytest.raises(SignatureError, match="is not trusted"):
        other.resolve("fraud")
