"""Serving statistics: Prometheus metrics (``GET /metrics``) and Triton-shaped model stats.

The hot path only adds to plain integers and bucket lists, always on the event-loop
thread (worker threads hand their timings back with the results), so recording costs
well under a microsecond and needs no lock. A collector turns the numbers into metric
families (printed by serving/promtext.py) when ``/metrics`` is scraped; the same numbers
feed ``GET /v2/models/{m}/stats``.

Statistics are kept per (model, version) for the life of the process, so counters stay
monotonic when a version is unloaded by a swap and loaded again.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from edge_runtime.health import Health
from edge_runtime.monitoring.hub import Monitoring

TIME_BUCKETS_S = (
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
ERROR_BUCKETS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.25, 0.5, 1.0)
OUTCOMES = ("success", "bad_request", "unavailable", "error")
_now = time.time


class Histogram:
    """Bucket counts and a sum; ``observe`` is a bisect and two additions."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Record one value."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        """How many values were recorded."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus ``(le, cumulative count)`` pairs ending with ``+Inf``."""
        out = []
        running = 0
        for bound, n in zip(self.bounds, self.counts):
            running += n
            out.append((_le(bound), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out


def _le(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() and bound >= 1 else repr(float(bound))


class VersionStats:
    """Every number kept for one model version (plain attributes: the hot path only adds)."""

    def __init__(self, model: str, version: int) -> None:
        self.model = model
        self.version = version
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self.success_count = self.success_ns = 0
        self.fail_count = self.fail_ns = 0
        self.queue_ns = self.input_ns = self.infer_ns = self.output_ns = 0
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_s = 0.0
        self.batches: dict[int, list[int]] = {}  # rows -> [runs, infer ns]
        self.queue_hist = Histogram(TIME_BUCKETS_S)
        self.compute_hist = Histogram(TIME_BUCKETS_S)
        self.batch_hist = Histogram(BATCH_BUCKETS)
        self.inline_count = 0  # requests answered on the loop (queue time 0)
        self.single_runs = self.single_ns = 0  # inline runs of one row, kept out of the histograms until read

    def executed(self, batch_rows: int, infer_ns: int) -> None:
        """One interpreter run of ``batch_rows`` rows."""
        self.execution_count += 1
        self.compute_hist.observe(infer_ns / 1e9)
        self.batch_hist.observe(batch_rows)
        b = self.batches.get(batch_rows)
        if b is None:
            self.batches[batch_rows] = [1, infer_ns]
        else:
            b[0] += 1
            b[1] += infer_ns

    def answered(self, rows: int, total_ns: int, queue_ns: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """A successful request that went through the queue: its rows and where its time went."""
        self.success_count += 1
        self.success_ns += total_ns
        self.queue_ns += queue_ns
        self.input_ns += input_ns
        self.infer_ns += infer_ns
        self.output_ns += output_ns
        self.inference_count += rows
        self.last_inference_s = _now()
        self.queue_hist.observe(queue_ns / 1e9)

    def answered_inline(self, rows: int, total_ns: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """A successful request run on the event loop: one run of its own rows, no queueing.

        ``executed`` and ``answered`` folded into one call for the cheapest path; the
        zero queue time is added to the queue histogram when it is read.
        """
        self.success_count += 1
        self.success_ns += total_ns
        self.input_ns += input_ns
        self.infer_ns += infer_ns
        self.output_ns += output_ns
        self.inference_count += rows
        self.inline_count += 1
        self.execution_count += 1
        self.last_inference_s = _now()
        self.compute_hist.observe(infer_ns / 1e9)
        if rows == 1:
            self.single_runs += 1
            self.single_ns += infer_ns
        else:
            self.batch_hist.observe(rows)
            b = self.batches.get(rows)
            if b is None:
                self.batches[rows] = [1, infer_ns]
            else:
                b[0] += 1
                b[1] += infer_ns

    def batch_counts(self) -> dict[int, list[int]]:
        """rows -> [runs, infer ns], including the single-row inline runs."""
        out = {k: list(v) for k, v in self.batches.items()}
        if self.single_runs:
            one = out.setdefault(1, [0, 0])
            one[0] += self.single_runs
            one[1] += self.single_ns
        return out

    def queue_histogram(self) -> Histogram:
        """The queue-time histogram with the inline requests' zero waits added."""
        h = Histogram(self.queue_hist.bounds)
        h.counts = list(self.queue_hist.counts)
        h.counts[0] += self.inline_count
        h.total = self.queue_hist.total
        return h

    def batch_histogram(self) -> Histogram:
        """The batch-size histogram with the single-row inline runs added."""
        h = Histogram(self.batch_hist.bounds)
        h.counts = list(self.batch_hist.counts)
        h.counts[0] += self.single_runs
        h.total = self.batch_hist.total + self.single_runs
        return h

    def failed(self, outcome: str, total_ns: int = 0) -> None:
        """A request that did not succeed (``bad_request``, ``unavailable``, ``error``)."""
        self.outcomes[outcome] += 1
        self.fail_count += 1
        self.fail_ns += total_ns

    def to_triton(self) -> dict[str, Any]:
        """One entry of Triton's ``model_stats`` list."""
        n = self.success_count

        def d(count: int, ns: int) -> dict[str, int]:
            return {"count": count, "ns": ns}

        return {
            "name": self.model,
            "version": str(self.version),
            "last_inference": int(self.last_inference_s * 1000),
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": d(n, self.success_ns),
                "fail": d(self.fail_count, self.fail_ns),
                "queue": d(n, self.queue_ns),
                "compute_input": d(n, self.input_ns),
                "compute_infer": d(n, self.infer_ns),
                "compute_output": d(n, self.output_ns),
                "cache_hit": d(0, 0),
                "cache_miss": d(0, 0),
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": d(runs, 0),
                    "compute_infer": d(runs, ns),
                    "compute_output": d(runs, 0),
                }
                for size, (runs, ns) in sorted(self.batch_counts().items())
            ],
            "memory_usage": [],
        }


class ShadowStats:
    """Agreement between the answered version and a shadow version of one model."""

    def __init__(self) -> None:
        self.comparisons = 0
        self.top1_disagreements = 0
        self.dropped = 0
        self.failed = 0
        self.max_abs_error = Histogram(ERROR_BUCKETS)
        self.worst = 0.0

    def compared(self, max_abs_error: float, top1_disagree: int, rows: int) -> None:
        """Record one compared request."""
        self.comparisons += rows
        self.top1_disagreements += top1_disagree
        if math.isnan(max_abs_error):
            max_abs_error = math.inf
        self.max_abs_error.observe(max_abs_error)
        self.worst = max(self.worst, max_abs_error)


class LoadedViews(Protocol):
    """What the loaded versions look like now (the model manager), read at each scrape."""

    def queue_depths(self) -> Iterator[tuple[str, int, int]]:
        """(model, version, requests waiting) per loaded version."""
        ...

    def loaded_roles(self) -> Iterator[tuple[str, int, str]]:
        """(model, version, role) per loaded version."""
        ...

    def delegates(self) -> Iterator[tuple[str, int, str, Any]]:
        """(model, version, delegate in use, skipped delegates) per loaded version."""
        ...

    def variants(self) -> Iterator[tuple[str, int, Any]]:
        """(model, version, the variant choice) per loaded version of a bundle with several variants."""
        ...


class Metrics:
    """All serving statistics of one daemon, and the Prometheus text that exports them.

    What the metrics read from elsewhere is given, not assigned later: the monitoring hub and
    the health reader here, the loaded versions (:class:`LoadedViews`) at each scrape."""

    def __init__(self, monitoring: Monitoring | None = None, health: Callable[[], Health] | None = None) -> None:
        self.versions: dict[tuple[str, int], VersionStats] = {}
        self.shadows: dict[tuple[str, int, int], ShadowStats] = {}
        self.swaps: dict[tuple[str, str], int] = {}
        self.fallbacks: dict[str, int] = {}
        self.not_found_requests = 0  # unknown model or version: not labelled, to bound cardinality
        self.not_ready_requests: dict[str, int] = {}
        self.monitoring = monitoring  # drift and capture figures (docs/monitoring.md)
        self.health = health  # device health, read at each scrape
        # Update bytes received per (model, version), set by the daemon when updates run.
        self.update_traffic: Callable[[], dict[tuple[str, int], int]] | None = None

    def version(self, model: str, version: int) -> VersionStats:
        """The statistics of one version (created on first use, kept for the process's life)."""
        key = (model, version)
        stats = self.versions.get(key)
        if stats is None:
            stats = self.versions[key] = VersionStats(model, version)
        return stats

    def shadow(self, model: str, answered: int, shadow: int) -> ShadowStats:
        """Agreement statistics of one (answered version, shadow version) pair."""
        key = (model, answered, shadow)
        stats = self.shadows.get(key)
        if stats is None:
            stats = self.shadows[key] = ShadowStats()
        return stats

    def not_ready(self, model: str) -> None:
        """Count a request for a model that has no version loaded (503)."""
        self.not_ready_requests[model] = self.not_ready_requests.get(model, 0) + 1

    def swap(self, model: str, outcome: str) -> None:
        """Count a hot swap (``success`` or ``failed``)."""
        self.swaps[(model, outcome)] = self.swaps.get((model, outcome), 0) + 1

    def fallback(self, model: str) -> None:
        """Count a start-up fallback (to the last known good or factory version)."""
        self.fallbacks[model] = self.fallbacks.get(model, 0) + 1

    def exposition(self, loaded: LoadedViews | None = None) -> bytes:
        """The Prometheus text format of everything, with the loaded versions of ``loaded``.
        (serving/promtext.py prints it: prometheus_client costs about 3 MB of RSS once imported.)"""
        from edge_runtime.serving.promtext import render

        return render(_Collector(self, loaded).collect())


class _Collector:
    """Builds the metric families from :class:`Metrics` at scrape time."""

    def __init__(self, metrics: Metrics, loaded: LoadedViews | None) -> None:
        self.m = metrics
        self.loaded = loaded

    def collect(self) -> Iterator[Any]:
        """Every metric family (also prometheus_client's Collector protocol)."""
        from edge_runtime.serving.promtext import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        m = self.m
        mv = ["model", "version"]
        requests = CounterMetricFamily("edge_requests", "Infer requests by model, version and outcome.", labels=[*mv, "outcome"])
        rows = CounterMetricFamily("edge_inferences", "Rows (batch entries) inferred.", labels=mv)
        executions = CounterMetricFamily("edge_executions", "Interpreter runs (batches).", labels=mv)
        queue = HistogramMetricFamily("edge_queue_seconds", "Time requests waited in the batching queue.", labels=mv)
        compute = HistogramMetricFamily("edge_compute_seconds", "Interpreter time per batch.", labels=mv)
        batch = HistogramMetricFamily("edge_batch_size", "Rows per interpreter run.", labels=mv)
        for (model, version), s in sorted(m.versions.items()):
            labels = [model, str(version)]
            for outcome, n in s.outcomes.items():
                requests.add_metric([*labels, outcome], s.success_count if outcome == "success" else n)
            rows.add_metric(labels, s.inference_count)
            executions.add_metric(labels, s.execution_count)
            for fam, h in ((queue, s.queue_histogram()), (compute, s.compute_hist), (batch, s.batch_histogram())):
                fam.add_metric(labels, h.cumulative(), h.total)
        yield from (requests, rows, executions, queue, compute, batch)
        unknown = CounterMetricFamily("edge_not_found_requests", "Infer requests naming a model or version not served.")
        unknown.add_metric([], m.not_found_requests)
        yield unknown
        not_ready = CounterMetricFamily("edge_not_ready_requests", "Infer requests for a model with no version loaded.",
                                        labels=["model"])
        for model, n in sorted(m.not_ready_requests.items()):
            not_ready.add_metric([model], n)
        yield not_ready
        depth = GaugeMetricFamily("edge_queue_depth", "Requests waiting in the batching queue.", labels=mv)
        loaded = self.loaded
        for model, version, n in loaded.queue_depths() if loaded else ():
            depth.add_metric([model, str(version)], n)
        yield depth
        serving = GaugeMetricFamily("edge_model_loaded", "Loaded versions and their role (default, traffic, shadow, loaded).", labels=[*mv, "role"])
        for model, version, role in loaded.loaded_roles() if loaded else ():
            serving.add_metric([model, str(version), role], 1)
        yield serving
        used = GaugeMetricFamily("edge_model_delegate", "What runs each loaded version: xnnpack, cpu, onnxruntime or an external delegate.", labels=[*mv, "delegate"])
        skipped = GaugeMetricFamily(
            "edge_model_delegate_skipped",
            "Delegates tried before the one in use, by why they were skipped (missing, not_a_delegate, refused, failed, selftest, unsupported).",
            labels=[*mv, "delegate", "reason"],
        )
        for model, version, delegate, skips in loaded.delegates() if loaded else ():
            used.add_metric([model, str(version), delegate], 1)
            for skip in skips:
                skipped.add_metric([model, str(version), skip.delegate, skip.kind], 1)
        yield used
        yield skipped
        variants = GaugeMetricFamily(
            "edge_model_variant_ms_per_row",
            "Each variant of a loaded version as timed on this device (ms per row), by outcome (chosen, slower, failed, over-budget, not-pinned).",
            labels=[*mv, "variant", "outcome"],
        )
        for model, version, choice in loaded.variants() if loaded else ():
            for v in choice.verdicts:
                variants.add_metric([model, str(version), v.variant, v.outcome.value],
                                    float("nan") if v.ms_per_row is None else v.ms_per_row)
        yield variants
        swaps = CounterMetricFamily("edge_swaps", "Hot swaps by outcome (success, failed).", labels=["model", "outcome"])
        for (model, outcome), n in sorted(m.swaps.items()):
            swaps.add_metric([model, outcome], n)
        yield swaps
        fallbacks = CounterMetricFamily("edge_fallbacks", "Start-up fallbacks to the last known good or factory version.", labels=["model"])
        for model, n in sorted(m.fallbacks.items()):
            fallbacks.add_metric([model], n)
        yield fallbacks
        sl = ["model", "version", "shadow_version"]
        cmp_ = CounterMetricFamily("edge_shadow_comparisons", "Rows scored by a shadow version and compared.", labels=sl)
        top1 = CounterMetricFamily("edge_shadow_top1_disagreements", "Rows whose top-1 class differs from the shadow's.", labels=sl)
        dropped = CounterMetricFamily("edge_shadow_dropped", "Requests not shadowed because the shadow was busy or failed.", labels=sl)
        err = HistogramMetricFamily("edge_shadow_max_abs_error", "Per-request max absolute difference to the shadow.", labels=sl)
        worst = GaugeMetricFamily("edge_shadow_max_abs_error_worst", "Largest absolute difference seen so far.", labels=sl)
        for (model, answered, shadow), st in sorted(m.shadows.items()):
            labels = [model, str(answered), str(shadow)]
            cmp_.add_metric(labels, st.comparisons)
            top1.add_metric(labels, st.top1_disagreements)
            dropped.add_metric(labels, st.dropped + st.failed)
            err.add_metric(labels, st.max_abs_error.cumulative(), st.max_abs_error.total)
            worst.add_metric(labels, st.worst)
        yield from (cmp_, top1, dropped, err, worst)
        if m.monitoring is not None:
            yield from _drift_families(m.monitoring)
        if m.health is not None:
            yield from _health_families(m.health())

        if m.update_traffic is not None:
            got = CounterMetricFamily("edge_update_downloaded_bytes", "Update bytes received per release "
                                      "(full chunks and deltas, duplicates included).", labels=["model", "version"])
            for (model, version), n in sorted(m.update_traffic().items()):
                got.add_metric([model, str(version)], n)
            yield got


def _health_families(h: Health) -> Iterator[Any]:
    """``edge_cpu_temperature_celsius``, ``edge_throttled``, ``edge_under_voltage``, ``edge_store_free_bytes``
    and the memory gauges; a figure the board does not report is left out."""
    from edge_runtime.serving.promtext import GaugeMetricFamily

    for name, doc, value in (
        ("edge_cpu_temperature_celsius", "CPU temperature (the cpu-thermal zone).", h.cpu_temp_c),
        ("edge_throttled", "1 while the firmware throttles the CPU (Raspberry Pi get_throttled bit 2).",
         None if h.throttled is None else int(h.throttled)),
        ("edge_under_voltage", "1 while the supply is under-voltage (get_throttled bit 0).",
         None if h.under_voltage is None else int(h.under_voltage)),
        ("edge_store_free_bytes", "Free bytes on the model store's file system.", h.store_free_bytes),
        ("edge_memory_available_bytes", "MemAvailable of /proc/meminfo.", h.mem_available_bytes),
    ):
        family = GaugeMetricFamily(name, doc)
        if value is not None:
            family.add_metric([], value)
            yield family


def _drift_families(mon: Monitoring) -> Iterator[Any]:
    """``edge_drift_*`` and ``edge_capture_*`` (docs/monitoring.md)."""
    from edge_runtime.serving.promtext import CounterMetricFamily, GaugeMetricFamily

    mv = ["model", "version"]
    score = GaugeMetricFamily("edge_drift_score", "Largest PSI of any feature over the rolling window (absent until "
                              "the window holds min_rows).", labels=mv)
    feature = GaugeMetricFamily("edge_drift_feature_psi", "PSI of one feature over the rolling window.",
                                labels=[*mv, "feature"])
    rows = GaugeMetricFamily("edge_drift_window_rows", "Rows in the rolling drift window.", labels=mv)
    alert = GaugeMetricFamily("edge_drift_alert", "1 while the drift score is above the threshold (with hysteresis).",
                              labels=mv)
    threshold = GaugeMetricFamily("edge_drift_threshold", "The configured drift threshold (0: no alerts).", labels=mv)
    seen = CounterMetricFamily("edge_drift_observed_rows", "Rows sketched since the version was loaded.", labels=mv)
    for model, version, r in mon.reports():
        labels = [model, str(version)]
        if r.score is not None:
            score.add_metric(labels, r.score)
        for name, value in sorted(r.features.items()):
            feature.add_metric([*labels, name], value)
        rows.add_metric(labels, r.rows)
        alert.add_metric(labels, 1 if r.alert else 0)
        threshold.add_metric(labels, r.threshold)
        seen.add_metric(labels, r.seen)
    yield from (score, feature, rows, alert, threshold, seen)
    cl = ["model"]
    records = CounterMetricFamily("edge_capture_records", "Captured records written to the ring.", labels=cl)
    dropped = CounterMetricFamily("edge_capture_dropped_records", "Records dropped with the oldest segments.", labels=cl)
    skipped = CounterMetricFamily("edge_capture_skipped_records", "Records not written (disk nearly full, queue full).",
                                  labels=cl)
    size = GaugeMetricFamily("edge_capture_bytes", "Bytes of the capture ring on disk.", labels=cl)
    for model, ring in sorted(mon.rings.items()):
        st = ring.stats()
        records.add_metric([model], st["written_records"])
        dropped.add_metric([model], st["dropped_records"])
        skipped.add_metric([model], st["skipped_records"])
        size.add_metric([model], st["bytes"])
    yield from (records, dropped, skipped, size)
