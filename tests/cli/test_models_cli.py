"""``edge-runtime models list|install|activate|rollback|remove|verify``, ``[store] keep_versions``,
factory bundles named by their manifests (or refused, with why), and acceptance 4: a corrupted
active model makes start-up fall back to the last known good, then to the factory bundle, and
``models list`` shows why."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np

FACTORY = Path(__file__).resolve().parents[2] / "device" / "factory"


def _damage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x04
    path.write_bytes(bytes(data))


def _scores(text: str) -> np.ndarray:
    return np.array(list(csv.reader(io.StringIO(text)))[1:], dtype=np.float64)


def test_acceptance_4_fallback_to_last_known_good_then_factory(
    device: Any, make_bundle: Any, litert: Any, sample_x: np.ndarray
) -> None:
    float_want = litert(FACTORY / "fraud.tflite", sample_x)
    for bundle in (make_bundle(1), make_bundle(2, model="fraud_int8io.tflite")):
        r = device.cli("models", "install", bundle)
        assert r.code == 0, r.err
    r = device.cli("score", "--model", "fraud", FACTORY / "sample.csv")
    assert r.code == 0 and r.err_lines == ["scored 20 rows with fraud v2 (store)"]
    int8_scores = _scores(r.out)
    assert np.max(np.abs(int8_scores - float_want)) > 1e-3  # v2 is visibly the int8 model

    # Bytes of the active model change on disk after install.
    _damage(device.store_path / "fraud" / "2" / "model.tflite")
    r = device.cli("score", "--model", "fraud", FACTORY / "sample.csv", real=True)
    assert r.code == 0, r.err
    assert np.max(np.abs(_scores(r.out) - float_want)) <= 1e-6  # served by v1, the float model
    assert any("falling back to v1" in line and "v2 failed verification" in line for line in r.err_lines)
    assert r.err_lines[-1] == "scored 20 rows with fraud v1 (store)"

    r = device.cli("models", "list", "--history", "10")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    v1 = next(line for line in lines if line.split()[:2] == ["fraud", "1"])
    v2 = next(line for line in lines if line.split()[:2] == ["fraud", "2"])
    assert "active" in v1
    assert "quarantined: model.tflite: chunk 0 does not match its sha256 in the manifest" in v2
    assert any("fallback:" in line and "to=v1" in line and "v2 failed verification" in line for line in lines)

    # Now the last known good goes too: the factory bundle is the last fallback.
    shutil.rmtree(device.store_path / "fraud" / "1")
    r = device.cli("score", "--model", "fraud", FACTORY / "sample.csv")
    assert r.code == 0, r.err
    assert np.max(np.abs(_scores(r.out) - float_want)) <= 1e-6
    assert any("falling back to factory" in line and "manifest.json is missing" in line for line in r.err_lines)
    assert r.err_lines[-1] == "scored 20 rows with fraud v1 (factory bundle)"

    r = device.cli("models", "list", "--history", "10")
    lines = r.out.splitlines()
    factory = next(line for line in lines if line.split()[:2] == ["fraud", "factory"])
    assert "active (fallback)" in factory
    assert any("fallback:" in line and "to=factory" in line and "fraud v1: manifest.json is missing" in line
               for line in lines)

    # A later start-up keeps serving the factory bundle quietly: no new fallback recorded.
    r = device.cli("score", "--model", "fraud", FACTORY / "sample.csv")
    assert r.code == 0 and r.err_lines == ["scored 20 rows with fraud v1 (factory bundle)"]


def test_activate_rollback_verify(device: Any, make_bundle: Any, tmp_path: Path) -> None:
    for v in (1, 2):
        assert device.cli("models", "install", make_bundle(v), "--no-activate").code == 0
    r = device.cli("models", "list")
    assert "fraud            factory  active (fallback)" in r.out  # nothing activated yet
    r = device.cli("models", "activate", "fraud", "1")
    assert r.code == 0 and "fraud v1 passed its self-test and is active" in r.out
    assert device.cli("models", "activate", "fraud", "2").code == 0
    state = device.store().state("fraud")
    assert (state.active, state.last_known_good) == (2, 1)

    r = device.cli("models", "rollback", "fraud")
    assert r.code == 0 and "fraud: rolled back to v1" in r.out
    r = device.cli("models", "rollback", "fraud")
    assert r.code == 1 and r.err.strip() == "edge-runtime: fraud: no last known good version to roll back to"

    r = device.cli("models", "activate", "fraud", "9")
    assert r.code == 1 and "fraud v9 is not installed (installed: [1, 2])" in r.err

    r = device.cli("models", "verify")
    assert r.code == 0 and "fraud v1: ok" in r.out and "fraud v2: ok" in r.out
    _damage(device.store_path / "fraud" / "2" / "model.tflite")
    r = device.cli("models", "verify")
    assert r.code == 1
    assert "fraud v2: FAILED: model.tflite: chunk 0 does not match its sha256" in r.out
    assert r.err.strip() == "edge-runtime: 1 installed version(s) failed verification"
    r = device.cli("models", "activate", "fraud", "2")
    assert r.code == 1
    assert r.err_lines == ["edge-runtime: fraud v2: model.tflite: chunk 0 does not match its sha256 in the manifest"]
    assert device.store().state("fraud").active == 1


def test_install_of_a_version_failing_its_self_test_leaves_it_inactive(
    device: Any, make_bundle: Any, wrong_golden_bundle: Path
) -> None:
    assert device.cli("models", "install", make_bundle(1)).code == 0
    r = device.cli("models", "install", wrong_golden_bundle)
    assert r.code == 1
    assert "fraud v4 installed" in r.out
    assert "Traceback" not in r.err
    assert r.err_lines[-1].startswith("edge-runtime: fraud v4: output 'output_0' differs from golden by 0.25")
    state = device.store().state("fraud")
    assert state.active == 1 and 4 in state.failed
    r = device.cli("models", "list")
    assert "failed: fraud v4: output 'output_0' differs from golden" in r.out


def test_list_on_an_empty_device(tmp_path: Path, cli: Any, keys: Any) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[store]\npath = "{tmp_path / "s"}"\nfactory = "{tmp_path / "none"}"\n[trust]\nroot = "{keys.root_path}"\n')
    r = cli(["models", "list", "--config", cfg])
    assert r.code == 0 and r.out.strip() == f"no models in {tmp_path / 's'}"


def _rows(out: str) -> list[list[str]]:
    return [line.split() for line in out.splitlines()]


def test_keep_versions_and_models_remove(device: Any, make_bundle: Any) -> None:
    text = device.config.read_text(encoding="utf-8")
    device.config.write_text(text.replace("[store]\n", "[store]\nkeep_versions = 2\n"), encoding="utf-8")
    for v in (1, 2, 3, 4):
        r = device.cli("models", "install", make_bundle(v))
        assert r.code == 0, r.err
    assert device.store().versions("fraud") == [3, 4]  # v1 and v2 deleted after the activations
    for version, why in (("4", "fraud v4 is active: it cannot be removed"),
                         ("3", "fraud v3 is the last known good: it cannot be removed"),
                         ("9", "fraud v9 is not installed (installed: [3, 4])")):
        r = device.cli("models", "remove", "fraud", version)
        assert (r.code, r.err_lines) == (1, [f"edge-runtime: {why}"])
    assert device.cli("models", "install", "--no-activate", make_bundle(5)).code == 0
    r = device.cli("models", "remove", "fraud", "5")
    assert (r.code, r.out.strip()) == (0, "fraud v5 removed")
    assert device.store().versions("fraud") == [3, 4]
    listing = device.cli("models", "list", "--history", "20").out
    assert any(row[:2] == ["fraud", "4"] for row in _rows(listing))
    assert not any(row[:2] in (["fraud", "1"], ["fraud", "2"], ["fraud", "5"]) for row in _rows(listing))
    assert "removed: reason=removed by the operator, version=5" in listing


def test_keep_versions_below_one_is_a_config_error(device: Any) -> None:
    text = device.config.read_text(encoding="utf-8")
    device.config.write_text(text.replace("[store]\n", "[store]\nkeep_versions = 0\n"), encoding="utf-8")
    r = device.cli("models", "list")
    assert r.code != 0 and "store.keep_versions: expected an integer >= 1, found 0" in r.err


def test_list_names_a_factory_model_by_its_manifest(device: Any, make_bundle: Any) -> None:
    (device.factory / "fraud.bundle").unlink()
    shutil.copyfile(make_bundle(1, name="wine"), device.factory / "wine-1.bundle")
    r = device.cli("models", "list")
    assert r.code == 0, r.err
    rows = _rows(r.out)
    assert ["wine", "factory", "active", "(fallback):", str(device.factory / "wine-1.bundle")] in rows
    assert not any(row and row[0] == "wine-1" for row in rows)


def test_list_says_a_factory_bundle_signed_by_an_untrusted_key_is_refused(device: Any, make_bundle: Any) -> None:
    shutil.copyfile(make_bundle(1, keys=[device.keys.stranger]), device.factory / "fraud.bundle")
    r = device.cli("models", "list")
    assert r.code == 0, r.err
    (line,) = [x for x in r.out.splitlines() if x.split()[:2] == ["fraud", "factory"]]
    assert "REFUSED: " in line and "fraud.bundle: manifest: " in line and "is not trusted" in line
    assert "active (fallback)" not in r.out


def test_list_shows_a_version_the_daemon_is_trying_and_remove_refuses_it(device: Any, make_bundle: Any) -> None:
    store = device.store()
    for v in (1, 2):
        store.install(make_bundle(v))
    store.activate("fraud", 1)
    store.begin_trying("fraud", 2)  # what the daemon writes before its first interpreter of v2
    r = device.cli("models", "list")
    (row,) = [x for x in r.out.splitlines() if x.split()[:2] == ["fraud", "2"]]
    assert "trying (not yet loaded by the daemon)" in row
    r = device.cli("models", "remove", "fraud", "2")
    assert (r.code, r.err_lines) == (1, ["edge-runtime: fraud v2 is being tried: it cannot be removed"])
