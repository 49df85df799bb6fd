"""Load and soak: 32 concurrent keep-alive clients against a real daemon for 10 s (``make test``)
or 60 s (``make test-long``), JSON and binary requests of 1 to 4 rows.

Properties: no answer other than 200 and the documented 503, every 200 carries the
interpreter's outputs for its rows, and the daemon's resident memory does not grow: RSS at
the end of the window is within 10 % of RSS at its start. The window is the 10th to the
60th second in the long mode; in the short mode it is the 3rd to the 10th second, and the
growth is asserted there too (see docs/reliability.md for the figures from both).
"""

from __future__ import annotations

import http.client
import statistics
import threading
import time
from collections.abc import Callable

import numpy as np
import orjson
import pytest

from harness.load import ClientThreads
from reliability.conftest import DeviceDir, Figures, Releases, scale

pytestmark = pytest.mark.integration

CLIENTS = 32
DURATION_S = scale(10.0, 60.0)
WINDOW_S = scale((3.0, 10.0), (10.0, 60.0))
MAX_RSS_GROWTH = 0.10


def _bodies(releases: Releases, holdout: np.ndarray) -> list[tuple[bytes, dict[str, str], np.ndarray]]:
    """64 ready-made requests (body, headers, expected output)."""
    out: list[tuple[bytes, dict[str, str], np.ndarray]] = []
    bundle = releases.bundle(1)
    for i in range(64):
        n = 1 + i % 4
        x = holdout[(i * 7) % (len(holdout) - 4) :][:n]
        expected = releases.outputs(bundle, x)
        if i % 2:
            body = orjson.dumps({"inputs": [{"name": "input_0", "datatype": "FP32", "shape": [n, 30],
                                             "data": x.ravel().tolist()}]})
            out.append((body, {}, expected))
        else:
            raw = np.ascontiguousarray(x, dtype="<f4").tobytes()
            head = orjson.dumps({"inputs": [{"name": "input_0", "datatype": "FP32", "shape": [n, 30],
                                             "parameters": {"binary_data_size": len(raw)}}],
                                 "outputs": [{"name": "output_0", "parameters": {"binary_data": True}}]})
            out.append((head + raw, {"Inference-Header-Content-Length": str(len(head))}, expected))
    return out


def _output(resp: http.client.HTTPResponse, body: bytes) -> np.ndarray:
    n = resp.getheader("Inference-Header-Content-Length")
    head = orjson.loads(body if n is None else body[: int(n)])
    out = head["outputs"][0]
    if n is None:
        return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
    return np.frombuffer(body, dtype="<f4", offset=int(n)).reshape(out["shape"])


class Clients(ClientThreads):
    """``CLIENTS`` threads, each on its own keep-alive connection, until stopped."""

    def __init__(self, port: int, bodies: list[tuple[bytes, dict[str, str], np.ndarray]]) -> None:
        super().__init__(CLIENTS, "soak")
        self.port = port
        self.bodies = bodies
        self.ok = 0
        self.unavailable = 0
        self.errors: list[str] = []
        self.latencies_ms: list[float] = []

    def _run(self, i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        k = i
        ok = unavailable = 0
        lat: list[float] = []
        while not self.stop.is_set():
            body, headers, expected = self.bodies[k % len(self.bodies)]
            k += 1
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v2/models/fraud/infer", body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                with self.lock:
                    self.errors.append(f"client {i}: {exc!r}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                continue
            lat.append((time.perf_counter() - t0) * 1000)
            if resp.status == 503:
                unavailable += 1
            elif resp.status != 200:
                with self.lock:
                    self.errors.append(f"client {i}: {resp.status} {data[:200]!r}")
            elif not np.allclose(_output(resp, data), expected, rtol=1e-6, atol=1e-7):
                with self.lock:
                    self.errors.append(f"client {i}: wrong outputs")
            else:
                ok += 1
        conn.close()
        with self.lock:
            self.ok += ok
            self.unavailable += unavailable
            self.latencies_ms += lat


def _sample_rss(rss: Callable[[], int], until: threading.Event, out: list[tuple[float, int]], t0: float) -> None:
    while not until.wait(0.25):
        out.append((time.monotonic() - t0, rss()))


def test_32_keepalive_clients_without_errors_or_memory_growth(
    make_device: Callable[..., DeviceDir], releases: Releases, holdout_x: np.ndarray, figures: Figures
) -> None:
    dev = make_device()
    dev.write_config()
    daemon = dev.start()
    bodies = _bodies(releases, holdout_x)
    samples: list[tuple[float, int]] = []
    done = threading.Event()
    t0 = time.monotonic()
    sampler = threading.Thread(target=_sample_rss, args=(daemon.rss_bytes, done, samples, t0), name="rss")
    with Clients(daemon.port, bodies) as clients:
        sampler.start()
        time.sleep(DURATION_S)
    elapsed = time.monotonic() - t0
    done.set()
    sampler.join()
    samples.append((time.monotonic() - t0, daemon.rss_bytes()))  # the end, however starved the sampler was
    assert daemon.alive, daemon.log()
    assert clients.errors == [], clients.errors[:10]
    assert clients.ok > 0
    start_s, end_s = WINDOW_S
    # Windows by sample, not by clock: the first samples from start_s on, and the last ones.
    first = [r for t, r in samples if t >= start_s][:4]
    last = [r for _, r in samples[-4:]]
    rss_start, rss_end = statistics.median(first), max(last)
    growth = rss_end / rss_start - 1
    lat = sorted(clients.latencies_ms)
    figures.add(
        clients=CLIENTS, seconds=round(elapsed, 1), answered_200=clients.ok, answered_503=clients.unavailable,
        errors=len(clients.errors), req_per_s=round((clients.ok + clients.unavailable) / elapsed),
        p50_ms=round(lat[len(lat) // 2], 2), p99_ms=round(lat[int(len(lat) * 0.99)], 2),
        rss_window_s=f"{start_s:g}-{end_s:g}", rss_start_mib=round(rss_start / 2**20, 1),
        rss_end_mib=round(rss_end / 2**20, 1), rss_growth_pct=round(100 * growth, 2),
        rss_peak_mib=round(max(r for _, r in samples) / 2**20, 1),
    )
    assert daemon.tracebacks() == [], daemon.log()[-3000:]
    assert growth < MAX_RSS_GROWTH, f"RSS grew {100 * growth:.1f} % from {start_s:g} s to {end_s:g} s: {samples}"
