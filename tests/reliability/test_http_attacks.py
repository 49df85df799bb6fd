"""Attacks on the daemon's HTTP endpoint, one test each, against the real process: a gzip bomb
of JSON zeros, odd version numbers in the path, trickled bodies, connections past the cap and
under a low descriptor limit. Each is refused or bounded, says why, and the device keeps
serving. Peak RSS and times go to the ``figures`` fixture (docs/security.md quotes them).
"""

from __future__ import annotations

import gzip
import socket
import subprocess
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from harness.http import request
from harness.wait import wait_until
from reliability.attack_support import MIB, peak_rss, serving
from reliability.conftest import EDGE, DeviceDir, Figures

pytestmark = pytest.mark.integration


# -- one HTTP request cannot take the daemon's memory -----------------------------------------

def _zeros_body(values: int) -> bytes:
    rows = values // 30
    head = b'{"inputs":[{"name":"input_0","datatype":"FP32","shape":[%d,30],"data":[' % rows
    return head + b"0," * (rows * 30 - 1) + b"0]}]}"


@pytest.mark.parametrize("encoding", ["gzip", "identity"])
def test_gzip_bomb_of_json_zeros_is_refused_before_parsing(
    make_device: Callable[..., DeviceDir], holdout_x: np.ndarray, figures: Figures, encoding: str
) -> None:
    dev = make_device()
    dev.write_config()
    daemon = dev.start()
    serving(dev, daemon.port, holdout_x)
    body = _zeros_body(30 * MIB)  # 60 MiB of JSON: 31 million zeros, under max_request_bytes (64 MiB)
    sent = gzip.compress(body, 9) if encoding == "gzip" else body
    peak_before = peak_rss(daemon)
    t0 = time.monotonic()
    status, answer = request(daemon.port, "POST", "/v2/models/fraud/infer", sent, {"Content-Encoding": encoding})
    took = time.monotonic() - t0
    peak_after = peak_rss(daemon)
    assert status == 413, answer[:300]
    assert b"max_json_values" in answer
    # The body itself (and its inflated copy) is all the request may cost: no parsed values.
    assert peak_after - peak_before < 1.5 * len(body), (peak_before, peak_after)
    assert serving(dev, daemon.port, holdout_x) == 1
    assert daemon.tracebacks() == []
    figures.add(encoding=encoding, sent_bytes=len(sent), json_bytes=len(body), peak_rss_before_mb=peak_before // MIB,
                peak_rss_after_mb=peak_after // MIB, answer_s=round(took, 3))

# -- odd version numbers in a path are 404, never 500 -----------------------------------------


def test_superscript_and_5000_digit_versions_in_the_path_are_404(
    make_device: Callable[..., DeviceDir], holdout_x: np.ndarray
) -> None:
    dev = make_device()
    dev.write_config()
    daemon = dev.start()
    odd = ["%C2%B2", "%D9%A3", "1" * 5000, "0" * 30 + "1"]
    for version in odd:
        for method, suffix in (("GET", ""), ("GET", "/ready"), ("GET", "/stats"), ("GET", "/config"), ("POST", "/infer")):
            status, body = request(daemon.port, method, f"/v2/models/fraud/versions/{version}{suffix}", b"{}")
            assert status in (400, 404), (version[:20], suffix, status, body[:200])
            assert len(body) < 1000
    status, body = request(daemon.port, "POST", "/v2/models/fraud/infer", b"{}", {"Content-Length": "9" * 5000})
    assert status in (400, 413), (status, body[:200])
    assert serving(dev, daemon.port, holdout_x) == 1
    assert daemon.tracebacks() == [], daemon.log()


# -- trickled bodies time out; connections past the cap are refused at once ------------------


def _read_status(s: socket.socket) -> int | None:
    """The status of an answer already waiting on ``s`` (None: nothing yet; 0: closed without one)."""
    try:
        data = s.recv(4096)
    except (BlockingIOError, TimeoutError):
        return None
    except OSError:
        return 0
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0


def test_trickled_bodies_time_out_and_connections_past_the_cap_get_503(
    make_device: Callable[..., DeviceDir], holdout_x: np.ndarray, figures: Figures
) -> None:
    cap, timeout_s, clients = 16, 2.0, 48
    dev = make_device()
    dev.write_config(server_toml=f"max_connections = {cap}\nrequest_body_timeout_s = {timeout_s}\n")
    daemon = dev.start()
    head = b"POST /v2/models/fraud/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
    peak_before = peak_rss(daemon)
    socks: list[socket.socket] = []
    statuses: dict[int, int] = {}
    t0 = time.monotonic()
    try:
        for _ in range(clients):
            s = socket.create_connection(("127.0.0.1", daemon.port))
            s.sendall(head)
            socks.append(s)
        for s in socks:
            s.settimeout(0.05)
        refused_at = time.monotonic()
        # Trickle one byte per connection every 0.25 s until every connection has its answer.
        while len(statuses) < clients and time.monotonic() - t0 < timeout_s * 10:
            for i, s in enumerate(socks):
                if i in statuses:
                    continue
                status = _read_status(s)
                if status is not None:
                    statuses[i] = status
                    continue
                try:
                    s.send(b"0")
                except OSError:
                    statuses[i] = 0
            if time.monotonic() - refused_at < 1.0:  # a full server still answers: with a clear 503
                st, body = request(daemon.port, "GET", "/v2/health/ready")
                assert st in (200, 503), st
            time.sleep(0.25)
        took = time.monotonic() - t0
    finally:
        for s in socks:
            s.close()
    counts = {st: list(statuses.values()).count(st) for st in set(statuses.values())}
    assert len(statuses) == clients, statuses
    assert counts.get(408, 0) >= cap - 2 and counts.get(503, 0) >= clients - cap - 2, counts
    assert set(counts) <= {408, 503}, counts
    assert took < timeout_s * 5
    assert daemon.wait_line("max_connections is 16", timeout=5) is not None
    assert serving(dev, daemon.port, holdout_x) == 1
    assert daemon.tracebacks() == []
    figures.add(clients=clients, max_connections=cap, request_body_timeout_s=timeout_s, answers=counts,
                all_answered_s=round(took, 2), peak_rss_before_mb=peak_before // MIB,
                peak_rss_after_mb=peak_rss(daemon) // MIB)

def test_trickling_clients_under_a_256_descriptor_limit_never_exhaust_descriptors(
    make_device: Callable[..., DeviceDir], holdout_x: np.ndarray, figures: Figures
) -> None:
    """The issue's case: 239 trickling connections against `ulimit -n 256` (the default cap of
    256 connections is lowered to fit, so new connections get a 503, never a reset or EMFILE)."""
    import resource

    dev = make_device()
    config = dev.write_config(server_toml="request_body_timeout_s = 3.0\n")
    proc = subprocess.Popen([str(EDGE), "serve", "--config", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)))
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    socks: list[socket.socket] = []
    try:
        port = int(wait_until(lambda: next((x.rsplit(":", 1)[1] for x in list(lines) if "listening on http://" in x), None), "the listening line"))
        wait_until(lambda: request(port, "GET", "/v2/health/ready")[0] == 200, "ready")
        head = b"POST /v2/models/fraud/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
        for _ in range(239):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(head)
            socks.append(s)
        # A new client while the trickling ones hold their connections: refused clearly, not reset.
        status, body = request(port, "GET", "/v2/health/ready")
        assert status == 503 and b"max_connections" in body, (status, body)
        for s in socks:
            s.close()
        wait_until(lambda: request(port, "GET", "/v2/health/ready")[0] == 200, "ready again")
        assert serving(dev, port, holdout_x) == 1
        log = "".join(lines)
        assert "does not fit the open-file limit 256: using 192" in log, log
        assert "Too many open files" not in log and "Traceback" not in log, log
        figures.add(nofile=256, trickling=239, effective_max_connections=192, refused_new_client=status)
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        proc.wait(30)
