"""The systemd watchdog against a real daemon: pings at half of WatchdogSec while the serving
loop answers, and none while the loop is wedged.

The loop is wedged the way a real daemon gets stuck: a model forced to run on the event loop
(``execution = "inline"``) is given a request that takes seconds to compute. No test hook.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from serving.support import DaemonProcess, Env, pack_onnx, request, wait_for

WATCHDOG_USEC = 400_000  # pings expected every 0.2 s


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


def test_watchdog_pings_at_half_the_interval_and_stop_while_the_loop_is_wedged(
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
    d = DaemonProcess(config, env_extra={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
                                         "WATCHDOG_USEC": str(WATCHDOG_USEC)})
    try:
        wait_for(lambda: any("READY=1" in m for _, m in pings.messages), timeout=60, what="READY=1")
        wait_for(lambda: d.port != 0, what="the listening line")
        assert request(d.port, "GET", "/v2/health/ready")[0] == 200
        wait_for(lambda: len(pings.watchdog_times()) >= 8, timeout=30, what="eight watchdog pings")
        times = pings.watchdog_times()
        gaps = [b - a for a, b in zip(times, times[1:])]
        interval = WATCHDOG_USEC / 2 / 1e6
        assert 0.5 * interval <= statistics.median(gaps) <= 2.0 * interval, gaps

        # Wedge the serving loop: one inline request of many rows through a 120-layer MatMul chain.
        rows = np.random.default_rng(0).standard_normal((8000, 256)).astype(np.float32)
        body = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(rows.shape),
                                         "data": rows.reshape(-1).tolist()}]})
        started = time.monotonic()
        status, _ = request(d.port, "POST", "/v2/models/slow/infer", body)
        finished = time.monotonic()
        assert status == 200
        wedged_for = finished - started
        assert wedged_for > 6 * interval, f"the request took only {wedged_for:.2f} s; not a wedge"
        during = pings.watchdog_times(started + 2 * interval, finished - 2 * interval)
        assert during == [], f"{len(during)} pings while the loop was blocked for {wedged_for:.2f} s"
        # Once the loop is free again, the pings come back.
        wait_for(lambda: len(pings.watchdog_times(finished)) >= 2, timeout=10, what="pings after the wedge")
    finally:
        d.stop()
        pings.close()
