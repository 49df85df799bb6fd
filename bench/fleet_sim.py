"""Fleet simulation: N simulated devices (default 200) follow a staged rollout through one mosquitto.

Every device is the real update client (``UpdateService`` with the self-test in-process, as
``edge-runtime fleet agent`` runs it): its own device id, store directory, MQTT client id and
persistent session, spread over a few worker processes (edge_runtime/fleet/simulate.py).
Stages, one after the other, against a 2 MB TFLite model (30-512-512-512-1 MLP):

1. v2 published with ``--rollout 10``, then raised to 50, then 100 (chunks are sent once);
   for each stage: time from the publish until every device of the stage reports v2, the
   bytes the broker sent ($SYS/broker/bytes/sent), its peak RSS (VmHWM), and a check that
   exactly the devices whose bucket is below the percentage run v2 (their retained state
   and their stores on disk).
2. v3 to everyone, rejected by 10 % of the devices (their self-test fails: the simulator
   shifts their interpreter's outputs for v3 and v4); ``edge-runtime fleet status`` must
   show the failures and the counts.
3. v4 with ``fleet publish --steps 10,50,100 --max-failures 5`` (the same devices fail it):
   the rollout must halt at the first step whose failure share passes 5 %.

    .venv/bin/python bench/fleet_sim.py [--devices 200] [--processes 4] [--chunk-kib 256] [--keep]

Prints a report and writes bench/results/fleet.md (only for the default 200 devices unless
``--out`` is given). The model is built once with TensorFlow (subprocess) into .edge/bench-cache/.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import getpass
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench" / "servers"))

import paho.mqtt.client as paho  # noqa: E402
from tf_mlp import build_mlp, free_port, start_mosquitto  # noqa: E402

from edge_runtime.fleet.publish import publish_release  # noqa: E402
from edge_runtime.fleet.session import BrokerOptions, FleetSession  # noqa: E402
from edge_runtime.fleet.simulate import Fault, SimSettings, SimulatedFleet, device_ids  # noqa: E402
from edge_runtime.fleet.status import DeviceStates  # noqa: E402
from edge_runtime.packaging import PackRequest, pack_model  # noqa: E402
from edge_runtime.trust.keys import generate_private_key, private_key_pem  # noqa: E402
from edge_runtime.trust.root import make_root, sign_root  # noqa: E402
from edge_runtime.updates.protocol import Topics  # noqa: E402
from edge_runtime.updates.verify import rollout_bucket  # noqa: E402

CACHE = REPO / ".edge" / "bench-cache"
MODEL = CACHE / "mlp-2mb.tflite"
RESULTS = REPO / "bench" / "results" / "fleet.md"
EDGE = Path(sys.executable).parent / "edge-runtime"
FLEET = "sim"
NAME = "mlp"
STAGE_TIMEOUT_S = 600.0

SIZES = [(30, 512), (512, 512), (512, 512), (512, 1)]  # about 2 MB of float32 weights


def build_model() -> Path:
    """The 2 MB MLP, built once with TensorFlow in a subprocess."""
    return build_mlp(MODEL, SIZES)


class Broker:
    """mosquitto on a free loopback port, publishing $SYS every second."""

    def __init__(self, work: Path) -> None:
        self.dir = work / "broker"
        self.dir.mkdir()
        self.port = free_port()
        (self.dir / "m.conf").write_text(
            f"user {getpass.getuser()}\nlistener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence false\nsys_interval 1\nlog_dest file {self.dir}/mosquitto.log\n"
        )
        self.proc = start_mosquitto(self.dir / "m.conf", self.port, timeout_s=30)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def memory_kb(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) in kB."""
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines())
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])

    def cpu_s(self) -> float:
        """User + system CPU seconds so far."""
        parts = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


class SysTopics:
    """The broker's $SYS counters, newest value and when it arrived."""

    def __init__(self, port: int) -> None:
        self.values: dict[str, tuple[float, str]] = {}
        self.lock = threading.Lock()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-sys-{port}")
        self.c.on_message = self._on
        self.c.connect("127.0.0.1", port)
        self.c.subscribe([("$SYS/broker/bytes/#", 0), ("$SYS/broker/messages/#", 0), ("$SYS/broker/retained messages/count", 0),
                          ("$SYS/broker/store/messages/bytes", 0), ("$SYS/broker/clients/connected", 0)])
        self.c.loop_start()

    def _on(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.values[msg.topic.removeprefix("$SYS/broker/")] = (time.monotonic(), msg.payload.decode())

    def fresh(self, key: str, timeout_s: float = 10.0) -> int:
        """The first value of ``key`` published after now."""
        since = time.monotonic()
        deadline = since + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                at, value = self.values.get(key, (0.0, ""))
            if at > since:
                return int(value)
            time.sleep(0.05)
        raise RuntimeError(f"no fresh $SYS/broker/{key} within {timeout_s:g} s")

    def latest(self, key: str) -> int:
        """The newest value of ``key`` (mosquitto publishes most counters only when they change)."""
        with self.lock:
            return int(self.values.get(key, (0.0, "-1"))[1])

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


class Arrivals:
    """When each device first reported each active (and failed) version."""

    def __init__(self) -> None:
        self.first: dict[tuple[str, str, int], float] = {}
        self.lock = threading.Lock()

    def __call__(self, device: str, state: dict[str, Any]) -> None:
        entry = (state.get("models") or {}).get(NAME) or {}
        now = time.monotonic()
        with self.lock:
            if entry.get("active") is not None and state.get("update") is None:
                self.first.setdefault((device, "active", int(entry["active"])), now)
            for v in entry.get("failed") or {}:
                self.first.setdefault((device, "failed", int(v)), now)

    def at(self, device: str, kind: str, version: int) -> float | None:
        with self.lock:
            return self.first.get((device, kind, version))


def entry_of(states: DeviceStates, device: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state document, its models[NAME]) of a device."""
    for row in states.devices():
        if row["device"] == device:
            st = row["state"] or {}
            return st, dict((st.get("models") or {}).get(NAME) or {})
    return {}, {}


def wait_for(pred: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.05)


def settled(states: DeviceStates, ids: list[str], seq: int) -> bool:
    for d in ids:
        st, _ = entry_of(states, d)
        if (st.get("desired_seq") or {}).get("desired") != seq or st.get("update") is not None:
            return False
    return True


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else 0.0


def stage(ctx: dict[str, Any], label: str, bundle: Path, version: int, percent: int, expect_failed: set[str]) -> dict[str, Any]:
    """Publish ``bundle`` at ``percent`` and measure until every device has settled."""
    ids, states, arrivals, sysc, broker, fleet = (ctx[k] for k in ("ids", "states", "arrivals", "sys", "broker", "fleet"))
    before = {d: entry_of(states, d)[1].get("active") for d in ids}
    sent0, cpu0 = sysc.fresh("bytes/sent"), broker.cpu_s()
    dev_cpu0 = sum(s["cpu_s"] for s in fleet.stats())
    t0 = time.monotonic()
    r = publish_release(ctx["session"], bundle, [ctx["key"]], percent=percent)
    t_pub = time.monotonic() - t0
    salt = f"{NAME}-{version}"
    bucket = {d for d in ids if rollout_bucket(d, salt) < percent}
    wait_for(lambda: settled(states, ids, r.seq), STAGE_TIMEOUT_S, f"{label}: every device to settle")
    wait_for(
        lambda: all(entry_of(states, d)[1].get("active") == version or d in expect_failed for d in bucket),
        60, f"{label}: the bucket's states",
    )
    new = [d for d in bucket if before[d] != version]
    times = []
    for d in new:
        kind = "failed" if d in expect_failed else "active"
        at = arrivals.at(d, kind, version)
        if at is None:
            raise RuntimeError(f"{label}: no arrival time for {d} ({kind} v{version})")
        times.append(at - t0)
    updated = {d for d in ids if entry_of(states, d)[1].get("active") == version}
    on_disk = {d for d in ids if fleet.active(d, NAME) == version}
    failed = {d for d in ids if str(version) in (entry_of(states, d)[1].get("failed") or {})}
    want = bucket - expect_failed
    ok = updated == want and on_disk == want and failed == (expect_failed & bucket)
    sent1 = sysc.fresh("bytes/sent")
    rss, hwm = broker.memory_kb()
    row = {
        "stage": label,
        "percent": percent,
        "bucket": len(bucket),
        "new": len(new),
        "updated": len(updated),
        "failed": len(failed),
        "exact": ok,
        "publish_s": t_pub,
        "all_s": max(times) if times else 0.0,
        "p50_s": pct(times, 0.5),
        "p90_s": pct(times, 0.9),
        "chunks_sent": r.chunks_sent,
        "broker_mb": (sent1 - sent0) / 1e6,
        "broker_cpu_s": broker.cpu_s() - cpu0,
        "devices_cpu_s": sum(s["cpu_s"] for s in fleet.stats()) - dev_cpu0,
        "broker_rss_mb": rss / 1024,
        "broker_hwm_mb": hwm / 1024,
    }
    print(
        f"{label}: {len(new)} devices moved in {row['all_s']:.2f} s (p50 {row['p50_s']:.2f} s), broker sent "
        f"{row['broker_mb']:.1f} MB, broker VmHWM {row['broker_hwm_mb']:.1f} MB, exact bucket: {ok}",
        flush=True,
    )
    if not ok:
        print(f"  mismatch: updated-want {sorted(updated - want)}, want-updated {sorted(want - updated)}, "
              f"on disk {len(on_disk)}, failed {sorted(failed)}", flush=True)
    return row


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    model = build_model()
    keydir = work / "keys"
    keydir.mkdir()
    root_key, key = generate_private_key(), generate_private_key()
    (keydir / "root.json").write_bytes(sign_root(make_root(1, [root_key], [key]), [root_key]))
    (keydir / "signing.key").write_bytes(private_key_pem(key))
    (keydir / "signing.key").chmod(0o600)
    bundles = {}
    for v in (1, 2, 3, 4):
        bundles[v] = work / f"{NAME}-v{v}.bundle"
        pack_model(PackRequest(model, name=NAME, version=v, keys=[key], out=bundles[v], chunk_size=args.chunk_kib * 1024,
                   input_names=["input_0"], output_names=["output_0"]))
    factory = work / "factory"
    factory.mkdir()
    shutil.copyfile(bundles[1], factory / f"{NAME}.bundle")
    ids = device_ids(args.devices)
    faulty = set(ids[:: max(1, round(100 / args.fail_percent))])
    broker = Broker(work)
    sysc = SysTopics(broker.port)
    topics = Topics("edge", FLEET)
    arrivals = Arrivals()
    states = DeviceStates(topics, on_state=arrivals)
    settings = SimSettings(url=broker.url, fleet=FLEET, root_file=keydir / "root.json", work_dir=work / "devices",
                           factory_dir=factory, faults=(Fault(NAME, frozenset({3, 4}), frozenset(faulty)),))
    out: dict[str, Any] = {"devices": len(ids), "processes": args.processes, "model_bytes": model.stat().st_size,
                           "loadavg": os.getloadavg()[0],
                           "chunk_kib": args.chunk_kib, "faulty": len(faulty), "stages": []}
    t0 = time.monotonic()
    fleet = SimulatedFleet(settings, ids, processes=args.processes).start()
    try:
        with FleetSession(BrokerOptions(url=broker.url), topics, timeout_s=120) as session:
            session.watch([topics.devices_filter("state"), topics.devices_filter("online")], states.on_message)
            wait_for(lambda: all(entry_of(states, d)[1] for d in ids), 300, "every device's first state")
            out["startup_s"] = time.monotonic() - t0
            out["connected"] = sysc.latest("clients/connected")
            out["workers_start"] = fleet.stats()
            print(f"{len(ids)} devices reporting after {out['startup_s']:.1f} s", flush=True)
            ctx = {"ids": ids, "states": states, "arrivals": arrivals, "sys": sysc, "broker": broker, "fleet": fleet,
                   "session": session, "key": key}
            for p in (10, 50, 100):
                out["stages"].append(stage(ctx, f"v2 --rollout {p}", bundles[2], 2, p, set()))
            out["stages"].append(stage(ctx, "v3 to all, 10 % fail", bundles[3], 3, 100, faulty))
            status = subprocess.run([str(EDGE), "fleet", "status", "--fleet", FLEET, "--broker", broker.url],
                                    capture_output=True, text=True, timeout=120, check=False)
            out["status_summary"] = status.stdout.split("\n\n", 1)[-1].strip().splitlines()
            out["status_rows"] = [line for line in status.stdout.splitlines() if line.startswith("sim-") and "failed v3" in line][:3]
            out["status_ok"] = (
                status.returncode == 0
                and f"failed v3 on {len(faulty)}" in status.stdout
                and f"{len(ids) - len(faulty)} updated, {len(faulty)} failed" in status.stdout
            )
            t = time.monotonic()
            halt = subprocess.run(
                [str(EDGE), "fleet", "publish", str(bundles[4]), "--fleet", FLEET, "--broker", broker.url,
                 "--sign-key", str(keydir / "signing.key"), "--steps", "10,50,100", "--step-wait", "300",
                 "--max-failures", "5"],
                capture_output=True, text=True, timeout=1200, check=False,
            )
            out["halt"] = {"code": halt.returncode, "seconds": time.monotonic() - t,
                           "steps": [line for line in halt.stdout.splitlines() if line.startswith("step ")],
                           "stderr": [line for line in halt.stderr.splitlines() if line.startswith("edge-runtime:")]}
            out["halt_ok"] = halt.returncode == 1 and any("halted at" in line for line in out["halt"]["stderr"])
            out["workers_end"] = fleet.stats()
            cpu0, dev0 = broker.cpu_s(), sum(s["cpu_s"] for s in out["workers_end"])
            time.sleep(10)
            out["idle_broker_cpu_pct"] = 100 * (broker.cpu_s() - cpu0) / 10
            out["idle_devices_cpu_pct"] = 100 * (sum(s["cpu_s"] for s in fleet.stats()) - dev0) / 10
            out["retained"] = sysc.latest("retained messages/count")
            out["store_mb"] = sysc.latest("store/messages/bytes") / 1e6
            out["broker_rss_mb"], out["broker_hwm_mb"] = (v / 1024 for v in broker.memory_kb())
            out["bytes_sent_total_mb"] = sysc.fresh("bytes/sent") / 1e6
    finally:
        fleet.stop()
        sysc.close()
        broker.stop()
    return out


def report(out: dict[str, Any], path: Path | None) -> None:
    cpus = os.cpu_count()
    version = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True, check=False).stdout.splitlines()[0]
    w = out["workers_end"]
    lines = [
        "# Fleet simulation (bench/fleet_sim.py)",
        "",
        f"{_dt.date.today()}, {platform.machine()}, {cpus} CPUs (shared; load average {out['loadavg']:.1f} at the start), "
        f"Python {platform.python_version()}, {version}, loopback. {out['devices']} simulated devices (the real update client, self-test in-process) in "
        f"{out['processes']} worker processes; one mosquitto, default settings plus `sys_interval 1`. Model: a "
        f"{out['model_bytes'] / 1e6:.2f} MB TFLite MLP (30-512-512-512-1) in {out['chunk_kib']} KiB chunks; every "
        f"device starts on its factory bundle (v1). {out['devices']} devices connected and reporting "
        f"{out['startup_s']:.1f} s after start.",
        "",
        "| stage | devices in the rollout | devices moved | all moved after | p50 | p90 | publish | broker sent | "
        "broker CPU | devices CPU | broker VmHWM | exactly the bucket |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in out["stages"]:
        moved = f"{s['new']}" + (f" ({s['failed']} failed)" if s["failed"] else "")
        lines.append(
            f"| {s['stage']} | {s['bucket']} | {moved} | **{s['all_s']:.2f} s** | {s['p50_s']:.2f} s | {s['p90_s']:.2f} s | "
            f"{s['publish_s']:.2f} s | {s['broker_mb']:.1f} MB | {s['broker_cpu_s']:.2f} s | {s['devices_cpu_s']:.1f} s | "
            f"{s['broker_hwm_mb']:.1f} MB | {'yes' if s['exact'] else '**no**'} |"
        )
    lines += [
        "",
        "\"All moved after\": from the start of the publish until the last device of the stage reported the new "
        "version active (or, for the failing devices, the failure) in its retained state, seen by an operator "
        "client watching `devices/+/state`; p50/p90 over the devices that moved. \"Broker sent\": the change of "
        "`$SYS/broker/bytes/sent` over the stage (chunks to the devices, plus manifests, desired states and the "
        "devices' state and event messages to the watching operator). \"Exactly the bucket\": the devices running "
        "the version, by their retained state and by their stores on disk, are exactly those whose "
        "`sha256(salt + id) mod 100` is below the percentage (minus the failing ones, which are exactly the "
        "failing devices in the bucket).",
        "",
        f"Broker at the end: VmRSS {out['broker_rss_mb']:.1f} MB, VmHWM {out['broker_hwm_mb']:.1f} MB, "
        f"{out['retained']} retained messages, {out['store_mb']:.1f} MB in its message store, "
        f"{out['bytes_sent_total_mb']:.0f} MB sent in all. Idle (10 s after the last stage): broker "
        f"{out['idle_broker_cpu_pct']:.1f} % of a CPU, the {out['devices']} devices {out['idle_devices_cpu_pct']:.1f} %.",
        "",
        "Simulator processes at the end: "
        + "; ".join(f"{s['devices']} devices, RSS {s['rss_kb'] / 1024:.0f} MB (peak {s['hwm_kb'] / 1024:.0f} MB), "
                    f"{s['threads']} threads, {s['fds']} fds" for s in w)
        + ".",
        "",
        f"`edge-runtime fleet status` after v3 ({out['faulty']} devices fail its self-test), summary lines "
        f"(check {'passed' if out['status_ok'] else '**failed**'}):",
        "",
        "```",
        *out["status_summary"],
        *(["...", *out["status_rows"]] if out["status_rows"] else []),
        "```",
        "",
        f"`fleet publish v4 --steps 10,50,100 --step-wait 300 --max-failures 5` (the same devices fail v4), exit code "
        f"{out['halt']['code']} after {out['halt']['seconds']:.1f} s (check {'passed' if out['halt_ok'] else '**failed**'}):",
        "",
        "```",
        *out["halt"]["steps"],
        *out["halt"]["stderr"],
        "```",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if path is not None:
        path.write_text(text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=200)
    p.add_argument("--processes", type=int, default=4, help="worker processes for the devices (0: this process)")
    p.add_argument("--chunk-kib", type=int, default=256)
    p.add_argument("--fail-percent", type=float, default=10.0)
    p.add_argument("--out", type=Path, default=None, help=f"results file (default {RESULTS} for 200 devices)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (device stores and logs)")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fleet-sim-"))
    try:
        out = run(args, work)
        if args.keep:
            (work / "figures.json").write_text(json.dumps(out, indent=1, default=str))
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report(out, args.out or (RESULTS if args.devices == 200 else None))
    good = all(s["exact"] for s in out["stages"]) and out["status_ok"] and out["halt_ok"]
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
