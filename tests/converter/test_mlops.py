"""The ai.onnx.ml rewrite (converter/mlops.py, converter/mltrees.py) answers like onnxruntime on the
original operators: every model is exported here with skl2onnx/onnxmltools defaults and both files
run on onnxruntime over random rows and the hard ones (values exactly at every threshold and
just either side of it, NaN, infinities, unknown categories). No onnx2tf run: test_tabular.py
converts two of them end to end."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import skl2onnx
from onnx import TensorProto, helper

from converter.mlgraph import NotRewritable, attrs
from converter.mlops import MlLimits, rewrite_ml_ops
from converter.tabular import strip_zipmap, unconvertible_ops

F = 5


def _rows(seed: int = 0, n: int = 300) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, F)).astype(np.float32)


def _hard_rows(model: Any, base: np.ndarray) -> np.ndarray:
    """Rows with each tree threshold (and its float32 neighbours) in its feature, NaN and +-inf."""
    rows = [base[:20]]
    for node in model.graph.node:
        if not node.op_type.startswith("TreeEnsemble"):
            continue
        a = attrs(node)
        for f, t, mode in zip(a["nodes_featureids"], a["nodes_values"], a["nodes_modes"]):
            if mode == "LEAF":
                continue
            t32 = np.float32(t)
            for v in (t32, np.nextafter(t32, np.float32(np.inf)), np.nextafter(t32, np.float32(-np.inf))):
                r = base[len(rows) % len(base)].copy()
                r[int(f)] = v
                rows.append(r[None, :])
    special = np.repeat(base[:3], 3, axis=0)
    for i, v in enumerate((np.nan, np.inf, -np.inf)):
        special[3 * i : 3 * i + 3, i % F] = v
    rows.append(special)
    return np.concatenate(rows).astype(np.float32)


def _same(model: Any, feeds: dict[str, np.ndarray]) -> dict[str, int]:
    """Run the original (ZipMap stripped) and the rewrite on onnxruntime; assert equal; the rewritten ops."""
    strip_zipmap(model)
    rewritten, info = rewrite_ml_ops(model)
    assert not unconvertible_ops(rewritten) and not any(op.domain == "ai.onnx.ml" for op in rewritten.opset_import)

    def run(m: Any) -> list[np.ndarray]:
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)

    for k, (want, got) in enumerate(zip(run(model), run(rewritten))):
        assert got.shape == want.shape and got.dtype == want.dtype, (k, got.shape, want.shape, got.dtype, want.dtype)
        if want.dtype.kind == "f":
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(got, want)
    return info.ops


def _fit(est: Any, y: Callable[[np.ndarray], np.ndarray]) -> Any:
    x = _rows(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return est.fit(x, y(x))


def _binary(x: np.ndarray) -> np.ndarray:
    return (x[:, 0] + 0.5 * x[:, 1] - x[:, 2] * x[:, 3] > 0).astype(np.int64)


def _three(x: np.ndarray) -> np.ndarray:
    return np.digitize(x[:, 0] + x[:, 2], [-0.5, 0.5]).astype(np.int64)


def _target(x: np.ndarray) -> np.ndarray:
    return (2 * x[:, 0] + x[:, 1] * x[:, 2]).astype(np.float32)


def _sklearn_cases() -> dict[str, tuple[Any, str]]:
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        GradientBoostingClassifier,
        GradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler
    from sklearn.svm import LinearSVC
    from sklearn.tree import DecisionTreeClassifier

    return {
        "logreg binary": (_fit(make_pipeline(StandardScaler(), LogisticRegression()), _binary), "LinearClassifier"),
        "logreg 3 classes (softmax)": (_fit(LogisticRegression(), _three), "LinearClassifier"),
        "linear svc binary (one score column)": (_fit(LinearSVC(), _binary), "LinearClassifier"),
        "linear regression": (_fit(LinearRegression(), _target), "LinearRegressor"),
        "normalizer l1": (_fit(Normalizer("l1"), _target), "Normalizer"),
        "normalizer l2": (_fit(Normalizer("l2"), _target), "Normalizer"),
        "normalizer max": (_fit(Normalizer("max"), _target), "Normalizer"),
        "mlp pipeline": (_fit(make_pipeline(StandardScaler(), MLPClassifier((8,), max_iter=30, random_state=0)),
                              _binary), "ArrayFeatureExtractor"),
        "decision tree 3 classes": (_fit(DecisionTreeClassifier(max_depth=5, random_state=0), _three),
                                    "TreeEnsembleClassifier"),
        "random forest binary": (_fit(RandomForestClassifier(6, max_depth=4, random_state=0), _binary),
                                 "TreeEnsembleClassifier"),
        "extra trees 3 classes": (_fit(ExtraTreesClassifier(5, max_depth=4, random_state=0), _three),
                                  "TreeEnsembleClassifier"),
        "gradient boosting binary": (_fit(GradientBoostingClassifier(n_estimators=6, random_state=0), _binary),
                                     "TreeEnsembleClassifier"),
        "gradient boosting 3 classes": (_fit(GradientBoostingClassifier(n_estimators=4, random_state=0), _three),
                                        "TreeEnsembleClassifier"),
        "random forest regressor": (_fit(RandomForestRegressor(5, max_depth=4, random_state=0), _target),
                                    "TreeEnsembleRegressor"),
        "gradient boosting regressor": (_fit(GradientBoostingRegressor(n_estimators=5, random_state=0), _target),
                                        "TreeEnsembleRegressor"),
    }


@pytest.fixture(scope="module")
def sklearn_cases() -> dict[str, tuple[Any, str]]:
    return _sklearn_cases()


def test_every_sklearn_default_export_rewrites_to_onnxruntimes_answers(sklearn_cases: dict[str, tuple[Any, str]]) -> None:
    base = _rows(2)
    for name, (est, op) in sklearn_cases.items():
        model = skl2onnx.to_onnx(est, base[:1])
        x = _hard_rows(model, base)
        if "normalizer" in name:  # a zero row, a negative row: the norms' edge cases
            x = np.concatenate([x, np.zeros((1, F), np.float32), -np.abs(base[:1])])
        ops = _same(model, {"X": x})
        assert f"ai.onnx.ml.{op}" in ops, (name, ops)


@pytest.mark.parametrize("kind", ["binary", "3 classes", "regressor"])
def test_lightgbm_trees_follow_missing_value_tracking(kind: str) -> None:
    """LightGBM's exports send NaN down the true branch where nodes_missing_value_tracks_true says so."""
    import lightgbm
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    x = _rows(3)
    x[::7, 1] = np.nan  # trained with missing values: the trees learn where NaN goes
    est: Any
    if kind == "regressor":
        est = lightgbm.LGBMRegressor(n_estimators=6, num_leaves=7, verbose=-1).fit(x, _target(np.nan_to_num(x)))
    else:
        y = _binary(np.nan_to_num(x)) if kind == "binary" else _three(np.nan_to_num(x))
        est = lightgbm.LGBMClassifier(n_estimators=6, num_leaves=7, verbose=-1).fit(x, y)
    model = onnxmltools.convert_lightgbm(est, initial_types=[("input", FloatTensorType([None, F]))])
    tracks = attrs(next(n for n in model.graph.node if n.op_type.startswith("TreeEnsemble")))
    assert any(tracks.get("nodes_missing_value_tracks_true", []))
    rows = _hard_rows(model, _rows(4))
    rows[::5, 1] = np.nan
    _same(model, {"input": rows})


def test_column_transformer_one_hot_and_unknown_categories() -> None:
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(5)
    df = pd.DataFrame({"amount": rng.normal(size=200).astype(np.float32), "country": rng.integers(0, 4, 200)})
    ct = ColumnTransformer([("num", StandardScaler(), ["amount"]),
                            ("cat", OneHotEncoder(handle_unknown="ignore"), ["country"])])
    pipe = Pipeline([("ct", ct), ("clf", LogisticRegression())]).fit(df, (df.country > 1) ^ (df.amount > 0))
    model = skl2onnx.to_onnx(pipe, df[:1])
    feeds: dict[str, np.ndarray] = {"amount": rng.normal(size=(30, 1)).astype(np.float32),
                                    "country": rng.integers(-2, 7, (30, 1)).astype(np.int64)}  # unknown categories: all-zero one-hot
    ops = _same(model, feeds)
    assert ops["ai.onnx.ml.OneHotEncoder"] == 1 and ops["ai.onnx.ml.Scaler"] == 1


def _ml_model(node: Any, inputs: list[Any], outputs: list[Any]) -> Any:
    graph = helper.make_graph([node], "g", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.ml", 1)],
                             ir_version=8)


def test_array_feature_extractor_with_constant_indices() -> None:
    idx = helper.make_tensor("idx", TensorProto.INT64, [3], [4, 0, 2])
    node = helper.make_node("ArrayFeatureExtractor", ["X", "idx"], ["Y"], domain="ai.onnx.ml")
    model = _ml_model(node, [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, F])],
                      [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 3])])
    model.graph.initializer.append(idx)
    assert _same(model, {"X": _rows(6, 10)}) == {"ai.onnx.ml.ArrayFeatureExtractor": 1}


def test_what_is_not_rewritten_is_refused_with_its_reason() -> None:
    x_in = [helper.make_tensor_value_info("X", TensorProto.INT64, [None, 1])]
    strict = _ml_model(helper.make_node("OneHotEncoder", ["X"], ["Y"], domain="ai.onnx.ml", cats_int64s=[1, 2],
                                        zeros=0), x_in, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    with pytest.raises(NotRewritable, match="zeros=0"):
        rewrite_ml_ops(strict)
    encoder = _ml_model(helper.make_node("LabelEncoder", ["X"], ["Y"], domain="ai.onnx.ml", keys_int64s=[1],
                                         values_int64s=[2]), x_in,
                        [helper.make_tensor_value_info("Y", TensorProto.INT64, None)])
    with pytest.raises(NotRewritable, match="LabelEncoder .*no rewrite"):
        rewrite_ml_ops(encoder)


def test_tree_matrices_over_the_limit_are_refused() -> None:
    from sklearn.ensemble import RandomForestClassifier

    model = skl2onnx.to_onnx(_fit(RandomForestClassifier(4, max_depth=4, random_state=0), _binary), _rows()[:1])
    strip_zipmap(model)
    with pytest.raises(NotRewritable, match=r"4 trees of up to \d+ leaves need .* MiB of matrices"):
        rewrite_ml_ops(model, MlLimits(max_tree_matrix_bytes=1024))
    rewritten, _ = rewrite_ml_ops(model)
    onnx.checker.check_model(rewritten)


@pytest.mark.parametrize(("post", "positive"), [("NONE", False), ("NONE", True), ("LOGISTIC", False)])
def test_binary_single_column_trees_follow_onnxruntimes_conventions(post: str, positive: bool) -> None:
    """One weight column, two labels: [1 - p, p] and p > 0.5 for positive weights, [-s, s] or
    [sigmoid(-s), sigmoid(s)] and s > 0 for mixed ones (each combination an exporter could write)."""
    from sklearn.ensemble import GradientBoostingClassifier

    base = _rows(2)
    model = skl2onnx.to_onnx(_fit(GradientBoostingClassifier(n_estimators=3, random_state=0), _binary), base[:1])
    node = next(n for n in model.graph.node if n.op_type == "TreeEnsembleClassifier")
    for a in node.attribute:
        if a.name == "post_transform":
            a.s = post.encode()
        elif a.name == "class_weights" and positive:
            a.floats[:] = [abs(v) for v in a.floats]
        elif a.name == "base_values" and positive:
            a.floats[:] = [0.0]
    _same(model, {"X": _hard_rows(model, base)})


def test_a_hundred_tree_forest_sums_tree_after_tree_bit_for_bit() -> None:
    """onnxruntime on one thread adds the trees in order; another float order flips labels where two
    classes tie to the last bit (0.4999998 against 0.50000006): the rewrite's sums are bit-equal."""
    from sklearn.ensemble import RandomForestClassifier

    model = skl2onnx.to_onnx(_fit(RandomForestClassifier(100, max_depth=3, random_state=0), _binary), _rows()[:1])
    strip_zipmap(model)
    rewritten, _ = rewrite_ml_ops(model)
    one = ort.SessionOptions()
    one.intra_op_num_threads = 1
    x = np.random.default_rng(7).normal(size=(2000, F)).astype(np.float32)
    want, got = (ort.InferenceSession(m.SerializeToString(), one, providers=["CPUExecutionProvider"]).run(None, {"X": x})
                 for m in (model, rewritten))
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
