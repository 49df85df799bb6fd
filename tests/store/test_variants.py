"""The device's choice among a bundle's variants, with real bundles and backends: a variant that
fails its self-test is never served, a pin is honoured, and the trials are recorded once per
fingerprint (a restart reuses them; a change of threads or delegates times again)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime.bundle.reader import BundleLimits
from edge_runtime.bundle.sealed import encrypt_bundle
from edge_runtime.config import InferenceConfig, ModelConfig
from edge_runtime.exceptions import InferenceError
from edge_runtime.inference import selftest
from edge_runtime.inference.backend import load_backend
from edge_runtime.inference.variant_choice import Outcome, Trial
from edge_runtime.inference.variant_trial import trial_variants
from edge_runtime.store import variants
from edge_runtime.store.store import ModelStore
from edge_runtime.store.variants import RECORD_FILE, install_selftest, read_records, select_variant
from edge_runtime.trust.device_keys import generate_device_key

FAST = InferenceConfig(variant_timing_ms=10)


class CountingTrial:
    """The real trial, counted per variant."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, versions: Sequence[selftest.Testable], mcfg: ModelConfig, inference: InferenceConfig) -> list[Trial]:
        self.calls += [v.manifest.variant_name for v in versions]
        return trial_variants(versions, mcfg, inference)


def _store(tmp_path: Path, keys: Any, bundle: Path) -> ModelStore:
    store = ModelStore(tmp_path / "store", keys.root)
    result = store.install(bundle)
    store.activate(result.name, result.version)
    return store


def test_a_variant_that_fails_its_self_test_is_not_served(tmp_path: Path, keys: Any,
                                                           variant_bundle: Callable[..., Path]) -> None:
    store = _store(tmp_path, keys, variant_bundle(1, broken="tflite-fp32"))
    view, choice = select_variant(store, store.resolved_version("fraud", 1), ModelConfig(), FAST)
    assert choice.chosen == "onnx" and not choice.pinned
    failed = next(v for v in choice.verdicts if v.variant == "tflite-fp32")
    assert failed.outcome is Outcome.FAILED and "SelfTestError" in failed.reason and failed.ms_per_row is None
    assert (view.manifest.format, view.model_path) == ("onnx", store.version_dir("fraud", 1) / "model.onnx")
    backend = load_backend(view.manifest, view.model)  # what the daemon then loads: the ONNX model
    assert backend.delegate == "onnxruntime"
    assert backend.run([np.zeros((1, 30), np.float32)])[0].shape == (1, 1)
    backend.close()
    # The other way round: the ONNX variant broken, the TFLite one serves.
    store2 = _store(tmp_path / "b", keys, variant_bundle(2, broken="onnx"))
    _, choice2 = select_variant(store2, store2.resolved_version("fraud", 2), ModelConfig(), FAST)
    assert choice2.chosen == "tflite-fp32"
    assert [v.outcome for v in choice2.verdicts] == [Outcome.CHOSEN, Outcome.FAILED]


def test_the_trials_survive_a_restart_and_a_pin_applies_without_timing_again(
        tmp_path: Path, keys: Any, variant_bundle: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    trial = CountingTrial()
    monkeypatch.setattr(variants, "trial_variants", trial)
    store = _store(tmp_path, keys, variant_bundle(1))
    _, first = select_variant(store, store.resolved_version("fraud", 1), ModelConfig(), FAST)
    assert trial.calls == ["tflite-fp32", "onnx"]
    assert all(v.ms_per_row is not None and v.ms_per_row > 0 for v in first.verdicts)

    restarted = ModelStore(tmp_path / "store", keys.root)  # a new process: only the files remain
    _, again = select_variant(restarted, restarted.resolved_version("fraud", 1), ModelConfig(), FAST)
    assert trial.calls == ["tflite-fp32", "onnx"], "the restart timed the variants again"
    assert again == first

    for pin in ("onnx", "tflite-fp32"):
        view, pinned = select_variant(restarted, restarted.resolved_version("fraud", 1), ModelConfig(variant=pin), FAST)
        assert (pinned.chosen, pinned.pinned, view.manifest.variant_name) == (pin, True, pin)
        assert {v.outcome for v in pinned.verdicts if v.variant != pin} == {Outcome.NOT_PINNED}
    assert len(trial.calls) == 2, "a pin needs no new timing"

    # Different conditions (threads here; delegates and runtime alike) time every variant again.
    select_variant(restarted, restarted.resolved_version("fraud", 1), ModelConfig(num_threads=2), FAST)
    assert len(trial.calls) == 4
    assert set(read_records(restarted, "fraud")) == {"1"}


def test_an_unreadable_record_is_measured_again(tmp_path: Path, keys: Any, variant_bundle: Callable[..., Path],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(tmp_path, keys, variant_bundle(1))
    (store.model_dir("fraud") / RECORD_FILE).write_text('{"1": {"fingerprint": "x", "trials": [{"variant": 5}]}}')
    assert read_records(store, "fraud") == {}
    monkeypatch.setattr(variants, "trial_variants",
                        lambda views, m, i: [Trial(v.manifest.variant_name, ms_per_row=1.0) for v in views])
    _, choice = select_variant(store, store.resolved_version("fraud", 1), ModelConfig(), FAST)
    assert choice.chosen == "tflite-fp32"  # equal figures: the bundle's own variant, listed first
    assert [t.variant for t in read_records(store, "fraud")["1"].trials] == ["tflite-fp32", "onnx"]


def test_activation_tries_every_variant_and_fails_only_when_none_can_serve(
        tmp_path: Path, keys: Any, variant_bundle: Callable[..., Path]) -> None:
    store = ModelStore(tmp_path / "store", keys.root)
    store.install(variant_bundle(3, broken="tflite-fp32"))
    state = store.activate("fraud", 3, selftest=install_selftest(store, ModelConfig(), FAST))
    assert state.active == 3
    assert [t.variant for t in read_records(store, "fraud")["3"].trials] == ["tflite-fp32", "onnx"]  # the daemon reuses it
    store.install(variant_bundle(4, broken="tflite-fp32,onnx"))
    with pytest.raises(InferenceError, match="no variant can serve: tflite-fp32: SelfTestError.*; onnx: SelfTestError"):
        store.activate("fraud", 4, selftest=install_selftest(store, ModelConfig(), FAST))
    assert store.state("fraud").active == 3 and 4 in store.state("fraud").failed


def test_an_encrypted_bundle_encrypts_each_variant_and_the_device_chooses_from_memory(
        tmp_path: Path, keys: Any, variant_bundle: Callable[..., Path]) -> None:
    device = generate_device_key()
    sealed = tmp_path / "sealed.bundle"
    encrypt_bundle(variant_bundle(1, broken="tflite-fp32"), [device.public_key()], [keys.key], sealed)
    store = ModelStore(tmp_path / "store", keys.root, None, BundleLimits(), device_key=device)
    store.install(sealed)
    assert sorted(p.name for p in store.version_dir("fraud", 1).iterdir()) == [
        "manifest.json", "manifest.sig", "model.onnx.enc", "model.tflite.enc"]
    view, choice = select_variant(store, store.resolved_version("fraud", 1), ModelConfig(), FAST)
    assert choice.chosen == "onnx" and view.manifest.format == "onnx" and isinstance(view.model, bytes)
    assert view.model == (Path(__file__).parents[2] / "device/factory/fraud.onnx").read_bytes()


def test_offline_scoring_uses_the_devices_choice(tmp_path: Path, keys: Any, cli: Callable[..., Any],
                                                             variant_bundle: Callable[..., Path]) -> None:
    store = _store(tmp_path, keys, variant_bundle(1, broken="tflite-fp32"))
    config = tmp_path / "config.toml"
    config.write_text(f'[store]\npath = "{store.path}"\n[trust]\nroot = "{keys.root_path}"\n'
                      '[inference]\nvariant_timing_ms = 10\n', encoding="utf-8")
    sample = Path(__file__).parents[2] / "device" / "factory" / "sample.npy"
    scored = cli(["score", "--model", "fraud", sample, "-o", tmp_path / "y.npy", "--config", config])
    assert scored.code == 0, scored.err
    assert "fraud v1: variant onnx" in scored.err  # the TFLite variant fails its self-test here
    assert np.load(tmp_path / "y.npy").shape[0] == np.load(sample).shape[0]


def test_models_list_says_why_a_variant_over_the_budget_lost(tmp_path: Path, keys: Any, cli: Callable[..., Any],
                                                              variant_bundle: Callable[..., Path]) -> None:
    # The ONNX variant's error against the TFLite model it was measured with is ~1e-7: above this budget.
    store = _store(tmp_path, keys, variant_bundle(1, budget=1e-9))
    _, choice = select_variant(store, store.resolved_version("fraud", 1), ModelConfig(), FAST)
    assert choice.chosen == "tflite-fp32"
    assert [v.outcome for v in choice.verdicts] == [Outcome.CHOSEN, Outcome.OVER_BUDGET]
    store.record_serving("fraud", 1, {"delegate": "xnnpack", "skipped": [], "variant": choice.to_json()})  # the daemon's
    config = tmp_path / "config.toml"
    config.write_text(f'[store]\npath = "{store.path}"\n[trust]\nroot = "{keys.root_path}"\n', encoding="utf-8")
    listing = cli(["models", "list", "--config", config])
    assert listing.code == 0, listing.err
    assert "serving variant tflite-fp32 on xnnpack" in listing.out
    over = next(line for line in listing.out.splitlines() if "variant onnx:" in line)
    assert "over-budget" in over and "against the reference is above the budget 1e-09" in over and "ms/row" in over
