"""Benchmark the converter on real third-party models (tests/corpus/models.py): onnx2tf alone
vs ``edge-convert``.

Per model, both offline (``unshare -n`` when available) on the same copy of the model:

* **onnx2tf alone**: ``onnx2tf -i model.onnx -o out`` with its default flags, as a new user
  would run it: converted (a float32 .tflite written) or the last error line;
* **edge-convert** ``--quantize fp16 --variants fp32,dynamic,onnx --fallback-onnx`` with the model's data: TFLite within the
  thresholds, ONNX fallback (announced as such) or failed; bundle size, manifest.json size,
  conversion time; then the bundle is installed in a store (signature, hashes, golden self-test)
  and scores the data through the device backend: max error against onnxruntime on the same
  inputs, and the median latency of one row (one call) against onnxruntime with one thread;
  the device's variant choice (docs/store-and-bundles.md section 2.5) times every variant of
  the bundle on this machine: each one's ms/row, the one it chose (the latency columns are of
  that one), and whether the choice is within the tie margin of the fastest.

Each row says what the model ends as on the device (TFLite or ONNX), and the summary gives the
share of the corpus's ONNX models that end as TFLite, overall, among those with only
default-domain operators and among those with ``ai.onnx.ml`` operators (every default tabular
export: the converter rewrites them into default-domain operators, converter/mlops.py). A tabular
row is also scored with ``edge-runtime models install`` + ``edge-runtime score`` (the CLI) and
its max error covers those answers too.

    .venv/bin/python bench/corpus.py [--only ID,ID] [--skip ID,ID] [--skip-onnx2tf] [--keep-earlier]

Prints the table and writes bench/results/corpus.md (a full run, or with ``--keep-earlier``: the
models not run keep their row of the previous results file, marked as from that run).
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from converter.onnx2tf_runner import onnx2tf_env, onnx2tf_version, read_log  # noqa: E402
from converter.tabular import unconvertible_ops  # noqa: E402
from converter.tflite_run import OnnxRunner, median_latency_ms  # noqa: E402
from edge_runtime.atomic import write_bytes_atomic  # noqa: E402
from edge_runtime.cli.common import load_root_file  # noqa: E402
from edge_runtime.config import InferenceConfig, ModelConfig  # noqa: E402
from edge_runtime.inference.backend import load_backend  # noqa: E402
from edge_runtime.inference.selftest import run_selftest  # noqa: E402
from edge_runtime.inference.variant_choice import Choice  # noqa: E402
from edge_runtime.store.store import ModelStore  # noqa: E402
from edge_runtime.store.variants import select_variant  # noqa: E402
from tests.corpus.models import CORPUS, CorpusModel, fetch, make_inputs, write_data  # noqa: E402
from tests.corpus.tabular import as_tensor  # noqa: E402

RESULTS = REPO / "bench" / "results" / "corpus.md"
BIN = Path(sys.executable).parent
TIMEOUT_S = 1800
VARIANTS = "fp32,dynamic,onnx"  # beside fp16: what the device chooses among


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
           "--quantize", "fp16", "--variants", VARIANTS, "--fallback-onnx", "--validation", str(data), "--json", "-o", str(out),
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
    resolved, choice = select_variant(store, store.resolve(m.id), ModelConfig(num_threads=1), InferenceConfig())
    manifest = resolved.manifest
    backend = load_backend(manifest, resolved.model)
    ref = OnnxRunner(model, num_threads=1)

    def reference(arrays: list[np.ndarray]) -> list[np.ndarray]:  # a ZipMap's dicts as the [N, K] tensor
        return [as_tensor(v) for v in ref.session.run(ref.out_names, dict(zip(ref.in_names, arrays)))]

    names = [s.name for s in manifest.inputs]
    worst = 0.0
    sets = make_inputs(m)
    static = not all(s.has_batch_dim for s in manifest.inputs)
    for inputs in sets:
        arrays = [inputs[n] for n in names]
        calls = [arrays] if m.calls or not static else [[a[i : i + 1] for a in arrays] for i in range(len(arrays[0]))]
        for call in calls:
            for have, want in zip(backend.run(call), reference(call)):
                worst = max(worst, float(np.max(np.abs(have.astype(np.float64) - want.astype(np.float64)))))
    if m.recipe:  # a tabular row is also scored as a user does it: the CLI, on the file of rows
        worst = max(worst, _cli_score_error(m, bundle, root_path, work, names, [s.name for s in manifest.outputs],
                                            reference))
    first = [sets[0][n] for n in names]
    one = first if m.calls else [a[:1] for a in first]
    ours = median_latency_ms(backend.run, one, min_time_s=0.5, min_runs=5, max_runs=200)
    theirs = median_latency_ms(ref.run, one, min_time_s=0.5, min_runs=5, max_runs=200)
    golden = manifest.golden
    tol = (golden.atol, golden.rtol) if golden else (0.0, 0.0)
    manifest_bytes = len((store.version_dir(m.id, 1) / "manifest.json").read_bytes())
    return {"max_err": worst, "atol": tol[0], "rtol": tol[1], "ms": ours, "ort_ms": theirs,
            "manifest_bytes": manifest_bytes, "format": manifest.format, "choice": choice}


def _cli_score_error(m: CorpusModel, bundle: Path, root_path: Path, work: Path, names: list[str],
                     out_names: list[str], reference: Callable[[list[np.ndarray]], list[np.ndarray]]) -> float:
    """``edge-runtime models install`` then ``edge-runtime score`` on the model's rows: the worst
    difference from onnxruntime on the same rows."""
    store, factory = work / "cli-store", work / "cli-factory"
    factory.mkdir(exist_ok=True)
    where = ["--store", str(store), "--root", str(root_path), "--factory", str(factory)]
    subprocess.run([str(BIN / "edge-runtime"), "models", "install", str(bundle), *where], check=True,
                   capture_output=True)
    rows = make_inputs(m)[0]
    np.savez(work / "cli-rows.npz", **rows)
    subprocess.run([str(BIN / "edge-runtime"), "score", "--model", m.id, str(work / "cli-rows.npz"), "-o",
                    str(work / "cli-scores.npz"), *where], check=True, capture_output=True)
    want = reference([rows[n] for n in names])
    with np.load(work / "cli-scores.npz") as got:
        return max(float(np.max(np.abs(got[k].reshape(w.shape).astype(np.float64) - w.astype(np.float64))))
                   for k, w in zip(out_names, want))


def _kib(n: int) -> str:
    return f"{n / 1024:,.0f} KiB" if n < 10 * 1024 * 1024 else f"{n / 1024 / 1024:,.1f} MiB"


def run(models: list[CorpusModel], skip_alone: bool, earlier: dict[str, dict[str, str]],
        on_row: Callable[[list[dict[str, Any]]], None] = lambda rows: None) -> list[dict[str, Any]]:
    """Measure each model in turn; ``on_row`` sees the rows so far after each one (partial results
    survive a run stopped early). ``skip_alone`` reuses an earlier onnx2tf-alone cell where one exists."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edge-corpus-") as tmp:
        base = Path(tmp)
        subprocess.run([str(BIN / "edge-runtime"), "keys", "generate", "--out", str(base / "keys")], check=True,
                       capture_output=True)
        for m in models:
            work = base / m.id
            work.mkdir()
            print(f"== {m.id}: {m.origin} {m.member}", flush=True)
            row: dict[str, Any] = {"model": m, "earlier": earlier.get(m.id)}
            try:
                path = fetch(m)
            except RuntimeError as exc:
                row["error"] = str(exc)
                rows.append(row)
                continue
            row["onnx_bytes"] = path.stat().st_size
            row["ml_ops"] = _ml_ops(path)
            data = write_data(m, work / "data")
            reuse = skip_alone and (earlier.get(m.id) or {}).get("onnx2tf alone", "-") != "-"
            row["alone"] = None if reuse else onnx2tf_alone(path, work)
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
            on_row(rows)
    return rows


def _ml_ops(path: Path) -> bool:
    """Whether the model has operators outside the default ONNX domain (no TFLite form exists)."""
    import onnx

    return bool(unconvertible_ops(onnx.load(str(path), load_external_data=False)))


def _ends_as(row: dict[str, Any]) -> str:
    """TFLite, ONNX, or '-' (no installed bundle that answers)."""
    check = row.get("check")
    if not check:
        return "-"
    return "TFLite" if check["format"] == "tflite" else "ONNX"


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


HEAD = ("model", "kind", "onnx2tf alone", "edge-convert", "ends as", "size", "manifest", "convert",
        "max err (atol)", "ms / row", "onnxruntime ms", "ratio", "variants ms / row", "device chose", "run")


def _variant_cells(choice: Choice) -> tuple[str, str]:
    """Each variant's figure (or why it cannot serve) and the chosen one, with its distance from the fastest."""
    figures = ", ".join(f"{v.variant} {v.ms_per_row:.3f}" if v.ms_per_row is not None else f"{v.variant} failed"
                        for v in choice.verdicts)
    timed = [v.ms_per_row for v in choice.verdicts if v.ms_per_row is not None and v.outcome.value != "over-budget"]
    chosen = choice.chosen_ms_per_row
    off = f" (+{100 * (chosen / min(timed) - 1):.1f} % of the fastest)" if chosen and timed and chosen > min(timed) else ""
    return figures, choice.chosen + off


def cells(r: dict[str, Any]) -> dict[str, str]:
    """One measured row as table cells (by column name)."""
    m: CorpusModel = r["model"]
    alone = r.get("alone")
    earlier_alone = (r.get("earlier") or {}).get("onnx2tf alone")
    if alone is None:
        kept = (earlier_alone or "-").removesuffix(" (earlier run)")
        alone_cell = f"{kept} (earlier run)" if kept != "-" else "-"
    else:
        alone_cell = "converted" if alone["ok"] else "failed: " + alone["reason"][:60]
    conv = r.get("convert") or {}
    check = r.get("check") or {}
    out = {
        "model": m.id, "kind": m.kind + (" (built locally, " + m.package + " defaults)" if m.recipe else ""),
        "onnx2tf alone": alone_cell, "edge-convert": _outcome(r), "ends as": _ends_as(r),
        "size": _kib(conv["json"]["size_bytes"]) if conv.get("ok") else "-",
        "manifest": _kib(check["manifest_bytes"]) if check else "-", "convert": f"{conv.get('seconds', 0):.0f} s",
        "max err (atol)": "-", "ms / row": "-", "onnxruntime ms": "-", "ratio": "-", "variants ms / row": "-",
        "device chose": "-", "run": "this run",
    }
    if check:
        out.update({"max err (atol)": f"{check['max_err']:.3g} ({check['atol']:.3g})", "ms / row": f"{check['ms']:.3f}",
                    "onnxruntime ms": f"{check['ort_ms']:.3f}", "ratio": f"{check['ms'] / check['ort_ms']:.2f}"})
        out["variants ms / row"], out["device chose"] = _variant_cells(check["choice"])
    return out


def table(rows: list[dict[str, str]]) -> str:
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    lines += ["| " + " | ".join(r.get(h, "-") for h in HEAD) + " |" for r in rows]
    return "\n".join(lines)


def _served(r: dict[str, str]) -> bool:
    """The row's bundle answers like onnxruntime within its stated tolerance ('max err (atol)' cell)."""
    cell = r.get("max err (atol)", "-")
    if "(" not in cell:
        return False
    err, _, atol = cell.partition(" (")
    return float(err) <= float(atol.rstrip(")")) * 1.0001 + 1e-12


def _share(k: int, n: int) -> str:
    return f"{k} of {n} ({100 * k / max(n, 1):.0f} %)"


def summary(rows: list[dict[str, str]], ml_ops: set[str]) -> str:
    """Served; the TFLite share (overall, among models with default-domain operators only and
    among those with ai.onnx.ml operators), by what edge-convert made and by what the device chose
    to serve (a bundle with an ONNX variant may be served by onnxruntime where that is faster); onnx2tf
    alone."""
    n = len(rows)
    served = [r for r in rows if _served(r)]
    converted = [r for r in served if r.get("edge-convert", "").startswith("TFLite")]
    chosen = [r for r in served if r.get("ends as") == "TFLite"]
    plain = [r for r in rows if r["model"] not in ml_ops]
    plain_converted = [r for r in converted if r["model"] not in ml_ops]
    on_onnx = [r["model"] for r in converted if r.get("ends as") != "TFLite"]
    alone = [r for r in rows if r.get("onnx2tf alone", "").startswith("converted")]
    return (f"{len(served)} of {n} models end as an installed bundle that answers like onnxruntime within its stated "
            f"tolerance. edge-convert makes a TFLite model of {_share(len(converted), n)}: of the {len(plain)} with "
            f"only default-domain operators, {_share(len(plain_converted), len(plain))}; of the {n - len(plain)} with "
            f"ai.onnx.ml operators (every default tabular export; the converter rewrites them, converter/mlops.py), "
            f"{_share(len(converted) - len(plain_converted), n - len(plain))}. The device serves {len(chosen)} as "
            f"TFLite and {len(served) - len(chosen)} on onnxruntime"
            + (f" (of those, {', '.join(on_onnx)} had a TFLite variant, and their ONNX variant was faster here)"
               if on_onnx else "")
            + f". onnx2tf alone (default flags, offline) converts {len(alone)} of {n}.")


def earlier_rows(path: Path) -> tuple[str, dict[str, dict[str, str]]]:
    """The previous results file's run line and its rows by model id (cells by column name)."""
    if not path.is_file():
        return "", {}
    lines = path.read_text(encoding="utf-8").splitlines()
    stamp = next((ln.split(",")[0] for ln in lines if ln[:2] == "20"), "")
    head: list[str] = []
    rows: dict[str, dict[str, str]] = {}
    for ln in lines:
        if not ln.startswith("|") or ln.startswith("|---"):
            continue
        parts = [c.strip() for c in ln.strip().strip("|").split(" | ")]
        if parts[0] == "model":
            head = parts
        elif head and len(parts) == len(head):
            row = dict(zip(head, parts))
            if "ends as" not in row:  # a table from before the column existed
                outcome = row.get("edge-convert", "")
                row["ends as"] = "TFLite" if outcome.startswith("TFLite") else "ONNX" if outcome.startswith("ONNX") else "-"
            if row.get("run", "this run") == "this run":
                row["run"] = f"earlier ({stamp})"
            rows[parts[0]] = row
    return stamp, rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help="comma-separated corpus ids")
    p.add_argument("--skip-onnx2tf", action="store_true",
                   help="do not run onnx2tf alone where the previous results file has its cell (reused, marked)")
    p.add_argument("--skip", help="comma-separated corpus ids not to run")
    p.add_argument("--keep-earlier", action="store_true",
                   help="write the results with the previous file's rows for the models not run, marked as such")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args()
    skip = set((args.skip or "").split(","))
    order = {name: i for i, name in enumerate((args.only or "").split(","))}
    models = sorted((m for m in CORPUS if (not args.only or m.id in order) and m.id not in skip),
                    key=lambda m: order.get(m.id, 0))  # in --only's order: the cheap ones first
    stamp, earlier = earlier_rows(RESULTS)
    start = time.monotonic()
    write = not args.no_write and (args.keep_earlier or not (args.only or args.skip))

    def report(rows: list[dict[str, Any]], final: bool = False) -> None:
        measured = {r["model"].id: cells(r) for r in rows}
        ml_ops = {r["model"].id for r in rows if r.get("ml_ops")} | {
            m.id for m in CORPUS if m.recipe and m.id not in measured}
        kept = [m.id for m in CORPUS if m.id not in measured and m.id in earlier] if args.keep_earlier else []
        table_rows = [measured.get(m.id) or earlier[m.id] for m in CORPUS if m.id in measured or m.id in kept]
        note = (" Rows whose run column says earlier were not re-run (the column gives their run); an onnx2tf "
                f"alone cell marked earlier run is from an earlier run too (the last was {stamp}); a '-' in the "
                "variant columns is a row from a run before they existed."
                if kept or args.skip_onnx2tf else "")
        if not final:
            note += f" Partial: {len(rows)} of {len(models)} models measured so far."
        text = (
            "## Real-model corpus: onnx2tf alone vs edge-convert\n\n"
            f"{_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} CPUs, load "
            f"average {os.getloadavg()[0]:.2f} at the end, onnx2tf {onnx2tf_version()}, Python "
            f"{platform.python_version()}. Both offline. edge-convert: `--quantize fp16 --variants {VARIANTS} "
            "--fallback-onnx` with the "
            "model's data (tests/corpus/models.py). Max error: the installed bundle through the device backend (and, "
            "for the tab-* rows, `edge-runtime score` from the CLI) against onnxruntime on the same inputs, with the "
            "golden tolerance the bundle states. Latency: median of one row "
            "(one call for stateful models), one thread each, of the variant the device chose after timing each "
            f"variant of the bundle on this machine (variants ms / row; docs/store-and-bundles.md section 2.5). Total {time.monotonic() - start:.0f} s.{note}\n\n"
            + summary(table_rows, ml_ops) + "\n\n" + table(table_rows) + "\n"
        )
        if final:
            print(text)
        if write:
            write_bytes_atomic(RESULTS, text.encode())

    report(run(models, args.skip_onnx2tf, earlier, report), final=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
