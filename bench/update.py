"""Benchmark signed updates over MQTT: a 20 MB model through a loopback mosquitto.

1. publish to active: ``fleet publish`` (library) of a new version of a 20 MB TFLite MLP,
   until the device reports ``activated``; once with the update agent (self-test in its own
   process, ``edge-runtime fleet agent``) and once with the daemon (``edge-runtime serve``,
   which confirms only after its hot swap and self-test). Median of 3 versions each, with
   the device-side breakdown from the event timestamps.
2. resume ratio: the agent, rate-limited so the transfer can be interrupted, loses the broker
   at half of the chunks (stopped and restarted with its persistence) and is killed -9 at
   three quarters; the ratio is the chunk bytes received after the broker stop divided by
   the bytes missing at that moment (target <= 1.1). Three runs.

    .venv/bin/python bench/update.py

Environment: BENCH_RUNS (versions per mode, default 3), BENCH_RM (override ``[mqtt]
receive_maximum``), BENCH_KEEP=1 (keep the work directory with the device logs).

The model is built once with TensorFlow (in a subprocess) and cached under .edge/bench-cache/.
Prints a table and writes bench/results/update.md. Target: <= 1 s publish-to-active.
"""

from __future__ import annotations

import datetime as _dt
import getpass
import json
import os
import platform
import shutil
import signal
import statistics
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

from edge_runtime.bundle.reader import BundleLimits  # noqa: E402
from edge_runtime.fleet.prune import prune_releases  # noqa: E402
from edge_runtime.fleet.publish import publish_release  # noqa: E402
from edge_runtime.fleet.session import BrokerOptions, FleetSession  # noqa: E402
from edge_runtime.packaging import PackRequest, pack_model  # noqa: E402
from edge_runtime.store.store import ModelStore  # noqa: E402
from edge_runtime.trust.keys import generate_private_key, private_key_pem  # noqa: E402
from edge_runtime.trust.root import make_root, sign_root, verify_root  # noqa: E402
from edge_runtime.updates.protocol import Topics  # noqa: E402

CACHE = REPO / ".edge" / "bench-cache"
MODEL = CACHE / "mlp-20mb.tflite"
RESULTS = REPO / "bench" / "results" / "update.md"
EDGE = Path(sys.executable).parent / "edge-runtime"
FLEET = "bench"
DEVICE = "bench-pi"
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
RESUME_RATE = 8_000_000  # bytes/s for the resume run: about 2.5 s for the whole model

SIZES = [(30, 2048), (2048, 2048), (2048, 512), (512, 1)]  # about 20 MB of float32 weights


def build_model() -> Path:
    """The 20 MB MLP, built once with TensorFlow in a subprocess."""
    return build_mlp(MODEL, SIZES)


class Broker:
    """mosquitto on a free loopback port with persistence, restartable."""

    def __init__(self, work: Path) -> None:
        self.dir = work / "broker"
        self.dir.mkdir()
        self.port = free_port()
        (self.dir / "m.conf").write_text(
            f"user {getpass.getuser()}\nlistener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence true\npersistence_location {self.dir}/\nautosave_interval 0\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = start_mosquitto(self.dir / "m.conf", self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
            self.proc = None


class Events:
    """Collects the device's events."""

    def __init__(self, port: int) -> None:
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-observer-{port}")
        self.c.on_message = self._on
        self.c.on_connect = lambda c, *_: c.subscribe(f"edge/{FLEET}/devices/+/#", qos=1)
        self.c.reconnect_delay_set(0.05, 0.2)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        if msg.topic.endswith("/events") and msg.payload:
            with self.lock:
                self.events.append({**json.loads(msg.payload), "_t": time.perf_counter()})
        elif msg.topic.endswith("/state") and msg.payload:
            with self.lock:
                self.events.append({"event": "_state", "_t": time.perf_counter(), "state": json.loads(msg.payload)})

    def wait(self, kind: str, version: int | None = None, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for e in self.events:
                    if e["event"] == kind and (version is None or e.get("version") == version):
                        return e
            time.sleep(0.002)
        raise RuntimeError(f"no {kind} event for v{version} within {timeout} s")

    def of(self, version: int) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.events if e.get("version") == version]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _iso(e: dict[str, Any]) -> float:
    return _dt.datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp()


def publish_to_active(url: str, bundle: Path, key: Any, events: Events, version: int) -> dict[str, float]:
    """Seconds from the start of the publish to the activated event, with a breakdown."""
    t0 = time.perf_counter()
    wall0 = time.time()
    with FleetSession(BrokerOptions(url=url), Topics("edge", FLEET)) as session:
        result = publish_release(session, bundle, [key])
    t_pub = time.perf_counter() - t0
    activated = events.wait("activated", version)
    total = activated["_t"] - t0
    evs = {e["event"]: e for e in events.of(version) if e["event"] != "downloading"}
    last_chunk = max((e for e in events.of(version) if e["event"] == "downloading"), key=lambda e: e.get("percent", 0))
    return {
        "bytes": result.bytes_sent,
        "publish_s": t_pub,
        "total_s": total,
        "notified_s": _iso(evs["notified"]) - wall0,
        "fetch_s": _iso(last_chunk) - _iso(evs["notified"]),
        "verify_s": _iso(evs["verified"]) - _iso(last_chunk),
        "install_s": _iso(evs["installed"]) - _iso(evs["verified"]),
        "activate_s": _iso(evs["activated"]) - _iso(evs["installed"]),
    }


def write_config(work: Path, url: str, root: Path, rate: int = 0) -> Path:
    cfg = work / f"config-{rate}.toml"
    cfg.write_text(
        f'[device]\nid = "{DEVICE}"\n[store]\npath = "{work / "store"}"\nfactory = "{work / "factory"}"\n'
        f'[server]\nport = 0\nswap_poll_ms = 500\n[trust]\nroot = "{root}"\n'
        f'[mqtt]\nurl = "{url}"\nfleet = "{FLEET}"\nreconnect_min_s = 0.05\nreconnect_max_s = 0.3\n'
        f"download_stall_s = 5.0\nmax_download_bytes_per_s = {rate}\n"
        + (f"receive_maximum = {os.environ['BENCH_RM']}\n" if os.environ.get("BENCH_RM") else "")
    )
    return cfg


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_", "NOTIFY_SOCKET", "WATCHDOG_"))}
    with open(log, "ab") as fh:
        return subprocess.Popen([str(EDGE), *args], stdout=fh, stderr=fh, env=env)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)


def wait_connected(events: Events, after: float = 0.0, timeout: float = 60.0) -> None:
    """Until the device publishes a state (after ``after``, a perf_counter time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with events.lock:
            if any(e["event"] == "_state" and e["_t"] >= after for e in events.events):
                return
        time.sleep(0.01)
    raise RuntimeError("the device never reported its state")


def main() -> int:
    model = build_model()
    work = Path(tempfile.mkdtemp(prefix="bench-update-"))
    try:
        return run(work, model)
    finally:
        if os.environ.get("BENCH_KEEP"):
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(work: Path, model: Path) -> int:
    key = generate_private_key()
    (work / "signing.key").write_bytes(private_key_pem(key))
    root_bytes = sign_root(make_root(1, [key], [key]), [key])
    (work / "root.json").write_bytes(root_bytes)
    root = verify_root(root_bytes)
    versions = list(range(1, 1 + 3 * RUNS + 1))  # v1 installed, then RUNS each: agent, daemon, resume
    bundles = {}
    for v in versions:
        bundles[v] = work / f"mlp-v{v}.bundle"
        pack_model(PackRequest(model, name="mlp", version=v, keys=[key], out=bundles[v], input_names=["input_0"], output_names=["output_0"]))
    size = model.stat().st_size
    store = ModelStore(work / "store", root, None, BundleLimits())
    store.install(bundles[1])
    store.activate("mlp", 1)

    broker = Broker(work)
    broker.start()
    events = Events(broker.port)
    rows: dict[str, list[dict[str, float]]] = {"agent": [], "daemon": []}
    resumes: list[dict[str, float]] = []
    try:
        agent = start(["fleet", "agent", "--config", str(write_config(work, broker.url, work / "root.json"))], work / "agent.log")
        wait_connected(events)
        for v in versions[1 : 1 + RUNS]:
            rows["agent"].append(publish_to_active(broker.url, bundles[v], key, events, v))
        stop(agent)

        t_start = time.perf_counter()
        daemon = start(["serve", "--config", str(write_config(work, broker.url, work / "root.json"))], work / "daemon.log")
        wait_connected(events, after=t_start)
        for v in versions[1 + RUNS : 1 + 2 * RUNS]:
            rows["daemon"].append(publish_to_active(broker.url, bundles[v], key, events, v))
        stop(daemon)

        for v in versions[1 + 2 * RUNS :]:
            resumes.append(resume_run(work, broker, events, bundles[v], key, v))
    finally:
        events.close()
        broker.stop()
    report(size, rows, resumes)
    return 0


def resume_run(work: Path, broker: Broker, events: Events, bundle: Path, key: Any, v: int) -> dict[str, float]:
    """Broker stopped at half the chunks and restarted, device killed -9 at three quarters."""
    config = write_config(work, broker.url, work / "root.json", rate=RESUME_RATE)
    agent = start(["fleet", "agent", "--config", str(config)], work / "resume.log")
    wait_connected(events, after=time.perf_counter())
    with FleetSession(BrokerOptions(url=broker.url), Topics("edge", FLEET)) as session:
        prune_releases(session)  # as an operator would: the broker keeps the current release only
        publish_release(session, bundle, [key])

    def reported() -> dict[str, Any] | None:
        """The download of ``v`` as the device's newest state reports it (at every 10 % step)."""
        with events.lock:
            states = [e["state"] for e in events.events if e["event"] == "_state"]
        update = (states[-1].get("update") or {}) if states else {}
        return update if update.get("version") == v and "have_bytes" in update else None

    def until(frac: float) -> dict[str, Any]:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            p = reported()
            if p is not None and p["have_bytes"] >= frac * p["total_bytes"]:
                return p
            time.sleep(0.002)
        raise RuntimeError(f"download never reached {frac:.0%}")

    # The broker stops as soon as the device reports half: the counts at the break are those of
    # that report, give or take the chunks of a few milliseconds.
    at_break = until(0.5)
    broker.stop()
    broker.start()
    until(0.75)
    agent.send_signal(signal.SIGKILL)
    agent.wait(30)
    agent = start(["fleet", "agent", "--config", str(config)], work / "resume.log")
    verified = events.wait("verified", v)
    events.wait("activated", v)
    stop(agent)
    missing = at_break["total_bytes"] - at_break["have_bytes"]
    after = verified["received_bytes"] - at_break["received_bytes"]
    return {
        "missing": missing,
        "after": after,
        "ratio": after / missing,
        "duplicates": verified["received_bytes"] - verified["total_bytes"] - verified["rejected_bytes"],
    }


def report(size: int, rows: dict[str, list[dict[str, float]]], resumes: list[dict[str, float]]) -> None:
    """Print the tables and write bench/results/update.md."""
    mosq = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True, check=False).stdout.splitlines()[0]
    med = {k: {f: statistics.median(r[f] for r in v) for f in v[0]} for k, v in rows.items()}
    lines = [
        "# Update benchmark (bench/update.py)",
        "",
        f"{_dt.date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} CPUs (shared), Python "
        f"{platform.python_version()}, {mosq}, loopback, default `[mqtt]` settings (receive_maximum 2). "
        f"Model: a {size / 1e6:.1f} MB TFLite MLP (30-2048-2048-512-1), {-(-size // 262144)} chunks of 256 KiB. "
        f"Median of {RUNS} versions each.",
        "",
        "| device | publish to activated | operator's publish | device notified | fetch | verify | install | activate (+ self-test) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k, label in (("agent", "update agent, self-test in-process"), ("daemon", "daemon (`serve`), hot swap + self-test")):
        m = med[k]
        lines.append(
            f"| {label} | **{m['total_s']:.3f} s** | {m['publish_s']:.3f} s | {m['notified_s']:.3f} s | {m['fetch_s']:.3f} s | "
            f"{m['verify_s']:.3f} s | {m['install_s']:.3f} s | {m['activate_s']:.3f} s |"
        )
    lines += [
        "",
        "Publish to activated: from the start of `publish_release` (open and verify the bundle, "
        "publish chunks, manifest, signed desired state) to the `activated` event reaching the "
        "operator. The operator's publish ends when the broker acknowledged the desired state. "
        "The other columns come from the device's event timestamps (milliseconds): notified = "
        "publish start to the device acting on the desired state, fetch = manifest and every "
        "chunk written, verify = whole-file hash and signature, install = atomic copy into the "
        "store, activate = re-verify + self-test (agent) or store activation + the daemon's "
        "swap and self-test until it serves.",
        "",
        f"Resume ({RESUME_RATE / 1e6:.0f} MB/s rate limit so it can be interrupted; broker stopped at half the chunks "
        "and restarted from its persistence, device killed -9 at three quarters and restarted):",
        "",
        "| run | missing at the broker stop | received after it | ratio | re-sent chunk bytes |",
        "|---|---|---|---|---|",
    ]
    for i, r in enumerate(resumes, 1):
        lines.append(
            f"| {i} | {r['missing'] / 1e6:.2f} MB | {r['after'] / 1e6:.2f} MB | **{r['ratio']:.3f}** | {r['duplicates'] / 1e6:.2f} MB |"
        )
    lines += [
        "",
        "An interruption usually costs `receive_maximum` + 1 re-sent chunks (those in flight when "
        "the connection died, and the one being written); more when mosquitto keeps delivering "
        "while it shuts down, which a bigger persistence file makes slower. See docs/updates.md.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
