"""A kernel out-of-memory kill of onnx2tf is reported as memory, whichever counter saw it: the cgroup's
``memory.events`` (a limited service) or the whole kernel's ``/proc/vmstat`` (a build host without a
memory limit, where the global OOM killer acts; before, that was "something outside stopped it")."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

import converter.onnx2tf_runner as runner
from converter.exceptions import Onnx2tfCrash


def test_vmstat_counter_is_read(tmp_path: Path) -> None:
    vmstat = tmp_path / "vmstat"
    vmstat.write_text("nr_free_pages 1\noom_kill 7\npgfault 3\n", encoding="utf-8")
    assert runner.kernel_oom_kills(vmstat) == 7
    assert runner.kernel_oom_kills(tmp_path / "absent") is None


@pytest.mark.parametrize("which", ["kernel", "cgroup"])
def test_a_sigkill_during_a_rise_of_either_counter_is_memory(which: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    counts = {"kernel": 40, "cgroup": 2}

    def fake_run(cmd: Any, **kw: Any) -> subprocess.CompletedProcess[bytes]:
        counts[which] += 1  # the kill happens while onnx2tf runs
        return subprocess.CompletedProcess(cmd, -9)

    monkeypatch.setattr(runner, "kernel_oom_kills", lambda: counts["kernel"])
    monkeypatch.setattr(runner, "cgroup_oom_kills", lambda: counts["cgroup"] if which == "cgroup" else None)
    monkeypatch.setattr(runner.subprocess, "run", fake_run)
    job = runner.Onnx2tfJob(tmp_path / "model.onnx")
    with pytest.raises(Onnx2tfCrash, match="out-of-memory killer") as exc:
        runner.run_onnx2tf(job, tmp_path, tmp_path / "log")
    assert exc.value.signal_name == "SIGKILL"


def test_a_sigkill_with_no_rise_is_not_called_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "kernel_oom_kills", lambda: 40)
    monkeypatch.setattr(runner, "cgroup_oom_kills", lambda: None)
    monkeypatch.setattr(runner.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, -9))
    with pytest.raises(Onnx2tfCrash, match="something outside"):
        runner.run_onnx2tf(runner.Onnx2tfJob(tmp_path / "model.onnx"), tmp_path, tmp_path / "log")


def test_a_timeout_is_its_own_error_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline decides by this type, never by message text, that a batch of 1 cures nothing."""
    from converter.exceptions import Onnx2tfTimeout

    def too_slow(cmd: Any, **kw: Any) -> subprocess.CompletedProcess[bytes]:
        raise subprocess.TimeoutExpired(cmd, 1.0)

    monkeypatch.setattr(runner.subprocess, "run", too_slow)
    with pytest.raises(Onnx2tfTimeout, match="did not finish within 1 s"):
        runner.run_onnx2tf(runner.Onnx2tfJob(tmp_path / "model.onnx"), tmp_path, tmp_path / "log", timeout_s=1.0)
