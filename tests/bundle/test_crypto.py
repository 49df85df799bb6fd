"""Encrypted bundles (bundle/crypto.py, bundle/sealed.py): the envelope, each attack refused
with one line, and the store keeping only ciphertext while serving the plaintext from memory."""

from __future__ import annotations

import base64
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime.bundle import manifest as manifest_mod
from edge_runtime.bundle.crypto import (
    WRAPPED_KEY_BYTES,
    new_content_key,
    open_file,
    seal_file,
)
from edge_runtime.bundle.manifest import PLAINTEXT_ARTIFACTS, parse_manifest
from edge_runtime.bundle.profile import parse_profile
from edge_runtime.bundle.reader import BundleLimits, open_bundle
from edge_runtime.bundle.sealed import content_key, encrypt_bundle, open_sealed
from edge_runtime.bundle.writer import build_manifest, write_bundle
from edge_runtime.exceptions import BundleError, DecryptionError, ManifestError, TrustError
from edge_runtime.inference.backend import load_backend
from edge_runtime.inference.selftest import run_selftest
from edge_runtime.packaging import PackRequest, pack_model
from edge_runtime.store.store import ModelStore
from edge_runtime.trust.device_keys import (
    device_key_id,
    generate_device_key,
    private_pem,
    read_device_key,
)

WINDOW = 64
FACTORY = Path(__file__).parents[2] / "device" / "factory"


def plaintext_windows(data: bytes, count: int = 8) -> list[bytes]:
    """``count`` windows of the plaintext at spread offsets (what a scan looks for)."""
    step = max(1, (len(data) - WINDOW) // count)
    return [data[i : i + WINDOW] for i in range(0, len(data) - WINDOW, step)][:count]


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def resign(path: Path, out: Path, keys: Any, edit: Any) -> Path:
    """``path`` with its manifest edited by ``edit(fields, artifacts)`` and signed again."""
    files = members(path)
    fields = json.loads(files.pop("manifest.json"))
    files.pop("manifest.sig")
    edit(fields, files)
    write_bundle(out, build_manifest(fields), files, [keys.key])
    return out


@pytest.fixture(scope="module")
def devices() -> dict[str, Any]:
    return {n: generate_device_key() for n in ("a", "b", "c")}


@pytest.fixture(scope="module")
def plain(keys: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fraud v1 with every kind of artifact: the model, golden.npz (too many rows to go inline)
    and a reference profile."""
    out = tmp_path_factory.mktemp("plain") / "fraud-v1.bundle"
    calib = np.load(FACTORY / "calibration.npy").astype(np.float32)
    m = pack_model(PackRequest(FACTORY / "fraud.tflite", name="fraud", version=1, keys=[keys.key], out=out,
                   input_names=["input_0"], output_names=["output_0"], golden_inputs=[calib[:200]],
                   profile_calls=[[calib[i:i + 50]] for i in range(0, len(calib), 50)]))
    assert set(m.artifacts) == {"model.tflite", "golden.npz", "profile.json"}
    return out


@pytest.fixture(scope="module")
def sealed(plain: Path, keys: Any, devices: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sealed") / "fraud-v1.enc.bundle"
    encrypt_bundle(plain, [devices["a"].public_key(), devices["b"].public_key()], [keys.key], out, root=keys.root)
    return out


def test_encrypted_bundle_lists_recipients_by_key_id_and_opens_for_each(
    plain: Path, sealed: Path, keys: Any, devices: dict[str, Any]
) -> None:
    with open_bundle(plain, keys.root) as b:
        expected = {n: b.read_artifact(n) for n in b.manifest.artifacts}
    with open_bundle(sealed, keys.root) as b:
        m = b.manifest
        assert m.encryption is not None
        assert set(m.artifacts) == {n + ".enc" for n in expected}
        assert m.encryption.keyids() == [device_key_id(devices["a"]), device_key_id(devices["b"])]
        assert all(len(r.wrapped) == WRAPPED_KEY_BYTES == 80 for r in m.encryption.recipients)
        for who in ("a", "b"):
            opened = open_sealed(m, devices[who], lambda f: io.BytesIO(b.read_artifact(f)))
            assert opened.model == expected[m.model_file]
        ciphertext = b"".join(b.read_artifact(f) for f in m.artifacts)
    assert not any(w in ciphertext for w in plaintext_windows(expected[m.model_file]))


def test_a_runtime_without_encryption_refuses_the_bundle_at_its_manifest(sealed: Path, monkeypatch: Any) -> None:
    # What the previous release of the runtime allows: the plaintext names only.
    monkeypatch.setattr(manifest_mod, "ALLOWED_ARTIFACTS", PLAINTEXT_ARTIFACTS)
    with pytest.raises(ManifestError, match=r"artifact '.*\.enc' is not one of"):
        parse_manifest(members(sealed)["manifest.json"])


def test_a_device_that_is_not_a_recipient_is_told_its_key_id_and_the_recipients(
    sealed: Path, keys: Any, devices: dict[str, Any]
) -> None:
    with open_bundle(sealed, keys.root) as b:
        with pytest.raises(DecryptionError) as info:
            content_key(b.manifest, devices["c"])
    msg = str(info.value)
    assert "\n" not in msg
    assert device_key_id(devices["c"]) in msg
    assert device_key_id(devices["a"]) in msg and device_key_id(devices["b"]) in msg


def test_a_wrong_recipient_entry_is_refused(sealed: Path, keys: Any, devices: dict[str, Any], tmp_path: Path) -> None:
    def swap(fields: dict[str, Any], _: dict[str, bytes]) -> None:  # b's wrapped key under a's key id
        r = fields["encryption"]["recipients"]
        r[0]["wrapped"], r[1]["wrapped"] = r[1]["wrapped"], r[0]["wrapped"]

    bad = resign(sealed, tmp_path / "swapped.bundle", keys, swap)
    with open_bundle(bad, keys.root) as b, pytest.raises(DecryptionError) as info:
        content_key(b.manifest, devices["a"])
    assert "does not open" in str(info.value) and "\n" not in str(info.value)


def test_a_truncated_wrapped_key_is_refused(sealed: Path, keys: Any, tmp_path: Path) -> None:
    def truncate(fields: dict[str, Any], _: dict[str, bytes]) -> None:
        r = fields["encryption"]["recipients"][0]
        r["wrapped"] = base64.b64encode(base64.b64decode(r["wrapped"])[:-1]).decode()

    with pytest.raises(ManifestError) as info:
        resign(sealed, tmp_path / "short.bundle", keys, truncate)
    assert "wrapped key is 79 bytes, expected 80" in str(info.value) and "\n" not in str(info.value)


def test_tampered_ciphertext_is_refused_by_the_hashes_and_by_the_cipher(
    sealed: Path, keys: Any, devices: dict[str, Any], tmp_path: Path, tarcraft: Any
) -> None:
    files = members(sealed)
    model = next(n for n in files if n.startswith("model."))
    flipped = bytearray(files[model])
    flipped[100] ^= 1
    # In transit or in the bundle: the signed ciphertext hashes catch it before any decryption.
    bad = tarcraft.write(tmp_path / "flip.bundle", [*((n, d) for n, d in files.items() if n != model), (model, bytes(flipped))])
    with pytest.raises(BundleError) as info:
        open_bundle(bad, keys.root)
    assert "sha256" in str(info.value) and "\n" not in str(info.value)
    # Re-hashed and re-signed (a signer's mistake) or changed in the store after verification:
    # the chunk does not authenticate.
    with open_bundle(sealed, keys.root) as b:
        m = b.manifest
        assert m.encryption is not None
        ckey = content_key(m, devices["a"])
        sf = m.encryption.files[m.model_file]
        with pytest.raises(DecryptionError) as info2:
            open_file(ckey, sf, m.encryption.chunk_size, io.BytesIO(bytes(flipped)), io.BytesIO())
    assert "chunk 0 does not authenticate" in str(info2.value) and "\n" not in str(info2.value)


def test_reordered_or_truncated_chunks_do_not_authenticate() -> None:
    key, data = new_content_key(), os.urandom(5000)
    sf, ct = seal_file(key, "model.tflite", data, 1024)
    step = 1024 + 16
    chunks = [ct[i : i + step] for i in range(0, len(ct), step)]
    out = io.BytesIO()
    open_file(key, sf, 1024, io.BytesIO(ct), out)
    assert out.getvalue() == data
    swapped = b"".join([chunks[1], chunks[0], *chunks[2:]])
    # Cut after a whole chunk, the manifest's plaintext length would not match: the length is
    # signed; the final flag in the associated data stops a shorter manifest from passing too.
    short_sf = type(sf)(sf.name, 4096, sf.sha256, sf.prefix)
    renamed = type(sf)("golden.npz", sf.length, sf.sha256, sf.prefix)
    for bad_sf, bad_ct in ((sf, swapped), (short_sf, b"".join(chunks[:4])), (renamed, ct)):
        with pytest.raises(DecryptionError, match="does not authenticate"):
            open_file(key, bad_sf, 1024, io.BytesIO(bad_ct), io.BytesIO())


def test_store_keeps_ciphertext_and_serves_the_plaintext_from_memory(
    plain: Path, sealed: Path, keys: Any, devices: dict[str, Any], tmp_path: Path
) -> None:
    with open_bundle(plain, keys.root) as b:
        model = b.read_artifact(b.manifest.model_file)
        golden = b.read_artifact("golden.npz")
        profile = b.read_artifact("profile.json")
    store = ModelStore(tmp_path / "store", keys.root, None, BundleLimits(), device_key=devices["a"])
    store.install(sealed)
    store.activate("fraud", 1)
    resolved = store.resolve("fraud")
    assert resolved.model == model and resolved.model_path is None
    assert resolved.golden_bytes == golden and resolved.profile_bytes == profile
    assert parse_profile(resolved.profile_bytes, resolved.manifest.inputs, resolved.manifest.outputs).rows == 200
    backend = load_backend(resolved.manifest, resolved.model)
    try:
        run_selftest(backend, resolved.manifest, resolved.golden_bytes)
    finally:
        backend.close()
    on_disk = b"".join(p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file())
    assert on_disk and not any(w in on_disk for data in (model, golden, profile) for w in plaintext_windows(data))
    assert sorted(p.name for p in (tmp_path / "store" / "fraud" / "1").iterdir()) == [
        "golden.npz.enc", "manifest.json", "manifest.sig", "model.tflite.enc", "profile.json.enc"]


def test_a_non_recipient_store_refuses_at_install_and_writes_nothing(
    sealed: Path, keys: Any, devices: dict[str, Any], tmp_path: Path
) -> None:
    for key in (devices["c"], None):
        store = ModelStore(tmp_path / "store", keys.root, None, BundleLimits(), device_key=key)
        with pytest.raises(DecryptionError) as info:
            store.install(sealed)
        assert "\n" not in str(info.value)
        assert store.versions("fraud") == []
    assert "device_key" in str(info.value)  # the device without a key is told what to set


def test_encrypted_factory_bundle_is_served_from_memory(
    sealed: Path, keys: Any, devices: dict[str, Any], tmp_path: Path
) -> None:
    factory = tmp_path / "factory"
    factory.mkdir()
    (factory / "fraud.bundle").write_bytes(sealed.read_bytes())
    resolved = ModelStore(tmp_path / "store", keys.root, factory, BundleLimits(), device_key=devices["b"]).resolve("fraud")
    assert resolved.source == "factory" and isinstance(resolved.model, bytes)


def test_device_key_file_must_not_be_readable_by_others(tmp_path: Path, devices: dict[str, Any]) -> None:
    path = tmp_path / "device.key"
    path.write_bytes(private_pem(devices["a"]))
    path.chmod(0o644)
    with pytest.raises(TrustError, match="mode 0644"):
        read_device_key(path)
    path.chmod(0o600)
    assert device_key_id(read_device_key(path)) == device_key_id(devices["a"])


def test_cli_keys_device_bundle_encrypt_inspect_and_score(
    cli: Any, plain: Path, keys: Any, tmp_path: Path
) -> None:
    made = cli(["keys", "device", "--out", tmp_path / "dev"])
    assert made.code == 0, made.err
    assert (tmp_path / "dev/device.key").stat().st_mode & 0o777 == 0o600
    out = tmp_path / "enc.bundle"
    enc = cli(["bundle", "encrypt", plain, "--to", tmp_path / "dev", "--sign-key", keys.key_path, "-o", out])
    assert enc.code == 0, enc.err
    shown = cli(["bundle", "inspect", out, "--root", keys.root_path])
    assert "encrypted (1 recipient:" in shown.out and shown.code == 0
    factory = tmp_path / "factory"
    factory.mkdir()
    (factory / "fraud.bundle").write_bytes(out.read_bytes())
    config = tmp_path / "config.toml"
    config.write_text(
        f'[store]\npath = "{tmp_path / "store"}"\nfactory = "{factory}"\n'
        f'[trust]\nroot = "{keys.root_path}"\ndevice_key = "{tmp_path / "dev/device.key"}"\n', encoding="utf-8"
    )
    np.save(tmp_path / "rows.npy", np.load(FACTORY / "sample.npy"))
    scored = cli(["score", "--model", "fraud", tmp_path / "rows.npy", "-o", tmp_path / "out.npy", "--config", config])
    assert scored.code == 0, scored.err
    assert np.load(tmp_path / "out.npy").shape[0] == np.load(tmp_path / "rows.npy").shape[0]


@pytest.mark.parametrize(
    "edit",
    [
        lambda e: e.update(scheme=10**30),
        lambda e: e.update(chunk_size=True),
        lambda e: e.update(chunk_size=10**12),
        lambda e: e.update(recipients=[]),
        lambda e: e.update(recipients=[e["recipients"][0]] * 2),
        lambda e: e["recipients"][0].update(keyid="X" * 16),
        lambda e: e["recipients"][0].update(wrapped="!" * 108),
        lambda e: e["recipients"][0].update(wrapped=["a"]),
        lambda e: e["recipients"][0].update(extra=1),
        lambda e: e.update(files={}),
        lambda e: e.update(files={"../model.tflite": {}}),
        lambda e: next(iter(e["files"].values())).update(length=-1),
        lambda e: next(iter(e["files"].values())).update(length=next(iter(e["files"].values()))["length"] + 1),
        lambda e: next(iter(e["files"].values())).update(nonce="00"),
        lambda e: e.pop("files"),
        lambda e: e.update(more=1),
    ],
)
def test_hostile_encryption_fields_are_manifest_errors(sealed: Path, edit: Any) -> None:
    fields = json.loads(members(sealed)["manifest.json"])
    edit(fields["encryption"])
    with pytest.raises(ManifestError) as info:
        manifest_mod.manifest_from_json(fields)
    assert "\n" not in str(info.value)


def test_a_damaged_encrypted_version_falls_back_to_the_last_known_good_one(
    sealed: Path, make_bundle: Any, keys: Any, devices: dict[str, Any], tmp_path: Path
) -> None:
    v2 = tmp_path / "fraud-v2.enc.bundle"
    encrypt_bundle(make_bundle(2), [devices["a"].public_key()], [keys.key], v2)
    store = ModelStore(tmp_path / "store", keys.root, None, BundleLimits(), device_key=devices["a"])
    for b in (sealed, v2):
        store.install(b)
    store.activate("fraud", 1)
    store.activate("fraud", 2)
    assert store.resolve("fraud").version == 2
    damaged = tmp_path / "store" / "fraud" / "2" / "model.tflite.enc"
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 1
    damaged.write_bytes(bytes(data))
    resolved = store.resolve("fraud")
    assert resolved.version == 1 and isinstance(resolved.model, bytes)
    assert 2 in store.state("fraud").quarantined


def test_cli_keys_device_in_bulk_collects_the_public_keys(cli: Any, plain: Path, keys: Any, tmp_path: Path) -> None:
    made = cli(["keys", "device", "--out", tmp_path / "prov", "--device", "pi-1", "--device", "pi-2"])
    assert made.code == 0, made.err
    assert sorted(p.name for p in (tmp_path / "prov/recipients").iterdir()) == ["pi-1.pub", "pi-2.pub"]
    assert all((tmp_path / f"prov/{d}/device.key").stat().st_mode & 0o777 == 0o600 for d in ("pi-1", "pi-2"))
    again = cli(["keys", "device", "--out", tmp_path / "prov", "--device", "pi-3", "--device", "pi-1"])
    assert again.code == 2 and not (tmp_path / "prov/pi-3").exists()  # nothing written when one exists
    out = tmp_path / "enc.bundle"
    enc = cli(["bundle", "encrypt", plain, "--to", tmp_path / "prov/recipients", "--sign-key", keys.key_path, "-o", out])
    assert enc.code == 0 and "encrypted to 2 devices" in enc.out, enc.err
    pi2 = read_device_key(tmp_path / "prov/pi-2/device.key")
    with open_bundle(out, keys.root) as b:
        assert len(content_key(b.manifest, pi2)) == 32


def test_without_its_key_a_device_falls_back_and_reactivates_once_the_key_is_back(
    sealed: Path, make_bundle: Any, keys: Any, devices: dict[str, Any], tmp_path: Path
) -> None:
    factory = tmp_path / "factory"
    factory.mkdir()
    (factory / "fraud.bundle").write_bytes(make_bundle(1).read_bytes())
    with_key = ModelStore(tmp_path / "store", keys.root, factory, BundleLimits(), device_key=devices["a"])
    with_key.install(sealed)
    with_key.activate("fraud", 1)
    keyless = ModelStore(tmp_path / "store", keys.root, factory, BundleLimits())
    assert keyless.resolve("fraud").source == "factory"
    assert "device_key" in keyless.state("fraud").quarantined[1]
    with_key.activate("fraud", 1)
    resolved = with_key.resolve("fraud")
    assert resolved.source == "store" and resolved.version == 1


def test_an_encrypted_onnx_model_loads_from_memory(make_bundle: Any, keys: Any, devices: dict[str, Any], tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    sealed_onnx = tmp_path / "fraud-onnx.enc.bundle"
    encrypt_bundle(make_bundle(1, model="fraud.onnx"), [devices["b"].public_key()], [keys.key], sealed_onnx)
    store = ModelStore(tmp_path / "store", keys.root, None, BundleLimits(), device_key=devices["b"])
    store.install(sealed_onnx)
    store.activate("fraud", 1)
    resolved = store.resolve("fraud")
    assert resolved.manifest.format == "onnx" and isinstance(resolved.model, bytes)
    backend = load_backend(resolved.manifest, resolved.model)
    try:
        run_selftest(backend, resolved.manifest, resolved.golden_bytes)
        assert backend.run([np.load(FACTORY / "sample.npy").astype(np.float32)])[0].shape[1] == 1
    finally:
        backend.close()
