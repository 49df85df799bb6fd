"""Bundles and libraries that several suites build: a bundle re-signed with changes, and the
test delegates compiled from tests/inference/delegate_src."""

from __future__ import annotations

import functools
import io
import json
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from edge_runtime.bundle.writer import build_manifest, hash_artifact, write_bundle
from edge_runtime.packaging import PackRequest, VariantRequest, pack_model

FACTORY_SRC = Path(__file__).resolve().parents[2] / "device" / "factory"


def rebuilt_bundle(src: Path, out: Path, keys: Any, version: int, runtime: dict[str, Any] | None = None,
             model_suffix: bytes = b"") -> Path:
    """``src`` re-signed as ``version`` with a ``runtime`` field and/or bytes appended to its model."""
    with tarfile.open(src) as tar:
        m_fh, model_fh = tar.extractfile("manifest.json"), tar.extractfile("model.tflite")
        assert m_fh is not None and model_fh is not None
        fields, model = json.loads(m_fh.read()), model_fh.read() + model_suffix
    fields["version"] = version
    fields["artifacts"]["model.tflite"] = hash_artifact("model.tflite", model).to_json()
    if runtime is not None:
        fields["runtime"] = runtime
    write_bundle(out, build_manifest(fields), {"model.tflite": model}, [keys.key])
    return out


def pack_variant_bundle(out: Path, key: Any, version: int, broken: str | None = None,
                        budget: float | None = None) -> Path:
    """fraud with two variants, ``tflite-fp32`` (the manifest's own) and ``onnx``, signed with ``key``;
    ``broken`` names those (comma-separated) whose golden outputs are made wrong, signed again
    correctly (its self-test fails on any device); ``budget`` is the manifest's ``accuracy_budget``."""
    pack_model(PackRequest(
        FACTORY_SRC / "fraud.tflite", name="fraud", version=version, keys=[key], out=out,
        input_names=["input_0"], output_names=["output_0"], golden_inputs=[np.load(FACTORY_SRC / "golden.npy")],
        quantization={"mode": "fp32"}, variant="tflite-fp32",
        variants=[VariantRequest("onnx", FACTORY_SRC / "fraud.onnx", {"mode": "onnx"})], accuracy_budget=budget,
    ))
    if broken is not None:
        with tarfile.open(out) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
        fields = json.loads(members["manifest.json"])
        for name in broken.split(","):
            target = fields if name == "tflite-fp32" else next(v for v in fields["variants"] if v["name"] == name)
            for t in target["golden"]["outputs"].values():
                t["data"] = [v + 0.5 for v in t["data"]]
        artifacts = {k: v for k, v in members.items() if k not in ("manifest.json", "manifest.sig")}
        write_bundle(out, build_manifest(fields), artifacts, [key])
    return out


@dataclass(frozen=True)
class DelegateLibs:
    """Shared libraries built from ``tests/inference/delegate_src``: a real external delegate
    (claims no nodes; records its options to the file its ``record`` option names), a library
    without the plugin entry points, and a path where no library is."""

    stub: Path
    no_entry_points: Path
    missing: Path


def resigned_with_artifacts(src: Path, out: Path, key: Any, version: int, artifacts: dict[str, bytes],
                            **fields_update: Any) -> Path:
    """``src`` re-signed with ``key`` as ``version``, with extra artifacts and manifest fields."""
    with tarfile.open(src) as tar:
        m_fh, model_fh = tar.extractfile("manifest.json"), tar.extractfile("model.tflite")
        assert m_fh is not None and model_fh is not None
        fields, model = json.loads(m_fh.read()), model_fh.read()
    fields["version"] = version
    for name, data in artifacts.items():
        fields["artifacts"][name] = hash_artifact(name, data).to_json()
    fields.update(fields_update)
    write_bundle(out, build_manifest(fields), {"model.tflite": model, **artifacts}, [key])
    return out


def _npy_header(shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue()


@functools.lru_cache(maxsize=2)
def golden_bomb(zero_bytes: int) -> bytes:
    """A golden.npz for the demo model whose ``input_0`` is ``zero_bytes`` of float32 zeros,
    deflated (~1000x): written in pieces, never held whole (built once per session)."""
    rows = zero_bytes // (30 * 4)
    header = _npy_header((rows, 30))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        info = zipfile.ZipInfo("input_0.npy")
        info.compress_type = zipfile.ZIP_DEFLATED
        info.file_size = len(header) + rows * 30 * 4
        with zf.open(info, "w") as fh:
            fh.write(header)
            zeros = bytes(30 * 4 * 65536)
            for _ in range(rows // 65536):
                fh.write(zeros)
            fh.write(bytes(30 * 4 * (rows % 65536)))
        zf.writestr("output_0.npy", _npy_header((5, 1)) + bytes(20))
    return buf.getvalue()
