"""Acceptance 3: every hostile or stale bundle is refused by ``edge-runtime models install``
with a one-line reason (exit 1, no traceback), and the store stays byte-for-byte the same
(a hash over the whole tree: state.json, every version directory, the lock file)."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.bundle.writer import signature_file

Members = dict[str, bytes]


def _flip(data: bytes, index: int) -> bytes:
    b = bytearray(data)
    b[index] ^= 0x01
    return bytes(b)


def _flip_in_sha(manifest: bytes) -> bytes:
    """One bit in a digit of the artifact sha256: still canonical JSON, so only the signature can tell."""
    start = manifest.index(b'"sha256":"') + len(b'"sha256":"')
    return _flip(manifest, next(i for i in range(start, start + 64) if manifest[i : i + 1].isdigit()))


def _layout(edit: Callable[[Members, Any], list[Any]]) -> Callable[..., Path]:
    def build(ctx: dict[str, Any]) -> Path:
        tc = ctx["tarcraft"]
        return tc.write(ctx["tmp"] / "case.bundle", edit(tc.members(ctx["make_bundle"](4)), ctx))

    return build


def _file(make: Callable[[dict[str, Any]], bytes]) -> Callable[..., Path]:
    def build(ctx: dict[str, Any]) -> Path:
        p = ctx["tmp"] / "case.bundle"
        p.write_bytes(make(ctx))
        return p

    return build


def _m(m: Members, **changes: bytes | None) -> list[tuple[str, bytes]]:
    out = [(k, changes.get(k.replace(".", "_"), v)) for k, v in m.items()]
    return [(k, v) for k, v in out if v is not None]


CASES: list[tuple[str, Callable[..., Path], str]] = [
    ("model bit flip", _layout(lambda m, c: _m(m, model_tflite=_flip(m["model.tflite"], 4321))),
     "model.tflite: chunk 0 does not match its sha256 in the manifest"),
    ("manifest bit flip", _layout(lambda m, c: _m(m, manifest_json=_flip_in_sha(m["manifest.json"]))),
     "manifest: 0 valid signature(s) from role 'models', threshold is 1 (bad signature by key"),
    ("stranger signature", _layout(lambda m, c: _m(m, manifest_sig=signature_file(m["manifest.json"],
                                                                                   [c["keys"].stranger]))),
     "is not trusted for this role"),
    ("empty signature list", _layout(lambda m, c: _m(m, manifest_sig=b'{"signatures":[]}')),
     "manifest: no signatures (role 'models' needs 1)"),
    ("signature file missing", _layout(lambda m, c: _m(m, manifest_sig=None)), "bundle is missing manifest.sig"),
    ("extra member", _layout(lambda m, c: [*m.items(), ("notes.txt", b"hi")]),
     "bundle has unexpected members ['notes.txt']"),
    ("dot-dot member", _layout(lambda m, c: [*m.items(), ("../model.tflite", m["model.tflite"])]),
     "bundle member '../model.tflite' escapes the bundle with '..'"),
    ("absolute member", _layout(lambda m, c: [*m.items(), ("/tmp/model.tflite", m["model.tflite"])]),
     "bundle member '/tmp/model.tflite' has an absolute path"),
    ("symlink member", _layout(lambda m, c: [*_m(m, model_tflite=None), c["tarcraft"].link("model.tflite", "/etc/passwd")]),
     "bundle member 'model.tflite' is a link (to '/etc/passwd')"),
    ("hard link member", _layout(lambda m, c: [*_m(m, model_tflite=None),
                                               c["tarcraft"].link("model.tflite", "manifest.json", hard=True)]),
     "bundle member 'model.tflite' is a link (to 'manifest.json')"),
    ("model longer than stated", _layout(lambda m, c: _m(m, model_tflite=m["model.tflite"] + b"\0" * 512)),
     "bytes in the bundle, the manifest states"),
    ("older version", lambda c: c["make_bundle"](2),
     "fraud v2 is at or below the anti-rollback floor (highest seen: v3)"),
    ("same version, different bytes", lambda c: c["make_bundle"](3, model="fraud_int8io.tflite"),
     "fraud v3 is already installed with different bytes; a new build needs a new version"),
    ("not a tar", _file(lambda c: b"PK\x03\x04" + bytes(4000)), "not an uncompressed tar file"),
    ("gzip tar", _file(lambda c: gzip.compress(c["make_bundle"](4).read_bytes())), "not an uncompressed tar file"),
]


@pytest.fixture
def populated(device: Any, make_bundle: Any) -> Any:
    """A store with v1 and v3 installed, v3 active and v1 last known good."""
    store = device.store()
    for v in (1, 3):
        store.install(make_bundle(v))
        store.activate("fraud", v)
    return device


@pytest.mark.parametrize(("build", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_or_stale_bundle_is_refused_and_the_store_is_unchanged(
    populated: Any, make_bundle: Any, tarcraft: Any, keys: Any, tmp_path: Path, build: Any, reason: str
) -> None:
    bundle = build({"make_bundle": make_bundle, "tarcraft": tarcraft, "keys": keys, "tmp": tmp_path})
    before = populated.tree_hash()
    # The first case runs the console script in a subprocess; the rest call the same main() in-process.
    r = populated.cli("models", "install", bundle, real=reason == CASES[0][2])
    assert r.code == 1
    assert "Traceback" not in r.err
    lines = r.err.splitlines()
    assert len(lines) == 1, r.err
    assert lines[0].startswith("edge-runtime: ") and reason in lines[0]
    assert r.out == ""
    assert populated.tree_hash() == before


def test_the_harness_accepts_an_untouched_rebuild(populated: Any, make_bundle: Any, tarcraft: Any, tmp_path: Path) -> None:
    """The control: the same tar rebuilding as the cases above, without an edit, installs."""
    bundle = tarcraft.write(tmp_path / "same.bundle", list(tarcraft.members(make_bundle(4)).items()))
    before = populated.tree_hash()
    r = populated.cli("models", "install", bundle, "--no-activate")
    assert r.code == 0, r.err
    assert populated.tree_hash() != before
    assert populated.store().versions("fraud") == [1, 3, 4]


def test_bundle_over_the_configured_cap_is_refused(populated: Any, make_bundle: Any) -> None:
    bundle = make_bundle(4)
    model_len = 18792  # fraud.tflite
    assert (Path(__file__).resolve().parents[2] / "device/factory/fraud.tflite").stat().st_size == model_len
    populated.config.write_text(_with_cap(populated.config.read_text(), model_len - 1))
    before = populated.tree_hash()
    r = populated.cli("models", "install", bundle)
    assert r.code == 1 and len(r.err.splitlines()) == 1
    assert f"bundle artifacts total {model_len} bytes, the limit is {model_len - 1}" in r.err
    assert populated.tree_hash() == before
    populated.config.write_text(_with_cap(populated.config.read_text(), model_len))
    r = populated.cli("models", "install", bundle, "--no-activate")
    assert r.code == 0, r.err


def _with_cap(config: str, cap: int) -> str:
    lines = [line for line in config.splitlines() if not line.startswith("max_bundle_bytes")]
    i = lines.index("[store]")
    lines.insert(i + 1, f"max_bundle_bytes = {cap}")
    return "\n".join(lines) + "\n"
