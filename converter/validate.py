"""Accuracy of a converted variant against onnxruntime, and the pass/fail thresholds.

Per output: max and mean absolute error, cosine similarity, Pearson correlation (the one that
catches a collapse: outputs that no longer move with the input score about 0), and for
classifiers the agreement of the decisions (top-1 for ``[N, K]`` outputs, the 0.5 threshold
for ``[N, 1]`` probabilities). With labels, accuracy (and ROC AUC for binary outputs) of both
models on the first output. Pure functions over arrays; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edge_runtime.spec.tensors import TensorSpec


@dataclass(frozen=True)
class Thresholds:
    """What a variant must reach to pass (defaults suit float and well-behaved int8 models)."""

    min_correlation: float = 0.98
    min_agreement: float = 0.95
    max_metric_drop: float = 0.02

    def to_json(self) -> dict[str, float]:
        """The manifest form."""
        return asdict(self)


def _r(value: float | None, digits: int = 6) -> float | None:
    """Round to ``digits`` significant digits; non-finite values become None (JSON has no NaN)."""
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.{digits}g}")


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """ROC AUC of ``scores`` for the positive class (label 1), ties counted half; None if one class only."""
    labels = np.asarray(labels).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    pos, neg = scores[labels == 1], scores[labels != 1]
    if pos.size == 0 or neg.size == 0:
        return None
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(order.size, dtype=np.float64)
    sorted_scores = np.concatenate([pos, neg])[order]
    i = 0
    while i < order.size:  # average ranks over ties
        j = i
        while j + 1 < order.size and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    rank_sum = ranks[: pos.size].sum()
    return float((rank_sum - pos.size * (pos.size + 1) / 2.0) / (pos.size * neg.size))


def classifier_kind(reference: np.ndarray) -> str | None:
    """``top1`` for ``[N, K>1]`` scores, ``binary`` for ``[N, 1]``/``[N]`` probabilities, else None."""
    if reference.ndim == 2 and reference.shape[1] > 1:
        return "top1"
    if reference.ndim in (1, 2) and (reference.ndim == 1 or reference.shape[1] == 1):
        if reference.size and float(reference.min()) >= 0.0 and float(reference.max()) <= 1.0:
            return "binary"
    return None


def _decisions(out: np.ndarray, kind: str) -> np.ndarray:
    return out.argmax(axis=1) if kind == "top1" else (out.reshape(-1) >= 0.5).astype(np.int64)


def _correlation(ref: np.ndarray, got: np.ndarray) -> float:
    r, g = ref.reshape(-1).astype(np.float64), got.reshape(-1).astype(np.float64)
    rs, gs = float(r.std()), float(g.std())
    if rs == 0.0:
        return 1.0 if np.allclose(r, g, atol=1e-6) else 0.0
    if gs == 0.0:
        return 0.0
    return float(np.corrcoef(r, g)[0, 1])


def output_metrics(reference: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    """Error metrics of one output against onnxruntime's."""
    ref = reference.astype(np.float64)
    have = got.astype(np.float64)
    finite = bool(np.all(np.isfinite(have)))
    diff = np.abs(have - ref) if finite else np.full(ref.shape, np.inf)
    cosine = 0.0
    if finite:
        rn, gn = float(np.linalg.norm(ref)), float(np.linalg.norm(have))
        if rn > 0 and gn > 0:
            cosine = float(np.dot(ref.reshape(-1), have.reshape(-1)) / (rn * gn))
        elif rn == 0 and gn == 0:
            cosine = 1.0
    out: dict[str, Any] = {
        "finite": finite,
        "max_abs_error": _r(float(diff.max())) if diff.size else 0.0,
        "mean_abs_error": _r(float(diff.mean())) if diff.size else 0.0,
        "cosine": _r(cosine),
        "correlation": _r(_correlation(ref, have)) if finite else None,
    }
    kind = classifier_kind(reference)
    if kind is not None and finite:
        agree = float(np.mean(_decisions(reference, kind) == _decisions(have, kind)))
        out["top1_agreement" if kind == "top1" else "decision_agreement"] = _r(agree)
    return out


def label_metrics(out: np.ndarray, labels: np.ndarray, kind: str | None) -> dict[str, Any]:
    """Accuracy (and ROC AUC for binary outputs) of one output against labels.

    ``kind`` is the reference output's :func:`classifier_kind`: a ``binary`` output is a
    probability (decision at 0.5), any other single score a logit (decision at 0).
    """
    labels = np.asarray(labels).reshape(-1)
    if out.ndim == 2 and out.shape[1] > 1:
        result: dict[str, Any] = {"accuracy": _r(float(np.mean(out.argmax(axis=1) == labels)))}
        if out.shape[1] == 2:
            result["auc"] = _r(roc_auc(out[:, 1], labels))
        return result
    scores = out.reshape(-1).astype(np.float64)
    threshold = 0.5 if kind == "binary" else 0.0
    return {"accuracy": _r(float(np.mean((scores >= threshold).astype(np.int64) == labels))), "auc": _r(roc_auc(scores, labels))}


def compare(
    outputs: Sequence[TensorSpec],
    reference: Sequence[np.ndarray],
    got: Sequence[np.ndarray],
    labels: np.ndarray | None,
    source: str,
) -> dict[str, Any]:
    """The validation report of one variant (without the verdict)."""
    report: dict[str, Any] = {
        "samples": int(reference[0].shape[0]) if reference and reference[0].ndim else 1,
        "data": source,
        "outputs": {s.name: output_metrics(r, g) for s, r, g in zip(outputs, reference, got)},
    }
    if labels is not None and reference:
        kind = classifier_kind(reference[0])
        report["labels"] = {
            "output": outputs[0].name,
            "onnxruntime": label_metrics(reference[0], labels, kind),
            "tflite": label_metrics(got[0], labels, kind) if np.all(np.isfinite(got[0])) else {},
        }
    return report


def failures(report: dict[str, Any], thresholds: Thresholds) -> list[str]:
    """Why the report fails ``thresholds`` (empty when it passes)."""
    problems: list[str] = []
    for name, m in report.get("outputs", {}).items():
        if not m.get("finite", True):
            problems.append(f"output '{name}' holds NaN or infinite values")
            continue
        corr = m.get("correlation")
        if corr is not None and corr < thresholds.min_correlation and (m.get("max_abs_error") or 0.0) > 1e-4:
            problems.append(f"output '{name}' correlation with onnxruntime {corr:.3f} < {thresholds.min_correlation}")
        for key, label in (("top1_agreement", "top-1 agreement"), ("decision_agreement", "decision agreement")):
            value = m.get(key)
            if value is not None and value < thresholds.min_agreement:
                problems.append(f"output '{name}' {label} {value:.3f} < {thresholds.min_agreement}")
    labels = report.get("labels")
    if labels:
        for metric in ("accuracy", "auc"):
            ref, got = labels["onnxruntime"].get(metric), labels["tflite"].get(metric)
            if ref is None:
                continue
            if got is None or ref - got > thresholds.max_metric_drop:
                shown = "n/a" if got is None else f"{got:.3f}"
                problems.append(
                    f"{'AUC' if metric == 'auc' else metric} {shown} against {ref:.3f} for onnxruntime "
                    f"(drop > {thresholds.max_metric_drop})"
                )
    return problems


def worst_error(report: dict[str, Any]) -> float:
    """The largest max-abs-error over the outputs (infinity when an output is not finite)."""
    worst = 0.0
    for m in report.get("outputs", {}).values():
        value = m.get("max_abs_error")
        worst = max(worst, math.inf if value is None else float(value))
    return worst
