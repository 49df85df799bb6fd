"""Fleet console at scale: 10,000 devices' retained state loaded into ``edge-runtime fleet console``.

A light publisher (paho, no update client) leaves a retained state and online flag for each of
N devices (default 10,000) on a private mosquitto, with a fleet desired state at 50 %, drift
figures on every device and a self-test failure on 1 % of them. Then it starts the console on
a fresh SQLite record and measures: how long until the console holds every device, how long
the pages take to render and serve (overview with the first 100 rows of the device table,
the table sorted by drift, a device page, a release page, the JSON overview), the record's
size and the console's memory; then the same after a restart on the same record; and, when
Chromium is installed, the wall time of a headless Chromium loading the overview (browser
start-up included). Prints a table; ``--out`` also writes it as Markdown (bench/results/console.md).

    .venv/bin/python bench/console.py [--devices 10000] [--out bench/results/console.md]
"""

from __future__ import annotations

import argparse
import getpass
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import paho.mqtt.client as paho  # noqa: E402

from edge_runtime.updates.protocol import Topics  # noqa: E402

FLEET = "bench"
TOPICS = Topics("edge", FLEET)
EDGE = Path(sys.executable).parent / "edge-runtime"
REPEAT = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(pred: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


def start_broker(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    # A subscription to devices/+/state gets every device's retained state in one burst:
                    # the default per-client queue (1000) drops most of 10,000 (docs/console.md).
                    "max_queued_messages 100000\n")
    proc = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)], stderr=subprocess.DEVNULL)

    def up() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            return False

    wait_for(up, 30, "mosquitto")
    return proc, port


def state(device: str, i: int) -> bytes:
    failed = {"2": "self-test: output_0 differs from golden by 1.0 (tolerance 0.001)"} if i % 100 == 0 else {}
    active = 1 if failed or i % 2 else 2
    doc = {
        "device": device, "fleet": FLEET, "time": "2026-12-03T12:00:00Z", "runtime": "0.1.0", "runtime_major": 0,
        "machine": "aarch64", "trust_root_version": 1, "desired_seq": {"desired": 7, "device_desired": None},
        "models": {"fraud": {
            "active": active, "last_known_good": active, "highest_seen": 2, "serving": active, "serving_factory": False,
            "failed": failed,
            "drift": {"score": (i % 97) / 100, "worst_feature": f"f{i % 30}", "alert": i % 97 > 80, "threshold": 0.8, "rows": 1000, "version": active},
        }},
        "update": None,
        "last_error": {"time": "2026-12-03T11:59:00Z", "model": "fraud", "version": 2, "reason": failed["2"]} if failed else None,
        "store_fault": None,
    }
    return json.dumps(doc).encode()


def publish_fleet(port: int, n: int) -> float:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-publisher")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    t0 = time.perf_counter()
    infos = []
    for i in range(n):
        device = f"dev-{i:05d}"
        infos.append(client.publish(TOPICS.state(device), state(device, i), qos=1, retain=True))
        infos.append(client.publish(TOPICS.online(device), b"true" if i % 10 else b"false", qos=1, retain=True))
    desired = {"seq": 7, "models": {"fraud": {"version": 2, "rollout": {"percent": 50, "salt": "fraud-2"}}}}
    infos.append(client.publish(TOPICS.desired, json.dumps({"desired": json.dumps(desired), "signatures": []}).encode(), qos=1, retain=True))
    for info in infos:
        info.wait_for_publish(60)
    took = time.perf_counter() - t0
    client.loop_stop()
    client.disconnect()
    return took


def get(port: int, path: str) -> tuple[float, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    t0 = time.perf_counter()
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    took = time.perf_counter() - t0
    conn.close()
    assert resp.status == 200, (path, resp.status, body[:200])
    return took, len(body)


def rss_mb(pid: int) -> float:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024


class Console:
    def __init__(self, broker_port: int, db: Path) -> None:
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [str(EDGE), "fleet", "console", "--fleet", FLEET, "--broker", f"mqtt://127.0.0.1:{broker_port}", "--db", str(db), "--port", "0",
             "--max-failures", "5"],
            stdout=subprocess.PIPE, stderr=open(db.parent / "console.log", "w"), text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.port = int(line.split("http://127.0.0.1:")[1].split("/")[0])

    def devices(self) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        conn.request("GET", "/api/overview")
        doc = json.loads(conn.getresponse().read())
        conn.close()
        return int(doc["devices"]["total"])

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


PAGES = [
    ("overview (/ : counts, versions, rollout, 100 table rows)", "/?live=0"),
    ("device table sorted by drift, page 50", "/?sort=drift&desc=1&page=49&live=0"),
    ("device table filtered (q=failed)", "/?q=failed&live=0"),
    ("device page", "/device/dev-00100?live=0"),
    ("release page (who runs it: 500 listed)", "/release/fraud/2?live=0"),
    ("/api/overview (JSON)", "/api/overview"),
]


def measure_pages(port: int) -> list[tuple[str, float, float, int]]:
    rows = []
    for label, path in PAGES:
        get(port, path)  # warm
        times = []
        size = 0
        for _ in range(REPEAT):
            t, size = get(port, path)
            times.append(t)
        rows.append((label, statistics.median(times), max(times), size))
    return rows


def chromium_ms(port: int, work: Path) -> float | None:
    binary = shutil.which("chromium")
    if binary is None:
        return None
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={work / 'chromium'}", "--dump-dom",
             f"http://127.0.0.1:{port}/?live=0"],
            capture_output=True, check=True, timeout=120,
        )
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    n = args.devices
    with tempfile.TemporaryDirectory(prefix="edge-bench-console-") as tmp:
        work = Path(tmp)
        broker, bport = start_broker(work)
        try:
            publish_s = publish_fleet(bport, n)
            db = work / "console.sqlite"
            c = Console(bport, db)
            try:
                wait_for(lambda: c.devices() >= n, 600, f"{n} devices on the console")
            except Exception:
                print((work / "console.log").read_text()[-5000:], file=sys.stderr)
                raise
            load_s = time.perf_counter() - c.t0
            pages = measure_pages(c.port)
            rss = rss_mb(c.proc.pid)
            browser = chromium_ms(c.port, work)
            c.stop()
            db_mb = sum(p.stat().st_size for p in work.glob("console.sqlite*")) / 1e6
            again = Console(bport, db)
            first_page_s, _ = get(again.port, "/?live=0")
            restart_s = time.perf_counter() - again.t0
            wait_for(lambda: again.devices() >= n, 600, "the devices after a restart")
            again_pages = measure_pages(again.port)
            again.stop()
        finally:
            broker.terminate()
            broker.wait(30)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "?")
    lines = [
        f"{n} devices (retained state + online flag each), {os.cpu_count()} vCPU {cpu}, Python {platform.python_version()}, loopback mosquitto.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| publish {2 * n} retained messages (paho, QoS 1) | {publish_s:.2f} s |",
        f"| console start until it holds all {n} devices (fresh record) | {load_s:.2f} s |",
        f"| console restart on the same record until the first page is served | {restart_s:.2f} s |",
        f"| record size (SQLite + WAL) | {db_mb:.1f} MB |",
        f"| console RSS after loading | {rss:.0f} MB |",
    ]
    if browser is not None:
        lines.append(f"| headless Chromium: start, load and render the overview, exit (median of 3) | {browser:.2f} s |")
    lines += ["", "| page | median | max | bytes | after a restart: median |", "|---|---|---|---|---|"]
    for (label, med, mx, size), (_, med2, _, _) in zip(pages, again_pages):
        lines.append(f"| {label} | {med * 1000:.0f} ms | {mx * 1000:.0f} ms | {size} | {med2 * 1000:.0f} ms |")
    lines.append(f"\n(each page: {REPEAT} requests after one warm-up, served over loopback HTTP)")
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.write_text(f"# Fleet console at scale (bench/console.py)\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
