"""``GET /metrics`` is printed by serving/promtext.py, not prometheus_client (about 3 MB of RSS):
the text must be the one prometheus_client printed, byte for byte, for every family the daemon has."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from edge_runtime.health import Health
from edge_runtime.inference.variant_choice import Choice, Outcome, Verdict
from edge_runtime.monitoring.drift import DriftReport
from edge_runtime.serving import metrics as metrics_mod
from edge_runtime.serving import promtext
from edge_runtime.serving.metrics import Metrics

prometheus_client = pytest.importorskip("prometheus_client")
prom_core = pytest.importorskip("prometheus_client.core")
prom_utils = pytest.importorskip("prometheus_client.utils")


class Views:
    """The manager's views at a scrape, with label values that need escaping."""

    def queue_depths(self) -> Any:
        yield from (("fraud", 3, 2), ('we"ird\\mo\ndel', 1, 0))

    def loaded_roles(self) -> Any:
        yield from (("fraud", 3, "default"), ("fraud", 4, "shadow"))

    def delegates(self) -> Any:
        yield ("fraud", 3, "xnnpack", [SimpleNamespace(delegate="edgetpu", kind="missing")])

    def variants(self) -> Any:
        yield ("fraud", 3, Choice("int8", False, (Verdict("int8", 0.0123, Outcome.CHOSEN, "fastest"),
                                                  Verdict("fp32", None, Outcome.FAILED, "boom"))))


def populated() -> Metrics:
    reports = [("fraud", 3, DriftReport(0.42, "amount", 500, True, 0.2, {"amount": 0.42, "age": 1e-9}, 12_345_678)),
               ("other", 1, DriftReport(None, None, 3, False, 0.0, {}, 3))]
    ring = SimpleNamespace(stats=lambda: {"written_records": 7, "dropped_records": 1, "skipped_records": 0,
                                          "bytes": 123_456_789_012})
    mon = SimpleNamespace(reports=lambda: reports, rings={"fraud": ring})
    m = Metrics(monitoring=mon, health=lambda: Health(cpu_temp_c=61.5, throttled=True, under_voltage=False,  # type: ignore[arg-type]
                                                      store_free_bytes=10**13))
    s = m.version("fraud", 3)
    s.executed(4, 2000)
    s.answered(4, 10_000, 1000, 500, 2000, 300)
    s.failed("bad_request")
    m.version("fraud", 4).failed("error")
    m.shadow("fraud", 3, 4).compared(0.25, 1, 4)
    m.swap("fraud", "success")
    m.fallback("fraud")
    m.not_found_requests = 3
    m.not_ready_requests["cnn"] = 2
    m.update_traffic = lambda: {("fraud", 4): 1234}
    return m


def test_the_text_is_prometheus_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    m, views = populated(), Views()
    ours = m.exposition(views)
    for name in ("CounterMetricFamily", "GaugeMetricFamily", "HistogramMetricFamily"):
        monkeypatch.setattr(promtext, name, getattr(prom_core, name))
    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    registry.register(metrics_mod._Collector(m, views))
    theirs = prometheus_client.generate_latest(registry)
    assert b'edge_drift_score{model="fraud",version="3"} 0.42' in ours  # every kind of family is there
    assert b'model="we\\"ird\\\\mo\\ndel"' in ours and b"edge_capture_bytes" in ours and b"+Inf" in ours
    assert ours == theirs


@pytest.mark.parametrize("value", [0, 1, -1, 0.5, 1e-9, 123456.0, 1234567.0, 1.5e22, float("inf"), float("-inf"),
                                   float("nan"), 10**13, True])
def test_values_are_printed_as_go_prints_them(value: float) -> None:
    assert promtext.go_float(value) == prom_utils.floatToGoString(value)


def test_the_daemon_metrics_need_no_prometheus_client() -> None:
    import subprocess
    import sys

    code = ("import sys\nfrom edge_runtime.serving.metrics import Metrics\n"
            "m = Metrics(); m.version('fraud', 1).failed('error'); assert b'edge_requests_total' in m.exposition()\n"
            "assert 'prometheus_client' not in sys.modules, 'imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_label_values_are_escaped_and_a_number_label_is_its_text() -> None:
    family = promtext.GaugeMetricFamily("edge_x", "x", labels=["model", "version"])
    family.add_metric(['a"b\\c\nd', 7], 1.0)  # type: ignore[list-item]
    assert promtext.render([family]).decode().splitlines()[-1] == 'edge_x{model="a\\"b\\\\c\\nd",version="7"} 1.0'
