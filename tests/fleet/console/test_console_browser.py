"""Acceptance: the console in a real browser (headless Chromium) against mosquitto and a simulated
fleet. A staged rollout appears on the overview and moves from 50 % to 100 % while the page is
open (the DOM after the page's live-update script ran shows the new step); a device whose
self-test fails shows its reason on the release page; stopped and started again on the same
database, the console still shows the history (the 50 % step and the device's events, which the
broker does not keep)."""

from __future__ import annotations

import http.client
import re
import subprocess
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from updates.integration.conftest import publish

from edge_runtime.fleet.session import BrokerOptions, FleetSession
from edge_runtime.fleet.simulate import Fault, device_ids
from edge_runtime.updates.verify import rollout_bucket
from fleet.conftest import TOPICS, FleetKeys, Mosquitto, Releases, SimulateFn
from fleet.console.conftest import Browser, ConsoleProcess
from fleet.console.helpers import HEALTHY, state
from harness.http import request
from harness.wait import wait_until

pytestmark = pytest.mark.integration

ATTEMPTS = 3
# The page asks for the next change at once, then 1 s (virtual) after each answer; network waits
# stop the virtual clock. 4.5 s lets it take five answers: publishing a release changes the
# record twice (its manifest, then the desired state), so the third shows the new step even
# if two other changes came first; an answer with no change ends the hold after 20 s.
LIVE_BUDGET_MS = 4500


def release(console: ConsoleProcess, model: str = "fraud", version: int = 2) -> dict[str, Any] | None:
    """The release's entry of ``/api/overview``, or None."""
    for r in console.get_json("/api/overview")["releases"]:
        if (r["model"], r["version"]) == (model, version):
            return dict(r)
    return None


def settled(console: ConsoleProcess, percent: int) -> bool:
    """The console counts every device of the ``percent`` step as finished, none updating."""
    r = release(console)
    ov = console.get_json("/api/overview")
    return bool(
        r and r["percent"] == percent and r["pending"] == 0 and ov["devices"]["updating"] == 0
        and r["updated"] + r["failed"] + r["rejected"] == r["in_rollout"]
    )


def _held_or_done(console: ConsoleProcess, proc: subprocess.Popen[str]) -> Any:
    return console.get_json("/api/health")["waiting"] or proc.poll() is not None


def live_dom_across(browser: Browser, console: ConsoleProcess, change: Any) -> str:
    """Open the overview in Chromium, wait until its live-update request is held by the console,
    call ``change()``, and return the DOM once the page's script has swapped in the answer."""
    for _ in range(ATTEMPTS):
        proc = browser.start_dom(f"{console.base}/", budget_ms=LIVE_BUDGET_MS)
        # The page's script asks for the next change and the console holds the request. If the page
        # ended first (something else changed right after it loaded), open it again.
        held = wait_until(partial(_held_or_done, console, proc), "the page's live request")
        if held is True:
            proc.communicate(timeout=60)
            continue
        change()
        dom, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-2000:]
        return dom
    raise AssertionError(f"the page never held a live request in {ATTEMPTS} attempts")


def publish_retained(url: str, topic: str, payload: bytes) -> None:
    """One retained message, acknowledged by the broker (a device that publishes drift figures)."""
    with FleetSession(BrokerOptions(url=url), TOPICS, timeout_s=30) as session:
        session.publish(topic, payload).wait(30)


def drift_points(console: ConsoleProcess, device: str) -> int:
    """How many drift points the device page's chart shows."""
    status, body = request(console.port, "GET", f"/device/{device}?live=0")
    return body.decode().count("<circle") if status == 200 else 0


def card(dom: str) -> str:
    """The fraud v2 release card of an overview DOM."""
    m = re.search(r'<div class="release" data-release="fraud-2".*?</div>', dom, re.S)
    assert m, dom[:3000]
    return m.group(0)


def test_rollout_appears_and_progresses_live_failures_show_and_history_survives_a_restart(
    mosquitto: Mosquitto, fleet_keys: FleetKeys, releases: Releases, simulate: SimulateFn,
    console: Any, browser: Browser, screenshots: Path,
) -> None:
    ids = device_ids(8)
    first = [d for d in ids if rollout_bucket(d, "fraud-2") < 50]
    assert len(first) >= 2 and len(first) < len(ids)
    faulty = first[0]  # its self-test of v2 fails: it rolls back and reports why
    simulate(mosquitto.url, ids, [Fault("fraud", frozenset({2}), frozenset({faulty}))])
    c = console(mosquitto.url, "--max-failures", "20")
    wait_until(lambda: c.get_json("/api/overview")["devices"]["online"] == len(ids), "every device online on the console")
    before = c.get_json("/api/health")["change"]
    assert 'data-release="fraud-2"' not in browser.dom(f"{c.base}/?live=0", 300), "no rollout before the publish"

    dom = live_dom_across(browser, c, lambda: publish(mosquitto.url, releases.bundle(2), fleet_keys.models_key, percent=50))
    assert 'data-percent="50"' in card(dom), card(dom)
    assert int(re.search(r'<body[^>]*data-change="(\d+)"', dom).group(1)) > before, "the script swapped in a newer page"  # type: ignore[union-attr]
    assert "live · updated" in dom
    wait_until(lambda: settled(c, 50), "the 50 % step to finish on the console")

    dom = live_dom_across(browser, c, lambda: publish(mosquitto.url, releases.bundle(2), fleet_keys.models_key, percent=100))
    steps = re.search(r'class="steps">steps: (.*?)</p>', card(dom), re.S)
    assert 'data-percent="100"' in card(dom) and steps and re.findall(r">(\d+)%<", steps.group(1)) == ["50", "100"], card(dom)
    wait_until(lambda: settled(c, 100), "the 100 % step to finish on the console")

    r = release(c)
    assert r is not None and (r["updated"], r["failed"], r["in_rollout"]) == (len(ids) - 1, 1, len(ids))
    page = browser.dom(f"{c.base}/release/fraud/2?live=0", 300)
    failures = page.split('id="failures"')[1]
    assert f'data-device="{faulty}"' in failures and "differs from golden" in failures, failures[:2000]
    overview = browser.dom(f"{c.base}/?live=0", 300)
    assert "failure share <b class=\"share\">12.5%</b> against --max-failures 20%" in overview
    row = re.search(rf'<tr data-device="{faulty}".*?</tr>', overview, re.S)
    assert row and "differs from golden" in row.group(0) and "failed v2" in row.group(0), overview[:3000]

    # Drift figures (the field-monitoring fields of the state) from a lighter publisher: a chart in a real browser.
    drifting = "pi-drift"
    for k, score in enumerate((0.05, 0.12, 0.2, 0.35, 0.52)):
        health = {**HEALTHY, "cpu_temp_c": 58.0 + 3 * k}
        if k == 4:  # its power supply sags: the firmware reports under-voltage and throttles the CPU
            health.update(under_voltage=True, throttled=True, throttle_flags="0x50005")
        doc = state(drifting, 2, drift={"score": score, "worst_feature": "v14", "alert": score > 0.3, "threshold": 0.3, "rows": 500, "version": 2},
                    health=health)
        publish_retained(mosquitto.url, TOPICS.state(drifting), doc)
        wait_until(lambda k=k: drift_points(c, drifting) == k + 1, f"drift point {k + 1}")
    chart = browser.dom(f"{c.base}/device/{drifting}?live=0", 300)
    assert '<figure class="chart" data-model="fraud">' in chart and chart.count("<circle") == 5, chart[:3000]
    assert 'stroke-dasharray="4 3"' in chart and "threshold 0.3" in chart  # the device's threshold line
    alerts = browser.dom(f"{c.base}/?live=0", 300).split('<section id="alerts"', 1)[-1].split("</section>", 1)[0]
    assert f'data-device="{drifting}"' in alerts and "under-voltage, throttled (flags 0x50005)" in alerts, alerts[:2000]

    browser.screenshot(f"{c.base}/?live=0", screenshots / "overview.png", "1280,1300")
    browser.screenshot(f"{c.base}/release/fraud/2?live=0", screenshots / "release.png", "1280,1000")
    browser.screenshot(f"{c.base}/device/{faulty}?live=0", screenshots / "device.png", "1280,1100")
    browser.screenshot(f"{c.base}/device/{drifting}?live=0", screenshots / "device-drift.png", "1280,900")

    assert c.stop() == 0
    again = console(mosquitto.url, "--max-failures", "20")
    device_page = browser.dom(f"{again.base}/device/{faulty}?live=0", 300)
    assert "failed fraud v2" in device_page and "rolled_back fraud" in device_page, device_page[:3000]  # events: only in the record
    again_release = browser.dom(f"{again.base}/release/fraud/2?live=0", 300)
    steps_table = again_release.split("<h2>Steps</h2>")[1].split("</table>")[0]
    assert re.findall(r"<td>(\d+)%</td>", steps_table) == ["50", "100"], steps_table


def test_the_page_loads_nothing_from_elsewhere_and_the_console_is_read_only(mosquitto: Mosquitto, console: Any, browser: Browser) -> None:
    c = console(mosquitto.url)
    dom = browser.dom(f"{c.base}/?live=0", 300)
    sources = re.findall(r'(?:src|href)="([^"]+)"', dom)
    assert sources and all(s.startswith("/") and not s.startswith("//") for s in sources), sources
    conn = http.client.HTTPConnection("127.0.0.1", c.port, timeout=60)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200 and (resp.getheader("Content-Security-Policy") or "").startswith("default-src 'self'")
        conn.request("POST", "/api/page")
        resp = conn.getresponse()
        assert resp.status == 405 and b"read-only" in resp.read()
    finally:
        conn.close()
