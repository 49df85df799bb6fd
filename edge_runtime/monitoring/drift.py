"""Streaming drift of one served model version against its reference profile.

Each scored request is appended to a short buffer (a list append on the request path);
every :data:`FLUSH_REQUESTS` requests or tenth of a window, or when somebody reads the
figures, the buffer is binned in one vectorised pass (on a background thread in the
daemon) into the counts of the current *bucket* of about ``window_rows / 10`` rows. The
window is the newest buckets that hold at least ``window_rows`` rows (at most a bucket
more), so memory is fixed: per feature one count per bin per bucket.

Drift of a feature is its population stability index over the window::

    PSI = sum over bins of (q - p) * ln(q / p)

with ``p`` the reference share of a bin and ``q`` the window's, both smoothed by half a
row so an empty bin stays finite. The model's score is the largest PSI over its features;
the feature that has it is named. A score at or above ``threshold`` raises one ``drift``
event; another comes only after the score fell below ``clear`` (hysteresis).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_runtime.config import DriftConfig
from edge_runtime.monitoring.profile import Profile, class_vector, feature_matrix

FLUSH_REQUESTS = 64  # requests buffered before they are binned
BUCKETS = 10  # the window slides by a tenth


@dataclass
class DriftReport:
    """What a tracker says now: the window's score, its worst feature and every feature's PSI."""

    score: float | None
    worst_feature: str | None
    rows: int  # rows in the window
    alert: bool
    threshold: float
    features: dict[str, float] = field(default_factory=dict)
    seen: int = 0  # rows observed since load

    def summary(self) -> dict[str, Any]:
        """The compact form carried in the device state and ``fleet status``."""
        return {
            "score": None if self.score is None else round(self.score, 4),
            "worst_feature": self.worst_feature,
            "rows": self.rows,
            "alert": self.alert,
            "threshold": self.threshold,
        }


def psi(reference: np.ndarray, counts: np.ndarray) -> float:
    """PSI of window ``counts`` against reference shares (both per bin), smoothed by half a row."""
    n = float(counts.sum())
    if n <= 0:
        return 0.0
    bins = len(reference)
    q = (counts + 0.5) / (n + 0.5 * bins)
    p = (reference * n + 0.5) / (n + 0.5 * bins)
    return float(np.sum((q - p) * np.log(q / p)))


class DriftTracker:
    """Sketches of what one model version scores, and its drift against the profile.

    ``observe`` runs on the request path (the event loop); everything else may run on any
    thread: the buffer swap and the bucket counts are guarded by one lock.
    """

    def __init__(self, profile: Profile, settings: DriftConfig,
                 on_event: Callable[[str, dict[str, Any]], None] | None = None,
                 submit: Callable[[Callable[[], None]], bool] | None = None) -> None:
        self.profile = profile
        # Where full buffers are binned: a background thread in the daemon (returns False
        # when it is backed up and the buffer was dropped), here in tests.
        self._submit = submit
        self.settings = settings
        self.on_event = on_event
        feats = profile.features
        self._features = feats
        self._bins = np.array([f.bins for f in feats], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(self._bins)[:-1]]).astype(np.int64)
        self._total_bins = int(self._bins.sum())
        self._reference = [np.asarray(f.reference, dtype=np.float64) for f in feats]
        # Numeric features grouped by (side, tensor): one vectorised pass per tensor.
        self._groups: list[tuple[str, int, np.ndarray, np.ndarray, np.ndarray]] = []
        self._classes: list[tuple[int, int]] = []  # (output tensor, feature position)
        by_tensor: dict[tuple[str, int], list[int]] = {}
        for pos, f in enumerate(feats):
            if f.classes:
                self._classes.append((f.tensor, pos))
            else:
                by_tensor.setdefault((f.side, f.tensor), []).append(pos)
        for (side, tensor), positions in by_tensor.items():
            width = max(len(feats[p].edges) for p in positions) or 1
            edges = np.full((len(positions), width), np.inf)
            for row, p in enumerate(positions):
                e = feats[p].edges
                edges[row, : len(e)] = e
            columns = np.array([feats[p].index for p in positions], dtype=np.int64)
            self._groups.append((side, tensor, columns, edges, self._offsets[positions]))
        self._bucket_rows = max(1, settings.window_rows // BUCKETS)
        self._buckets: deque[tuple[np.ndarray, int]] = deque()
        self._current = np.zeros(self._total_bins, dtype=np.int64)
        self._current_rows = 0
        self._window = np.zeros(self._total_bins, dtype=np.int64)
        self._window_rows = 0
        self._pending: list[tuple[Sequence[np.ndarray], Sequence[np.ndarray]]] = []
        self._pending_rows = 0
        self._pending_lock = threading.Lock()
        self._batch_axis = bool(profile.input_layouts) and profile.input_layouts[0].batch_axis
        self._lock = threading.Lock()
        self._alert = False
        self.seen = 0
        self.events = 0
        self.dropped_requests = 0  # buffers dropped because the binning thread was behind

    # -- the request path ----------------------------------------------------------------

    def observe(self, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> None:
        """Remember one scored request (binned later, in bulk)."""
        first = inputs[0] if inputs else None
        with self._pending_lock:  # uncontended but for a reader's flush on another thread
            pending = self._pending
            pending.append((inputs, outputs))
            self._pending_rows += first.shape[0] if self._batch_axis and first is not None and first.ndim else 1
            if len(pending) < FLUSH_REQUESTS and self._pending_rows < self._bucket_rows:
                return
            self._pending, self._pending_rows = [], 0
        if self._submit is None:
            self._bin(pending)
        elif not self._submit(lambda: self._bin(pending)):
            self.dropped_requests += len(pending)

    # -- binning ------------------------------------------------------------------------

    def flush(self) -> None:
        """Bin the buffered requests; check the alert."""
        with self._pending_lock:
            pending, self._pending, self._pending_rows = self._pending, [], 0
        self._bin(pending)

    def _bin(self, pending: list[tuple[Sequence[np.ndarray], Sequence[np.ndarray]]]) -> None:
        with self._lock:
            if pending:
                self._add(pending)
            event = self._check_alert()
        if event is not None and self.on_event is not None:
            self.on_event(*event)

    def _add(self, pending: list[tuple[Sequence[np.ndarray], Sequence[np.ndarray]]]) -> None:
        prof = self.profile
        layouts = {"input": prof.input_layouts, "output": prof.output_layouts}
        # One matrix per (side, tensor) over every buffered request, rows kept apart per request.
        rows_per_request = []
        for ins, _ in pending:
            a = np.asarray(ins[0]) if ins else np.empty(0)
            rows_per_request.append(int(a.shape[0]) if prof.input_layouts and prof.input_layouts[0].batch_axis and a.ndim else 1)
        counts = np.zeros(self._total_bins, dtype=np.int64)
        for side, tensor, columns, edges, offsets in self._groups:
            lay = layouts[side][tensor]
            mats = []
            for ins, outs in pending:
                arrays = ins if side == "input" else outs
                if tensor < len(arrays):
                    m = feature_matrix(arrays[tensor], lay)
                    if m.shape[1] == lay.count:
                        mats.append(m)
            if not mats:
                continue
            m = np.concatenate(mats) if len(mats) > 1 else mats[0]
            x = m[:, columns]  # [values, features of this tensor]
            finite = np.isfinite(x)
            idx = (x[:, :, None] >= edges[None, :, :]).sum(axis=2) + offsets[None, :]
            counts += np.bincount(idx[finite], minlength=self._total_bins)
        for tensor, pos in self._classes:
            lay = prof.output_layouts[tensor]
            for _, outs in pending:
                if tensor < len(outs):
                    cls = class_vector(outs[tensor], lay)
                    if cls is not None:
                        counts[self._offsets[pos]:self._offsets[pos] + self._bins[pos]] += np.bincount(
                            cls, minlength=lay.count)[: self._bins[pos]]
        rows = sum(rows_per_request)
        self.seen += rows
        self._current += counts
        self._current_rows += rows
        self._window += counts
        self._window_rows += rows
        if self._current_rows >= self._bucket_rows:
            self._buckets.append((self._current, self._current_rows))
            self._current = np.zeros(self._total_bins, dtype=np.int64)
            self._current_rows = 0
        # The window keeps at least window_rows rows: the oldest bucket goes once the rest hold enough.
        while self._buckets and self._window_rows - self._buckets[0][1] >= self.settings.window_rows:
            old, old_rows = self._buckets.popleft()
            self._window -= old
            self._window_rows -= old_rows

    # -- figures -------------------------------------------------------------------------

    def _scores(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for pos, f in enumerate(self._features):
            start = self._offsets[pos]
            out[f.name] = psi(self._reference[pos], self._window[start:start + self._bins[pos]].astype(np.float64))
        return out

    def _worst(self) -> tuple[float | None, str | None, dict[str, float]]:
        if self._window_rows < self.settings.min_rows or not self._features:
            return None, None, {}
        scores = self._scores()
        name = max(scores, key=lambda k: scores[k])
        return scores[name], name, scores

    def _check_alert(self) -> tuple[str, dict[str, Any]] | None:
        s = self.settings
        if s.threshold <= 0:
            return None
        score, worst, _ = self._worst()
        if score is None:
            return None
        if not self._alert and score >= s.threshold:
            self._alert = True
            self.events += 1
            return "drift", {"score": round(score, 4), "worst_feature": worst, "threshold": s.threshold,
                             "rows": self._window_rows}
        if self._alert and score < s.clear:
            self._alert = False
            return "drift_cleared", {"score": round(score, 4), "worst_feature": worst, "threshold": s.threshold,
                                     "rows": self._window_rows}
        return None

    def report(self) -> DriftReport:
        """The figures now (bins what is buffered first)."""
        self.flush()
        with self._lock:
            score, worst, scores = self._worst()
            return DriftReport(score, worst, self._window_rows, self._alert, self.settings.threshold,
                               {k: round(v, 4) for k, v in scores.items()}, self.seen)


def worst_features(report: DriftReport, n: int = 5) -> list[tuple[str, float]]:
    """The ``n`` features with the largest PSI, largest first."""
    return sorted(report.features.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def finite_or_none(x: float | None) -> float | None:
    """``x`` when finite, else None (JSON has no infinity)."""
    return x if x is not None and math.isfinite(x) else None


__all__ = ["BUCKETS", "FLUSH_REQUESTS", "DriftReport", "DriftTracker", "psi", "worst_features"]
