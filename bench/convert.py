"""Benchmark the converter: for the demo fraud MLP and a 3x96x96 CNN, every quantization mode.

Per mode: bundle model size, conversion time (the whole ``edge-convert`` pipeline, onnx2tf
share in brackets), max absolute error against onnxruntime and accuracy/AUC (fraud, labelled
hold-out) or top-1 agreement (CNN) on the validation rows, and the median latency of one call
through the device backend (LiteRT, one thread) at batch 1 and 16, with onnxruntime (one
thread) on the same inputs as the last row.

    .venv/bin/python bench/convert.py [--quick]

Prints the tables and writes them to bench/results/convert.md. Figures from a shared or
busy machine move by 10-20 %; compare rows of one run only.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "converter"))

import conversion_models  # noqa: E402 - the test models, built the same way as in the tests

from converter.convert import MODES, ConvertOptions, convert  # noqa: E402
from converter.onnx2tf_runner import onnx2tf_version  # noqa: E402
from converter.tflite_run import OnnxRunner, median_latency_ms  # noqa: E402
from edge_runtime.atomic import write_bytes_atomic  # noqa: E402
from edge_runtime.bundle.reader import open_bundle  # noqa: E402
from edge_runtime.inference.backend import load_backend  # noqa: E402
from edge_runtime.trust.keys import generate_private_key  # noqa: E402

FACTORY = REPO / "device" / "factory"
RESULTS = REPO / "bench" / "results" / "convert.md"


def _model_specs(work: Path, quick: bool) -> list[dict[str, Any]]:
    cnn_dir = work / "cnn"
    cnn_dir.mkdir()
    conversion_models.build_cnn(cnn_dir / "cnn.onnx")
    np.save(cnn_dir / "calibration.npy", conversion_models.cnn_images(60 if quick else 200, seed=1))
    np.save(cnn_dir / "validation.npy", conversion_models.cnn_images(16 if quick else 64, seed=2))
    return [
        {
            "title": "fraud (demo MLP 30-64-32-1, breast-cancer hold-out, 143 labelled rows)",
            "name": "fraud",
            "onnx": FACTORY / "fraud.onnx",
            "calibration": FACTORY / "calibration.npy",
            "validation": FACTORY / "holdout.npz",
            "input": np.load(FACTORY / "holdout.npz")["x"].astype(np.float32),
        },
        {
            "title": f"cnn (NCHW 3x96x96, 3 conv + GAP + dense, {'16' if quick else '64'} validation images)",
            "name": "cnn",
            "onnx": cnn_dir / "cnn.onnx",
            "calibration": cnn_dir / "calibration.npy",
            "validation": cnn_dir / "validation.npy",
            "input": np.load(cnn_dir / "validation.npy"),
        },
    ]


def _quality(report: dict[str, Any]) -> str:
    labels = report.get("labels")
    if labels:
        got = labels["tflite"]
        return f"acc {got['accuracy']:.3f}, AUC {got['auc']:.4f}"
    values = [m.get("top1_agreement") for m in report["outputs"].values() if m.get("top1_agreement") is not None]
    return f"top-1 agree {min(values):.3f}" if values else "-"


def _reference_quality(report: dict[str, Any]) -> str:
    labels = report.get("labels")
    if labels:
        ref = labels["onnxruntime"]
        return f"acc {ref['accuracy']:.3f}, AUC {ref['auc']:.4f}"
    return "(reference)"


def bench_model(spec: dict[str, Any], work: Path, key: Any, quick: bool) -> tuple[list[list[str]], dict[str, Any]]:
    """Convert ``spec`` in every mode; returns the table rows and raw figures."""
    min_time = 0.1 if quick else 0.5
    x = spec["input"]
    b1, b16 = [x[:1]], [np.resize(x, (16, *x.shape[1:]))]
    rows: list[list[str]] = []
    raw: dict[str, Any] = {}
    fp32_size = None
    report: dict[str, Any] = {}
    for mode in MODES:
        out = work / f"{spec['name']}-{mode}.bundle"
        opts = ConvertOptions(
            model=spec["onnx"], name=spec["name"], version=1, out=out, keys=[key], quantize=mode,
            calibration=spec["calibration"] if mode == "int8" else None, validation=spec["validation"],
        )
        start = time.monotonic()
        result = convert(opts)
        seconds = time.monotonic() - start
        with open_bundle(out, None) as b:
            manifest, model = b.manifest, b.read_artifact(b.manifest.model_file)
        backend = load_backend(manifest, model, num_threads=1)
        lat1 = median_latency_ms(backend.run, b1, min_time_s=min_time)
        lat16 = median_latency_ms(backend.run, b16, min_time_s=min_time)
        report = manifest.quantization["report"]
        size = len(model)
        fp32_size = fp32_size or size
        err = max(m["max_abs_error"] for m in report["outputs"].values())
        onnx2tf_s = result.stage_seconds.get("onnx2tf", 0.0)
        rows.append([
            mode, f"{size / 1024:,.1f} KiB", f"{size / fp32_size:.2f}", f"{seconds:.1f} s ({onnx2tf_s:.1f})",
            f"{err:.3g}", _quality(report), f"{lat1:.4f}", f"{lat16:.4f}",
        ])
        raw[mode] = {"size": size, "seconds": seconds, "max_abs_error": err, "latency_ms": (lat1, lat16)}
        print(f"  {spec['name']} {mode}: {seconds:.1f} s", file=sys.stderr, flush=True)
    ort = OnnxRunner(spec["onnx"], num_threads=1)
    o1 = median_latency_ms(ort.run, b1, min_time_s=min_time)
    o16 = median_latency_ms(ort.run, b16, min_time_s=min_time)
    size = spec["onnx"].stat().st_size
    rows.append(["onnxruntime (ONNX)", f"{size / 1024:,.1f} KiB", f"{size / (fp32_size or size):.2f}", "-", "0",
                 _reference_quality(report), f"{o1:.4f}", f"{o16:.4f}"])
    raw["onnxruntime"] = {"latency_ms": (o1, o16)}
    return rows, raw


HEADER = ["mode", "size", "vs fp32", "convert (onnx2tf)", "max abs err", "accuracy / agreement",
          "latency b1 ms", "latency b16 ms"]


def markdown(title: str, rows: list[list[str]]) -> str:
    """One markdown table: LiteRT rows per mode, then onnxruntime on the same inputs."""
    lines = [f"### {title}", "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the tables and write bench/results/convert.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calibration/validation rows, shorter timing")
    args = parser.parse_args(argv)
    key = generate_private_key()
    started = time.monotonic()
    sections = []
    with tempfile.TemporaryDirectory(prefix="bench-convert-") as tmp:
        work = Path(tmp)
        for spec in _model_specs(work, args.quick):
            rows, _ = bench_model(spec, work, key, args.quick)
            sections.append(markdown(spec["title"], rows))
    header = (
        f"## edge-convert benchmark{' (--quick)' if args.quick else ''}\n\n"
        f"{_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f} at the end, onnx2tf {onnx2tf_version()}, Python "
        f"{platform.python_version()}. Latency: median of one call (set inputs, invoke, read outputs) through "
        f"the device backend with one interpreter thread; the onnxruntime row is onnxruntime with one thread on "
        f"the same inputs. Conversion time is the whole `edge-convert` run; onnx2tf's share in brackets. "
        f"Accuracy and error are on the validation rows, against onnxruntime. Total {time.monotonic() - started:.0f} s."
    )
    text = header + "\n\n" + "\n\n".join(sections) + "\n"
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(RESULTS, text.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
