"""Reading a bundle: layout, links, paths, sizes, signature and chunk hashes are all checked
before anything is handed on, and reading writes nothing."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.bundle.reader import ArtifactHasher, BundleLimits, open_bundle, stream_verify
from edge_runtime.bundle.writer import hash_artifact, signature_file
from edge_runtime.exceptions import BundleError, ManifestError, SignatureError
from edge_runtime.trust.canonical import canonical_json

Members = dict[str, bytes]


def _flip_sha_digit(manifest: bytes) -> bytes:
    """Flip the low bit of a decimal digit inside the artifact's sha256: still valid, canonical JSON."""
    start = manifest.index(b'"sha256":"') + len(b'"sha256":"')
    index = next(i for i in range(start, start + 64) if manifest[i : i + 1].isdigit())
    return _flip(manifest, index)


@pytest.fixture
def good(make_bundle: Callable[..., Path]) -> Path:
    return make_bundle(1)


def _flip(data: bytes, index: int) -> bytes:
    b = bytearray(data)
    b[index] ^= 0x01
    return bytes(b)


def test_good_bundle_opens_and_its_model_bytes_are_the_source_file(good: Path, keys: Any, tarcraft: Any) -> None:
    with open_bundle(good, keys.root) as b:
        assert b.manifest.name == "fraud" and b.manifest.version == 1
        data = b.read_artifact("model.tflite")
    assert data == (Path(__file__).resolve().parents[2] / "device/factory/fraud.tflite").read_bytes()
    assert list(tarcraft.members(good)) == ["manifest.json", "manifest.sig", "model.tflite"]


def test_reading_writes_nothing(good: Path, keys: Any, tmp_path: Path, hash_tree: Callable[[Path], str]) -> None:
    copy = tmp_path / "b" / "x.bundle"
    copy.parent.mkdir()
    copy.write_bytes(good.read_bytes())
    before = hash_tree(tmp_path)
    with open_bundle(copy, keys.root) as b:
        b.verify_artifacts()
    assert hash_tree(tmp_path) == before


def _rebuilt(tmp_path: Path, tarcraft: Any, good: Path, edit: Callable[[Members], list[Any]]) -> Path:
    return tarcraft.write(tmp_path / "bad.bundle", edit(tarcraft.members(good)))


CASES: list[tuple[str, Callable[[Members, Any], list[Any]], type[Exception], str]] = [
    ("control", lambda m, k: list(m.items()), type(None), ""),
    ("model bit flip", lambda m, k: [*list(m.items())[:2], ("model.tflite", _flip(m["model.tflite"], 5000))],
     BundleError, "chunk 0 does not match its sha256"),
    ("manifest bit flip", lambda m, k: [("manifest.json", _flip_sha_digit(m["manifest.json"])), *list(m.items())[1:]],
     SignatureError, "manifest: 0 valid signature.*bad signature"),
    ("manifest bit flip breaking it", lambda m, k: [("manifest.json", _flip(m["manifest.json"], 0)),
                                                    *list(m.items())[1:]], ManifestError, "malformed JSON"),
    ("stranger signature", lambda m, k: [("manifest.json", m["manifest.json"]),
                                         ("manifest.sig", signature_file(m["manifest.json"], [k.stranger])),
                                         ("model.tflite", m["model.tflite"])], SignatureError, "is not trusted"),
    ("empty signature list", lambda m, k: [("manifest.json", m["manifest.json"]),
                                           ("manifest.sig", b'{"signatures":[]}'),
                                           ("model.tflite", m["model.tflite"])], SignatureError, "no signatures"),
    ("signature file missing", lambda m, k: [("manifest.json", m["manifest.json"]), ("model.tflite", m["model.tflite"])],
     BundleError, "missing manifest.sig"),
    ("manifest missing", lambda m, k: [("manifest.sig", m["manifest.sig"]), ("model.tflite", m["model.tflite"])],
     BundleError, "missing manifest.json"),
    ("model missing", lambda m, k: [("manifest.json", m["manifest.json"]), ("manifest.sig", m["manifest.sig"])],
     BundleError, r"missing members \['model.tflite'\]"),
    ("extra member", lambda m, k: [*m.items(), ("README", b"hello")], BundleError, r"unexpected members \['README'\]"),
    ("extra allowed-name member", lambda m, k: [*m.items(), ("model.onnx", b"x" * 10)], BundleError,
     r"unexpected members \['model.onnx'\]"),
    ("dot-dot member", lambda m, k: [*m.items(), ("../evil", b"x")], BundleError, "escapes the bundle with '..'"),
    ("dot-dot inside", lambda m, k: [*m.items(), ("a/../../evil", b"x")], BundleError, "escapes the bundle"),
    ("absolute member", lambda m, k: [*m.items(), ("/etc/evil", b"x")], BundleError, "has an absolute path"),
    ("subdirectory member", lambda m, k: [*m.items(), ("sub/model.tflite", b"x")], BundleError, "bundles are flat"),
    ("duplicate member", lambda m, k: [*m.items(), ("model.tflite", m["model.tflite"])], BundleError, "appears twice"),
    ("model longer", lambda m, k: [*list(m.items())[:2], ("model.tflite", m["model.tflite"] + b"\0" * 7)],
     BundleError, r"model.tflite is \d+ bytes in the bundle, the manifest states \d+"),
    ("model shorter", lambda m, k: [*list(m.items())[:2], ("model.tflite", m["model.tflite"][:-1])],
     BundleError, "the manifest states"),
]


@pytest.mark.parametrize(("edit", "error", "match"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_layouts_are_refused(
    good: Path, keys: Any, tarcraft: Any, tmp_path: Path, edit: Any, error: Any, match: str
) -> None:
    bad = tarcraft.write(tmp_path / "bad.bundle", edit(tarcraft.members(good), keys))
    if error is type(None):
        with open_bundle(bad, keys.root) as b:
            assert b.manifest.version == 1
        return
    with pytest.raises(error, match=match):
        open_bundle(bad, keys.root)


@pytest.mark.parametrize("hard", [False, True], ids=["symlink", "hardlink"])
@pytest.mark.parametrize("name", ["model.tflite", "other"])
def test_link_members_are_refused(
    good: Path, keys: Any, tarcraft: Any, tmp_path: Path, hard: bool, name: str
) -> None:
    m = tarcraft.members(good)
    members = [*m.items()] if name != "model.tflite" else list(m.items())[:2]
    members.append(tarcraft.link(name, "/etc/passwd" if not hard else "manifest.json", hard=hard))
    bad = tarcraft.write(tmp_path / "bad.bundle", members)
    with pytest.raises(BundleError, match=f"bundle member '{name}' is a link"):
        open_bundle(bad, keys.root)


def test_directory_member_is_refused(good: Path, keys: Any, tarcraft: Any, tmp_path: Path) -> None:
    d = tarfile.TarInfo("models")
    d.type = tarfile.DIRTYPE
    bad = tarcraft.write(tmp_path / "bad.bundle", [d, *tarcraft.members(good).items()])
    with pytest.raises(BundleError, match="'models' is not a regular file"):
        open_bundle(bad, keys.root)


def test_total_beyond_the_cap_is_refused(good: Path, keys: Any) -> None:
    with open_bundle(good, None) as b:
        model_len = b.manifest.artifacts["model.tflite"].length
    with open_bundle(good, keys.root, BundleLimits(max_bundle_bytes=model_len)) as b:  # exactly at the cap: fine
        assert b.manifest.version == 1
    with pytest.raises(BundleError, match=f"bundle artifacts total {model_len} bytes, the limit is {model_len - 1}"):
        open_bundle(good, keys.root, BundleLimits(max_bundle_bytes=model_len - 1))


def test_not_a_tar_and_compressed_tars_are_refused(good: Path, keys: Any, tmp_path: Path) -> None:
    junk = tmp_path / "junk.bundle"
    junk.write_bytes(b"\x7fELF" + bytes(2000))
    with pytest.raises(BundleError, match="not an uncompressed tar file"):
        open_bundle(junk, keys.root)
    gz = tmp_path / "gz.bundle"
    gz.write_bytes(gzip.compress(good.read_bytes()))
    with pytest.raises(BundleError, match="not an uncompressed tar file"):
        open_bundle(gz, keys.root)
    empty = tmp_path / "empty.bundle"
    empty.write_bytes(b"")
    with pytest.raises(BundleError):
        open_bundle(empty, keys.root)
    with pytest.raises(BundleError, match="cannot read bundle"):
        open_bundle(tmp_path / "missing.bundle", keys.root)


def test_truncated_tar_is_refused(good: Path, keys: Any, tmp_path: Path) -> None:
    data = good.read_bytes()
    with tarfile.open(good) as tar:
        model = tar.getmember("model.tflite")
    for cut in (100, 700, 1600, model.offset_data - 10, model.offset_data + 100, model.offset_data + model.size - 1):
        p = tmp_path / f"cut{cut}.bundle"
        p.write_bytes(data[:cut])
        with pytest.raises(BundleError):
            open_bundle(p, keys.root)


def test_inspect_without_a_root_skips_only_the_signature(good: Path, tarcraft: Any, tmp_path: Path, keys: Any) -> None:
    m = tarcraft.members(good)
    resigned = tarcraft.write(
        tmp_path / "s.bundle",
        [("manifest.json", m["manifest.json"]), ("manifest.sig", signature_file(m["manifest.json"], [keys.stranger])),
         ("model.tflite", m["model.tflite"])],
    )
    with open_bundle(resigned, None) as b:
        assert b.manifest.name == "fraud"
    flipped = tarcraft.write(tmp_path / "f.bundle", [*list(m.items())[:2], ("model.tflite", _flip(m["model.tflite"], 9))])
    with pytest.raises(BundleError, match="does not match its sha256"):
        open_bundle(flipped, None)


def test_signature_file_must_hold_only_signatures(good: Path, keys: Any, tarcraft: Any, tmp_path: Path) -> None:
    m = tarcraft.members(good)
    sig = canonical_json({"signatures": json.loads(m["manifest.sig"])["signatures"], "x": 1})
    bad = tarcraft.write(tmp_path / "b.bundle", [("manifest.json", m["manifest.json"]), ("manifest.sig", sig),
                                                 ("model.tflite", m["model.tflite"])])
    with pytest.raises(SignatureError, match="expected exactly the field 'signatures'"):
        open_bundle(bad, keys.root)


# -- chunked hashing ----------------------------------------------------------------------


def test_chunk_size_is_fixed_when_the_bundle_is_made(make_bundle: Callable[..., Path], keys: Any) -> None:
    path = make_bundle(1, chunk_size=4096)
    with open_bundle(path, keys.root) as b:
        art = b.manifest.artifacts["model.tflite"]
        data = b.read_artifact("model.tflite")
    assert art.chunk_size == 4096
    assert art.chunk_count == -(-len(data) // 4096) > 1
    assert art.chunk_sha256[1] == hashlib.sha256(data[4096:8192]).hexdigest()
    assert art.chunk_length(art.chunk_count - 1) == len(data) - 4096 * (art.chunk_count - 1)


def test_hasher_checks_each_chunk_length_hash_and_the_end() -> None:
    data = bytes(range(256)) * 40  # 10240 bytes: chunks of 4096, 4096, 2048
    art = hash_artifact("model.tflite", data, 4096)
    h = ArtifactHasher(art)
    h.feed_chunk(data[:4096])
    with pytest.raises(BundleError, match="chunk 1 is 4095 bytes, expected 4096"):
        h.feed_chunk(data[4096:8191])
    h2 = ArtifactHasher(art)
    h2.feed_chunk(data[:4096])
    with pytest.raises(BundleError, match="model.tflite: 4096 bytes, manifest states 10240"):
        h2.finish()
    h3 = ArtifactHasher(art)
    with pytest.raises(BundleError, match="chunk 0 does not match"):
        h3.feed_chunk(_flip(data[:4096], 0))
    h4 = ArtifactHasher(art)
    for i in range(3):
        h4.feed_chunk(data[i * 4096 : (i + 1) * 4096])
    h4.finish()
    with pytest.raises(BundleError, match="more data than the 10240 bytes"):
        h4.feed_chunk(b"x")


def test_stream_verify_refuses_trailing_bytes_and_copies_only_verified_data() -> None:
    data = b"abc" * 2000
    art = hash_artifact("model.tflite", data, 1024)
    out = io.BytesIO()
    stream_verify(art, io.BytesIO(data), out)
    assert out.getvalue() == data
    with pytest.raises(BundleError, match="longer than the 6000 bytes"):
        stream_verify(art, io.BytesIO(data + b"!"))
    with pytest.raises(BundleError, match="chunk 5 is 879 bytes, expected 880"):
        stream_verify(art, io.BytesIO(data[:-1]))
