"""``edge-convert``: the converter's command line. The only place that turns errors into exit codes.

Exit codes: 0 success (including a loud ``--fallback-onnx`` bundle), 2 usage error, 1 anything
else, with a one-line reason on stderr (no traceback unless ``--debug``). Progress (stages
and elapsed time) goes to stderr; the report table, or with ``--json`` one JSON object, to
stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from converter.convert import OPTIMIZE_CHOICES, QUANTIZE_CHOICES, ConvertOptions, ConvertResult, convert
from converter.exceptions import AccuracyError
from converter.onnx2tf_runner import DEFAULT_TIMEOUT_S
from converter.shapes import parse_input_shape
from converter.validate import Thresholds
from converter.variants import THRESHOLDS, parse_budget, parse_variants
from edge_runtime.bundle.budget import PRIMARY_ERROR_FACTOR
from edge_runtime.bundle.manifest import DEFAULT_CHUNK_SIZE
from edge_runtime.bundle.sealed import encrypt_bundle
from edge_runtime.exceptions import EdgeRuntimeError, UsageError
from edge_runtime.options import chunk_size, load_keys, load_recipients, positive_int

SIGN_KEY_ENV = "EDGE_CONVERT_SIGN_KEY"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, found {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a value in [0, 1], found {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser."""
    p = _Parser(
        prog="edge-convert",
        description="Convert an ONNX model to TFLite with onnx2tf, validate it against onnxruntime "
        "and write a signed bundle.",
    )
    p.add_argument("model", type=Path, help="the .onnx model")
    p.add_argument("--name", required=True, help="model name in the bundle")
    p.add_argument("--version", type=positive_int, required=True, help="bundle version (strictly increasing)")
    p.add_argument("-o", "--out", type=Path, required=True, help="the bundle to write")
    p.add_argument("--quantize", choices=QUANTIZE_CHOICES, default="fp16",
                   help="fp32, fp16 (default), dynamic (int8 weights), int8 (full integer, needs --calibration) "
                   "or auto (convert all, keep the fastest that passes)")
    p.add_argument("--optimize", choices=OPTIMIZE_CHOICES, default="latency",
                   help="what auto minimises among passing variants (default latency)")
    p.add_argument("--calibration", type=Path, help="calibration rows (.npy/.npz/.csv, ONNX layout)")
    p.add_argument("--validation", type=Path,
                   help="validation rows, with optional labels (default: held-out calibration rows)")
    p.add_argument("--profile-data", type=Path,
                   help="rows for the reference profile drift is measured against (.npy/.npz/.csv; default: the "
                   "validation rows); a few hundred from the training split, docs/monitoring.md")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME:D0,D1,...",
                   help="pin an input's shape (repeatable; -1 keeps a dimension dynamic), e.g. x:1,3,48,192; "
                   "by default dynamic dimensions after the batch are pinned from the data when all rows agree")
    p.add_argument("--label-key", help="labels column/array name (default: label, labels, y or target)")
    p.add_argument("--sign-key", type=Path, action="append",
                   help=f"signing key (PKCS#8 PEM); repeat for several; default ${SIGN_KEY_ENV}")
    p.add_argument("--int8-io", action="store_true",
                   help="int8: integer input/output tensors (the device quantizes with the manifest's scale) "
                   "instead of float I/O with int8 inside")
    p.add_argument("--variants", type=parse_variants, default=None, metavar="LIST",
                   help="further variants to pack beside the chosen one, each validated with its own golden self-test; "
                   "the device times them and serves the fastest (fp32,fp16,dynamic,int8,onnx; default: every "
                   "passing variant with --quantize auto, none otherwise; docs/converter.md)")
    p.add_argument("--accuracy-budget", type=parse_budget, default=None, metavar="MAX_ABS_ERROR|thresholds",
                   help="with --variants: the largest error against onnxruntime a variant may have to be served "
                   f"(default: the chosen variant's tolerance or {PRIMARY_ERROR_FACTOR:g}x its error, whichever is "
                   "larger; 'thresholds': any variant that passed validation)"),
    p.add_argument("--allow-accuracy-drop", action="store_true", help="ship a variant that fails validation")
    fb = p.add_mutually_exclusive_group()
    fb.add_argument("--fallback-onnx", action="store_true",
                    help="when conversion or validation fails, write an onnx bundle for onnxruntime instead")
    fb.add_argument("--no-fallback", action="store_true",
                    help="never ship the ONNX model: fail when the model has operators onnx2tf cannot convert "
                    "(ai.onnx.ml and other non-default domains; by default such models ship as ONNX at once)")
    p.add_argument("--keep-ml-ops", action="store_true",
                   help="do not rewrite ai.onnx.ml operators (scalers, linear models, tree ensembles) into ONNX "
                   "operators onnx2tf converts: ship such a model as ONNX for onnxruntime (docs/converter.md)")
    p.add_argument("--min-correlation", type=_fraction, default=Thresholds.min_correlation,
                   help=f"per-output correlation with onnxruntime (default {Thresholds.min_correlation})")
    p.add_argument("--min-agreement", type=_fraction, default=Thresholds.min_agreement,
                   help=f"classifier decision agreement (default {Thresholds.min_agreement})")
    p.add_argument("--max-metric-drop", type=_fraction, default=Thresholds.max_metric_drop,
                   help=f"accuracy/AUC drop allowed with labels (default {Thresholds.max_metric_drop})")
    p.add_argument("--encrypt-to", type=Path, action="append", default=[], metavar="PUB",
                   help="encrypt the bundle to this device.pub or directory of *.pub files (repeatable; docs/security.md)")
    p.add_argument("--chunk-size", type=chunk_size, default=DEFAULT_CHUNK_SIZE, help="bundle chunk size")
    p.add_argument("--architectures", default="any", help="comma-separated CPU architectures, or 'any'")
    p.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S, help="onnx2tf time limit in seconds")
    p.add_argument("--log", type=Path, help="where to keep the onnx2tf log (default: beside the bundle, NAME.onnx2tf.log)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--keep-workdir", action="store_true", help="keep onnx2tf's scratch directory")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


class TerminalProgress:
    """Stage lines with elapsed time on stderr; on a terminal the current line ticks each second."""

    def __init__(self, stream: IO[str], live: bool, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.live = live
        self._clock = clock  # a parameter so that tests can give the stages known lengths
        self.start = clock()
        self.stage_start = self.start
        self.current: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        if live:
            self._ticker = threading.Thread(target=self._tick, name="edge-convert-progress", daemon=True)
            self._ticker.start()

    def _line(self, now: float) -> str:
        return f"[{now - self.start:6.1f}s] {self.current} ({now - self.stage_start:.0f}s)"

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                if self.current:
                    self.stream.write("\r\x1b[K" + self._line(self._clock()))
                    self.stream.flush()

    def __call__(self, message: str) -> None:
        with self._lock:
            now = self._clock()
            if self.current is not None:
                self.stream.write(("\r\x1b[K" if self.live else "") + self._line(now) + " done\n")
            self.current = message
            self.stage_start = now
            if self.live:
                self.stream.write(self._line(now))
            self.stream.flush()

    def close(self, ok: bool) -> None:
        """Finish the last line."""
        self._stop.set()
        with self._lock:
            if self.current is not None:
                now = self._clock()
                suffix = " done" if ok else " failed"
                self.stream.write(("\r\x1b[K" if self.live else "") + self._line(now) + suffix + "\n")
                self.current = None
            self.stream.flush()


def _options(args: argparse.Namespace) -> ConvertOptions:
    key_paths = args.sign_key or ([Path(os.environ[SIGN_KEY_ENV])] if os.environ.get(SIGN_KEY_ENV) else [])
    if not key_paths:
        raise UsageError(f"a bundle must be signed: pass --sign-key KEY (or set ${SIGN_KEY_ENV})")
    shapes: dict[str, tuple[int, ...]] = {}
    for text in args.input_shape:
        name, shape = parse_input_shape(text)
        if name in shapes:
            raise UsageError(f"--input-shape {name} given twice")
        shapes[name] = shape
    return ConvertOptions(
        input_shapes=shapes,
        model=args.model,
        name=args.name,
        version=args.version,
        out=args.out,
        keys=load_keys(key_paths),
        quantize=args.quantize,
        calibration=args.calibration,
        profile_data=args.profile_data,
        validation=args.validation,
        label_key=args.label_key,
        optimize=args.optimize,
        int8_io=args.int8_io,
        allow_accuracy_drop=args.allow_accuracy_drop,
        fallback_onnx=args.fallback_onnx,
        no_fallback=args.no_fallback,
        rewrite_ml=not args.keep_ml_ops,
        thresholds=Thresholds(args.min_correlation, args.min_agreement, args.max_metric_drop),
        chunk_size=args.chunk_size,
        architectures=[a.strip() for a in args.architectures.split(",") if a.strip()] or ["any"],
        keep_workdir=args.keep_workdir,
        timeout_s=args.timeout_s,
        log=args.log,
        variants=args.variants,
        accuracy_budget=args.accuracy_budget if isinstance(args.accuracy_budget, float) else None,
        budget_factor=None if args.accuracy_budget == THRESHOLDS else PRIMARY_ERROR_FACTOR,
    )


def _summary(result: ConvertResult) -> str:
    m = result.manifest
    art = m.artifacts[m.model_file]
    lines = [result.table] if result.candidates else []
    data = next((c.report.get("data") for c in result.candidates if c.report.get("data")), None)
    if data:
        lines.append(f"validated against onnxruntime on: {data}")
    lines += [""] if lines else []
    lines.append(
        f"wrote {result.out}: {m.name} v{m.version}, {m.format} ({result.mode}), {art.length:,} bytes in "
        f"{art.chunk_count} chunk(s), signed"
    )
    for side, specs in (("input ", m.inputs), ("output", m.outputs)):
        for s in specs:
            q = f" (int8 I/O: scale {s.quantization.scale:.6g}, zero point {s.quantization.zero_point})" if s.quantization else ""
            lines.append(f"  {side} {s.name}: {s.datatype} {list(s.shape)}{q}")
    if m.golden is not None:
        if m.golden.file is not None:
            where = f"{m.golden.file}, {m.artifacts[m.golden.file].length:,} bytes"
        else:
            where = f"{len(next(iter(m.golden.inputs.values()))['data'])} values in the manifest"
        lines.append(f"  golden self-test: {where}, atol {m.golden.atol:g}")
    for v in m.variants[1:] if len(m.variants) > 1 else ():
        lines.append(f"  variant {v.name}: {v.format}, {m.artifacts[v.file].length:,} bytes ({v.file})")
    if len(m.variants) > 1:
        budget = "none (validation thresholds)" if m.budget_max_abs_error is None else f"{m.budget_max_abs_error:.3g}"
        lines.append(f"  accuracy budget (max abs error a served variant may have): {budget}")
    lines.append(f"  manifest.json: {len(m.canonical()):,} bytes")
    if m.format == "onnx":
        lines.append("  NOTE: an ONNX bundle: the device needs onnxruntime (device/install.sh --with-onnx)")
    if result.log_path:
        lines.append(f"onnx2tf log: {result.log_path}")
    if result.workdir:
        lines.append(f"work directory kept: {result.workdir}")
    return "\n".join(lines)


def _emit_warnings(result: ConvertResult, stream: IO[str]) -> None:
    for w in result.warnings:
        if w.startswith("FALLBACK: "):
            bar = "!" * 78
            stream.write(f"{bar}\nWARNING: {w[len('FALLBACK: '):]}\nThe device will run this model with onnxruntime "
                         f"(install it there with device/install.sh --with-onnx).\n{bar}\n")
        else:
            stream.write(f"warning: {w}\n")
    stream.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``edge-convert``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    progress: TerminalProgress | None = None
    ok = False
    try:
        args = build_parser().parse_args(argv)
        opts = _options(args)
        recipients = load_recipients(args.encrypt_to)  # before converting: a bad key file fails fast
        progress = TerminalProgress(sys.stderr, live=sys.stderr.isatty())
        result = convert(opts, progress)
        encrypted = encrypt_bundle(opts.out, recipients, opts.keys, opts.out).encryption if recipients else None
        ok = True
        progress.close(ok)
        _emit_warnings(result, sys.stderr)
        recipient_ids = encrypted.keyids() if encrypted is not None else []
        if args.json:
            print(json.dumps({**result.to_json(), "encrypted_to": recipient_ids}, indent=2, sort_keys=True))
        else:
            print(_summary(result))
            if recipient_ids:
                print(f"  encrypted to {len(recipient_ids)} device(s): {', '.join(recipient_ids[:8])}"
                      f"{', ...' if len(recipient_ids) > 8 else ''} (sizes above are of the plaintext)")
        return 0
    except AccuracyError as exc:
        if debug:
            raise
        _close(progress, True)  # every stage finished; the verdict follows
        table = exc.report.get("table")
        if table and "--json" not in argv:
            print(table)
        elif "--json" in argv:
            print(json.dumps({"error": str(exc), "candidates": exc.report.get("candidates", [])}, indent=2))
        print(f"edge-convert: {exc}", file=sys.stderr)
        return 1
    except EdgeRuntimeError as exc:
        if debug:
            raise
        _close(progress, ok)
        print(f"edge-convert: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1  # a usage error exits 2, as argparse's do
    except KeyboardInterrupt:
        _close(progress, ok)
        print("edge-convert: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        if debug:
            raise
        _close(progress, ok)
        print(f"edge-convert: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1


def _close(progress: TerminalProgress | None, ok: bool) -> None:
    if progress is not None:
        progress.close(ok)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
