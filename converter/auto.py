"""Choosing among validated variants (``--quantize auto``) and the table the choice is made from.

Among the variants that pass validation, ``--optimize latency`` (the default) keeps the one
with the lowest median LiteRT latency at batch 1 on this host; variants within 5 % of the
fastest count as tied (timing noise on a shared machine is about that), and the smallest
file wins the tie. ``--optimize size`` keeps the smallest file. On a Raspberry Pi the
int8/float ranking can differ from an x86 build host: convert on the target's architecture
when latency decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edge_runtime import text

LATENCY_TIE = 1.05


@dataclass
class Candidate:
    """One variant's row: what it is, whether it passed, and what it costs."""

    mode: str
    variant: str
    size_bytes: int | None = None
    latency_ms: float | None = None
    report: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def passed(self) -> bool:
        """Converted, loadable and within the thresholds."""
        return self.error is None and not self.failures

    def row(self) -> dict[str, Any]:
        """The JSON form of the table row."""
        out: dict[str, Any] = {"mode": self.mode, "variant": self.variant, "passed": self.passed}
        if self.size_bytes is not None:
            out["size_bytes"] = self.size_bytes
        if self.latency_ms is not None:
            out["latency_ms_batch1"] = round(self.latency_ms, 4)
        outputs = self.report.get("outputs", {})
        if outputs:
            out["max_abs_error"] = max((m.get("max_abs_error") or 0.0) for m in outputs.values())
            out["min_correlation"] = min((m.get("correlation") if m.get("correlation") is not None else 0.0) for m in outputs.values())
        labels = self.report.get("labels")
        if labels:
            out["labels"] = labels["tflite"]
        if self.failures:
            out["failures"] = list(self.failures)
        if self.error:
            out["error"] = self.error
        return out


def choose(candidates: Sequence[Candidate], optimize: str = "latency") -> Candidate | None:
    """The variant to ship, or None when none passed."""
    passing = [c for c in candidates if c.passed]
    if not passing:
        return None
    if optimize == "size" or any(c.latency_ms is None for c in passing):
        return min(passing, key=lambda c: (c.size_bytes or 0, c.latency_ms or 0.0))
    fastest = min(c.latency_ms or 0.0 for c in passing)
    tied = [c for c in passing if (c.latency_ms or 0.0) <= fastest * LATENCY_TIE]
    return min(tied, key=lambda c: (c.size_bytes or 0, c.latency_ms or 0.0))


def _agreement(report: dict[str, Any]) -> str:
    values = [
        m.get("top1_agreement", m.get("decision_agreement"))
        for m in report.get("outputs", {}).values()
        if m.get("top1_agreement", m.get("decision_agreement")) is not None
    ]
    return f"{min(values):.3f}" if values else "-"


def _labels(report: dict[str, Any]) -> str:
    labels = report.get("labels")
    if not labels:
        return "-"
    got = labels["tflite"]
    parts = [f"acc {got['accuracy']:.3f}" if got.get("accuracy") is not None else ""]
    if got.get("auc") is not None:
        parts.append(f"AUC {got['auc']:.3f}")
    return " ".join(p for p in parts if p) or "-"


def format_table(candidates: Sequence[Candidate], chosen: Candidate | None, reference_labels: dict[str, Any] | None) -> str:
    """A fixed-width table of the variants, the chosen one marked with ``*``."""
    fp32 = next((c.size_bytes for c in candidates if c.mode == "fp32" and c.size_bytes), None)
    head = ["", "mode", "size", "vs fp32", "max abs err", "correlation", "agreement", "labels", "latency b1", "result"]
    rows = [head]
    for c in candidates:
        outputs = c.report.get("outputs", {})
        err = max((m.get("max_abs_error") or 0.0) for m in outputs.values()) if outputs else None
        corrs = [m.get("correlation") for m in outputs.values()]
        corr = min((v if v is not None else 0.0) for v in corrs) if corrs else None
        if c.error:
            result = "FAIL: " + c.error
        elif c.failures:
            result = "FAIL: " + "; ".join(c.failures)
        else:
            result = "pass"
        rows.append([
            "*" if c is chosen else "",
            c.mode,
            f"{c.size_bytes / 1024:,.1f} KiB" if c.size_bytes else "-",
            f"{c.size_bytes / fp32:.2f}" if c.size_bytes and fp32 else "-",
            f"{err:.3g}" if err is not None else "-",
            f"{corr:.4f}" if corr is not None else "-",
            _agreement(c.report),
            _labels(c.report),
            f"{c.latency_ms:.3f} ms" if c.latency_ms is not None else "-",
            result,
        ])
    if reference_labels:
        ref = {"labels": {"tflite": reference_labels}}
        rows.append(["", "onnxruntime", "-", "-", "0", "1", "1", _labels(ref), "-", "reference"])
    return text.format_table(rows, right=(2, 3, 4, 5, 6, 8))
