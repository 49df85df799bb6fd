"""Streaming drift of one served model version against its reference profile.

Each scored request is appended to a short buffer (a list append on the request path);
every :data:`FLUSH_REQUESTS` requests or tenth of a window, or when somebody reads the
figures, the buffer is binned in one vectorised pass (on the event loop in the daemon;
docs/monitoring.md says why not on a thread of its own) into the counts of the current
*bucket* of about ``window_rows / 10`` rows. The
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
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from edge_runtime.bundle.profile import Profile, class_vector, feature_matrix
from edge_runtime.config import DriftConfig

FLUSH_REQUESTS = 64  # requests buffered before they are binned
FLUSH_VALUES = 1 << 18  # ... or once they hold this many input values (the buffer keeps requests alive)
MAX_STRIDE = 10_000
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
    allowance: float = 0.0  # PSI that sampling noise alone explains at these profile and window sizes

    def summary(self) -> dict[str, Any]:
        """The compact form carried in the device state and ``fleet status``."""
        return {
            "score": None if self.score is None else round(self.score, 4),
            "worst_feature": self.worst_feature,
            "rows": self.rows,
            "alert": self.alert,
            "threshold": self.threshold,
            "noise_allowance": round(self.allowance, 4),
        }


def psi_by_feature(reference: np.ndarray, counts: np.ndarray, offsets: np.ndarray, feature_of_bin: np.ndarray) -> np.ndarray:
    """PSI of each feature: window ``counts`` against reference shares, both flat over every
    feature's bins (feature ``k``'s bins start at ``offsets[k]``; ``feature_of_bin`` names the
    feature of each bin), smoothed by half a row."""
    n = np.add.reduceat(counts, offsets)[feature_of_bin]
    half = 0.5 * np.bincount(feature_of_bin)[feature_of_bin]
    q = (counts + 0.5) / (n + half)
    p = (reference * n + 0.5) / (n + half)
    return np.add.reduceat((q - p) * np.log(q / p), offsets)


def psi(reference: np.ndarray, counts: np.ndarray) -> float:
    """PSI of one feature's window ``counts`` against its reference shares (see :func:`psi_by_feature`)."""
    bins = len(reference)
    return float(psi_by_feature(np.asarray(reference, np.float64), np.asarray(counts, np.float64),
                                np.zeros(1, np.int64), np.zeros(bins, np.int64))[0])


ALERT_FALSE_RATE = 0.001  # chance that one check of unshifted traffic crosses the noise allowance


def noise_allowance(bins: Sequence[int], reference_rows: int, window_rows: int,
                    false_rate: float = ALERT_FALSE_RATE) -> float:
    """The PSI that sampling alone reaches, with probability ``false_rate`` over all features.

    For small differences PSI is about ``sum (q - p)^2 / p``; with the reference shares from
    ``reference_rows`` rows and the window's from ``window_rows``, that sum is distributed as
    ``(1/reference_rows + 1/window_rows) * chi2(bins - 1)`` when nothing changed. The allowance
    is the largest feature's chi-square quantile at ``1 - false_rate / features`` (Bonferroni;
    Wilson-Hilferty approximation) times that factor: about 0.72 for a 54-row profile of 30
    decile features and a 1,000-row window, 0.22 for 200 rows, 0.08 for 1,000.
    """
    if not bins or reference_rows <= 0 or window_rows <= 0:
        return 0.0
    z = NormalDist().inv_cdf(1.0 - false_rate / len(bins))
    k = max(1, max(bins) - 1)
    quantile = k * (1.0 - 2.0 / (9.0 * k) + z * math.sqrt(2.0 / (9.0 * k))) ** 3
    return quantile * (1.0 / reference_rows + 1.0 / window_rows)


class DriftTracker:
    """Sketches of what one model version scores, and its drift against the profile.

    ``observe`` runs on the request path (the event loop); everything else may run on any
    thread: the buffer swap and the bucket counts are guarded by one lock.
    """

    def __init__(self, profile: Profile, settings: DriftConfig,
                 on_event: Callable[[str, dict[str, Any]], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.profile = profile
        self.settings = settings
        self.on_event = on_event
        feats = profile.features
        self._features = feats
        self._bins = np.array([f.bins for f in feats], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(self._bins)[:-1]]).astype(np.int64)
        self._total_bins = int(self._bins.sum())
        self._reference_flat = np.concatenate([np.asarray(f.reference, dtype=np.float64) for f in feats]) if feats \
            else np.zeros(0)
        self._feature_of_bin = np.repeat(np.arange(len(feats)), self._bins)
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
        self._pending_values = 0  # input values held by the buffer (big requests flush it early)
        self._pending_lock = threading.Lock()
        self._batch_axis = bool(profile.input_layouts) and profile.input_layouts[0].batch_axis
        self._lock = threading.Lock()
        self._alert = False
        self.seen = 0
        self._clock = clock
        self._count = 0  # requests observed (sketched or not)
        self._count_at_flush = 0
        self._last_flush = clock()
        self._stride = 1

    # -- the request path ----------------------------------------------------------------

    def observe(self, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> None:
        """Remember one scored request (binned later, in bulk). Above ``max_sketched_per_s``
        only one request in ``stride`` is kept: a uniform sample of the traffic."""
        self._count += 1
        if self._count % self._stride:
            return
        first = inputs[0] if inputs else None
        with self._pending_lock:  # uncontended but for a reader's flush on another thread
            pending = self._pending
            pending.append((inputs, outputs))
            self._pending_rows += first.shape[0] if self._batch_axis and first is not None and first.ndim else 1
            self._pending_values += sum(a.size for a in inputs)
            rows = self._pending_rows
            if len(pending) < FLUSH_REQUESTS and rows < self._bucket_rows and self._pending_values < FLUSH_VALUES:
                return
            self._pending, self._pending_rows, self._pending_values = [], 0, 0
        self._adjust_stride()
        self._bin(pending, rows)

    def _adjust_stride(self) -> None:
        """Sample so that about ``max_sketched_per_s`` requests a second are sketched."""
        limit = self.settings.max_sketched_per_s
        now = self._clock()
        elapsed, self._last_flush = now - self._last_flush, now
        seen, self._count_at_flush = self._count - self._count_at_flush, self._count
        if limit <= 0 or elapsed <= 0:
            self._stride = 1
            return
        rate = seen / elapsed
        self._stride = max(1, min(MAX_STRIDE, math.ceil(rate / limit)))

    # -- binning ------------------------------------------------------------------------

    def flush(self) -> None:
        """Bin the buffered requests; check the alert."""
        with self._pending_lock:
            pending, rows = self._pending, self._pending_rows
            self._pending, self._pending_rows, self._pending_values = [], 0, 0
        self._bin(pending, rows)

    def _bin(self, pending: list[tuple[Sequence[np.ndarray], Sequence[np.ndarray]]], rows: int) -> None:
        with self._lock:
            if pending:
                self._add(pending, rows)
            event = self._check_alert()
        if event is not None and self.on_event is not None:
            self.on_event(*event)

    def _tensors(self, pending: list[tuple[Sequence[np.ndarray], Sequence[np.ndarray]]], side: str,
                 tensor: int) -> list[np.ndarray]:
        """One tensor of every buffered request: joined into one array when rows can be (one
        feature pass over the whole buffer), else one array per request."""
        k = 0 if side == "input" else 1
        arrays = [r[k][tensor] for r in pending if tensor < len(r[k])]
        layouts = self.profile.input_layouts if side == "input" else self.profile.output_layouts
        if len(arrays) > 1 and layouts[tensor].batch_axis:
            try:
                return [np.concatenate(arrays)]
            except ValueError:  # shapes differ beyond the rows (or a scalar): one at a time
                pass
        return [np.asarray(a) for a in arrays]

    def _add(self, pending: list[tuple[Sequence[np.ndarray], Sequence[np.ndarray]]], rows: int) -> None:
        prof = self.profile
        layouts = {"input": prof.input_layouts, "output": prof.output_layouts}
        counts = np.zeros(self._total_bins, dtype=np.int64)
        for side, tensor, columns, edges, offsets in self._groups:
            lay = layouts[side][tensor]
            mats = [m for m in (feature_matrix(a, lay) for a in self._tensors(pending, side, tensor))
                    if m.shape[1] == lay.count]
            if not mats:
                continue
            m = np.concatenate(mats) if len(mats) > 1 else mats[0]
            x = m[:, columns]  # [values, features of this tensor]
            finite = np.isfinite(x)
            idx = (x[:, :, None] >= edges[None, :, :]).sum(axis=2) + offsets[None, :]
            counts += np.bincount(idx[finite] if not finite.all() else idx.ravel(), minlength=self._total_bins)
        for tensor, pos in self._classes:
            lay = prof.output_layouts[tensor]
            for a in self._tensors(pending, "output", tensor):
                cls = class_vector(a, lay)
                if cls is not None:
                    start = self._offsets[pos]
                    counts[start:start + self._bins[pos]] += np.bincount(cls, minlength=lay.count)[: self._bins[pos]]
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

    def _psi_all(self) -> np.ndarray:
        """PSI of every feature over the window, in one vectorised pass."""
        return psi_by_feature(self._reference_flat, self._window.astype(np.float64), self._offsets, self._feature_of_bin)

    def _worst(self) -> tuple[float | None, str | None, np.ndarray | None]:
        if self._window_rows < self.settings.min_rows or not self._features:
            return None, None, None
        scores = self._psi_all()
        k = int(np.argmax(scores))
        return float(scores[k]), self._features[k].name, scores

    def allowance(self) -> float:
        """The noise allowance of the window now (see :func:`noise_allowance`)."""
        return noise_allowance(self._bins.tolist(), self.profile.rows, self._window_rows)

    def _check_alert(self) -> tuple[str, dict[str, Any]] | None:
        # The alarm fires at threshold + what sampling noise explains: a profile of few rows, or a
        # small window, would otherwise raise alarms on unshifted traffic (and hide nothing real:
        # a real shift of one feature reaches PSI of several units).
        s = self.settings
        if s.threshold <= 0:
            return None
        score, worst, _ = self._worst()
        if score is None:
            return None
        allowance = self.allowance()
        fields = {"score": round(score, 4), "worst_feature": worst, "threshold": s.threshold,
                  "noise_allowance": round(allowance, 4), "rows": self._window_rows}
        if not self._alert and score >= s.threshold + allowance:
            self._alert = True
            return "drift", fields
        if self._alert and score < s.clear + allowance:
            self._alert = False
            return "drift_cleared", fields
        return None

    def report(self) -> DriftReport:
        """The figures now (bins what is buffered first)."""
        self.flush()
        with self._lock:
            score, worst, scores = self._worst()
            named = {} if scores is None else {f.name: round(float(v), 4) for f, v in zip(self._features, scores)}
            return DriftReport(score, worst, self._window_rows, self._alert, self.settings.threshold, named, self.seen,
                               self.allowance())


def worst_features(report: DriftReport, n: int = 5) -> list[tuple[str, float]]:
    """The ``n`` features with the largest PSI, largest first."""
    return sorted(report.features.items(), key=lambda kv: (-kv[1], kv[0]))[:n]



__all__ = ["BUCKETS", "FLUSH_REQUESTS", "DriftReport", "DriftTracker", "noise_allowance", "psi", "psi_by_feature",
           "worst_features"]
