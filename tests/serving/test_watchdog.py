"""The systemd watchdog against a real daemon: pings at half of WatchdogSec while the serving
loop answers, and none while the loop is wedged.

The loop is wedged the way a real daemon gets stuck: a model forced to run on the event loop
(``execution = "inline"``) is given a request that takes seconds to compute. No test hook.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from harness.daemon import Daemon
from harness.wait import wait_until
from serving.support import Env, pack_onnx, request

WATCHDOG_USEC = 400_000  # pings expected every 0.2 s
WEDGE_S = 3.0  # how long the wedging request should keep the loop busy (many ping slots)
MAX_WEDGE_ROWS = 10_000  # its JSON body stays under [server] max_request_bytes (64 MiB)


class Pings:
    """Receives sd_notify datagrams on a real NOTIFY_SOCKET and timestamps them."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notify-receiver", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def watchdog_times(self, start: float = 0.0, end: float = float("inf")) -> list[float]:
        return [t for t, m in self.messages if "WATCHDOG=1" in m.split("\n") and start <= t <= end]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def wedge_rows(bundle: Path, keys: Any) -> int:
    """Rows for one inline request that keeps this machine's CPU busy for about WEDGE_S seconds
    (measured here, so a fast CPU gets a bigger request), within the daemon's request size limit."""
    from edge_runtime.bundle.reader import BundleLimits, open_bundle
    from edge_runtime.inference.backend import load_backend

    with open_bundle(bundle, keys.root, BundleLimits()) as b:
        backend = load_backend(b.manifest, b.read_artifact(b.manifest.model_file))
    sample = np.zeros((200, 256), np.float32)
    backend.run([sample])
    t0 = time.perf_counter()
    backend.run([sample])
    per_row_s = max((time.perf_counter() - t0) / len(sample), 1e-7)
    backend.close()
    return int(min(MAX_WEDGE_ROWS, max(1000, WEDGE_S / per_row_s)))


def test_watchdog_pings_while_the_loop_answers_and_withholds_them_while_it_is_wedged(
    env: Env, tmp_path: Path, keys: Any, onnx_models: dict[str, Path]
) -> None:
    slow = pack_onnx(onnx_models["slow"], "slow", 1, keys, tmp_path / "slow.bundle",
                     [np.zeros((1, 256), np.float32)])
    env.install(slow)
    config = tmp_path / "wd.toml"
    # 8000 rows x 256 values in one JSON body: above the default max_json_values (1 Mi).
    config.write_text(env.config_text('[models.slow]\nexecution = "inline"\nmax_batch_size = 0\n',
                                      server_toml="max_json_values = 4194304"), encoding="utf-8")
    pings = Pings(tmp_path / "notify.sock")
    d = Daemon(config, env_extra={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": str(WATCHDOG_USEC)})
    try:
        wait_until(lambda: any("READY=1" in m for _, m in pings.messages), "READY=1")
        assert d.wait_line("systemd watchdog started, ping every 0.200 s") is not None, d.log()  # half WATCHDOG_USEC
        wait_until(lambda: len(pings.watchdog_times()) >= 3, "pings while the loop answers")
        assert request(d.port, "GET", "/v2/health/ready")[0] == 200

        # Wedge the serving loop: one inline request of many rows through a 120-layer MatMul chain.
        rows = np.random.default_rng(0).standard_normal((wedge_rows(slow, keys), 256)).astype(np.float32)
        body = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(rows.shape),
                                         "data": rows.reshape(-1).tolist()}]})
        before = len(d.lines)
        status, _ = request(d.port, "POST", "/v2/models/slow/infer", body)
        assert status == 200
        # The daemon's own events say when the loop was wedged and when it answered again.
        failed = d.wait_line("serving loop failed its health check", start=before)
        assert failed is not None, "the watchdog never noticed the wedged loop:\n" + d.log()
        resumed = d.wait_line("serving loop healthy again", start=failed)
        assert resumed is not None, "pings never resumed:\n" + d.log()
        during = pings.watchdog_times(d.line_times[failed], d.line_times[resumed])
        # At most the ping that resumed them (sent just before its log line), and one sent before
        # the failed check that this process happened to read late.
        assert len(during) <= 2, f"{len(during)} pings while the loop was wedged"
        wait_until(lambda: len(pings.watchdog_times(d.line_times[resumed])) >= 2, "pings after the wedge")
    finally:
        d.stop()
        pings.close()
