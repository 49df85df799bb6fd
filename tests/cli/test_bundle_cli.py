"""``edge-runtime bundle create|inspect|verify`` and acceptance 2: a bundle made with
``bundle create`` installs, scores through ``edge-runtime score`` and matches the
interpreter run directly to 1e-6."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.bundle.reader import open_bundle

FACTORY = Path(__file__).resolve().parents[2] / "device" / "factory"


def _create(cli: Any, keys: Any, out: Path, *extra: Any, model: str = "fraud.tflite", version: int = 2,
            real: bool = False) -> Any:
    return cli(["bundle", "create", FACTORY / model, "--name", "fraud", "--version", version, "--sign-key",
                keys.key_path, "--input-names", "input_0", "--output-names", "output_0", "-o", out, *extra], real=real)


def _csv_column(text: str) -> tuple[list[str], np.ndarray]:
    rows = list(csv.reader(io.StringIO(text)))
    return rows[0], np.array(rows[1:], dtype=np.float64)


def test_acceptance_2_create_install_score_matches_the_interpreter(
    device: Any, cli: Any, keys: Any, litert: Any, sample_x: np.ndarray, tmp_path: Path
) -> None:
    bundle = tmp_path / "fraud-v2.bundle"
    # The installed console script, each step a separate process as a user would run it.
    r = _create(cli, keys, bundle, "--golden-inputs", FACTORY / "golden.npy", real=True)
    assert r.code == 0, r.err
    assert "wrote" in r.out and "fraud v2, tflite" in r.out

    r = device.cli("models", "install", bundle, real=True)
    assert r.code == 0, r.err
    assert "fraud v2 installed" in r.out and "fraud v2 passed its self-test and is active" in r.out

    want = litert(FACTORY / "fraud.tflite", sample_x)
    r = device.cli("score", "--model", "fraud", FACTORY / "sample.csv", real=True)
    assert r.code == 0, r.err
    header, got = _csv_column(r.out)
    assert header == ["output_0"] and got.shape == (20, 1)
    assert np.max(np.abs(got - want)) <= 1e-6
    assert r.err_lines == ["scored 20 rows with fraud v2 (store)"]

    out = tmp_path / "scores.npy"
    r = device.cli("score", "--model", "fraud:2", FACTORY / "sample.npy", "-o", out, real=True)
    assert r.code == 0, r.err
    assert np.max(np.abs(np.load(out) - want)) <= 1e-6


def test_create_detects_interface_and_records_chunking(cli: Any, keys: Any, tmp_path: Path) -> None:
    out = tmp_path / "b.bundle"
    r = _create(cli, keys, out, "--chunk-size", "4K", model="fraud_int8io.tflite")
    assert r.code == 0, r.err
    with open_bundle(out, keys.root) as b:
        m = b.manifest
    art = m.artifacts["model.tflite"]
    assert art.chunk_size == 4096 and art.chunk_count == -(-art.length // 4096)
    q_in, q_out = m.inputs[0].quantization, m.outputs[0].quantization
    assert q_in is not None and q_in.datatype == "INT8" and q_in.zero_point == -70
    assert q_out is not None and q_out.scale == 0.00390625 and q_out.zero_point == -128
    assert m.quantization == {"mode": "as-is"}


def test_inspect_and_verify(cli: Any, keys: Any, make_bundle: Any, tmp_path: Path) -> None:
    bundle = make_bundle(1)
    r = cli(["bundle", "verify", bundle, "--root", keys.root_path])
    assert r.code == 0 and "OK: layout, signature and every chunk hash verified" in r.out
    r = cli(["bundle", "inspect", bundle])
    assert r.code == 0 and "signature: NOT checked (no --root)" in r.out and "input input_0: FP32 [-1, 30]" in r.out
    r = cli(["bundle", "inspect", bundle, "--json"])
    assert json.loads(r.out)["name"] == "fraud"
    stranger_bundle = make_bundle(1, keys=[keys.stranger])
    r = cli(["bundle", "verify", stranger_bundle, "--root", keys.root_path])
    assert r.code == 1 and "is not trusted" in r.err and len(r.err.strip().splitlines()) == 1


def test_create_usage_errors(cli: Any, keys: Any, tmp_path: Path) -> None:
    r = _create(cli, keys, tmp_path / "x.bundle", model="demo_model.json")
    assert r.code == 2 and "demo_model.json: expected a .tflite or .onnx file" in r.err
    r = _create(cli, keys, tmp_path / "x.bundle", "--chunk-size", "12")
    assert r.code == 2 and "chunk size must be in [1024, 67108864] bytes" in r.err
    r = _create(cli, keys, tmp_path / "x.bundle", "--validation", FACTORY / "holdout.npz")
    assert r.code == 2 and "--validation needs --reference" in r.err
    r = cli(["bundle", "create", FACTORY / "fraud.tflite", "--name", "fraud", "--version", "0", "--sign-key",
             keys.key_path, "-o", tmp_path / "x.bundle"])
    assert r.code == 2 and "expected an integer >= 1, found 0" in r.err
    assert not (tmp_path / "x.bundle").exists()


def test_create_records_a_reference_profile_from_given_rows(cli: Any, keys: Any, tmp_path: Path) -> None:
    out = tmp_path / "profiled.bundle"
    r = _create(cli, keys, out, "--profile-data", FACTORY / "calibration.npy")
    assert r.code == 0, r.err
    assert "reference profile:" in r.out
    with open_bundle(out, keys.root) as b:
        assert b.manifest.profile_file == "profile.json"
        doc = json.loads(b.read_artifact("profile.json"))
    assert doc["rows"] == 200 and len(doc["features"]) == 31  # 30 input columns and the score
    shown = cli(["bundle", "inspect", out])
    assert "reference profile: 200 rows, 31 features" in shown.out
    plain = tmp_path / "plain.bundle"
    assert _create(cli, keys, plain).code == 0
    assert "reference profile: none" in cli(["bundle", "inspect", plain]).out
