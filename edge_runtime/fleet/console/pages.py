"""The console's HTML, rendered on the server with f-strings.

Every string that came from a device or the broker goes through :func:`e` (``html.escape``
with quotes) before it is put in the page, and through :func:`q` before it is put in a URL;
the server also sends a Content-Security-Policy that allows no inline script, so a device
name like ``<script>`` is shown as text and could not run even if one escape were missed.

Each page is a ``<main>`` inside a fixed layout; ``console.js`` fetches the ``<main>`` of the
same address again (``/api/page``, a JSON answer) when the record changes, and swaps it in.
"""

from __future__ import annotations

import html
import time
import urllib.parse
from typing import Any

from edge_runtime.fleet.console.digest import StateDigest
from edge_runtime.fleet.console.history import DeviceHistory, ReleaseHistory
from edge_runtime.fleet.console.inbox import InboxCounts
from edge_runtime.fleet.console.overview import (
    PAGE_ROWS,
    Overview,
    ReleaseProgress,
    device_table,
    drift_score,
    error_text,
    models_text,
    version_label,
)
from edge_runtime.fleet.console.view import DeviceNow

PALETTE = ("#2b6cb0", "#38a169", "#d69e2e", "#805ad5", "#dd6b20", "#319795", "#b83280", "#718096")
MAX_LISTED = 500


def e(value: Any) -> str:
    """HTML-escaped text (quotes too: safe in attributes)."""
    return html.escape(str(value), quote=True)


def q(value: Any) -> str:
    """A URL path segment or query value."""
    return urllib.parse.quote(str(value), safe="")


def when(t: float | None) -> str:
    """UTC ``YYYY-MM-DD HH:MM:SS`` or ``-``."""
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


def ago(t: float | None, now: float) -> str:
    """``12 s ago``."""
    if t is None:
        return "never"
    s = max(0, int(now - t))
    return f"{s} s ago" if s < 120 else f"{s // 60} min ago" if s < 7200 else f"{s // 3600} h ago"


def layout(title: str, fleet: str, main: str, change: int, live: bool = True) -> str:
    """The whole document around one page's ``<main>``."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)} · {e(fleet)} · edge-runtime</title><link rel="stylesheet" href="/static/console.css">
<script src="/static/console.js" defer></script></head>
<body data-live="{'1' if live else '0'}" data-change="{change}">
<header><a href="/" class="brand">edge-runtime fleet <b>{e(fleet)}</b></a><span id="live-status" class="muted"></span></header>
<main id="main">{main}</main>
<footer class="muted">read-only console: it records what the broker says and never signs anything</footer>
</body></html>
"""


def _status_badge(status: str) -> str:
    return f'<span class="badge s-{e(status.replace(" ", "-"))}">{e(status)}</span>'


def _online(online: bool | None) -> str:
    return {True: '<span class="badge s-ok">online</span>', False: '<span class="badge s-offline">offline</span>', None: '<span class="muted">?</span>'}[online]


def version_bars(ov: Overview) -> str:
    """One stacked bar per model: the share of devices on each version."""
    out = []
    for model, counts in ov.versions.items():
        total = sum(n for _, n in counts) or 1
        x, rects, legend = 0.0, [], []
        for i, (label, n) in enumerate(counts):
            w = 100.0 * n / total
            color = PALETTE[i % len(PALETTE)]
            rects.append(f'<rect x="{x:.3f}" y="0" width="{w:.3f}" height="10" fill="{color}"><title>{e(model)} {e(label)}: {n}</title></rect>')
            legend.append(
                f'<span class="legend"><svg width="10" height="10" aria-hidden="true"><rect width="10" height="10" fill="{color}"/></svg> '
                f'{e(label)} <b>{n}</b> ({w:.0f}%)</span>'
            )
            x += w
        out.append(
            f'<div class="versions" data-model="{e(model)}"><h3>{e(model)}</h3>'
            f'<svg class="bar" viewBox="0 0 100 10" preserveAspectRatio="none" role="img" aria-label="versions of {e(model)}">{"".join(rects)}</svg>'
            f'<div>{"".join(legend)}</div></div>'
        )
    return "".join(out) or '<p class="muted">no device has reported a model yet</p>'


def _steps(steps: list[dict[str, Any]]) -> str:
    return " → ".join(
        f'<span class="step" title="seq {e(s["seq"])} at {e(when(s["time"]))}">{e(s["percent"])}%</span>' for s in steps
    )


def release_card(r: ReleaseProgress, max_failures: float | None) -> str:
    """A release's progress: bar of outcomes, counts, steps, failure share against the limit."""
    t = r.tally
    n = max(1, t.devices)
    parts = [("updated", t.updated, "#38a169"), ("failed", t.failed, "#e53e3e"), ("rejected", t.rejected, "#dd6b20"), ("pending", t.pending, "#a0aec0")]
    x, rects = 0.0, []
    for label, count, color in parts:
        w = 100.0 * count / n
        rects.append(f'<rect x="{x:.3f}" width="{w:.3f}" height="10" fill="{color}"><title>{label}: {count}</title></rect>')
        x += w
    limit = "" if max_failures is None else f" against --max-failures {max_failures:g}%"
    flag = ' <span class="badge s-error">OVER THE LIMIT</span>' if r.over_limit else ""
    return f"""<div class="release" data-release="{e(r.model)}-{r.version}" data-percent="{t.percent}">
<h3><a href="/release/{q(r.model)}/{r.version}">{e(r.model)} v{r.version}</a> {'<span class="badge s-ok">current</span>' if r.current else ''}
<span class="pct">at {t.percent}%</span></h3>
<svg class="bar" viewBox="0 0 100 10" preserveAspectRatio="none" role="img" aria-label="rollout of {e(r.model)} v{r.version}">{"".join(rects)}</svg>
<p><span class="n-updated">{t.updated} updated</span>, <span class="n-failed">{t.failed} failed</span>, {t.rejected} rejected,
{t.pending} pending of {t.in_rollout} in the rollout ({t.devices} reporting)</p>
<p>failure share <b class="share">{t.failure_percent:.1f}%</b>{e(limit)}{flag}</p>
<p class="steps">steps: {_steps(r.steps)}</p></div>"""


def health_text(d: DeviceNow) -> str:
    """``61.2 C, 1.2 GB free, mem 310 MB/1.9 GB`` from the device's health report, or ``""``."""
    h = d.digest.health if d.digest is not None and not d.digest.problem else None
    if h is None:
        return ""
    parts = [h.temp_text(), f"{h.free_text()} free", f"mem {h.memory_text()}"]
    return ", ".join(p for p in parts if not p.startswith("-"))


def alert_badges(d: DeviceNow) -> str:
    """Red badges for under-voltage, throttling and a rejected desired state."""
    alerts = d.digest.alerts if d.digest is not None and not d.digest.problem else ()
    return "".join(f' <span class="badge s-error alert">{e(a.upper())}</span>' for a in alerts)


def alerts_section(devices: list[DeviceNow]) -> str:
    """The devices that report under-voltage, throttling or a rejected desired state."""
    rows = []
    for d in sorted(devices, key=lambda d: d.device):
        dg = d.digest
        if dg is None or dg.problem or not dg.alerts:
            continue
        why = []
        if dg.health is not None and dg.health.alerts:
            flags = f" (flags {dg.health.throttle_flags})" if dg.health.throttle_flags else ""
            why.append(", ".join(dg.health.alerts) + flags)
        if dg.desired is not None and dg.desired.rejected:
            why.append(dg.desired.describe())
        rows.append(f'<li data-device="{e(d.device)}"><a href="/device/{q(d.device)}">{e(d.device)}</a>: {e("; ".join(why))}</li>')
        if len(rows) >= MAX_LISTED:
            break
    if not rows:
        return ""
    return f'<section id="alerts" class="alerts"><h2>Alerts ({len(rows)})</h2><ul>{"".join(rows)}</ul></section>'


def dropped_note(counts: InboxCounts | None) -> str:
    """What the record dropped (queue full, devices over their rate, at the last stop), if anything."""
    if counts is None:
        return ""
    rate = sum(counts.dropped_rate.values())
    if not (counts.dropped_full or rate):
        return ""
    worst = sorted(counts.dropped_rate.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    who = ", ".join(f"{dev} {n}" for dev, n in worst)
    return (
        f'<p class="dropped error">the record dropped {counts.dropped_full} messages (queue full) and '
        f"{rate} events of devices over their rate{e(f' ({who})') if who else ''}</p>"
    )


def overview_main(ov: Overview, devices: list[DeviceNow], args: dict[str, str], now: float, counts: InboxCounts | None = None) -> str:
    """The front page: counts, versions, rollouts, the device table."""
    desired = "no desired state yet" if ov.desired_seq is None and not ov.desired_problem else (
        f"unreadable desired state: {e(ov.desired_problem)}" if ov.desired_problem else f"desired seq {ov.desired_seq}"
    )
    if ov.desired_verified is not None:
        desired += " (verified against --root)" if ov.desired_verified else ' <span class="badge s-error">DOES NOT VERIFY against --root</span>'
    tiles = (
        f'<div class="counts"><div><b id="n-devices">{ov.devices}</b> devices</div>'
        f'<div><b id="n-online">{ov.online}</b> online</div><div><b id="n-offline">{ov.offline}</b> offline</div>'
        f"<div><b>{ov.unknown}</b> unknown</div><div><b>{ov.updating}</b> updating</div>"
        f"<div><b>{ov.errors}</b> with a last error</div><div><b>{ov.malformed}</b> malformed</div>"
        f'<div><b id="n-alerts">{ov.alerting}</b> alerts</div></div>'
    )
    releases = "".join(release_card(r, ov.max_failures) for r in ov.releases) or '<p class="muted">no rollout seen yet</p>'
    return (
        f"<h1>Fleet overview</h1><p class=\"muted\">{desired}</p>{tiles}{dropped_note(counts)}{alerts_section(devices)}"
        f'<section><h2>Versions in service</h2>{version_bars(ov)}</section>'
        f'<section id="rollouts"><h2>Rollouts</h2>{releases}</section>'
        f'<section id="devices"><h2>Devices</h2>{devices_table(devices, args, now)}</section>'
    )


def devices_table(devices: list[DeviceNow], args: dict[str, str], now: float) -> str:
    """The sortable, filterable, paged device table."""
    query, sort, desc = args.get("q", ""), args.get("sort", "device"), args.get("desc") == "1"
    try:
        page = max(0, int(args.get("page", "0")))
    except ValueError:
        page = 0
    rows, total = device_table(devices, query, sort, desc, page)

    def link(**over: str) -> str:
        params = {"q": query, "sort": sort, "desc": "1" if desc else "", "page": str(page), **over}
        return "/?" + urllib.parse.urlencode({k: v for k, v in params.items() if v and v != "0"}) + "#devices"

    heads = [("device", "device"), ("online", "online"), ("models", "model versions"), ("status", "state"), ("seen", "last seen"), ("drift", "drift"), ("health", "health"), ("error", "last error")]
    th = "".join(
        f'<th><a href="{e(link(sort=k, desc="" if (sort == k and desc) else ("1" if sort == k else ""), page="0"))}">{e(label)}'
        f'{(" ▼" if desc else " ▲") if sort == k else ""}</a></th>'
        for k, label in heads
    )
    body = []
    for d in rows:
        score = drift_score(d)
        drift = "n/a" if score is None else f"{score[0]:.3g} ({e(score[1])})"
        body.append(
            f'<tr data-device="{e(d.device)}" class="st-{e(d.status.replace(" ", "-"))}"><td><a href="/device/{q(d.device)}">{e(d.device)}</a></td>'
            f"<td>{_online(d.online)}</td><td>{e(models_text(d)) or '-'}</td><td>{_status_badge(d.status)}</td>"
            f'<td title="{e(when(d.last_seen))}">{e(ago(d.last_seen, now))}</td><td class="drift">{drift}</td>'
            f'<td class="health">{e(health_text(d)) or "-"}{alert_badges(d)}</td><td class="error">{e(error_text(d))}</td></tr>'
        )
    pages = (total + PAGE_ROWS - 1) // PAGE_ROWS
    nav = ""
    if pages > 1:
        prev = f'<a href="{e(link(page=str(page - 1)))}">« previous</a>' if page > 0 else ""
        nxt = f'<a href="{e(link(page=str(page + 1)))}">next »</a>' if page + 1 < pages else ""
        nav = f'<p class="pages">{prev} page {page + 1} of {pages} {nxt}</p>'
    form = (
        '<form method="get" action="/#devices" class="filter"><input type="search" name="q" placeholder="filter: id, version, state, error" '
        f'value="{e(query)}"><input type="hidden" name="sort" value="{e(sort)}">'
        f'{"<input type=hidden name=desc value=1>" if desc else ""}<button>filter</button></form>'
    )
    return (
        f'{form}<p class="muted">{total} of {len(devices)} devices</p>'
        f'<table class="devices"><thead><tr>{th}</tr></thead><tbody>{"".join(body)}</tbody></table>{nav}'
    )


def drift_chart(model: str, points: list[tuple[float, float, bool]], threshold: float | None) -> str:
    """An inline SVG line of drift scores over time (red dots: alerts)."""
    w, h, pad = 600, 140, 30
    if not points:
        return f'<p class="muted">{e(model)}: no drift figures (n/a)</p>'
    t0, t1 = points[0][0], points[-1][0]
    top = max([p[1] for p in points] + [threshold or 0.0]) * 1.1 or 1.0

    def xy(t: float, s: float) -> tuple[float, float]:
        x = pad + (w - 2 * pad) * ((t - t0) / (t1 - t0) if t1 > t0 else 0.5)
        return x, h - pad - (h - 2 * pad) * s / top

    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(t, s) for t, s, _ in points))
    dots = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{"#e53e3e" if alert else "#2b6cb0"}"><title>{e(when(t))}: {s:.4g}</title></circle>'
        for (t, s, alert), (x, y) in ((p, xy(p[0], p[1])) for p in points)
    )
    thr = ""
    if threshold is not None:
        _, ty = xy(t0, threshold)
        thr = f'<line x1="{pad}" x2="{w - pad}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="#e53e3e" stroke-dasharray="4 3"/><text x="{w - pad}" y="{ty - 3:.1f}" text-anchor="end" font-size="10">threshold {threshold:g}</text>'
    return (
        f'<figure class="chart" data-model="{e(model)}"><figcaption>{e(model)}: drift score over time</figcaption>'
        f'<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="drift of {e(model)}">'
        f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#718096"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#718096"/>'
        f'<text x="{pad - 4}" y="{pad + 4}" text-anchor="end" font-size="10">{top:.2g}</text><text x="{pad - 4}" y="{h - pad}" text-anchor="end" font-size="10">0</text>'
        f'<text x="{pad}" y="{h - 8}" font-size="10">{e(when(t0))}</text><text x="{w - pad}" y="{h - 8}" text-anchor="end" font-size="10">{e(when(t1))}</text>'
        f'{thr}<polyline points="{line}" fill="none" stroke="#2b6cb0" stroke-width="1.5"/>{dots}</svg></figure>'
    )


def _thresholds(digest: StateDigest | None) -> dict[str, float | None]:
    return {m.name: m.drift.threshold for m in (digest.models if digest else ()) if m.drift is not None}


def device_main(d: DeviceNow, hist: DeviceHistory, now: float, dropped: int = 0) -> str:
    """A device: what it runs now, versions over time, drift charts, failures, the timeline."""
    dg = d.digest
    facts = [
        ("online", _online(d.online)),
        ("state", _status_badge(d.status)),
        ("last seen", f"{e(ago(d.last_seen, now))} ({e(when(d.last_seen))} UTC)"),
        ("models", e(models_text(d)) or "-"),
        ("update in progress", e(dg.update) if dg and dg.update else "-"),
        ("last error", f'<span class="error">{e(error_text(d))}</span>' if error_text(d) else "-"),
        ("runtime", e(dg.runtime) if dg and dg.runtime else "-"),
        ("desired seq taken", e(dg.desired_seq) if dg and dg.desired_seq is not None else "-"),
        ("desired state", e(dg.desired.describe()) if dg and dg.desired else "-"),
        ("health", (e(health_text(d)) or "-") + alert_badges(d)),
        ("throttle flags", e(dg.health.throttle_flags) if dg and dg.health and dg.health.throttle_flags else "-"),
        ("events dropped (over its rate)", str(dropped)),
    ]
    score = drift_score(d)
    facts.append(("drift", "n/a" if score is None else f"{score[0]:.3g} ({e(score[1])})"))
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    versions = "".join(
        f"<tr><td>{e(when(t))}</td><td>{e(m)}</td><td>{e(version_label(v))}</td></tr>" for m, v, t in hist.versions
    ) or '<tr><td colspan="3" class="muted">none recorded</td></tr>'
    by_model: dict[str, list[tuple[float, float, bool]]] = {}
    for m, t, s, alert in hist.drift:
        by_model.setdefault(m, []).append((t, s, bool(alert)))
    thresholds = _thresholds(dg)
    charts = "".join(drift_chart(m, pts, thresholds.get(m)) for m, pts in sorted(by_model.items())) or '<p class="muted">drift: n/a (the device reports no drift figures)</p>'
    failures = "".join(
        f"<tr><td>{e(when(t))}</td><td>{e(m)} v{e(v)}</td><td>{e(src)}</td><td class=\"error\">{e(reason)}</td></tr>" for m, v, src, reason, t in hist.failures
    ) or '<tr><td colspan="4" class="muted">none</td></tr>'
    timeline = "".join(
        f'<li class="k-{e(kind)}"><time>{e(when(t))}</time> <span class="kind">{e(kind)}</span> {e(summary)}'
        + (f'<pre class="raw">{e(raw)}</pre>' if raw else "")
        + "</li>"
        for t, kind, summary, raw in hist.timeline
    ) or '<li class="muted">nothing recorded yet</li>'
    return (
        f'<h1>Device {e(d.device)}</h1><dl class="facts">{dl}</dl>'
        f'<section><h2>Versions over time</h2><table><thead><tr><th>since (UTC)</th><th>model</th><th>version</th></tr></thead><tbody>{versions}</tbody></table></section>'
        f"<section><h2>Drift</h2>{charts}</section>"
        f'<section><h2>Failures</h2><table><thead><tr><th>first seen</th><th>release</th><th>source</th><th>reason</th></tr></thead><tbody>{failures}</tbody></table></section>'
        f'<section><h2>Timeline</h2><ol class="timeline">{timeline}</ol></section>'
    )


def release_main(model: str, version: int, progress: ReleaseProgress | None, devices: list[DeviceNow], hist: ReleaseHistory, max_failures: float | None) -> str:
    """A release: its steps, where it stands, who runs it, who failed and why."""
    card = release_card(progress, max_failures) if progress else '<p class="muted">no fleet desired state has named this release</p>'
    steps = "".join(
        f"<tr><td>{e(when(t))}</td><td>{e(scope)}</td><td>{e(seq)}</td><td>{e(pct)}%</td><td>{'-' if ver is None else ('yes' if ver else 'NO')}</td></tr>"
        for scope, seq, pct, _salt, ver, t in hist.steps
    ) or '<tr><td colspan="5" class="muted">none</td></tr>'
    running = sorted(
        d.device for d in devices if d.digest and not d.digest.problem and d.digest.versions().get(model, -1) == version
    )
    listed = ", ".join(f'<a href="/device/{q(x)}">{e(x)}</a>' for x in running[:MAX_LISTED])
    more = f" and {len(running) - MAX_LISTED} more" if len(running) > MAX_LISTED else ""
    failures = "".join(
        f'<tr data-device="{e(dev)}"><td><a href="/device/{q(dev)}">{e(dev)}</a></td><td>{e(src)}</td><td class="error">{e(reason)}</td><td>{e(when(t))}</td></tr>'
        for dev, src, reason, t in hist.failures
    ) or '<tr><td colspan="4" class="muted">no failure recorded</td></tr>'
    first = f"manifest first seen {e(when(hist.first_seen))} UTC; " if hist.first_seen else ""
    return (
        f"<h1>Release {e(model)} v{version}</h1><p class=\"muted\">{first}{len(hist.ran)} devices have run it</p>{card}"
        f'<section><h2>Steps</h2><table><thead><tr><th>time (UTC)</th><th>scope</th><th>seq</th><th>percent</th><th>verified</th></tr></thead><tbody>{steps}</tbody></table></section>'
        f'<section><h2>Running it now ({len(running)})</h2><p class="running">{listed or "nobody"}{more}</p></section>'
        f'<section id="failures"><h2>Failed, and why</h2><table class="failures"><thead><tr><th>device</th><th>source</th><th>reason</th><th>first seen (UTC)</th></tr></thead><tbody>{failures}</tbody></table></section>'
    )


def not_found_main(what: str) -> str:
    """A 404 page body."""
    return f'<h1>Not found</h1><p>{e(what)}</p><p><a href="/">back to the overview</a></p>'


__all__ = ["device_main", "drift_chart", "e", "layout", "not_found_main", "overview_main", "release_main", "version_bars"]
