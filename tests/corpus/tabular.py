"""Corpus models built locally: tabular models exported the way their libraries do by default.

Half of edge deployments score tabular rows, and nobody downloads those models: they train a
scikit-learn or LightGBM model and export it with skl2onnx or onnxmltools, defaults and all
(a ``ZipMap`` on the probabilities, ``ai.onnx.ml`` operators). Each recipe here trains on rows
made from the corpus entry's own feeds (a fixed seed, different from the validation rows'), labels
them with a fixed rule and exports with the exporter's plain call: ``skl2onnx.to_onnx(model,
X[:1])`` (a one-row DataFrame for the ColumnTransformer, so each column becomes an input of its
own dtype) or ``onnxmltools.convert_lightgbm(model, initial_types=...)``. Nothing is downloaded;
the exporters come with the dev extra.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from corpus.models import CorpusModel

TRAIN_SEED = 1  # the validation rows use seed 0 (models.make_inputs)


def _labels(x: np.ndarray, classes: int = 2) -> np.ndarray:
    """A learnable rule with some interaction: binary, or ``classes`` bands of the same score."""
    score = x[:, 0] + 0.5 * x[:, 1] - 0.7 * x[:, 2] * x[:, 3]
    if classes == 2:
        return (score > 0).astype(np.int64)
    edges = np.quantile(score, np.linspace(0, 1, classes + 1)[1:-1])
    return np.searchsorted(edges, score).astype(np.int64)


def _sklearn(estimator: Any, classes: int = 2) -> Callable[[dict[str, np.ndarray]], bytes]:
    def build(rows: dict[str, np.ndarray]) -> bytes:
        import skl2onnx

        x = rows["X"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence warnings of the small models
            estimator.fit(x, _labels(x, classes))
        return bytes(skl2onnx.to_onnx(estimator, x[:1]).SerializeToString())

    return build


def _logreg() -> Any:
    from sklearn.linear_model import LogisticRegression

    return _sklearn(LogisticRegression(max_iter=1000))


def _forest() -> Any:
    from sklearn.ensemble import RandomForestClassifier

    return _sklearn(RandomForestClassifier(n_estimators=24, max_depth=6, random_state=0), classes=3)


def _boosting() -> Any:
    from sklearn.ensemble import GradientBoostingClassifier

    return _sklearn(GradientBoostingClassifier(n_estimators=24, max_depth=3, random_state=0))


def _mlp() -> Any:
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return _sklearn(make_pipeline(StandardScaler(), MLPClassifier((32, 16), max_iter=300, random_state=0)))


def _columns() -> Callable[[dict[str, np.ndarray]], bytes]:
    """A fraud-like pipeline over a DataFrame: two FP32 columns scaled, two INT64 category columns
    one-hot encoded, a logistic regression on top; exported from a one-row DataFrame."""

    def build(rows: dict[str, np.ndarray]) -> bytes:
        import pandas as pd
        import skl2onnx
        from sklearn.compose import ColumnTransformer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import OneHotEncoder, StandardScaler

        df = pd.DataFrame({name: column[:, 0] for name, column in rows.items()})
        y = ((df["amount"] > 0.3) ^ (df["country"] > 2)).astype(np.int64)
        ct = ColumnTransformer([("num", StandardScaler(), ["amount", "age"]),
                                ("cat", OneHotEncoder(handle_unknown="ignore"), ["country", "channel"])])
        pipe = Pipeline([("columns", ct), ("clf", LogisticRegression(max_iter=1000))]).fit(df, y)
        return bytes(skl2onnx.to_onnx(pipe, df[:1]).SerializeToString())

    return build


def _lightgbm() -> Callable[[dict[str, np.ndarray]], bytes]:
    def build(rows: dict[str, np.ndarray]) -> bytes:
        import lightgbm
        import onnxmltools
        from onnxmltools.convert.common.data_types import FloatTensorType

        x = rows["input"]
        model = lightgbm.LGBMClassifier(n_estimators=24, num_leaves=15, random_state=0, verbose=-1)
        model.fit(x, _labels(x))
        onx = onnxmltools.convert_lightgbm(model, initial_types=[("input", FloatTensorType([None, x.shape[1]]))])
        return bytes(onx.SerializeToString())

    return build


RECIPES: dict[str, Callable[[], Callable[[dict[str, np.ndarray]], bytes]]] = {
    "logreg": _logreg, "forest": _forest, "boosting": _boosting, "mlp": _mlp, "columns": _columns,
    "lightgbm": _lightgbm,
}


def build(model: CorpusModel, rows: dict[str, np.ndarray], directory: Path) -> Path:
    """Train ``model``'s recipe on ``rows`` and export it into ``directory``; rebuilt on every call (a
    second or two), so the file always matches the recipe and the installed library versions."""
    data = RECIPES[model.recipe]()(rows)
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"{model.id}.onnx"
    tmp = out.with_suffix(f".{os.getpid()}.part")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    return out


def as_tensor(value: Any) -> np.ndarray:
    """An onnxruntime output as an array: a ZipMap's list of ``{class: probability}`` dicts becomes the
    ``[N, K]`` matrix (columns in the exporter's class order), anything else ``np.asarray``."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        keys = list(value[0])
        return np.array([[row[k] for k in keys] for row in value], dtype=np.float32)
    return np.asarray(value)
