"""``edge-runtime fleet console`` refuses what it cannot act on, with exit code 2 and a reason."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from fleet.conftest import FLEET, cli

pytestmark = pytest.mark.integration


def test_a_failure_limit_outside_0_to_100_is_a_usage_error(tmp_path: Path) -> None:
    out = cli("fleet", "console", "--fleet", FLEET, "--db", tmp_path / "c.sqlite", "--max-failures", "150")
    assert out.returncode == 2 and "--max-failures" in out.stderr, out.stderr


def test_a_password_on_the_command_line_is_refused(tmp_path: Path) -> None:
    out = cli("fleet", "console", "--fleet", FLEET, "--db", tmp_path / "c.sqlite", "--broker", "mqtt://u:secret@127.0.0.1:1")
    assert out.returncode == 2 and "secret" not in out.stderr and "--password-file" in out.stderr, out.stderr


def test_a_port_in_use_is_reported_and_the_record_is_left_usable(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = cli("fleet", "console", "--fleet", FLEET, "--db", tmp_path / "c.sqlite", "--port", port)
    assert out.returncode == 2 and f"cannot serve on 127.0.0.1:{port}" in out.stderr, out.stderr
    assert (tmp_path / "c.sqlite").exists()
