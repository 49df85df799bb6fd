"""The console under a hostile device (issue 22, finding 4): its memory, its record and its stop.

On a private mosquitto, one device writing only its own topics publishes as fast as it can
for ``--seconds``: 1 KB events and 200 KB states that all differ. Then 100 devices each
leave a 256 KB retained state, then 1,018 sockets connect and send nothing. Measured on the
console (``edge-runtime fleet console``, fresh record): peak and final RSS, the record's size
on disk (database and WAL), what it dropped (``/api/health``), how many idle sockets are
still open after the read timeout, whether the page answers meanwhile, and how long SIGTERM
takes. Run twice: with the default limits, and with the rate limit lifted (``--device-rate
100000``) and ``--max-db-mb 16`` to show the size bound holding. ``--out`` writes Markdown.

    .venv/bin/python bench/console_chatty.py [--seconds 60] [--out bench/results/console_chatty.md]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import paho.mqtt.client as paho  # noqa: E402
from console import EDGE, FLEET, TOPICS, free_port, start_broker, wait_for  # noqa: E402

MB = 1_000_000


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def get_json(port: int, path: str) -> Any:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request("GET", path)
        return json.loads(c.getresponse().read())
    finally:
        c.close()


def page_status(port: int) -> int:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request("GET", "/?live=0")
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def chatty(broker: int, seconds: float) -> dict[str, int]:
    """One device flooding its events and state topics; returns what it sent."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="chatty")
    client.max_queued_messages_set(2000)
    client.connect("127.0.0.1", broker)
    client.loop_start()
    sent = {"events": 0, "event_bytes": 0, "states": 0, "state_bytes": 0}
    end = time.monotonic() + seconds
    pad = "x" * 900
    i = 0
    while time.monotonic() < end:
        i += 1
        ev = json.dumps({"event": "downloading", "model": "fraud", "version": 2, "percent": i % 100, "reason": pad}).encode()
        client.publish(TOPICS.events("chatty"), ev, qos=0)
        sent["events"] += 1
        sent["event_bytes"] += len(ev)
        if i % 4 == 0:
            st = json.dumps({"models": {"fraud": {"active": 1, "failed": {}}}, "update": {"model": "fraud", "version": 2,
                             "phase": "downloading", "percent": i}, "junk": "j" * 200_000}).encode()
            client.publish(TOPICS.state("chatty"), st, qos=0, retain=True)
            sent["states"] += 1
            sent["state_bytes"] += len(st)
        if i % 200 == 0:
            time.sleep(0.001)  # let the network thread drain its queue
    client.loop_stop()
    client.disconnect()
    return sent


def big_states(broker: int, n: int) -> None:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="big-states")
    client.connect("127.0.0.1", broker)
    client.loop_start()
    infos = [client.publish(TOPICS.state(f"big-{i}"), json.dumps({"models": {"fraud": {"active": 1}}, "junk": "j" * 256_000}).encode(),
                            qos=1, retain=True) for i in range(n)]
    for info in infos:
        info.wait_for_publish(60)
    client.loop_stop()
    client.disconnect()


def run(label: str, seconds: float, extra: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker, bport = start_broker(work)
        db = work / "console.sqlite"
        port = free_port()
        proc = subprocess.Popen([str(EDGE), "fleet", "console", "--fleet", FLEET, "--broker", f"mqtt://127.0.0.1:{bport}",
                                 "--db", str(db), "--port", str(port), *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: _up(port), 60, "the console")
            rss0 = status_kb(proc.pid, "VmRSS")
            sent = chatty(bport, seconds)
            time.sleep(2.0)
            after_chatty = status_kb(proc.pid, "VmRSS")
            big_states(bport, 100)
            wait_for(lambda: get_json(port, "/api/overview")["devices"]["total"] >= 101, 120, "the big states")
            after_big = status_kb(proc.pid, "VmRSS")
            socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(1018)]
            answered = page_status(port)  # at once, while 1,018 idle sockets are open
            time.sleep(7.0)  # past the 5 s read timeout
            still_open = 0
            for s in socks:
                s.setblocking(False)
                try:
                    s.recv(200)  # b"": closed at the timeout; a 503: refused at once
                except BlockingIOError:
                    still_open += 1
                except OSError:
                    pass
            fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
            for s in socks:
                s.close()
            health = get_json(port, "/api/health")
            wal = db.with_name(db.name + "-wal")
            db_size, wal_size = db.stat().st_size, wal.stat().st_size if wal.exists() else 0
            hwm = status_kb(proc.pid, "VmHWM")
            t = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(120)
            stop_s = time.monotonic() - t
        finally:
            if proc.poll() is None:
                proc.kill()
            broker.terminate()
            broker.wait(10)
    return {
        "run": label, "seconds": seconds, "sent_events": sent["events"], "sent_event_mb": round(sent["event_bytes"] / MB, 1),
        "sent_states": sent["states"], "sent_state_mb": round(sent["state_bytes"] / MB, 1),
        "rss_start_mb": rss0 // 1024, "rss_after_chatty_mb": after_chatty // 1024,
        "rss_after_100_big_states_mb": after_big // 1024, "peak_rss_mb": hwm // 1024, "record_db_mb": round(db_size / MB, 1),
        "record_wal_mb": round(wal_size / MB, 1),
        "dropped_rate": health["dropped"]["rate_limited"], "dropped_queue_full": health["dropped"]["queue_full"],
        "replaced_states": health["replaced"], "pruned_rows": health["pruned_rows"], "http_refused": health["http_refused"],
        "http_idle_closed": health["http_idle_closed"],
        "page_status_with_1018_idle": answered, "idle_sockets_open_after_7s": still_open, "console_fds_after": fds,
        "sigterm_s": round(stop_s, 2), "exit_code": code,
    }


def _up(port: int) -> bool:
    try:
        get_json(port, "/api/health")
        return True
    except OSError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rows = [run("default limits", args.seconds, []),
            run("--device-rate 100000 --max-db-mb 16", args.seconds, ["--device-rate", "100000", "--max-db-mb", "16"])]
    keys = list(rows[0])
    lines = ["| " + " | ".join(["figure", *(str(r["run"]) for r in rows)]) + " |", "|---" * (len(rows) + 1) + "|"]
    lines += ["| " + " | ".join([k, *(str(r[k]) for r in rows)]) + " |" for k in keys[1:]]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(f"# Console under a chatty device\n\n{os.uname().machine}, {os.cpu_count()} CPUs; "
                            f"`python bench/console_chatty.py --seconds {args.seconds:g}`\n\n{text}\n")


if __name__ == "__main__":
    main()
