"""XNNPACK threads per interpreter: the bench CNN (3x96x96) with 1, 2 and 4 threads, side by side.

Each configuration is one interpreter made by the runtime's own ``make_interpreter`` (what
``[models.NAME] threads = N`` sets). Rounds are interleaved (every configuration once per
round, in a rotating order) so that other work on the machine hits them alike; each round
times ``runs`` calls of set_tensor + invoke + get_tensor after a warm-up, and the table shows
the median over all calls and the ratio to one thread, at batch 1 and batch 8.

Usage: ``python bench/threads.py [--rounds N] [--runs N]``; writes bench/results/threads.md.
The CNN is built and converted once into ``$XDG_CACHE_HOME/edge-runtime-bench`` (bench/serve.py's).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "servers"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_models import cnn_models  # noqa: E402

from edge_runtime.inference.litert import make_interpreter  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "threads.md"
THREADS = (1, 2, 4)
BATCHES = (1, 8)


def timed_calls(interp: object, x: np.ndarray, runs: int) -> list[float]:
    """Seconds per set_tensor + invoke + get_tensor, ``runs`` times after 10 warm-up calls."""
    it: object = interp
    i = it.get_input_details()[0]["index"]  # type: ignore[attr-defined]
    o = it.get_output_details()[0]["index"]  # type: ignore[attr-defined]
    out = []
    for k in range(runs + 10):
        t0 = time.perf_counter()
        it.set_tensor(i, x)  # type: ignore[attr-defined]
        it.invoke()  # type: ignore[attr-defined]
        it.get_tensor(o)  # type: ignore[attr-defined]
        if k >= 10:
            out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=100, help="timed calls per configuration and round")
    args = ap.parse_args(argv)
    _, tflite = cnn_models()
    rng = np.random.default_rng(0)
    interps = {}
    for batch in BATCHES:
        for n in THREADS:
            interp = make_interpreter(tflite, n)
            inp = interp.get_input_details()[0]
            shape = (batch, *[int(d) for d in inp["shape"][1:]])
            if batch != 1:
                interp.resize_tensor_input(inp["index"], shape)
                interp.allocate_tensors()
            interps[(batch, n)] = (interp, rng.standard_normal(shape).astype(np.float32))
    times: dict[tuple[int, int], list[float]] = {k: [] for k in interps}
    keys = list(interps)
    load_before = os.getloadavg()[0]
    t_start = time.perf_counter()
    for r in range(args.rounds):
        order = keys[r % len(keys):] + keys[: r % len(keys)]
        for key in order:
            interp, x = interps[key]
            times[key] += timed_calls(interp, x, args.runs)
    elapsed = time.perf_counter() - t_start
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    import ai_edge_litert

    lines = [
        "# XNNPACK threads per interpreter (bench/threads.py)",
        "",
        f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, ai-edge-litert "
        f"{getattr(ai_edge_litert, '__version__', '?')}. The bench CNN (3x96x96 float32, bench/servers/bench_models.py); "
        f"{args.rounds} interleaved rounds of {args.runs} calls per configuration; medians of set_tensor + invoke + "
        f"get_tensor. Load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; {elapsed:.0f} s.",
        "",
        "| batch | threads | median ms | per image ms | speed-up vs 1 thread |",
        "|---:|---:|---:|---:|---:|",
    ]
    for batch in BATCHES:
        for n in THREADS:
            m = med[(batch, n)]
            lines.append(f"| {batch} | {n} | {m:.3f} | {m / batch:.3f} | {med[(batch, 1)] / m:.2f}x |")
    lines += [
        "",
        "More threads than free cores only adds contention: on a 2-core machine shared with other work, 4 threads "
        "cannot beat 2. On a Pi 4/5 (4 cores) set `threads` per model to what is left after the other interpreters "
        "(`instances`) and the HTTP loop; `instances` x `threads` should not exceed the cores.",
    ]
    text = "\n".join(lines) + "\n"
    RESULTS.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
