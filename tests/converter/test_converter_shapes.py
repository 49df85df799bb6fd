"""Real-model shapes and failures (issue "Real models, end to end"), on small models built here:
dynamic height/width pinned from data or ``--input-shape``, a stateful model whose data comes as
whole calls, an onnx2tf crash while quantizing, and bundle limits enforced before writing.
Real onnx2tf (no network), real LiteRT, real store."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import conversion_models as models
import numpy as np
import onnxruntime as ort
import pytest
from conversion_support import run_convert

from edge_runtime.bundle.reader import open_bundle
from edge_runtime.inference.backend import load_backend
from edge_runtime.inference.selftest import run_selftest
from edge_runtime.store.store import ModelStore

pytestmark = pytest.mark.integration
SHIM = Path(__file__).parent / "onnx2tf_shim"


def _install(bundle: Path, keys: Any, store_dir: Path, name: str) -> Any:
    store = ModelStore(store_dir, keys.root, None)
    store.install(bundle)

    def selftest(r: Any) -> None:
        run_selftest(load_backend(r.manifest, r.model), r.manifest, r.golden_bytes)

    store.activate(name, 1, selftest=selftest)
    return store.resolve(name)


@pytest.fixture(scope="module")
def dynamic_cnn(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("dyncnn")
    models.build_cnn(d / "dyn.onnx", spatial=("height", "width"))
    rng = np.random.default_rng(5)
    np.save(d / "rows.npy", rng.random((12, 3, 32, 48), dtype=np.float32))
    return {"onnx": d / "dyn.onnx", "rows": d / "rows.npy", "dir": d}


def test_dynamic_height_and_width_are_pinned_from_the_data(dynamic_cnn: dict[str, Path], keys: Any,
                                                           tmp_path: Path) -> None:
    conv = run_convert([dynamic_cnn["onnx"], "--name", "dyn", "--version", "1", "--sign-key", keys.key_path,
                        "--quantize", "fp16", "--validation", dynamic_cnn["rows"]], tmp_path / "dyn.bundle")
    assert conv.code == 0, conv.err_lines[-5:]
    assert "dynamic shape [-1, 3, -1, -1] pinned to [-1, 3, 32, 48] from the data" in conv.err
    resolved = _install(conv.bundle, keys, tmp_path / "store", "dyn")
    m = resolved.manifest
    assert m.format == "tflite" and m.inputs[0].shape == (-1, 3, 32, 48)  # the batch stays dynamic
    assert m.extra["source"]["pinned_inputs"] == {
        "image": {"onnx": [-1, 3, -1, -1], "pinned": [-1, 3, 32, 48], "from": "data"}}
    x = np.load(dynamic_cnn["rows"])
    ref = ort.InferenceSession(str(dynamic_cnn["onnx"])).run(None, {"image": x})[0]
    got = load_backend(m, resolved.model).run([x])[0]
    assert float(np.max(np.abs(got - ref))) <= m.golden.atol  # type: ignore[union-attr]


def test_input_shape_pins_a_shape_with_no_data_and_a_static_batch(dynamic_cnn: dict[str, Path], keys: Any,
                                                                  tmp_path: Path) -> None:
    conv = run_convert([dynamic_cnn["onnx"], "--name", "dyn", "--version", "1", "--sign-key", keys.key_path,
                        "--input-shape", "image:1,3,40,24", "--json"], tmp_path / "dyn.bundle")
    assert conv.code == 0, conv.err_lines[-5:]
    assert conv.json()["inputs"][0]["shape"] == [1, 3, 40, 24]
    with open_bundle(conv.bundle, keys.root) as b:
        assert b.manifest.extra["source"]["pinned_inputs"]["image"]["from"] == "--input-shape"
    bad = run_convert([dynamic_cnn["onnx"], "--name", "dyn", "--version", "1", "--sign-key", keys.key_path,
                       "--input-shape", "image:1,3,40"], tmp_path / "bad.bundle", network=True)
    assert bad.code == 2 and "3 dimensions given, the input has 4" in bad.err
    assert not (tmp_path / "bad.bundle").exists()
    fixed = run_convert([dynamic_cnn["onnx"], "--name", "dyn", "--version", "1", "--sign-key", keys.key_path,
                         "--input-shape", "image:1,4,40,24"], tmp_path / "bad.bundle", network=True)
    assert fixed.code == 2 and "dimension 1 is fixed at 3 in the model, 4 given" in fixed.err


def test_a_stateful_model_with_a_scalar_input_converts_from_whole_calls(keys: Any, tmp_path: Path) -> None:
    onnx_path = models.build_stateful(tmp_path / "vad.onnx")
    rng = np.random.default_rng(9)
    calls: dict[str, np.ndarray] = {}
    for k in range(6):
        calls[f"{k}/x"] = rng.standard_normal((1, 512)).astype(np.float32)
        calls[f"{k}/state"] = rng.standard_normal((2, 1, 4)).astype(np.float32)
        calls[f"{k}/sr"] = np.array(16000 if k % 2 else 8000, dtype=np.int64)
    np.savez(tmp_path / "calls.npz", **calls)  # type: ignore[arg-type]
    conv = run_convert([onnx_path, "--name", "vad", "--version", "1", "--sign-key", keys.key_path,
                        "--validation", tmp_path / "calls.npz", "--fallback-onnx", "--json"], tmp_path / "vad.bundle")
    assert conv.code == 0, conv.err_lines[-5:]
    resolved = _install(conv.bundle, keys, tmp_path / "store", "vad")
    m = resolved.manifest
    assert [(s.name, s.shape) for s in m.inputs] == [("x", (-1, -1)), ("state", (2, -1, 4)), ("sr", ())]
    backend = load_backend(m, resolved.model)
    session = ort.InferenceSession(str(onnx_path))
    for k in range(6):
        feed = [calls[f"{k}/x"], calls[f"{k}/state"], calls[f"{k}/sr"]]
        want = session.run(None, dict(zip(["x", "state", "sr"], feed)))
        for have, ref in zip(backend.run(feed), want):
            assert have.shape == ref.shape
            np.testing.assert_allclose(have, ref, atol=m.golden.atol, rtol=m.golden.rtol)  # type: ignore[union-attr]
    rows_only = run_convert([onnx_path, "--name", "vad", "--version", "1", "--sign-key", keys.key_path],
                            tmp_path / "none.bundle", network=True)
    assert rows_only.code == 2 and "pass --validation data of the real shape" in rows_only.err


def test_a_crash_while_quantizing_is_named_and_the_float_variants_still_run(keys: Any, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(SHIM), *filter(None, [env.get("PYTHONPATH")])])
    env["EDGE_TEST_ONNX2TF_CRASH_ON"] = "-oiqt"  # onnx2tf segfaults whenever it is asked for int8
    fraud = Path(__file__).resolve().parents[2] / "device" / "factory"
    base = [fraud / "fraud.onnx", "--name", "fraud", "--version", "1", "--sign-key", keys.key_path,
            "--calibration", fraud / "calibration.npy", "--validation", fraud / "holdout.npz"]
    auto = run_convert([*base, "--quantize", "auto", "--json"], tmp_path / "auto.bundle", env=env)
    assert auto.code == 0, auto.err_lines[-5:]
    rows = {c["mode"]: c for c in auto.json()["candidates"]}
    assert "crashed with SIGSEGV (segmentation fault) while quantizing" in rows["int8"]["error"]
    assert rows["fp32"]["passed"] and rows["fp16"]["passed"] and auto.json()["format"] == "tflite"
    assert "RAM" not in auto.err and "memory" not in auto.err
    int8 = run_convert([*base, "--quantize", "int8"], tmp_path / "int8.bundle", env=env)
    assert int8.code == 1 and "crashed with SIGSEGV" in int8.err and "RAM" not in int8.err
    assert "--quantize fp32 passes on the same rows" in int8.err or "--quantize fp16 passes" in int8.err
    assert not (tmp_path / "int8.bundle").exists()
    fallback = run_convert([*base, "--quantize", "int8", "--fallback-onnx", "--json"], tmp_path / "fb.bundle", env=env)
    assert fallback.code == 0 and fallback.json()["format"] == "onnx"
    assert "crashed with SIGSEGV" in fallback.json()["fallback_reason"]
    assert "install.sh --with-onnx" in fallback.err
