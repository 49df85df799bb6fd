"""The test-only worker hold (edge_runtime/serving/hooks.py) is off unless asked for, and off under systemd."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from edge_runtime.serving.hooks import HOLD_WORKERS_ENV, hold_workers_file, wait_while_held


def test_the_hold_is_off_without_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(HOLD_WORKERS_ENV, raising=False)
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    assert hold_workers_file() is None


def test_the_hold_is_ignored_under_systemd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(HOLD_WORKERS_ENV, str(tmp_path / "hold"))
    monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef")
    assert hold_workers_file() is None


def test_a_worker_waits_while_the_file_exists(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    hold = tmp_path / "hold"
    hold.touch()
    monkeypatch.setenv(HOLD_WORKERS_ENV, str(hold))
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    assert hold_workers_file() == hold
    released = threading.Event()
    worker = threading.Thread(target=lambda: (wait_while_held(hold), released.set()), name="held-worker")
    worker.start()
    assert not released.wait(0.2), "the worker went on while the hold file existed"
    hold.unlink()
    worker.join()
    assert released.is_set()
