"""The Prometheus text format (version 0.0.4) of the daemon's metric families, without ``prometheus_client``.

``GET /metrics`` used ``prometheus_client`` to print families built at scrape time. Importing
that package loads its HTTP, WSGI, ASGI and urllib exposition helpers too: about 3 MB of RSS
on every device that is scraped, 15 % of the daemon's own footprint, for a format of a few
lines (docs/serving.md, memory). This module has the three family kinds the daemon uses, with
``prometheus_client``'s constructor and ``add_metric`` signatures, and :func:`render` prints
them byte for byte as ``prometheus_client.generate_latest`` does
(tests/serving/test_promtext.py compares the two on a populated :class:`Metrics`).

Only names the daemon chooses reach here (fixed metric and label names); label values are
escaped as the format requires (backslash, double quote, newline).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple


class Sample(NamedTuple):
    """One line of a family: full name (with ``_total``, ``_bucket``...), labels, value."""

    name: str
    labels: dict[str, str]
    value: float


class Family:
    """A metric family: ``name``, ``documentation``, ``type`` and its samples."""

    type = "untyped"

    def __init__(self, name: str, documentation: str, labels: Sequence[str] | None = None) -> None:
        self.name = name
        self.documentation = documentation
        self._labelnames = tuple(labels or ())
        self.samples: list[Sample] = []


class CounterMetricFamily(Family):
    """A counter; printed as ``<name>_total`` (a name given with ``_total`` loses it, as in prometheus_client)."""

    type = "counter"

    def __init__(self, name: str, documentation: str, labels: Sequence[str] | None = None) -> None:
        super().__init__(name[:-6] if name.endswith("_total") else name, documentation, labels)

    def add_metric(self, labels: Sequence[str], value: float) -> None:
        self.samples.append(Sample(self.name + "_total", dict(zip(self._labelnames, labels)), value))


class GaugeMetricFamily(Family):
    """A gauge."""

    type = "gauge"

    def add_metric(self, labels: Sequence[str], value: float) -> None:
        self.samples.append(Sample(self.name, dict(zip(self._labelnames, labels)), value))


class HistogramMetricFamily(Family):
    """A histogram from cumulative ``(le, count)`` buckets ending with ``+Inf``, and the sum."""

    type = "histogram"

    def add_metric(self, labels: Sequence[str], buckets: Sequence[tuple[str, float]], sum_value: float | None) -> None:
        for le, value in buckets:
            self.samples.append(Sample(self.name + "_bucket", dict([*zip(self._labelnames, labels), ("le", le)]), value))
        # As prometheus_client: no count and sum when the buckets start below zero or there is no sum.
        if float(buckets[0][0]) >= 0 and sum_value is not None:
            self.samples.append(Sample(self.name + "_count", dict(zip(self._labelnames, labels)), buckets[-1][1]))
            self.samples.append(Sample(self.name + "_sum", dict(zip(self._labelnames, labels)), sum_value))


def go_float(value: float) -> str:
    """A sample value as Prometheus (and prometheus_client) print it: ``+Inf``, ``NaN``, ``1.0``, ``1.5e+07``."""
    d = float(value)
    if d == math.inf:
        return "+Inf"
    if d == -math.inf:
        return "-Inf"
    if math.isnan(d):
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    if d > 0 and dot > 6:  # Go switches to exponents sooner than Python
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


def _label_value(v: object) -> str:
    v = v if isinstance(v, str) else str(v)  # as prometheus_client does: a number label is its text
    return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _line(s: Any) -> str:
    labels = ",".join(f'{k}="{_label_value(v)}"' for k, v in sorted(s.labels.items()))
    return f"{s.name}{{{labels}}} {go_float(s.value)}\n" if labels else f"{s.name} {go_float(s.value)}\n"


def render(families: Iterable[Any]) -> bytes:
    """The text exposition of ``families`` (anything with ``name``, ``type``, ``documentation``, ``samples``)."""
    out: list[str] = []
    for f in families:
        name = f.name + "_total" if f.type == "counter" else f.name
        doc = f.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {f.type}\n")
        out.extend(_line(s) for s in f.samples)
    return "".join(out).encode("utf-8")


__all__ = ["CounterMetricFamily", "Family", "GaugeMetricFamily", "HistogramMetricFamily", "Sample", "go_float", "render"]
