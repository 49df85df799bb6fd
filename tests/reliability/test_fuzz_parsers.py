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
from edge_runtime.packaging import PackRequest, pack_model
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
    pack_model(PackRequest(FACTORY / "fraud.tflite", name="fraud", version=1, keys=[key], out=out, chunk_size=4096,
               input_names=["input_0"], output_names=["output_0"]))
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
    # Random JSON never has a manifest's required fields: it must be refused, with our own error.
    with pytest.raises(EdgeRuntimeError):
        parse_manifest(canonical_json(value))


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
        m = parse_manifest(canonical_json(obj))
    except EdgeRuntimeError:
        return
    # Accepted: the manifest holds exactly the value given, and everything else unchanged
    # ("golden": null is the same as no golden section).
    if obj.get("golden", "") is None:
        del obj["golden"]
    assert m.to_json() == obj


@SETTINGS
@given(data=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_signature_file_parser(data: bytes) -> None:
    try:
        parsed = parse_signature_file(data)
    except EdgeRuntimeError:
        return
    # Accepted: a JSON object holding only "signatures", one (keyid, signature bytes) per entry.
    obj = json.loads(data)
    assert set(obj) == {"signatures"} and len(parsed) == len(obj["signatures"])
    assert all(isinstance(k, str) and isinstance(sig, bytes) for k, sig in parsed)


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


# -- the update protocol: desired state, manifest message, trust root, chunks, topics ------------

FLEET = "f1"


@pytest.fixture(scope="module")
def protocol(signed: dict[str, Any]) -> dict[str, Any]:
    """A signed desired state and manifest message of the fuzz bundle, and the fleet's topics."""
    from edge_runtime.trust.keys import sign
    from edge_runtime.updates.protocol import Topics, desired_document, manifest_message, signed_message

    key = signed["key"]
    doc = desired_document(FLEET, 7, {"fraud": {"version": 1, "rollout": {"percent": 50, "salt": "fraud-1"}}})
    payload = canonical_json(doc)
    sig = json.loads(signed["sig"])["signatures"]
    return {
        "key": key,
        "desired_doc": doc,
        "desired": signed_message("desired", payload, [sign(key, payload)]),
        "manifest_msg": manifest_message(signed["manifest"], sig),
        "topics": Topics("edge", FLEET),
    }


def _signed_desired(key: Any, doc: Any) -> bytes:
    """A desired-state message whose signature is valid, whatever the document holds."""
    from edge_runtime.trust.keys import sign
    from edge_runtime.updates.protocol import signed_message

    payload = canonical_json(doc)
    return signed_message("desired", payload, [sign(key, payload)])


@SETTINGS
@given(value=json_values)
def test_desired_parser_random_json(signed: dict[str, Any], value: Any) -> None:
    from edge_runtime.updates.verify import verify_desired

    with pytest.raises(EdgeRuntimeError):
        verify_desired(json.dumps(value).encode(), signed["root"], fleet=FLEET, device=None)


@SETTINGS
@given(edits=edits, cut=st.none() | st.integers(0, 2**31))
def test_desired_parser_mutated(signed: dict[str, Any], protocol: dict[str, Any], edits: list[tuple[int, int]],
                                cut: int | None) -> None:
    from edge_runtime.updates.verify import verify_desired

    data = _mutate(protocol["desired"], edits, cut)
    try:
        desired = verify_desired(data, signed["root"], fleet=FLEET, device=None)
    except EdgeRuntimeError:
        return
    # Only the signed document itself can pass (a mutation in insignificant bytes, if any).
    assert desired.seq == 7 and set(desired.models) == {"fraud"}


@SETTINGS
@given(
    field=st.sampled_from(["_type", "fleet", "device", "seq", "models", "expires", "extra"]),
    value=json_values,
    model_field=st.sampled_from(["version", "rollout", "percent", "salt", "other"]),
    model_value=json_values,
)
def test_desired_parser_signed_documents_with_odd_fields(
    signed: dict[str, Any], protocol: dict[str, Any], field: str, value: Any, model_field: str, model_value: Any
) -> None:
    """Validly signed, so the parser's field checks are what is fuzzed."""
    from edge_runtime.updates.verify import Desired, verify_desired

    doc = json.loads(json.dumps(protocol["desired_doc"]))
    doc[field] = value
    entry = doc["models"].get("fraud") if isinstance(doc.get("models"), dict) else None
    if isinstance(entry, dict):
        if model_field in ("percent", "salt") and isinstance(entry.get("rollout"), dict):
            entry["rollout"][model_field] = model_value
        else:
            entry[model_field] = model_value
    try:
        message = _signed_desired(signed["key"], doc)
    except EdgeRuntimeError:
        return  # not representable as canonical JSON (e.g. a float): nobody can sign it
    try:
        desired = verify_desired(message, signed["root"], fleet=FLEET, device=None)
    except EdgeRuntimeError:
        return
    assert isinstance(desired, Desired) and desired.seq >= 1 and desired.fleet == FLEET


@SETTINGS
@given(edits=edits, cut=st.none() | st.integers(0, 2**31), version=st.integers(-3, 3))
def test_manifest_message_parser_mutated(signed: dict[str, Any], protocol: dict[str, Any],
                                         edits: list[tuple[int, int]], cut: int | None, version: int) -> None:
    from edge_runtime.updates.verify import verify_manifest_message

    data = _mutate(protocol["manifest_msg"], edits, cut)
    try:
        release = verify_manifest_message(data, signed["root"], name="fraud", version=version)
    except EdgeRuntimeError:
        return
    assert release.manifest_bytes == signed["manifest"] and version == 1


@SETTINGS
@given(value=json_values, wrap=st.booleans())
def test_manifest_message_parser_random_json(signed: dict[str, Any], value: Any, wrap: bool) -> None:
    from edge_runtime.updates.verify import verify_manifest_message

    doc = {"manifest": json.dumps(value), "signatures": value} if wrap else value
    with pytest.raises(EdgeRuntimeError):
        verify_manifest_message(json.dumps(doc).encode(), signed["root"], name="fraud", version=1)


@SETTINGS
@given(data=st.binary(max_size=400) | json_values.map(lambda v: json.dumps(v).encode()), topic_version=st.integers(-2, 5))
def test_root_message_parser(signed: dict[str, Any], data: bytes, topic_version: int) -> None:
    from edge_runtime.updates.verify import verify_root_message

    try:
        new = verify_root_message(signed["root"], topic_version, data)
    except EdgeRuntimeError:
        return
    assert new is None and topic_version <= signed["root"].version  # nothing random rotates the root


@SETTINGS
@given(file=st.sampled_from(["model.tflite", "model.onnx", "", "../x"]) | st.text(max_size=10),
       index=st.integers(-(2**40), 2**40) | st.integers(-2, 8), data=st.binary(max_size=5000))
def test_chunk_check(signed: dict[str, Any], file: str, index: int, data: bytes) -> None:
    from edge_runtime.bundle.manifest import parse_manifest as parse
    from edge_runtime.updates.verify import check_chunk

    artifacts = parse(signed["manifest"]).artifacts
    try:
        check_chunk(artifacts, file, index, data)
    except EdgeRuntimeError:
        return
    pytest.fail("a random chunk passed its sha256 check")  # pragma: no cover


@SETTINGS
@given(topic=st.text(max_size=80) | st.lists(st.sampled_from(
    ["edge", FLEET, "f2", "desired", "devices", "dev-1", "models", "fraud", "1", "01", "-1", "99999999999999",
     "manifest", "chunks", "model.tflite", "0", "trust", "root", "state", "events", "online", "+", "#", ""]),
    max_size=8).map("/".join))
def test_topic_parser(protocol: dict[str, Any], topic: str) -> None:
    ref = protocol["topics"].parse(topic)  # never raises: a topic is either understood or ignored
    if ref is not None:
        assert topic.startswith("edge/f1/") and ref.kind in (
            "desired", "device_desired", "device_state", "device_events", "device_online", "root", "manifest", "chunk")


@SETTINGS
@given(data=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_updater_state_file(signed: dict[str, Any], data: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A damaged ``updater.json`` is logged and ignored: the updater starts with empty seq floors."""
    from edge_runtime.bundle.reader import BundleLimits
    from edge_runtime.store.store import ModelStore
    from edge_runtime.updates.protocol import Topics
    from edge_runtime.updates.updater import STATE_FILE, Updater, UpdaterSettings

    base = signed["tmp"] / "updater"
    base.mkdir(exist_ok=True)
    (base / STATE_FILE).write_bytes(data)

    class Offline:
        connected = False

        def subscribe(self, filters: list[str], *, new_only: bool = False) -> None: ...
        def unsubscribe(self, filters: list[str]) -> None: ...
        def publish(self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1) -> None: ...

    store = ModelStore(base / "store", signed["root"], None, BundleLimits())
    updater = Updater(UpdaterSettings("dev-1", Topics("edge", FLEET), base, base / "staging"), store, Offline())
    updater.load()
    assert all(f.seq >= 0 for f in updater.floors.values())


@pytest.mark.parametrize("seq", [b"1e400", b"Infinity"])
def test_updater_state_file_with_an_infinite_seq(signed: dict[str, Any], seq: bytes) -> None:
    """``int(float("inf"))`` raises OverflowError, which once escaped Updater.load()."""
    from edge_runtime.bundle.reader import BundleLimits
    from edge_runtime.store.store import ModelStore
    from edge_runtime.updates.protocol import Topics
    from edge_runtime.updates.updater import STATE_FILE, Updater, UpdaterSettings

    base = signed["tmp"] / "updater-inf"
    base.mkdir(exist_ok=True)
    (base / STATE_FILE).write_bytes(b'{"floors": {"desired": {"seq": ' + seq + b', "digest": "x"}}}')

    class Offline:
        connected = False

        def subscribe(self, filters: list[str], *, new_only: bool = False) -> None: ...
        def unsubscribe(self, filters: list[str]) -> None: ...
        def publish(self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1) -> None: ...

    store = ModelStore(base / "store", signed["root"], None, BundleLimits())
    updater = Updater(UpdaterSettings("dev-1", Topics("edge", FLEET), base, base / "staging"), store, Offline())
    updater.load()
    assert updater.floors == {}
