"""How a worker runs a merged batch: stacked (cheap models) or request by request (image models)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from edge_runtime.exceptions import InferenceError
from edge_runtime.serving.batcher import BatchPolicy
from edge_runtime.serving.hooks import HOLD_WORKERS_ENV
from edge_runtime.serving.metrics import VersionStats
from edge_runtime.serving.workers import ThreadedExecutor


class FakeBackend:
    """Doubles its input; fails on a row whose first value is negative; records each call's shape."""

    def __init__(self) -> None:
        self.inputs = self.outputs = [SimpleNamespace(quantization=None)]
        self.shapes: list[tuple[int, ...]] = []

    def _invoke(self, arrays: Any) -> list[np.ndarray]:
        self.shapes.append(arrays[0].shape)
        if (arrays[0][:, 0] < 0).any():
            raise InferenceError("negative input")
        return [arrays[0] * 2]

    run = _invoke

    def close(self) -> None:
        pass


def run_held_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stack: bool, rows: list[np.ndarray]) -> tuple[
        FakeBackend, list[Any], VersionStats]:
    """Queue ``rows`` while the worker is held, release it (one merged batch), return the outcomes."""
    hold = tmp_path / "hold"
    hold.touch()
    monkeypatch.setenv(HOLD_WORKERS_ENV, str(hold))
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    backend = FakeBackend()
    stats = VersionStats("m", 1)

    async def main() -> list[Any]:
        ex = ThreadedExecutor([backend], BatchPolicy(max_batch_size=8), stats, asyncio.get_running_loop(), "t",  # type: ignore[list-item]
                              stack=stack)
        futs = [ex.submit([r], 1) for r in rows]
        hold.unlink()
        out = await asyncio.gather(*futs, return_exceptions=True)
        ex.retire()
        return out

    return backend, asyncio.run(main()), stats


def test_a_cheap_model_runs_a_merged_batch_as_one_stacked_invoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [np.full((1, 3), i, np.float32) for i in range(4)]
    backend, out, stats = run_held_batch(tmp_path, monkeypatch, True, rows)
    assert backend.shapes == [(4, 3)] and stats.execution_count == 1
    assert [o[0][0].tolist() for o in out] == [[[2 * i] * 3] for i in range(4)]


def test_an_image_model_runs_a_merged_batch_request_by_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [np.full((1, 3), i, np.float32) for i in range(4)]
    rows[2] = np.full((1, 3), -1, np.float32)
    backend, out, stats = run_held_batch(tmp_path, monkeypatch, False, rows)
    assert backend.shapes == [(1, 3)] * 4  # never concatenated, never resized
    assert isinstance(out[2], InferenceError)  # its own failure only
    assert [out[i][0][0].tolist() for i in (0, 1, 3)] == [[[0.0] * 3], [[2.0] * 3], [[6.0] * 3]]
    assert stats.execution_count == 3 and all(o[3] == 1 for k, o in enumerate(out) if k != 2)

