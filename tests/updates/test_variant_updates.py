"""An update to a bundle with several variants on a device without a daemon (the updater runs
the self-test in process, ``store/variants.py install_selftest``): one variant failing its
self-test does not stop the update, and the choice is recorded for the daemon to reuse; every
variant failing refuses the version, and the old one keeps serving (FakeBroker, real store and
backends)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_runtime.bundle.reader import BundleLimits
from edge_runtime.config import InferenceConfig, ModelConfig, parse_config
from edge_runtime.inference.variant_choice import Trial
from edge_runtime.store.store import ModelStore
from edge_runtime.store.variants import fingerprint, install_selftest, read_records, select_variant
from edge_runtime.updates.protocol import Topics
from edge_runtime.updates.service import UpdateService
from harness.bundles import pack_variant_bundle
from updates.conftest import DeviceFactory, FleetKeys, Repo

FAST = InferenceConfig(variant_timing_ms=10)


@pytest.fixture(scope="module")
def fleet_variants(tmp_path_factory: pytest.TempPathFactory, fleet_keys: FleetKeys) -> dict[str, Path]:
    """fraud v2 with its TFLite variant broken, and v3 with both variants broken, signed by the models key."""
    d = tmp_path_factory.mktemp("fleet-variants")
    return {"one-broken": pack_variant_bundle(d / "v2.bundle", fleet_keys.models_key, 2, broken="tflite-fp32"),
            "all-broken": pack_variant_bundle(d / "v3.bundle", fleet_keys.models_key, 3, broken="tflite-fp32,onnx")}


def test_an_update_whose_variant_fails_activates_another_and_one_whose_variants_all_fail_is_rolled_back(
        make_device: DeviceFactory, repo: Repo, topics: Topics, fleet_variants: dict[str, Path]) -> None:
    dev = make_device(selftest=False)
    dev.updater.selftest = install_selftest(dev.store, lambda name: ModelConfig(), FAST)

    dev.broker.put(repo.release(fleet_variants["one-broken"]))
    dev.broker.put({topics.desired: repo.desired({"fraud": 2}, seq=1)})
    dev.sync()
    assert dev.store.state("fraud").active == 2
    assert dev.broker.events("activated")[0]["version"] == 2 and not dev.broker.events("failed")
    trials = {t.variant: t for t in read_records(dev.store, "fraud")["2"].trials}  # what the daemon reuses
    assert "SelfTestError" in (trials["tflite-fp32"].error or "")
    assert trials["onnx"].error is None and (trials["onnx"].ms_per_row or 0) > 0

    dev.broker.put(repo.release(fleet_variants["all-broken"]))
    dev.broker.put({topics.desired: repo.desired({"fraud": 3}, seq=2)})
    dev.sync()
    state = dev.store.state("fraud")
    assert state.active == 2 and 3 in state.failed
    reason = dev.broker.events("failed")[0]["reason"]
    assert "no variant can serve: tflite-fp32: SelfTestError" in reason and "onnx: SelfTestError" in reason
    assert dev.broker.events("rolled_back")[0]["version"] == 2
    # What a daemon started now serves: v2's ONNX variant, from the record, nothing timed again.
    _, choice = select_variant(dev.store, dev.store.resolved_version("fraud", state.active), ModelConfig(), FAST,
                               trial=_never)
    assert choice.chosen == "onnx"


def _never(*_args: object) -> list[Trial]:
    raise AssertionError("the variants were timed again")


def test_the_update_service_tries_the_variants_with_the_devices_config(
        tmp_path: Path, fleet_keys: FleetKeys, fleet_variants: dict[str, Path]) -> None:
    """The service's in-process self-test times under the daemon's threads and timing, so the record's
    fingerprint is the one the daemon computes and it reuses the figures instead of timing again."""
    cfg = parse_config({
        "store": {"path": str(tmp_path / "store")}, "trust": {"root": str(fleet_keys.path("root.json"))},
        "mqtt": {"url": "mqtt://127.0.0.1:1", "fleet": "f1"}, "inference": {"variant_timing_ms": 10},
        "models": {"fraud": {"num_threads": 2}},
    })
    store = ModelStore(tmp_path / "store", fleet_keys.root, None, BundleLimits())
    store.install(fleet_variants["one-broken"])
    service = UpdateService(cfg, store, "dev-1", selftest_in_process=True)  # not started: no broker needed
    assert service.updater.selftest is not None
    resolved = store.resolved_version("fraud", 2)
    service.updater.selftest(resolved)
    assert read_records(store, "fraud")["2"].fingerprint == fingerprint(resolved, cfg.model("fraud"), cfg.inference)
