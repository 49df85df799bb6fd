"""The manifest model: every field is validated, and the writer produces what the reader wants."""

from __future__ import annotations

import copy
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.bundle.manifest import is_compatible, manifest_from_json, parse_manifest
from edge_runtime.bundle.writer import build_manifest, write_bundle
from edge_runtime.exceptions import ManifestError
from edge_runtime.trust.canonical import canonical_json


@pytest.fixture(scope="module")
def manifest_obj(make_bundle: Callable[..., Path]) -> dict[str, Any]:
    with tarfile.open(make_bundle(1)) as tar:
        fh = tar.extractfile("manifest.json")
        assert fh is not None
        return json.loads(fh.read())


def test_pack_model_records_the_spec_fields(manifest_obj: dict[str, Any]) -> None:
    m = parse_manifest(canonical_json(manifest_obj))
    assert (m.name, m.version, m.format) == ("fraud", 1, "tflite")
    assert [(t.name, t.datatype, t.shape) for t in m.inputs] == [("input_0", "FP32", (-1, 30))]
    assert [(t.name, t.datatype, t.shape) for t in m.outputs] == [("output_0", "FP32", (-1, 1))]
    art = m.artifacts["model.tflite"]
    assert art.length == (Path(__file__).resolve().parents[2] / "device/factory/fraud.tflite").stat().st_size
    assert art.chunk_size == 256 * 1024 and art.chunk_count == 1
    assert m.golden is not None and m.golden.inputs["input_0"]["shape"] == [4, 30]
    assert m.compatible == {"runtime_major": 0, "architectures": ["any"]}
    assert m.created.endswith("Z")
    assert m.canonical() == canonical_json(manifest_obj)


def _edit(obj: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    target = obj
    for p in path[:-1]:
        target = target[p]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return obj


DELETE = object()
ART = ("artifacts", "model.tflite")

BAD: list[tuple[tuple[Any, ...], Any, str]] = [
    (("name",), DELETE, "missing field 'name'"),
    (("name",), 5, "field 'name' has the wrong type"),
    (("name",), "../etc", "name '../etc' must match"),
    (("name",), "", "name '' must match"),
    (("version",), "2", "field 'version' has the wrong type"),
    (("version",), True, "field 'version' has the wrong type"),
    (("version",), 1.5, "field 'version' has the wrong type"),
    (("version",), 0, "version must be >= 1"),
    (("created",), None, "field 'created' has the wrong type"),
    (("format",), "pb", "format 'pb' is not one of"),
    (("format",), "onnx", "format 'onnx' needs the artifact 'model.onnx'"),
    (("artifacts",), [], "field 'artifacts' has the wrong type"),
    (("artifacts", "evil.so"), {}, "artifact 'evil.so' is not one of"),
    (ART, "x", "expected an object"),
    ((*ART, "length"), "5", "field 'length' has the wrong type"),
    ((*ART, "length"), 0, "length must be >= 1"),
    ((*ART, "sha256"), "ABC", "sha256 must be 64 lower-case hex digits"),
    ((*ART, "chunk_size"), 100, r"chunk_size must be in \[1024, 67108864\]"),
    ((*ART, "chunk_sha256"), [], "make 1 chunks, manifest lists 0"),
    ((*ART, "chunk_sha256"), ["z" * 64], "every chunk_sha256 must be 64 lower-case hex digits"),
    (("inputs",), [], "needs 1 to 64 inputs"),
    (("inputs", 0, "datatype"), "FLOAT", "datatype 'FLOAT' is not one of"),
    (("inputs", 0, "shape"), [-1, 0], "dimensions must be positive or -1"),
    (("inputs", 0, "shape"), "30", "'shape' must be a list"),
    (("inputs", 0, "name"), "", "'name' must be a non-empty string"),
    (("outputs", 0, "quantization"), {"datatype": "FP32", "scale": 1, "zero_point": 0}, "is not an integer type"),
    (("outputs", 0, "quantization"), {"datatype": "INT8", "scale": 0, "zero_point": 0}, "scale must be > 0"),
    (("outputs", 0, "quantization"), {"datatype": "INT8", "scale": 0.1, "zero_point": 0.5}, "expected an integer"),
    (("quantization",), "int8", "'quantization' must be an object"),
    (("golden", "atol"), -1, "atol and rtol must be >= 0"),
    (("golden", "atol"), True, "field 'atol' has the wrong type"),
    (("golden", "file"), "golden.npz", "a golden 'file' carries no inline inputs/outputs"),
    (("golden",), {"file": "golden.npz", "atol": 0.1, "rtol": 0.0}, "'file' must be 'golden.npz', listed in artifacts"),
    (("golden",), {"file": "model.tflite", "atol": 0.1, "rtol": 0.0}, "'file' must be 'golden.npz'"),
    (("golden", "inputs"), {}, r"inputs must name exactly \['input_0'\]"),
    (("golden", "outputs", "output_0", "data"), [1.0], "data must hold 4 numbers"),
    (("golden", "outputs", "output_0", "shape"), [4, "1"], "bad shape"),
    (("compatible",), DELETE, "missing field 'compatible'"),
    (("compatible", "runtime_major"), "0", "runtime_major must be an integer"),
    (("compatible", "architectures"), [], "architectures must be a non-empty list of strings"),
]


@pytest.mark.parametrize(("path", "value", "match"), BAD, ids=[f"{'.'.join(map(str, p))}={v!r}"[:60] for p, v, _ in BAD])
def test_invalid_manifest_fields_are_refused(manifest_obj: dict[str, Any], path: Any, value: Any, match: str) -> None:
    with pytest.raises(ManifestError, match=match):
        parse_manifest(canonical_json(_edit(manifest_obj, path, value)))


def test_unknown_fields_are_kept_and_signed(manifest_obj: dict[str, Any]) -> None:
    obj = dict(manifest_obj, description="demo", converter={"tool": "onnx2tf"})
    m = parse_manifest(canonical_json(obj))
    assert m.extra == {"description": "demo", "converter": {"tool": "onnx2tf"}}
    assert m.canonical() == canonical_json(obj)


def test_compatibility_check() -> None:
    base = {
        "name": "m", "version": 1, "created": "t", "format": "tflite",
        "artifacts": {"model.tflite": {"length": 1, "sha256": "0" * 64, "chunk_size": 1024, "chunk_sha256": ["0" * 64]}},
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}],
    }
    anyarch = manifest_from_json(dict(base, compatible={"runtime_major": 0, "architectures": ["any"]}))
    arm = manifest_from_json(dict(base, compatible={"runtime_major": 0, "architectures": ["aarch64"]}))
    assert is_compatible(anyarch, 0, "x86_64") is None
    assert is_compatible(arm, 0, "aarch64") is None
    assert is_compatible(arm, 0, "x86_64") == "built for architectures ['aarch64'], this device is x86_64"
    assert is_compatible(anyarch, 1, "x86_64") == "built for runtime major version 0, this runtime is 1"


def test_writer_output_is_an_atomic_ustar_with_three_members(
    manifest_obj: dict[str, Any], keys: Any, tmp_path: Path
) -> None:
    manifest = build_manifest({k: v for k, v in manifest_obj.items() if k != "created"})
    model = (Path(__file__).resolve().parents[2] / "device/factory/fraud.tflite").read_bytes()
    out = tmp_path / "out.bundle"
    manifest_bytes = write_bundle(out, manifest, {"model.tflite": model}, [keys.key])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bundle"]  # no temp file left
    with tarfile.open(out) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["manifest.json", "manifest.sig", "model.tflite"]
        assert all(m.isreg() and m.mtime == 0 for m in members)
        fh = tar.extractfile("manifest.json")
        assert fh is not None and fh.read() == manifest_bytes
    assert json.loads(manifest_bytes)["created"].endswith("Z")
