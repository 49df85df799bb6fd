"""Manifests with several variants: each validated like the manifest's own model, and old
single-variant manifests unchanged."""

from __future__ import annotations

import copy
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.bundle.manifest import manifest_from_json, parse_manifest
from edge_runtime.bundle.reader import BundleLimits, open_bundle
from edge_runtime.exceptions import ManifestError
from edge_runtime.fleet.delta import plan_delta, read_artifacts
from edge_runtime.updates.delta import verify_delta_message
from edge_runtime.updates.protocol import Topics


@pytest.fixture(scope="module")
def variant_obj(variant_bundle: Callable[..., Path]) -> dict[str, Any]:
    with tarfile.open(variant_bundle(1)) as tar:
        fh = tar.extractfile("manifest.json")
        assert fh is not None
        return json.loads(fh.read())


def test_a_bundle_carries_each_variant_with_its_own_golden_and_report(variant_bundle: Callable[..., Path],
                                                                        keys: Any) -> None:
    with open_bundle(variant_bundle(1), keys.root, BundleLimits()) as b:
        m = b.manifest
        assert [(v.name, v.format, v.file) for v in m.variants] == [
            ("tflite-fp32", "tflite", "model.tflite"), ("onnx", "onnx", "model.onnx")]
        onnx = m.for_variant("onnx")
        assert (onnx.format, onnx.model_file, onnx.variant_name) == ("onnx", "model.onnx", "onnx")
        assert onnx.golden is not None and onnx.golden != m.golden  # its own tolerance, from its measured error
        assert onnx.quantization["accuracy"]["reference"]["file"] == "fraud.tflite"
        assert onnx.canonical() == m.canonical() == b.manifest_bytes  # a view's JSON is the signed manifest
        assert b.read_artifact("model.onnx")[:2] == (Path(__file__).parents[2] / "device/factory/fraud.onnx").read_bytes()[:2]


def test_an_old_manifest_is_one_variant(make_bundle: Callable[..., Path], keys: Any) -> None:
    with open_bundle(make_bundle(1), keys.root, BundleLimits()) as b:
        m = b.manifest
    assert [(v.name, v.file) for v in m.variants] == [("tflite", "model.tflite")]
    assert m.variant is None and m.model_file == "model.tflite" and "variants" not in m.to_json()


def _edit(obj: dict[str, Any], fn: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    fn(obj)
    return obj


def _art(obj: dict[str, Any], name: str) -> None:
    obj["artifacts"][name] = obj["artifacts"]["model.onnx"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda o: o["variants"][0].update(name="tflite-fp32"), "must be unique"),
        (lambda o: o["variants"][0].update(name="Bad Name"), "must be unique and match"),
        (lambda o: o["variants"][0].update(format="pytorch"), "format 'pytorch' is not one of"),
        (lambda o: o["variants"][0].update(file="model.tflite"), "file must be 'model.onnx' or 'model-onnx.onnx'"),
        (lambda o: o["artifacts"].pop("model.onnx"), "listed in artifacts"),
        (lambda o: o["variants"][0].update(extra=1), "expected {name, format, file"),
        (lambda o: o.update(variants=[o["variants"][0]] * 9), "at most 8"),
        (lambda o: _art(o, "model-ghost.tflite"), r"artifacts \['model-ghost.tflite'\] belong to no variant"),
        (lambda o: _art(o, "model-../x.tflite"), "is not one of"),
        (lambda o: o["variants"][0].update(golden={"file": "golden.npz", "atol": 0, "rtol": 0}),
         "'file' must be 'golden-onnx.npz'"),
        (lambda o: o.update(accuracy_budget={"max_abs_error": -1}), "accuracy_budget.max_abs_error"),
        (lambda o: o.update(variant="UPPER"), "variant name 'UPPER' must match"),
        (lambda o: o.update(variant=7), "variant name '7' must match"),
        (lambda o: o["variants"][0].update(name="onnx\n"), "must be unique and match"),
        (lambda o: o["variants"][0].update(quantization={"mode": "onnx", "accuracy": {"max_abs_error": True}}),
         "max_abs_error must be a finite number"),
        (lambda o: o["variants"][0].update(quantization={"mode": "onnx", "report": {"max_abs_error": -1.0}}),
         "max_abs_error must be a finite number"),
    ],
)
def test_variant_fields_are_validated(variant_obj: dict[str, Any], edit: Callable[[dict[str, Any]], None],
                                      message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        manifest_from_json(_edit(variant_obj, edit))


def test_a_budget_and_a_renamed_tflite_variant_parse(variant_obj: dict[str, Any]) -> None:
    def second_tflite(o: dict[str, Any]) -> None:
        o["artifacts"]["model-tflite-copy.tflite"] = o["artifacts"]["model.tflite"]
        o["variants"].append({"name": "tflite-copy", "format": "tflite", "file": "model-tflite-copy.tflite"})
        o["accuracy_budget"] = {"max_abs_error": 0.01}

    m = manifest_from_json(_edit(variant_obj, second_tflite))
    assert m.for_variant("tflite-copy").model_file == "model-tflite-copy.tflite"
    assert m.budget_max_abs_error == 0.01
    with pytest.raises(ManifestError, match="has no variant 'nope'"):
        m.for_variant("nope")
    assert parse_manifest(m.canonical()).variants == m.variants


def test_bundle_create_packs_variants_and_inspect_lists_them(cli: Callable[..., Any], keys: Any, tmp_path: Path) -> None:
    factory = Path(__file__).parents[2] / "device" / "factory"
    out = tmp_path / "v.bundle"
    made = cli(["bundle", "create", factory / "fraud.tflite", "--name", "fraud", "--version", "1", "--sign-key",
                keys.key_path, "--input-names", "input_0", "--output-names", "output_0", "--variant",
                f"onnx={factory / 'fraud.onnx'}", "--accuracy-budget", "0.01", "-o", out])
    assert made.code == 0, made.err
    shown = cli(["bundle", "inspect", out, "--root", keys.root_path])
    assert shown.code == 0, shown.err
    assert "variant onnx: onnx (model.onnx), quantization as-is, max abs error" in shown.out
    assert "variants: tflite, onnx (the device serves its fastest, accuracy budget 0.01)" in shown.out
    bad = cli(["bundle", "create", factory / "fraud.tflite", "--name", "fraud", "--version", "1", "--sign-key",
               keys.key_path, "--variant", "Bad=x", "-o", tmp_path / "w.bundle"])
    assert bad.code == 2 and "expected NAME=FILE" in bad.err


def test_a_delta_covers_every_variants_artifact(variant_bundle: Callable[..., Path], keys: Any) -> None:
    topics = Topics("edge", "f")
    new, old = read_artifacts(variant_bundle(2), keys.root), read_artifacts(variant_bundle(1), keys.root)
    plan = plan_delta(topics, new, old, [keys.key], skip_ratio=10.0)
    chunked = {t.split("/chunks/")[1].rsplit("/", 1)[0] for t in plan.messages if "/chunks/" in t}
    assert chunked == {"model.tflite", "model.onnx"}
    index = verify_delta_message(plan.messages[topics.delta_index("fraud", 2, 1)], keys.root, new[0], 1, 1 << 30)
    assert set(index.artifacts) == {"model.tflite", "model.onnx"}

