"""Update policy at fleet scale: N simulated devices (default 1,000) with windows and byte budgets.

Every device is the real update client (edge_runtime/fleet/simulate.py) with v1 of the demo
model installed and active (its model plus 100 kB of trailing bytes, which LiteRT ignores). v2
changes 1 kB of those bytes, as a fine-tune would, and is published once with ``--delta-from
v1`` and a rollout window that is open now. The devices are in four groups by index:

* ``open``: no ``[updates]`` table: takes the delta and activates;
* ``closed``: its own ``[updates] window`` is closed now: downloads, must not activate;
* ``budget``: a daily budget between the delta and the full size: takes the delta;
* ``tight``: a daily budget below the delta: must not download at all.

Checks, from each device's retained state and its store on disk: no device of ``closed`` or
``tight`` runs v2; every ``closed`` device reports ``waiting_window``; every ``tight`` device
``deferred`` with 0 bytes; the bytes each device received are within its budget.

    .venv/bin/python bench/policy_sim.py [--devices 1000] [--processes 10] [--stall-s 60]

Writes bench/results/policy.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import numpy as np  # noqa: E402
from fleet_sim import Broker  # noqa: E402

from edge_runtime.bundle.reader import BundleLimits  # noqa: E402
from edge_runtime.fleet.publish import publish_release  # noqa: E402
from edge_runtime.fleet.session import BrokerOptions, FleetSession  # noqa: E402
from edge_runtime.fleet.simulate import SimSettings, SimulatedFleet, device_ids  # noqa: E402
from edge_runtime.fleet.status import DeviceStates  # noqa: E402
from edge_runtime.packaging import PackRequest, pack_model  # noqa: E402
from edge_runtime.spec.window import parse_window  # noqa: E402
from edge_runtime.store.store import ModelStore  # noqa: E402
from edge_runtime.trust.keys import generate_private_key  # noqa: E402
from edge_runtime.trust.root import make_root, sign_root, verify_root  # noqa: E402
from edge_runtime.updates.protocol import Topics  # noqa: E402

RESULTS = REPO / "bench" / "results" / "policy.md"
FACTORY = REPO / "device" / "factory"
FLEET = "policy"
GROUPS = ("open", "closed", "budget", "tight")


def bundles(work: Path, key: Any) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    filler = rng.integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    tuned = filler[:50_000] + rng.integers(0, 256, 1_000, dtype=np.uint8).tobytes() + filler[51_000:]
    golden = np.load(FACTORY / "golden.npy")
    out = []
    for version, tail in ((1, filler), (2, tuned)):
        model = work / f"fraud-{version}.tflite"
        model.write_bytes((FACTORY / "fraud.tflite").read_bytes() + tail)
        bundle = work / f"fraud-v{version}.bundle"
        pack_model(PackRequest(model, name="fraud", version=version, keys=[key], out=bundle, chunk_size=16_384,
                   input_names=["input_0"], output_names=["output_0"], golden_inputs=[golden]))
        out.append(bundle)
    return out[0], out[1]


def closed_now_window(now: _dt.datetime) -> str:
    """A daily cron 12 hours from now: closed for the whole run."""
    t = now + _dt.timedelta(hours=12)
    return f"{t.minute} {t.hour} * * *"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--processes", type=int, default=10, help="worker processes (100 devices each by default)")
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--stall-s", type=float, default=60.0,
                   help="[mqtt] download_stall_s of the devices: a thousand devices on two cores answer slowly")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="policy-sim-"))
    try:
        out = run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = report(out)
    RESULTS.write_text(text)
    print(text)
    return 0 if out["ok"] else 1


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    root_key, key = generate_private_key(), generate_private_key()
    root_file = work / "root.json"
    root_file.write_bytes(sign_root(make_root(1, [root_key], [key]), [root_key]))
    root = verify_root(root_file.read_bytes())
    v1, v2 = bundles(work, key)
    ids = device_ids(args.devices)
    group = {d: GROUPS[i % len(GROUPS)] for i, d in enumerate(ids)}
    now = _dt.datetime.now(_dt.UTC)
    budget_ok, budget_tight = 50_000, 500
    tables: dict[str, dict[str, Any]] = {}
    for d, g in group.items():
        if g == "closed":
            tables[d] = {"window": closed_now_window(now), "window_minutes": 60}
        elif g == "budget":
            tables[d] = {"daily_budget_bytes": budget_ok}
        elif g == "tight":
            tables[d] = {"daily_budget_bytes": budget_tight}
    broker = Broker(work)
    settings = SimSettings(url=broker.url, fleet=FLEET, root_file=root_file, work_dir=work / "devices", updates=tables,
                           mqtt={"download_stall_s": args.stall_s})
    t0 = time.monotonic()
    for d in ids:  # v1 installed and active, as after an earlier update
        store = ModelStore(settings.store_dir(d), root, None, BundleLimits())
        store.install(v1)
        store.activate("fraud", 1)
    topics = Topics("edge", FLEET)
    latest: dict[str, dict[str, Any]] = {}
    states = DeviceStates(topics, on_state=lambda d, state: latest.__setitem__(d, state))
    fleet = SimulatedFleet(settings, ids, processes=args.processes).start()
    started = time.monotonic() - t0
    try:
        with FleetSession(BrokerOptions(url=broker.url), topics, timeout_s=120) as session:
            session.watch([topics.devices_filter("state")], states.on_message)
            # A rollout window open now (this hour and the next) for everyone; the devices' own apply on top.
            rollout_window = parse_window(f"0 {now.hour} * * *", 120)
            t1 = time.monotonic()
            published = publish_release(session, v2, [key], delta_from=[v1], window=rollout_window)

            def phase(d: str) -> tuple[int | None, str | None, dict[str, Any]]:
                s = latest.get(d) or {}
                active = ((s.get("models") or {}).get("fraud") or {}).get("active")
                return active, (s.get("update") or {}).get("phase"), s

            def settled(d: str) -> bool:
                active, ph, _ = phase(d)
                return {"open": active == 2, "budget": active == 2, "closed": ph == "waiting_window",
                        "tight": ph == "deferred"}[group[d]]

            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline and not all(settled(d) for d in ids):
                time.sleep(0.5)
            settle_s = time.monotonic() - t1
            results: dict[str, dict[str, Any]] = {g: {"devices": 0, "settled": 0, "v2_active": 0, "max_bytes": 0,
                                                      "bytes": []} for g in GROUPS}
            for d in ids:
                active, _, s = phase(d)
                r = results[group[d]]
                r["devices"] += 1
                r["settled"] += settled(d)
                r["v2_active"] += fleet.active(d, "fraud") == 2
                got = ((s.get("downloaded_bytes") or {}).get("fraud") or {}).get("2", 0)
                r["bytes"].append(got)
                r["max_bytes"] = max(r["max_bytes"], got)
    finally:
        fleet.stop()
        broker.stop()
    full = v2.stat().st_size
    ok = (
        all(r["settled"] == r["devices"] for r in results.values())
        and results["closed"]["v2_active"] == 0 and results["tight"]["v2_active"] == 0
        and results["tight"]["max_bytes"] == 0 and results["budget"]["max_bytes"] <= budget_ok
        and results["open"]["v2_active"] == results["open"]["devices"]
    )
    return {"devices": len(ids), "processes": args.processes, "started_s": started, "settle_s": settle_s,
            "results": results, "ok": ok, "full_bytes": full, "delta_note": published.deltas,
            "budget_ok": budget_ok, "budget_tight": budget_tight, "loadavg": os.getloadavg()[0]}


def report(out: dict[str, Any]) -> str:
    lines = [
        "# Update policy at fleet scale (bench/policy_sim.py)",
        "",
        f"{_dt.date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} CPUs (shared, load {out['loadavg']:.1f}), "
        f"Python {platform.python_version()}; {out['devices']} simulated devices (real update clients) in "
        f"{out['processes']} processes, one mosquitto. v2 of the demo model ({out['full_bytes']} bytes as a bundle) "
        f"published with --delta-from v1 ({'; '.join(out['delta_note'])}) and a rollout window open now. Devices "
        f"started in {out['started_s']:.0f} s; every group settled {out['settle_s']:.1f} s after the publish.",
        "",
        "| group | devices | `[updates]` | settled as expected | running v2 | bytes received per device (max) |",
        "|---|---|---|---|---|---|",
    ]
    conf = {"open": "none", "closed": "own window, closed now", "budget": f"daily_budget_bytes = {out['budget_ok']}",
            "tight": f"daily_budget_bytes = {out['budget_tight']}"}
    expect = {"open": "v2 active", "closed": "waiting_window", "budget": "v2 active", "tight": "deferred"}
    for g, r in out["results"].items():
        lines.append(f"| {g} | {r['devices']} | {conf[g]} | {r['settled']} ({expect[g]}) | {r['v2_active']} | "
                     f"{r['max_bytes']} |")
    lines += ["", f"Result: {'PASS' if out['ok'] else 'FAIL'} — no activation outside a window, no device over its "
              "budget, the tight budget downloaded nothing."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
