"""Retention: which versions ``keep_versions`` deletes (pure), what the config pins, and the store
removing versions after an activation or on request, crash-safely."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge_runtime.bundle.reader import BundleLimits
from edge_runtime.config import parse_config
from edge_runtime.exceptions import NotFoundError, StoreError
from edge_runtime.store import lifecycle
from edge_runtime.store.retention import config_pins, expired
from edge_runtime.store.store import ModelStore


def test_versions_beyond_the_newest_n_expire() -> None:
    assert expired([1, 2, 3, 4, 5], 3, protected=set()) == [1, 2]
    assert expired([1, 2, 3], 3, protected=set()) == []
    assert expired([], 1, protected=set()) == []


def test_protected_versions_never_expire() -> None:
    # active v1 after a rollback, last known good v2: older than the newest two, both kept
    assert expired([1, 2, 3, 4, 5, 6], 2, protected={1, 2}) == [3, 4]


def test_config_pins_traffic_shadow_and_specific_versions() -> None:
    cfg = parse_config({"models": {
        "fraud": {"version_policy": "specific", "versions": [2], "traffic": {"3": 10, "4": 0}, "shadow": 5},
    }})
    pins = config_pins(cfg.models)
    assert pins("fraud") == {2, 3, 5}
    assert pins("other") == set()
    assert expired([1, 2, 3, 4, 5, 6, 7], 1, protected=pins("fraud")) == [1, 4, 6]


# -- the store: retention after activation, crash-safe removal --------------------------------

def _store(device: Any, keep: int | None, pins: Any = None) -> ModelStore:
    return ModelStore(device.store_path, device.keys.root, device.factory, BundleLimits(), keep_versions=keep, pins=pins)


def _installed(store: ModelStore) -> list[int]:
    return store.versions("fraud")


def test_activation_deletes_versions_beyond_keep_versions(device: Any, make_bundle: Any) -> None:
    store = _store(device, keep=2)
    for v in (1, 2, 3, 4):
        store.install(make_bundle(v))
        store.activate("fraud", v)
    assert _installed(store) == [3, 4]
    assert not list((device.store_path / "fraud").glob(".trash-*"))
    state = store.state("fraud")
    assert (state.active, state.last_known_good, state.highest_seen) == (4, 3, 4)
    removed = [e["version"] for e in state.history if e["event"] == "removed"]
    assert removed == [1, 2]


def test_retention_keeps_the_active_the_last_known_good_and_pinned_versions(device: Any, make_bundle: Any) -> None:
    store = _store(device, keep=None)
    for v in (1, 2, 3, 4, 5):
        store.install(make_bundle(v))
    store.activate("fraud", 2)
    store.activate("fraud", 1)  # active v1, last known good v2: both older than the newest
    kept = _store(device, keep=1, pins=lambda name: {3})
    kept.activate("fraud", 1)
    assert _installed(kept) == [1, 2, 3, 5]


def test_without_keep_versions_nothing_is_deleted(device: Any, make_bundle: Any) -> None:
    store = _store(device, keep=None)
    for v in (1, 2, 3, 4):
        store.install(make_bundle(v))
        store.activate("fraud", v)
    assert _installed(store) == [1, 2, 3, 4]


def test_remove_refuses_active_and_last_known_good_and_missing(device: Any, make_bundle: Any) -> None:
    store = _store(device, keep=None)
    for v in (1, 2, 3):
        store.install(make_bundle(v))
        store.activate("fraud", v)
    before = store.state("fraud").to_json()
    with pytest.raises(StoreError, match="fraud v3 is active: it cannot be removed"):
        store.remove("fraud", 3)
    with pytest.raises(StoreError, match="fraud v2 is the last known good: it cannot be removed"):
        store.remove("fraud", 2)
    with pytest.raises(NotFoundError, match=r"fraud v7 is not installed \(installed: \[1, 2, 3\]\)"):
        store.remove("fraud", 7)
    assert store.state("fraud").to_json() == before and _installed(store) == [1, 2, 3]
    store.remove("fraud", 1)
    assert _installed(store) == [2, 3]
    assert store.state("fraud").highest_seen == 3  # the anti-rollback floor stays


def test_a_removal_killed_after_the_rename_leaves_a_trash_dir_that_start_up_removes(
    device: Any, make_bundle: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(device, keep=None)
    for v in (1, 2, 3):
        store.install(make_bundle(v))
    store.activate("fraud", 3)

    def killed(paths: list[Path]) -> None:
        raise KeyboardInterrupt  # the process dies between the rename and the delete

    monkeypatch.setattr(lifecycle, "empty_trash", killed)
    with pytest.raises(KeyboardInterrupt):
        store.remove("fraud", 1)
    assert _installed(store) == [2, 3]  # never half a version: it is gone from the listing
    assert len(list((device.store_path / "fraud").glob(".trash-1-*"))) == 1
    removed = _store(device, keep=None).cleanup_partial()
    assert [p.name.startswith(".trash-1-") for p in removed] == [True]
    assert not list((device.store_path / "fraud").glob(".trash-*"))
