"""The daemon under test: ``edge-runtime serve`` in a subprocess, its stderr collected line by line.

Shared by the serving, update and reliability suites. The environment is cleaned of
``EDGE_*`` and systemd variables so that the developer's shell cannot change what a test
runs; a test passes what it wants with ``env_extra``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from harness.http import request
from harness.wait import DEFAULT_TIMEOUT_S, wait_until

EDGE = Path(sys.executable).parent / "edge-runtime"
LISTENING = "listening on http://"


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without ``EDGE_*``, ``NOTIFY_SOCKET`` and ``WATCHDOG_*``, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_", "NOTIFY_SOCKET", "WATCHDOG_"))}
    env.update(extra or {})
    return env


def write_serve_config(path: Path, store: Path, factory: Path, root: Path) -> Path:
    """A daemon config serving ``store`` (``factory`` beside it) under ``root``, on a free port."""
    path.write_text(f'[store]\npath = "{store}"\nfactory = "{factory}"\n[trust]\nroot = "{root}"\n'
                    "[server]\nport = 0\n", encoding="utf-8")
    return path


class Daemon:
    """``edge-runtime serve --config CONFIG [extra_args]`` (or ``command``) in a subprocess."""

    def __init__(
        self, config: Path, extra_args: Sequence[str] = (), env_extra: dict[str, str] | None = None,
        command: Sequence[str] | None = None,
    ) -> None:
        self.config = config
        argv = list(command) if command is not None else [str(EDGE), "serve", "--config", str(config), *extra_args]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=clean_env(env_extra)
        )
        self.lines: list[str] = []
        self.line_times: list[float] = []  # time.monotonic() when each line was read
        self.port = 0
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="daemon-stderr", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.line_times.append(time.monotonic())
                self.lines.append(line.rstrip("\n"))
                if LISTENING in line and not self.port:
                    self.port = int(line.rsplit(":", 1)[1])
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def url(self) -> str:
        """``127.0.0.1:PORT`` (what tritonclient takes)."""
        return f"127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        """The process is still running."""
        return self.proc.poll() is None

    def wait_line(self, needle: str, timeout: float = DEFAULT_TIMEOUT_S, start: int = 0) -> int | None:
        """Index of the first log line from ``start`` on containing ``needle``; None if the
        process exits (or ``timeout`` passes) first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(start, len(self.lines)):
                    if needle in self.lines[i]:
                        return i
                start = max(start, len(self.lines))
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    return None
                self._cond.wait(min(left, 0.1))

    def wait_ready(self, timeout: float = DEFAULT_TIMEOUT_S) -> float:
        """Block until ``/v2/health/ready`` answers 200; returns the seconds since the process started
        (a figure to report, never to assert on). Fails with the daemon's log if it exits first."""

        def ready() -> bool:
            if self.proc.poll() is not None:
                self._reader.join(5)
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n" + self.log())
            if not self.port:
                return False
            try:
                return request(self.port, "GET", "/v2/health/ready")[0] == 200
            except OSError:
                return False

        try:
            wait_until(ready, "the daemon to answer /v2/health/ready", timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n" + self.log()) from None
        return time.monotonic() - self.started

    def signal(self, sig: int) -> None:
        """Send a signal to the daemon."""
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(60)
        self._reader.join(5)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait (SIGKILL after ``timeout`` s); returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        if self.proc.stderr is not None and not self._reader.is_alive():
            self.proc.stderr.close()
        return self.proc.returncode

    def rss_bytes(self) -> int:
        """Resident set size of the daemon now."""
        import psutil

        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def log(self) -> str:
        """Everything the daemon wrote to stderr so far."""
        with self._cond:
            return "\n".join(self.lines)

    def tracebacks(self) -> list[str]:
        """Log lines that start a Python traceback (none is expected, ever)."""
        with self._cond:
            return [line for line in self.lines if "Traceback (most recent call last)" in line]
