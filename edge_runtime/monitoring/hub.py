"""Field monitoring of the daemon: one :class:`VersionMonitor` per loaded version, the
capture rings; what serving and updates share.

Serving calls :meth:`VersionMonitor.observe` for every answered request (a list append,
plus a random draw when capture is on); the updates side reads :meth:`Monitoring.summary`
for the device state and receives ``drift`` events through :meth:`Monitoring.subscribe`.
Neither side imports the other: the daemon hands both the same :class:`Monitoring`.
"""

from __future__ import annotations

import datetime as _dt
import logging
import random
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_runtime.config import CaptureConfig, DriftConfig
from edge_runtime.exceptions import ManifestError

# The profile parser, the drift sketches and the capture ring are imported by the first
# version that has a profile or capture on: a daemon without them never loads them (about
# 1.4 MB of RSS; docs/serving.md, memory).
if TYPE_CHECKING:
    from edge_runtime.bundle.profile import Profile
    from edge_runtime.monitoring.capture import CaptureRing, CaptureWriter
    from edge_runtime.monitoring.drift import DriftReport, DriftTracker

log = logging.getLogger("edge_runtime.monitoring")

EventSink = Callable[[str, str, int, dict[str, Any]], None]  # kind, model, version, fields


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class VersionMonitor:
    """Drift sketches and capture for one loaded model version."""

    def __init__(self, hub: Monitoring, name: str, version: int, input_names: Sequence[str],
                 output_names: Sequence[str], tracker: DriftTracker | None, ring: CaptureRing | None,
                 capture: CaptureConfig, profile_problem: str | None) -> None:
        self.hub = hub
        self.name = name
        self.version = version
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)
        self.tracker = tracker
        self.ring = ring
        self.rate = capture.rate if ring is not None else 0.0
        self.capture_shadow = ring is not None and capture.shadow_disagreements
        self.profile_problem = profile_problem  # why there is no drift figure, when there is none

    def observe(self, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> None:
        """One answered request (runs on the request path: keep it cheap)."""
        if self.tracker is not None:
            self.tracker.observe(inputs, outputs)
        if self.rate and random.random() < self.rate:
            self._capture("sample", inputs, outputs, None)

    def shadow_disagreed(self, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray], shadow_version: int,
                         shadow_outputs: Sequence[np.ndarray], rows_differing: int) -> None:
        """The shadow version answered a request differently: always captured (when capture is on)."""
        if self.capture_shadow:
            from edge_runtime.monitoring.capture import encode_array

            extra = {"shadow": {"version": shadow_version, "rows_differing": rows_differing,
                                "outputs": {n: encode_array(a) for n, a in zip(self.output_names, shadow_outputs)}}}
            self._capture("shadow_disagreement", inputs, outputs, extra)

    def _capture(self, reason: str, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray],
                 extra: dict[str, Any] | None) -> None:
        assert self.ring is not None
        from edge_runtime.monitoring.capture import capture_record, record_line

        # Encoded and written on the request path (tens of µs, once per captured request, the
        # writes in batches): docs/monitoring.md says why not on a thread of its own.
        line = record_line(capture_record(self.name, self.version, reason, _now(), self.input_names, inputs,
                                          self.output_names, outputs, extra))
        self.hub.writer.offer(self.ring, line, len(line))

    def reconfigured(self, drift: DriftConfig, capture: CaptureConfig) -> VersionMonitor:
        """A monitor of the same version with new settings (after SIGHUP); the window starts afresh."""
        profile = self.tracker.profile if self.tracker is not None else None
        return self.hub.attach(self.name, self.version, self.input_names, self.output_names, profile, drift, capture)

    def report(self) -> DriftReport | None:
        """The drift figures now (None without a profile)."""
        return self.tracker.report() if self.tracker is not None else None


class Monitoring:
    """Every version monitor and capture ring of the daemon."""

    def __init__(self, capture_dir: Path, *, min_free_bytes: int = 64 * 1024 * 1024) -> None:
        self.capture_dir = Path(capture_dir)
        self.min_free_bytes = min_free_bytes
        self.monitors: dict[tuple[str, int], VersionMonitor] = {}
        self.rings: dict[str, CaptureRing] = {}
        self._writer: CaptureWriter | None = None
        self._sinks: list[EventSink] = []
        self._lock = threading.Lock()

    @property
    def writer(self) -> CaptureWriter:
        """The capture writer, made by the first capture (its timer thread starts with the first record)."""
        if self._writer is None:
            from edge_runtime.monitoring.capture import CaptureWriter

            with self._lock:
                if self._writer is None:
                    self._writer = CaptureWriter()
        return self._writer

    # -- wiring --------------------------------------------------------------------------

    def subscribe(self, sink: EventSink) -> None:
        """Receive ``drift`` / ``drift_cleared`` events (called from a monitoring thread)."""
        self._sinks.append(sink)

    def _event(self, name: str, version: int, kind: str, fields: dict[str, Any]) -> None:
        level = logging.WARNING if kind == "drift" else logging.INFO
        log.log(level, "%s v%d: %s, PSI %.3f on %s (threshold %g)", name, version, kind.replace("_", " "),
                fields.get("score", 0.0), fields.get("worst_feature"), fields.get("threshold", 0.0),
                extra={"model": name, "version": version, "event": kind})
        for sink in list(self._sinks):
            try:
                sink(kind, name, version, fields)
            except Exception:  # a sink must not stop the monitoring
                log.exception("drift event sink failed")

    def ring(self, name: str, max_bytes: int | None = None) -> CaptureRing:
        """The capture ring of ``name`` (opened, and recovered after a crash, on first use)."""
        _ = self.writer  # made with the first ring, at load: the first capture is written at once, as before
        with self._lock:
            ring = self.rings.get(name)
            if ring is None:
                from edge_runtime.monitoring.capture import CaptureRing

                ring = CaptureRing(self.capture_dir / name, max_bytes or 50 * 1024 * 1024,
                                   min_free_bytes=self.min_free_bytes)
                self.rings[name] = ring
            elif max_bytes is not None:
                ring.max_bytes = max(1024, max_bytes)
            return ring

    def attach(self, name: str, version: int, input_names: Sequence[str], output_names: Sequence[str],
               profile: Profile | bytes | None, drift: DriftConfig, capture: CaptureConfig,
               input_specs: Any = None, output_specs: Any = None) -> VersionMonitor:
        """The monitor of a version being loaded (replaces an earlier one of the same version)."""
        problem = None
        tracker = None
        if isinstance(profile, bytes):
            from edge_runtime.bundle.profile import parse_profile

            try:
                profile = parse_profile(profile, input_specs, output_specs)
            except ManifestError as exc:
                problem = str(exc)
                profile = None
        if profile is None and problem is None:
            problem = "the bundle carries no reference profile"
        if profile is not None:
            from edge_runtime.monitoring.drift import DriftTracker

            tracker = DriftTracker(profile, drift, lambda kind, fields: self._event(name, version, kind, fields))
        ring = self.ring(name, int(capture.max_mb * 1024 * 1024)) if capture.on else None
        mon = VersionMonitor(self, name, version, input_names, output_names, tracker, ring, capture, problem)
        with self._lock:
            self.monitors[(name, version)] = mon
        return mon

    def detach(self, name: str, version: int, mon: VersionMonitor | None = None) -> None:
        """Forget a version that was unloaded (only ``mon`` itself, when given)."""
        with self._lock:
            if mon is None or self.monitors.get((name, version)) is mon:
                self.monitors.pop((name, version), None)

    # -- figures -------------------------------------------------------------------------

    def reports(self) -> list[tuple[str, int, DriftReport]]:
        """``(model, version, report)`` of every loaded version with a profile."""
        with self._lock:
            mons = sorted(self.monitors.items())
        out = []
        for (name, version), mon in mons:
            r = mon.report()
            if r is not None:
                out.append((name, version, r))
        return out

    def summary(self, serving: dict[str, int | None] | None = None) -> dict[str, dict[str, Any]]:
        """Per model, the drift of the version serving it (else the newest loaded one): the device
        state's ``drift`` (see docs/monitoring.md)."""
        with self._lock:
            mons = dict(self.monitors)
        by_model: dict[str, list[int]] = {}
        for name, version in mons:
            by_model.setdefault(name, []).append(version)
        out: dict[str, dict[str, Any]] = {}
        for name, versions in sorted(by_model.items()):
            wanted = (serving or {}).get(name)
            version = wanted if wanted is not None and wanted in versions else max(versions)
            mon = mons[(name, version)]
            r = mon.report()
            if r is None:
                out[name] = {"version": version, "score": None, "worst_feature": None, "alert": False,
                             "problem": mon.profile_problem}
            else:
                out[name] = {"version": version, **r.summary()}
            if mon.ring is not None:
                st = mon.ring.stats()
                out[name]["capture"] = {k: st[k] for k in ("segments", "bytes", "dropped_records", "written_records")}
        return out

    def seal_all(self) -> None:
        """Write what is queued and seal every open segment (before a capture upload)."""
        if self._writer is not None:
            self._writer.flush()
        for ring in list(self.rings.values()):
            ring.seal()

    def stop(self) -> None:
        """Write waiting captures, seal the open segments, stop the capture timer."""
        if self._writer is not None:
            self._writer.stop()
        for ring in list(self.rings.values()):
            ring.seal()


__all__ = ["EventSink", "Monitoring", "VersionMonitor"]
