"""Fuzzing the parsers that take untrusted bytes: manifest, signature file, trust root, bundle tar.

Property: whatever the bytes, the parser returns a verified object or raises one of the
project's own errors (EdgeRuntimeError); never another exception. ``make test`` runs a
short pass; ``make test-long`` (EDGE_TEST_LONG=1) runs at least 10,000 cases per parser.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime.bundle.manifest import parse_manifest
from edge_runtime.bundle.reader import open_bundle, parse_signature_file
from edge_runtime.exceptions import EdgeRuntimeError
from edge_runtime.packaging import pack_model
from edge_runtime.trust.canonical import canonical_json
from edge_runtime.trust.keys import generate_private_key
from edge_runtime.trust.root import TrustRoot, make_root, sign_root, update_root, verify_root

LONG = os.environ.get("EDGE_TEST_LONG") == "1"
EXAMPLES = 10_000 if LONG else 300
FACTORY = Path(__file__).resolve().parents[2] / "device" / "factory"
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=30,
)


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real signed bundle, its manifest and a trust root."""
    tmp = tmp_path_factory.mktemp("fuzz")
    key = generate_private_key()
    root_bytes = sign_root(make_root(1, [key], [key]), [key])
    out = tmp / "fraud.bundle"
    pack_model(FACTORY / "fraud.tflite", name="fraud", version=1, keys=[key], out=out, chunk_size=4096,
               input_names=["input_0"], output_names=["output_0"])
    with tarfile.open(out) as tar:
        manifest_bytes = tar.extractfile("manifest.json").read()  # type: ignore[union-attr]
        sig_bytes = tar.extractfile("manifest.sig").read()  # type: ignore[union-attr]
    return {"key": key, "root_bytes": root_bytes, "root": verify_root(root_bytes), "bundle": out.read_bytes(),
            "manifest": manifest_bytes, "sig": sig_bytes, "tmp": tmp}


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    buf = bytearray(data)
    for pos, val in edits:
        if buf:
            buf[pos % len(buf)] = val
    if cut is not None and buf:
        buf = buf[: cut % (len(buf) + 1)]
    return bytes(buf)


edits = st.lists(st.tuples(st.integers(0, 2**31), st.integers(0, 255)), max_size=6)


@SETTINGS
@given(value=json_values)
def test_manifest_parser_random_json(value: Any) -> None:
    try:
        parse_manifest(canonical_json(value))
    except EdgeRuntimeError:
        pass


@SETTINGS
@given(edits=edits, cut=st.none() | st.integers(0, 2**31))
def test_manifest_parser_mutated(signed: dict[str, Any], edits: list[tuple[int, int]], cut: int | None) -> None:
    data = _mutate(signed["manifest"], edits, cut)
    try:
        m = parse_manifest(data)
    except EdgeRuntimeError:
        return
    assert m.name and m.version >= 1


@SETTINGS
@given(field=st.sampled_from(["name", "version", "format", "artifacts", "inputs", "outputs", "golden", "compatible",
                              "quantization", "created"]), value=json_values)
def test_manifest_parser_field_swapped(signed: dict[str, Any], field: str, value: Any) -> None:
    obj = json.loads(signed["manifest"])
    obj[field] = value
    try:
        parse_manifest(canonical_json(obj))
    except EdgeRuntimeError:
        pass


@SETTINGS
@given(data=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_signature_file_parser(data: bytes) -> None:
    try:
        parse_signature_file(data)
    except EdgeRuntimeError:
        pass


@SETTINGS
@given(edits=edits, cut=st.none() | st.integers(0, 2**31))
def test_root_parser_mutated(signed: dict[str, Any], edits: list[tuple[int, int]], cut: int | None) -> None:
    data = _mutate(signed["root_bytes"], edits, cut)
    try:
        root = verify_root(data)
    except EdgeRuntimeError:
        return
    assert isinstance(root, TrustRoot)


@SETTINGS
@given(value=json_values)
def test_root_update_random_json(signed: dict[str, Any], value: Any) -> None:
    try:
        update_root(signed["root"], json.dumps(value).encode())
    except EdgeRuntimeError:
        pass
    else:  # pragma: no cover - random JSON must never verify
        pytest.fail("random JSON was accepted as a root update")


@SETTINGS
@given(edits=edits, cut=st.none() | st.integers(0, 2**31))
def test_bundle_reader_mutated(signed: dict[str, Any], edits: list[tuple[int, int]], cut: int | None,
                               tmp_path_factory: pytest.TempPathFactory) -> None:
    data = _mutate(signed["bundle"], edits, cut)
    path = signed["tmp"] / "mutated.bundle"
    path.write_bytes(data)
    try:
        with open_bundle(path, signed["root"]) as b:
            # Whatever was accepted must be exactly the signed manifest.
            assert b.manifest_bytes == signed["manifest"]
    except EdgeRuntimeError:
        pass


@SETTINGS
@given(members=st.lists(st.tuples(st.sampled_from(["manifest.json", "manifest.sig", "model.tflite", "../x", "/abs",
                                                   "a/b", "model.onnx", "extra"]),
                                  st.sampled_from(["file", "symlink", "hardlink", "dir", "fifo"]),
                                  st.binary(max_size=64)), max_size=6))
def test_bundle_reader_odd_members(signed: dict[str, Any], members: list[tuple[str, str, bytes]]) -> None:
    buf = io.BytesIO()
    kinds = {"file": tarfile.REGTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
             "dir": tarfile.DIRTYPE, "fifo": tarfile.FIFOTYPE}
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type = kinds[kind]
            if kind == "file":
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                info.linkname = "manifest.json"
                tar.addfile(info)
    path = signed["tmp"] / "odd.bundle"
    path.write_bytes(buf.getvalue())
    with pytest.raises(EdgeRuntimeError):
        open_bundle(path, signed["root"])
