"""Benchmark ``edge-runtime score`` on the real-model corpus: rows per second against onnxruntime
on the same file.

Per model of tests/corpus/models.py (``--models ID,ID``; default: every model whose data are
rows, not whole calls of a stateful model):

* the model is converted as bench/corpus.py converts it (``edge-convert --quantize fp16
  --fallback-onnx`` with the model's data, offline) and installed in a store (signature, hashes,
  golden self-test);
* one ``.npz`` input file is written: the model's data rows repeated to about
  ``--target-mb`` MiB (at least the corpus's own rows, at most ``--max-rows``);
* **score**: the device's scoring loop (``edge_runtime.scoring.score_file``: read in batches of
  ``--batch-size``, run on the device backend, write an ``.npz``), one interpreter thread;
* **onnxruntime**: the same file read by the same reader, the original ONNX model run on the same
  batches by onnxruntime with one thread (rows one by one where the ONNX model has a fixed batch
  of 1, as ``score`` does), the outputs written by the same writer (an ``.npz``, fsynced);
* both interleaved over ``--rounds`` rounds; the median wall time of each gives rows/s;
* ``edge-runtime score`` as a user runs it (a new process: start-up, store, self-test, scoring,
  output) once, for the end-to-end rows/s.

    .venv/bin/python bench/score.py [--models tab-logreg,magika] [--rounds 3] [--out FILE]

Writes bench/results/score.md (with ``--models``, only the models run).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from converter.tflite_run import OnnxRunner  # noqa: E402
from edge_runtime.cli.common import load_root_file  # noqa: E402
from edge_runtime.inference.backend import load_backend  # noqa: E402
from edge_runtime.inference.selftest import run_selftest  # noqa: E402
from edge_runtime.scoring import OutputWriter, read_batches, score_file  # noqa: E402
from edge_runtime.store.store import ModelStore  # noqa: E402
from tests.corpus.models import CORPUS, CorpusModel, fetch, make_inputs, write_data  # noqa: E402
from tests.corpus.tabular import as_tensor  # noqa: E402

RESULTS = REPO / "bench" / "results" / "score.md"
BIN = Path(sys.executable).parent
TIMEOUT_S = 1800


def convert(m: CorpusModel, model: Path, data: Path, key: Path, out: Path) -> tuple[Path | None, str]:
    """The bundle bench/corpus.py makes (offline when ``unshare -n`` works), or None and why not."""
    cmd = [str(BIN / "edge-convert"), str(model), "--name", m.id, "--version", "1", "--sign-key", str(key),
           "--quantize", "fp16", "--fallback-onnx", "--validation", str(data), "-o", str(out), *m.convert_args]
    if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0:
        cmd = ["unshare", "-n", *cmd]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False, env=env)
    if proc.returncode != 0:
        tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:] or ["no output"]
        return None, tail[0][:120]
    return out, ""


def input_file(m: CorpusModel, path: Path, target_mb: float, max_rows: int) -> int:
    """Write the model's rows, repeated to about ``target_mb`` MiB, as ``.npz``; the row count."""
    data = make_inputs(m)[0]
    row_bytes = sum(a[:1].nbytes for a in data.values())
    have = next(iter(data.values())).shape[0]
    rows = max(have, min(max_rows, int(target_mb * 1024 * 1024 // max(row_bytes, 1))))
    reps = -(-rows // have)
    np.savez(path, **{n: np.concatenate([a] * reps)[:rows] for n, a in data.items()})  # type: ignore[arg-type]
    return rows


def ort_score(ref: OnnxRunner, backend: Any, input_path: Path, output_path: Path, batch: int, static: bool) -> int:
    """The scoring loop of ``score`` with onnxruntime as the engine: the same reader and the same
    output writer (``.npz``, written durably: fsync of the file and its directory)."""
    batches, _ = read_batches(input_path, backend.inputs, batch)
    writer = OutputWriter(output_path, backend.outputs)
    done = 0
    ok = False
    try:
        for arrays in batches:
            calls = [[a[i : i + 1] for a in arrays] for i in range(arrays[0].shape[0])] if static else [arrays]
            parts = [[as_tensor(v) for v in ref.session.run(ref.out_names, dict(zip(ref.in_names, call)))]
                     for call in calls]
            writer.write([np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))])
            done += arrays[0].shape[0]
        ok = True
    finally:
        writer.close(success=ok)
    return done


def measure(m: CorpusModel, base: Path, key: Path, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    work = base / m.id
    work.mkdir()
    onnx_path = fetch(m)
    bundle, why = convert(m, onnx_path, write_data(m, work / "data"), key, work / f"{m.id}.bundle")
    if bundle is None:
        return {"model": m, "error": "convert failed: " + why}
    store = ModelStore(work / "store", load_root_file(root), None)
    store.install(bundle)
    store.activate(m.id, 1, selftest=lambda r: run_selftest(load_backend(r.manifest, r.model), r.manifest,
                                                           r.golden_bytes) and None)
    resolved = store.resolve(m.id)
    backend = load_backend(resolved.manifest, resolved.model, 1)
    ref = OnnxRunner(onnx_path, num_threads=1)
    static = any(len(i.shape) > 0 and i.shape[0] == 1 for i in ref.session.get_inputs())
    data = work / "input.npz"
    rows = input_file(m, data, args.target_mb, args.max_rows)
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        n = score_file(backend, data, work / "ours.npz", args.batch_size)
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        k = ort_score(ref, backend, data, work / "ort.npz", args.batch_size, static)
        theirs.append(time.perf_counter() - t0)
        assert n == k == rows, (n, k, rows)
    env = dict(os.environ, XDG_CACHE_HOME=str(work / "cache"))
    cli = [str(BIN / "edge-runtime"), "score", "--model", m.id, "--store", str(work / "store"), "--root", str(root),
           str(data), "-o", str(work / "cli.npz")]
    t0 = time.perf_counter()
    proc = subprocess.run(cli, capture_output=True, text=True, check=False, env=env)
    cli_s = time.perf_counter() - t0
    return {"model": m, "rows": rows, "format": resolved.manifest.format, "ours_s": statistics.median(ours),
            "ort_s": statistics.median(theirs), "cli_s": cli_s if proc.returncode == 0 else None,
            "cli_error": "" if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["?"])[-1][:100],
            "row_bytes": data.stat().st_size / rows}


HEAD = ("model", "kind", "runs as", "rows", "bytes / row", "score rows/s", "onnxruntime rows/s", "score / onnxruntime",
        "`edge-runtime score` end to end rows/s")


def cells(r: dict[str, Any]) -> list[str]:
    m: CorpusModel = r["model"]
    if "error" in r:
        return [m.id, m.kind, "-", "-", "-", "-", "-", "-", r["error"]]
    ours, ort = r["rows"] / r["ours_s"], r["rows"] / r["ort_s"]
    cli = f"{r['rows'] / r['cli_s']:,.0f}" if r["cli_s"] else "failed: " + r["cli_error"]
    return [m.id, m.kind, "TFLite" if r["format"] == "tflite" else "ONNX", f"{r['rows']:,}", f"{r['row_bytes']:,.0f}",
            f"{ours:,.0f}", f"{ort:,.0f}", f"{ours / ort:.2f}", cli]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", help="comma-separated corpus ids (default: every model whose data are rows)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=256, help="as `edge-runtime score --batch-size` (default 256)")
    p.add_argument("--target-mb", type=float, default=16.0, help="size of the input file to aim for")
    p.add_argument("--max-rows", type=int, default=100_000)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    wanted = [s for s in (args.models or "").split(",") if s]
    unknown = [w for w in wanted if w not in {m.id for m in CORPUS}]
    if unknown:
        p.error(f"unknown corpus ids {unknown}; known: {[m.id for m in CORPUS]}")
    models = [m for m in CORPUS if (m.id in wanted if wanted else not m.calls)]
    skipped = [m.id for m in models if m.calls]
    models = [m for m in models if not m.calls]  # a stateful model's data are whole calls, not rows to score
    start = time.monotonic()
    load0 = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edge-score-bench-") as tmp:
        base = Path(tmp)
        subprocess.run([str(BIN / "edge-runtime"), "keys", "generate", "--out", str(base / "keys")], check=True,
                       capture_output=True)
        for m in models:
            print(f"== {m.id}", flush=True)
            r = measure(m, base, base / "keys" / "signing.key", base / "keys" / "root.json", args)
            print("   " + " | ".join(cells(r)[2:]), flush=True)
            rows.append(r)
    lines = [
        "## `edge-runtime score` against onnxruntime (bench/score.py)",
        "",
        f"{_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; load average {load0:.2f} before, {os.getloadavg()[0]:.2f} after; "
        f"{time.monotonic() - start:.0f} s. Each model converted as bench/corpus.py does (`--quantize fp16 "
        "--fallback-onnx`); one input .npz of its data rows repeated (bytes / row times rows); score: the device's "
        f"scoring loop (`score_file`, batches of {args.batch_size}, output .npz) on the installed bundle; onnxruntime: "
        "the same reader, batches and output writer, the original ONNX model; one thread each, median of "
        f"{args.rounds} interleaved rounds. End to end: one `edge-runtime score` process (start-up, store, self-test, "
        "scoring, output)." + (f" Not scored (data are calls of a stateful model): {', '.join(skipped)}." if skipped else ""),
        "",
        "| " + " | ".join(HEAD) + " |",
        "|" + "---|" * len(HEAD),
        *("| " + " | ".join(cells(r)) + " |" for r in rows),
        "",
    ]
    text = "\n".join(lines)
    print("\n" + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
