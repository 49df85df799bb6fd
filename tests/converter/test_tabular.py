"""Tabular models exported the way their libraries do by default (issue: real models, round 2).

skl2onnx and onnxmltools end classifiers with a ZipMap and use ``ai.onnx.ml`` operators. Each
model here is trained on a small generated data set, exported with the exporter's defaults
(``to_onnx(model, X[:1])``, a DataFrame for the ColumnTransformer), converted by the real
``edge-convert``, installed into a store, scored by ``edge-runtime score`` and compared with
onnxruntime on the exporter's own file. With ``--keep-ml-ops`` no onnx2tf run happens: the
converter sees the ``ai.onnx.ml`` operators before it starts one and ships ONNX. By default they are
rewritten (converter/mlops.py): LightGBM goes all the way to TFLite here (its trees are the
rewrite onnx2tf is likeliest to get wrong); the corpus test converts, scores and serves the
ColumnTransformer pipeline as TFLite (tests/corpus, tab-columns, in ``make test``).
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import skl2onnx  # the dev extra installs the exporters: a missing one fails here, it is never skipped
from conversion_support import run_convert

ROWS = 240


def _xy(features: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(ROWS, features)).astype(np.float32)
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)


def _sklearn_models(d: Path) -> dict[str, tuple[Path, Path]]:
    """name -> (exported .onnx, validation .npz named after the model's inputs)."""
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    x, y = _xy()
    out: dict[str, tuple[Path, Path]] = {}
    estimators: dict[str, Any] = {
        "logreg": make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)),
        "forest": RandomForestClassifier(n_estimators=8, max_depth=4, random_state=0),
        "boosting": GradientBoostingClassifier(n_estimators=8, max_depth=3, random_state=0),
        "mlp": make_pipeline(StandardScaler(), MLPClassifier((16,), max_iter=50, random_state=0)),
    }
    for name, est in estimators.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the small MLP stops before it converges, on purpose
            est.fit(x, y)
        (d / f"{name}.onnx").write_bytes(skl2onnx.to_onnx(est, x[:1]).SerializeToString())
        np.savez(d / f"{name}.npz", X=x)
        out[name] = (d / f"{name}.onnx", d / f"{name}.npz")
    rng = np.random.default_rng(1)
    df = pd.DataFrame({
        "amount": rng.normal(size=ROWS).astype(np.float32),
        "age": rng.normal(size=ROWS).astype(np.float32),
        "country": rng.integers(0, 5, ROWS).astype(np.int64),
        "channel": rng.integers(0, 3, ROWS).astype(np.int64),
    })
    yy = ((df.amount > 0) ^ (df.country > 2)).astype(np.int64)
    ct = ColumnTransformer([("num", StandardScaler(), ["amount", "age"]),
                            ("cat", OneHotEncoder(handle_unknown="ignore"), ["country", "channel"])])
    pipe = Pipeline([("columns", ct), ("clf", LogisticRegression())]).fit(df, yy)
    (d / "columns.onnx").write_bytes(skl2onnx.to_onnx(pipe, df[:1]).SerializeToString())
    np.savez(d / "columns.npz", **{c: df[c].to_numpy()[:, None] for c in df.columns})
    out["columns"] = (d / "columns.onnx", d / "columns.npz")
    return out


def _lightgbm_model(d: Path) -> tuple[Path, Path]:
    import lightgbm
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    x, y = _xy(seed=2)
    m = lightgbm.LGBMClassifier(n_estimators=8, num_leaves=8, verbose=-1).fit(x, y)
    model = onnxmltools.convert_lightgbm(m, initial_types=[("input", FloatTensorType([None, x.shape[1]]))])
    (d / "lightgbm.onnx").write_bytes(model.SerializeToString())
    np.savez(d / "lightgbm.npz", input=x)
    return d / "lightgbm.onnx", d / "lightgbm.npz"


@pytest.fixture(scope="module")
def tabular(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    d = tmp_path_factory.mktemp("tabular")
    models = _sklearn_models(d)
    models["lightgbm"] = _lightgbm_model(d)
    return models


def _reference(model: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """onnxruntime on the exporter's own file; a ZipMap's list of dicts becomes the [N, K] matrix."""
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    got = sess.run(names, feeds)
    out = {}
    for name, value in zip(names, got):
        if isinstance(value, list):  # seq(map(class, prob))
            keys = sorted(value[0])
            value = np.array([[row[k] for k in keys] for row in value], dtype=np.float32)
        out[name] = np.asarray(value)
    return out


def test_zipmap_is_stripped_into_a_probability_tensor(tabular: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    from converter.tabular import prepare_tabular

    path, _ = tabular["logreg"]
    before = onnx.load(str(path))
    assert any(n.op_type == "ZipMap" for n in before.graph.node)
    out, plan = prepare_tabular(path, tmp_path / "logreg.onnx")
    assert out != path and [r.output for r in plan.rewrites] == ["output_probability"]
    assert plan.rewrites[0].classes == (0, 1)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.type for o in sess.get_outputs()] == ["tensor(int64)", "tensor(float)"]
    x = np.load(tabular["logreg"][1])["X"][:5]
    got = sess.run(None, {"X": x})[1]
    np.testing.assert_allclose(got, _reference(path, {"X": x})["output_probability"], rtol=1e-6)


def test_every_non_default_operator_is_named_before_onnx2tf(tabular: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    from converter.tabular import prepare_tabular

    _, plan = prepare_tabular(tabular["columns"][0], tmp_path / "columns.onnx", rewrite_ml=False)
    ops = plan.describe_unconvertible()
    for op in ("ai.onnx.ml.OneHotEncoder", "ai.onnx.ml.Scaler", "ai.onnx.ml.LinearClassifier"):
        assert op in ops
    assert "ZipMap" not in ops  # stripped, not counted
    assert plan.converted is None and "--keep-ml-ops" in ops
    out, plan = prepare_tabular(tabular["columns"][0], tmp_path / "columns.onnx")
    assert not plan.unconvertible and plan.converted is not None and plan.converted != out
    assert plan.ml is not None and plan.ml.ops == {"ai.onnx.ml.OneHotEncoder": 2, "ai.onnx.ml.Scaler": 1,
                                                   "ai.onnx.ml.LinearClassifier": 1}
    assert any(n.domain == "ai.onnx.ml" for n in onnx.load(str(out)).graph.node)  # the reference keeps them
    assert any("rewritten" in n for n in plan.notes(converted=True))
    assert not any("rewritten" in n for n in plan.notes(converted=False))


def test_no_fallback_refuses_and_names_every_operator(tabular: dict[str, tuple[Path, Path]], tmp_path: Path,
                                                      keys: Any) -> None:
    path, val = tabular["columns"]
    c = run_convert([path, "--name", "columns", "--version", "1", "--validation", val, "--sign-key", keys.key_path,
                     "--no-fallback", "--keep-ml-ops"], tmp_path / "columns.bundle")
    assert c.code == 1, c.err
    assert "ai.onnx.ml.OneHotEncoder (2)" in c.err and "ai.onnx.ml.LinearClassifier (1)" in c.err
    assert not (tmp_path / "columns.bundle").exists()


@pytest.mark.parametrize("name", ["logreg", "forest", "boosting", "mlp", "columns", "lightgbm"])
def test_default_export_kept_as_ml_ops_ships_onnx_and_scores_like_onnxruntime(
    name: str, tabular: dict[str, tuple[Path, Path]], tmp_path: Path, keys: Any,
    cli: Callable[..., Any],
) -> None:
    path, val = tabular[name]
    bundle = tmp_path / f"{name}.bundle"
    c = run_convert([path, "--name", name, "--version", "1", "--validation", val, "--sign-key", keys.key_path,
                     "--keep-ml-ops"], bundle)
    assert c.code == 0, c.err
    assert "ai.onnx.ml." in c.err and "ONNX bundle" in c.err  # the banner names the operators
    _check_scores(name, path, val, bundle, "onnx", tmp_path, keys, cli)


def _manifest(bundle: Path) -> dict[str, Any]:
    with tarfile.open(bundle) as tar:
        fh = tar.extractfile("manifest.json")
        assert fh is not None
        manifest: dict[str, Any] = json.loads(fh.read())
    return manifest


def _check_scores(name: str, path: Path, val: Path, bundle: Path, fmt: str, tmp_path: Path, keys: Any,
                  cli: Callable[..., Any]) -> None:
    """Install the bundle, score 50 rows with ``edge-runtime score``, compare with onnxruntime."""
    manifest = _manifest(bundle)
    assert manifest["format"] == fmt
    assert any("ZipMap" in note for note in manifest["source"]["rewrites"])
    assert all(o["datatype"] in ("INT64", "FP32") for o in manifest["outputs"])
    store, factory = tmp_path / "store", tmp_path / "factory"
    factory.mkdir()
    common = ["--store", store, "--root", keys.root_path, "--factory", factory]
    r = cli(["models", "install", bundle, *common])
    assert r.code == 0, r.err
    feeds = {k: v[:50] for k, v in np.load(val).items()}
    np.savez(tmp_path / "rows.npz", **feeds)
    out = tmp_path / "scores.npz"
    r = cli(["score", "--model", name, tmp_path / "rows.npz", "-o", out, *common])
    assert r.code == 0, r.err
    want = _reference(path, feeds)
    got = np.load(out)
    assert set(got.files) == set(want)
    for k, v in want.items():
        if v.dtype.kind == "f":
            np.testing.assert_allclose(got[k].reshape(v.shape), v, rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(got[k].reshape(v.shape), v)


@pytest.fixture(scope="module")
def as_tflite(tabular: dict[str, tuple[Path, Path]], keys: Any,
              tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Any]:
    """Real conversions (onnx2tf runs, a few seconds each) with the default options, once per model."""
    done: dict[str, Any] = {}

    def convert(name: str) -> Any:
        if name not in done:
            path, val = tabular[name]
            bundle = tmp_path_factory.mktemp(f"{name}-tflite") / f"{name}.bundle"
            done[name] = run_convert([path, "--name", name, "--version", "1", "--validation", val,
                                      "--sign-key", keys.key_path, "--json"], bundle)
        return done[name]

    return convert


@pytest.mark.parametrize("name", ["lightgbm"])
def test_default_export_is_rewritten_converted_to_tflite_and_scores_like_onnxruntime(
    name: str, tabular: dict[str, tuple[Path, Path]], as_tflite: Callable[[str], Any], tmp_path: Path, keys: Any,
    cli: Callable[..., Any],
) -> None:
    """The ai.onnx.ml operators are rewritten, onnx2tf converts the rewrite, LiteRT answers like
    onnxruntime on the exporter's own file; fp32 (fp16 would round the thresholds and weights)."""
    c = as_tflite(name)
    assert c.code == 0, c.err
    report = c.json()
    assert report["format"] == "tflite" and report["mode"] == "fp32" and report["fallback_reason"] is None
    assert "ONNX bundle" not in c.err and "converted in fp32, not fp16" in c.err
    source = _manifest(c.bundle)["source"]
    assert any("ai.onnx.ml operators rewritten" in n for n in source["rewrites"]), source
    assert source["sha256"] == hashlib.sha256(tabular[name][0].read_bytes()).hexdigest()  # the user's file
    _check_scores(name, tabular[name][0], tabular[name][1], c.bundle, "tflite", tmp_path, keys, cli)


def test_multi_input_model_serves_its_declared_datatypes_over_kserve(
    tabular: dict[str, tuple[Path, Path]], tmp_path: Path, keys: Any, cli: Callable[..., Any],
) -> None:
    """The two-dtype ColumnTransformer pipeline (2 FP32 + 2 INT64 inputs), shipped as ONNX, answers
    tritonclient, JSON and binary, with onnxruntime's labels and probabilities (as TFLite: tests/corpus)."""
    import tritonclient.http as triton

    from harness.daemon import Daemon, write_serve_config

    path, val = tabular["columns"]
    bundle = tmp_path / "columns.bundle"
    assert run_convert([path, "--name", "columns", "--version", "1", "--validation", val,
                        "--sign-key", keys.key_path, "--keep-ml-ops"], bundle).code == 0
    store, factory = tmp_path / "store", tmp_path / "factory"
    factory.mkdir()
    assert cli(["models", "install", bundle, "--store", store, "--root", keys.root_path, "--factory", factory]).code == 0
    config = tmp_path / "serve.toml"
    write_serve_config(config, store, factory, keys.root_path)
    feed = {k: v[:7] for k, v in np.load(val).items()}
    want = _reference(path, feed)
    daemon = Daemon(config)
    try:
        daemon.wait_ready()
        client = triton.InferenceServerClient(daemon.url)
        meta = client.get_model_metadata("columns")
        assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [
            ("amount", "FP32"), ("age", "FP32"), ("country", "INT64"), ("channel", "INT64")]
        for binary in (False, True):
            inputs = []
            for spec in meta["inputs"]:
                t = triton.InferInput(spec["name"], list(feed[spec["name"]].shape), spec["datatype"])
                t.set_data_from_numpy(feed[spec["name"]], binary_data=binary)
                inputs.append(t)
            result = client.infer("columns", inputs, outputs=[
                triton.InferRequestedOutput(o, binary_data=binary) for o in ("output_label", "output_probability")])
            np.testing.assert_array_equal(result.as_numpy("output_label"), want["output_label"])
            np.testing.assert_allclose(result.as_numpy("output_probability"), want["output_probability"],
                                       rtol=1e-5, atol=1e-6)
        client.close()
    finally:
        assert daemon.stop() == 0, daemon.log()


@pytest.mark.parametrize(("asked", "no_fallback"), [("fp16", False), ("auto", False), ("int8", True)])
def test_a_rewritten_model_converts_in_fp32_and_keeps_its_onnx_fallback(
    asked: str, no_fallback: bool, tabular: dict[str, tuple[Path, Path]], tmp_path: Path,
) -> None:
    """It shipped as ONNX before the rewrite, so a failing onnx2tf run or validation still ships ONNX
    without --fallback-onnx (unless --no-fallback); fp16 and auto become fp32, int8 stays as asked."""
    import shutil

    from converter.convert import ConvertOptions, _Pipeline

    path, val = tabular["lightgbm"]
    opts = ConvertOptions(model=path, name="lightgbm", version=1, out=tmp_path / "b.bundle", keys=[], quantize=asked,
                          validation=val, calibration=val if asked == "int8" else None, no_fallback=no_fallback)
    pipeline = _Pipeline(opts, lambda _: None)
    try:
        pipeline.prepare()
        assert pipeline.opts.fallback_onnx is not no_fallback
        assert pipeline.opts.quantize == ("int8" if asked == "int8" else "fp32")
        assert pipeline.onnx2tf_model == pipeline.tabular.converted != pipeline.opts.model
    finally:
        shutil.rmtree(pipeline.workdir, ignore_errors=True)
