"""The console as a real process (``edge-runtime fleet console``) and headless Chromium to look at it.

Chromium comes from Debian (``scripts/system-deps.sh`` installs it). Without it the browser tests
are skipped with the reason, unless ``EDGE_REQUIRE_BROWSER`` is set (CI sets it): then they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.conftest import FLEET
from harness.daemon import EDGE
from harness.http import request
from harness.wait import wait_until

REPO = Path(__file__).resolve().parents[3]
SCREENSHOT_DIR = REPO / "docs" / "console"
BROWSER_TIMEOUT_S = 180


class ConsoleProcess:
    """``edge-runtime fleet console`` on a free port; its first stdout line names the address."""

    def __init__(self, url: str, db: Path, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [str(EDGE), "fleet", "console", "--fleet", FLEET, "--broker", url, "--db", str(db), "--port", "0", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, name="console-stdout", daemon=True)
        self._reader.start()
        line = wait_until(lambda: self.lines[0] if self.lines else self._dead(), "the console's address line")
        self.base = line.split(": ", 1)[1].split("/ ", 1)[0]
        self.port = int(self.base.rsplit(":", 1)[1])

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def _dead(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the console exited with {self.proc.returncode}: {self.proc.stderr.read() if self.proc.stderr else ''}")
        return False

    def get_json(self, path: str) -> Any:
        """GET ``path`` and decode the JSON answer."""
        status, body = request(self.port, "GET", path)
        assert status == 200, (path, status, body[:300])
        return json.loads(body)

    def stop(self) -> int:
        """SIGTERM, and the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return code


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Any]:
    """``console(url, *extra)``: a started console on ``tmp_path/console.sqlite``; stopped after the test."""
    started: list[ConsoleProcess] = []

    def start(url: str, *extra: str) -> ConsoleProcess:
        c = ConsoleProcess(url, tmp_path / "console.sqlite", *extra)
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()


def chromium_path() -> str | None:
    """The Debian ``chromium`` binary, if installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """Headless Chromium runs: the DOM after the page's scripts ran, or a screenshot."""

    def __init__(self, binary: str, profile: Path) -> None:
        self.binary = binary
        self.profile = profile

    def command(self, url: str, budget_ms: int, *extra: str) -> list[str]:
        """A headless run that lets the page's scripts run ``budget_ms`` of virtual time (network waits stop that clock)."""
        return [
            self.binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
            f"--user-data-dir={self.profile}", f"--virtual-time-budget={budget_ms}", *extra, url,
        ]

    def dom(self, url: str, budget_ms: int = 1000) -> str:
        """The serialised DOM of ``url`` once ``budget_ms`` of virtual time has passed."""
        out = subprocess.run(self.command(url, budget_ms, "--dump-dom"), capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S, check=False)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout

    def start_dom(self, url: str, budget_ms: int = 1000) -> subprocess.Popen[str]:
        """:meth:`dom` in the background (``communicate()`` for the DOM)."""
        return subprocess.Popen(self.command(url, budget_ms, "--dump-dom"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def screenshot(self, url: str, path: Path, size: str = "1280,1000") -> Path:
        """A PNG of ``url`` (a ``?live=0`` page: nothing keeps the network busy)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(
            self.command(url, 1000, f"--screenshot={path}", f"--window-size={size}", "--hide-scrollbars"),
            capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S, check=False,
        )
        assert out.returncode == 0 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", out.stderr[-2000:]
        return path


@pytest.fixture
def browser(tmp_path: Path) -> Browser:
    """Headless Chromium; skipped when it is missing, unless EDGE_REQUIRE_BROWSER is set."""
    binary = chromium_path()
    if binary is None:
        if os.environ.get("EDGE_REQUIRE_BROWSER"):
            pytest.fail("EDGE_REQUIRE_BROWSER is set but chromium is not installed (scripts/system-deps.sh installs it)")
        pytest.skip("chromium is not installed (apt-get install chromium, or scripts/system-deps.sh); set EDGE_REQUIRE_BROWSER to fail instead")
    return Browser(binary, tmp_path / "chromium-profile")


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """Where screenshots go: docs/console/ with EDGE_UPDATE_SCREENSHOTS=1, else the test's directory."""
    return SCREENSHOT_DIR if os.environ.get("EDGE_UPDATE_SCREENSHOTS") == "1" else tmp_path / "screenshots"
