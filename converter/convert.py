"""The conversion pipeline: ONNX -> onnx2tf variants -> validated against onnxruntime -> signed bundle.

Stages: read the model and its interface; load calibration/validation rows; score the
validation rows with onnxruntime (the reference); run onnx2tf once (in a subprocess, on a
sanitised copy, in a scratch directory, never touching the network); for the requested mode
(or every mode, for ``auto``) map the TFLite tensors onto the ONNX interface, validate and
measure; pick; pack and sign. The onnx2tf log is kept beside the bundle.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from converter import calibration as cal
from converter.auto import Candidate, choose, format_table
from converter.exceptions import (
    AccuracyError,
    ConversionError,
    ConverterError,
    InterfaceError,
    NetworkAccessError,
    Onnx2tfCrash,
    Onnx2tfTimeout,
    UnsupportedOperatorError,
)
from converter.interface import Matched, match_interface
from converter.onnx2tf_runner import (
    DEFAULT_TIMEOUT_S,
    VARIANT_SUFFIX,
    Onnx2tfJob,
    Onnx2tfResult,
    onnx2tf_version,
    read_log,
    run_onnx2tf,
)
from converter.package import golden_inputs, pack_onnx, pack_tflite
from converter.shapes import ShapePlan, plan_shapes
from converter.source import SourceModel, describe_source, prepare_copy
from converter.tabular import TabularPlan, prepare_tabular
from converter.tflite_run import LiteRTRunner, OnnxRunner, median_latency_ms, run_batched
from converter.validate import Thresholds, compare, failures, worst_error
from converter.variants import extra_tflite_modes, over_budget_warnings, variant_name, wanted_variants
from edge_runtime.atomic import write_bytes_atomic
from edge_runtime.bundle.budget import PRIMARY_ERROR_FACTOR
from edge_runtime.bundle.manifest import DEFAULT_CHUNK_SIZE, Manifest
from edge_runtime.bundle.profile import RECOMMENDED_ROWS
from edge_runtime.exceptions import UsageError
from edge_runtime.packaging import VariantRequest, profile_batches
from edge_runtime.spec.tensors import TensorSpec, fits
from edge_runtime.trust.keys import PrivateKey

MODES = ("fp32", "fp16", "dynamic", "int8")
QUANTIZE_CHOICES = (*MODES, "auto")
OPTIMIZE_CHOICES = ("latency", "size")
VALIDATION_BATCH_ROWS = 64
PROBE_ROWS = 8
TABULAR_FP32 = ("converted in fp32, not {asked}: the model's rewritten ai.onnx.ml operators hold thresholds and "
                "weights that fp16 would round (a tree would send rows down the other branch); tabular models are "
                "a few KiB either way")

Progress = Callable[[str], None]


def _silent(_: str) -> None:
    pass


@dataclass(frozen=True)
class ConvertOptions:
    """Everything ``edge-convert`` was asked to do."""

    model: Path
    name: str
    version: int
    out: Path
    keys: Sequence[PrivateKey]
    quantize: str = "fp16"
    calibration: Path | None = None
    validation: Path | None = None
    profile_data: Path | None = None
    label_key: str | None = None
    optimize: str = "latency"
    int8_io: bool = False
    allow_accuracy_drop: bool = False
    fallback_onnx: bool = False
    no_fallback: bool = False
    thresholds: Thresholds = field(default_factory=Thresholds)
    chunk_size: int = DEFAULT_CHUNK_SIZE
    architectures: Sequence[str] = ("any",)
    keep_workdir: bool = False
    workdir_parent: Path | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    log: Path | None = None
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    variants: tuple[str, ...] | None = None  # further variants to pack (converter/variants.py); None = the default
    accuracy_budget: float | None = None  # max abs error against onnxruntime any served variant may have
    # Without accuracy_budget: the budget relative to the chosen variant (edge_runtime/bundle/budget.py);
    # None signs no budget (a variant that passed the validation thresholds may serve, however inexact).
    budget_factor: float | None = PRIMARY_ERROR_FACTOR
    rewrite_ml: bool = True  # rewrite ai.onnx.ml operators for onnx2tf (converter/mlops.py)


@dataclass
class ConvertResult:
    """What was written, which variant and why."""

    out: Path
    manifest: Manifest
    mode: str
    candidates: list[Candidate]
    table: str
    log_path: Path | None
    workdir: Path | None
    fallback_reason: str | None = None
    warnings: list[str] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        art = self.manifest.artifacts[self.manifest.model_file]
        return {
            "bundle": str(self.out),
            "name": self.manifest.name,
            "version": self.manifest.version,
            "format": self.manifest.format,
            "mode": self.mode,
            "size_bytes": art.length,
            "sha256": art.sha256,
            "fallback_reason": self.fallback_reason,
            "candidates": [c.row() for c in self.candidates],
            "quantization": self.manifest.quantization,
            "variants": [v.name for v in self.manifest.variants],
            "accuracy_budget": self.manifest.budget_max_abs_error,
            "inputs": [s.to_json() for s in self.manifest.inputs],
            "outputs": [s.to_json() for s in self.manifest.outputs],
            "log": str(self.log_path) if self.log_path else None,
            "workdir": str(self.workdir) if self.workdir else None,
            "warnings": self.warnings,
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
        }


def log_path_for(out: Path) -> Path:
    """Where the onnx2tf log goes: beside the bundle, ``NAME.onnx2tf.log``."""
    return out.with_name(out.stem + ".onnx2tf.log")


def check_options(opts: ConvertOptions) -> None:
    """Usage errors, found before any slow work starts."""
    if opts.quantize not in QUANTIZE_CHOICES:
        raise UsageError(f"--quantize must be one of {', '.join(QUANTIZE_CHOICES)}, found {opts.quantize!r}")
    if opts.optimize not in OPTIMIZE_CHOICES:
        raise UsageError(f"--optimize must be latency or size, found {opts.optimize!r}")
    if not opts.model.is_file():
        raise UsageError(f"{opts.model}: no such file")
    if opts.model.suffix.lower() != ".onnx":
        raise UsageError(f"{opts.model}: expected an .onnx file (use 'edge-runtime bundle create' for .tflite)")
    if opts.quantize == "int8" and opts.calibration is None:
        raise UsageError(
            "--quantize int8 needs --calibration FILE (a few hundred representative input rows, .npy/.npz/.csv); "
            "the converter never falls back to onnx2tf's downloaded sample images"
        )
    if "int8" in (opts.variants or ()) and opts.calibration is None:
        raise UsageError("--variants int8 needs --calibration FILE")
    if opts.int8_io and opts.quantize not in ("int8", "auto"):
        raise UsageError("--int8-io applies to --quantize int8 or auto")
    if not opts.keys:
        raise UsageError("a bundle must be signed: pass --sign-key KEY")
    if not opts.out.parent.is_dir():
        raise UsageError(f"output directory {opts.out.parent} does not exist")
    if opts.log is not None and not opts.log.parent.is_dir():
        raise UsageError(f"--log directory {opts.log.parent} does not exist")
    if opts.out.resolve() == opts.model.resolve():
        raise UsageError("the output bundle must not overwrite the model")
    for what, path in (("--calibration", opts.calibration), ("--validation", opts.validation),
                       ("--profile-data", opts.profile_data)):
        if path is not None and not Path(path).is_file():
            raise UsageError(f"{what} {path}: no such file")


def _profile_calls(data: cal.Dataset, specs: Sequence[TensorSpec], real: bool) -> list[list[np.ndarray]] | None:
    """The validation data as model calls for the reference profile (docs/monitoring.md); None when
    the data is the converter's own random rows (a profile of noise would flag every real input)."""
    if not real:
        return None
    if data.feeds is not None:
        return [list(feed) for feed in data.feeds[:PROFILE_MAX_CALLS]]
    return profile_batches(specs, data.inputs)


PROFILE_MAX_CALLS = 512


@dataclass
class _Data:
    calibration: cal.Dataset | None
    validation: cal.Dataset


def _load_data(opts: ConvertOptions, inputs: Sequence[TensorSpec]) -> _Data:
    calib = cal.load_dataset(opts.calibration, inputs, "calibration", opts.label_key) if opts.calibration else None
    if calib is not None and calib.feeds is not None:
        # Whole calls (no common batch axis) can check a conversion but cannot calibrate int8.
        if opts.quantize == "int8":
            raise UsageError("int8 calibration needs rows (arrays with the rows first), not whole calls ('0/NAME')")
        if opts.validation is None:
            return _Data(None, calib.head(cal.MAX_VALIDATION_ROWS))
        calib = None
    if opts.validation is not None:
        validation = cal.load_dataset(opts.validation, inputs, "validation", opts.label_key)
    elif calib is not None:
        if opts.quantize in ("int8", "auto"):
            calib, validation = cal.split_holdout(calib)
        else:
            validation = calib.take(slice(None), f"{calib.source} (no --validation given)")
    else:
        validation = cal.random_dataset(inputs)
    return _Data(calib, validation.head(cal.MAX_VALIDATION_ROWS))


def _run_all(run: Callable[[Sequence[np.ndarray]], list[np.ndarray]], data: cal.Dataset,
             batch_rows: int) -> list[np.ndarray]:
    """Every row (in batches) or every call of a feeds data set; a feeds data set's outputs come back
    flattened and joined per output (shape ``[1, 1, total]``), for comparing like with like."""
    if data.feeds is None:
        return run_batched(run, data.inputs, batch_rows)
    outs = [run(list(feed)) for feed in data.feeds]
    return [np.concatenate([o[k].reshape(-1) for o in outs])[None, None, :] for k in range(len(outs[0]))]


def _first(data: cal.Dataset, rows: int) -> list[np.ndarray]:
    """The first ``rows`` rows, or the first call of a feeds data set."""
    return list(data.feeds[0]) if data.feeds is not None else [a[:rows] for a in data.inputs]


def _golden(data: cal.Dataset, specs: Sequence[TensorSpec]) -> list[np.ndarray]:
    """The self-test inputs: the first few rows, or the first call of a feeds data set."""
    return list(data.feeds[0]) if data.feeds is not None else golden_inputs(data.inputs, specs)


def _batch_rows(specs: Sequence[TensorSpec]) -> int:
    fixed = [s.shape[0] for s in specs if s.shape and s.shape[0] != -1]
    return fixed[0] if fixed else VALIDATION_BATCH_ROWS


# ONNX operators onnx2tf can write as compositions of TFLite builtins instead of TensorFlow (Flex)
# ops (its -rtpo "pseudo operators"; the names as onnx2tf 1.29 spells them), and the recurrent ones
# it can unroll (-eru) instead of emitting Flex TensorList ops.
PSEUDO_OPERATORS = {
    "Abs": "abs", "Acos": "acos", "Asin": "asin", "Atan": "atan", "Erf": "erf", "GatherND": "gathernd",
    "HardSwish": "hardswish", "LeakyRelu": "leakyrelu", "QLinearLeakyRelu": "leakyrelu",
    "MatMulInteger": "matmulinteger", "Neg": "neg", "Pow": "pow", "PRelu": "prelu",
}
RECURRENT_OPERATORS = frozenset({"LSTM", "GRU", "RNN"})
# How converter.interface reports a model LiteRT needs Flex for, and LiteRT's own words.
FLEX_MARKS = ("TensorFlow (Flex) ops", "Select TensorFlow op")


def flex_free_args(op_nodes: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    """onnx2tf arguments that replace the model's Flex-prone operators (() when it has none)."""
    pseudo = sorted({PSEUDO_OPERATORS[op] for op in op_nodes if op in PSEUDO_OPERATORS})
    args = ("-rtpo", *pseudo) if pseudo else ()
    if RECURRENT_OPERATORS & set(op_nodes):
        args += ("-eru",)
    return args


@dataclass(frozen=True)
class _ExtraArgsJob(Onnx2tfJob):
    """An onnx2tf job with extra arguments after the usual ones (the Flex-free replacements)."""

    extra: tuple[str, ...] = ()

    def args(self) -> list[str]:
        """The usual arguments, then the extra ones."""
        return [*super().args(), *self.extra]


def _requested_modes(opts: ConvertOptions) -> list[str]:
    modes = list(MODES) if opts.quantize == "auto" else [opts.quantize]
    return modes + [m for m in extra_tflite_modes(opts.variants) if m not in modes]


def _variant_key(mode: str, int8_io: bool) -> str:
    return "int8-io" if mode == "int8" and int8_io else mode


@dataclass
class _Evaluated:
    candidate: Candidate
    matched: Matched | None = None


class _Pipeline:
    """One conversion's state (a class only to keep the stages short and named)."""

    def __init__(self, opts: ConvertOptions, progress: Progress) -> None:
        self.opts = opts
        self.real_data = opts.validation is not None or opts.calibration is not None
        self.progress = progress
        self.warnings: list[str] = []
        self.stage_seconds: dict[str, float] = {}
        self.workdir = Path(tempfile.mkdtemp(prefix="edge-convert-", dir=opts.workdir_parent))
        self.log_path: Path | None = None
        self.shapes = ShapePlan()
        self.lost_modes: dict[str, str] = {}
        self.output_shapes: dict[int, tuple[int, ...]] = {}
        self.probe_reference: list[np.ndarray] = []
        self.onnx_inputs: tuple[TensorSpec, ...] = ()
        self.tabular = TabularPlan()
        self.profile_rows: cal.Dataset | None = None
        self.original_model = opts.model
        self._logs: list[str] = []  # every onnx2tf run's log, a batch-pinned second run's after the first's
        self.retried_pinned = ""  # why the dynamic-batch conversion failed, once one was retried pinned
        self.onnx2tf_extra: tuple[str, ...] = ()  # onnx2tf's Flex-free replacements, once they were needed

    def stage(self, key: str, message: str) -> Callable[[], None]:
        self.progress(message)
        start = time.monotonic()

        def done() -> None:
            self.stage_seconds[key] = self.stage_seconds.get(key, 0.0) + time.monotonic() - start

        return done

    # -- stages --------------------------------------------------------------------------

    def prepare(self) -> tuple[SourceModel, _Data, list[np.ndarray]]:
        done = self.stage("prepare", f"reading {self.opts.model.name}")
        rewritten, self.tabular = prepare_tabular(self.opts.model, self.workdir / self.opts.model.name,
                                                  rewrite_ml=self.opts.rewrite_ml)
        if rewritten != self.opts.model:
            self.opts = dataclasses.replace(self.opts, model=rewritten)
        for note in self.tabular.notes(converted=True):
            self.progress(note)
            self.warnings.append(note)
        if self.tabular.ml is not None:  # it shipped as ONNX before the rewrite: it still does if TFLite fails
            self.opts = dataclasses.replace(self.opts, fallback_onnx=not self.opts.no_fallback)
            if self.opts.quantize in ("fp16", "auto"):  # auto would weigh fp16/dynamic on random rows: no
                self.warnings.append(TABULAR_FP32.format(asked=self.opts.quantize))
                self.opts = dataclasses.replace(self.opts, quantize="fp32")
        onnx_inputs, _ = describe_source(self.opts.model)
        explicit = plan_shapes(onnx_inputs, self.opts.input_shapes, [])
        data = _load_data(self.opts, explicit.apply(onnx_inputs))
        sets = [data.validation.inputs, *([data.calibration.inputs] if data.calibration is not None else [])]
        if data.validation.feeds is not None:
            sets = []  # whole calls have no rows axis to pin around; --input-shape still applies
        self.shapes = plan_shapes(onnx_inputs, self.opts.input_shapes, sets)
        for note in self.shapes.notes:
            self.progress(note)
        self.warnings.extend(self.shapes.notes)
        source = prepare_copy(self.onnx2tf_model, self.workdir / "model.onnx", self.shapes.pins)
        self.onnx_inputs = onnx_inputs
        if self.opts.profile_data is not None:
            self.profile_rows = cal.load_dataset(self.opts.profile_data, explicit.apply(onnx_inputs), "profile data",
                                                 self.opts.label_key)
        profiled = self.profile_rows or (data.validation if self.real_data else None)
        if profiled is not None and profiled.feeds is None and profiled.rows < RECOMMENDED_ROWS:
            self.warnings.append(
                f"the reference profile comes from {profiled.rows} rows (fewer than "
                f"{RECOMMENDED_ROWS}): it is marked weak and the device's drift alarm allows for its sampling "
                "noise; give a few hundred rows for a sharper one")
        done()
        done = self.stage("reference", f"scoring {data.validation.rows} validation rows with onnxruntime")
        # One thread for a rewritten model: onnxruntime sums a tree ensemble in chunks per thread, so its
        # last bit (a label at an exact tie) depends on the thread count; one thread sums tree after tree.
        onnx_runner = OnnxRunner(self.opts.model, num_threads=1 if self.tabular.ml else 0)
        reference = _run_all(onnx_runner.run, data.validation, _batch_rows(source.inputs))
        if data.validation.feeds is not None:
            self.probe_reference = onnx_runner.run(list(data.validation.feeds[0]))
        first = _first(data.validation, _batch_rows(source.inputs))
        self._observe_outputs(source, first, onnx_runner.run(first), rows=data.validation.feeds is None)
        done()
        return self._with_observed_outputs(source), data, reference

    @property
    def onnx2tf_model(self) -> Path:
        """What onnx2tf converts: the ai.onnx.ml rewrite when there is one; the reference stays opts.model."""
        return self.tabular.converted or self.opts.model

    def _profile(self, data: _Data, specs: Sequence[TensorSpec]) -> list[list[np.ndarray]] | None:
        """Rows for the reference profile: ``--profile-data``, else the validation rows (when real)."""
        if self.profile_rows is not None:
            return _profile_calls(self.profile_rows, specs, True)
        return _profile_calls(data.validation, specs, self.real_data)

    def _observe_outputs(self, source: SourceModel, fed_inputs: Sequence[np.ndarray], produced: Sequence[np.ndarray],
                         rows: bool) -> None:
        """Some exports declare output shapes onnxruntime does not produce (``[1, seqlen]`` for a
        ``[T, 1, classes]`` tensor): the interface takes what the model really produces."""
        fed = next((int(a.shape[0]) for a in fed_inputs if a.ndim), 0)
        for k, (spec, arr) in enumerate(zip(source.outputs, produced)):
            if fits(spec.shape, tuple(arr.shape)):
                continue
            shape = tuple(int(d) for d in arr.shape)
            if rows and len(spec.shape) == len(shape) and spec.shape and (spec.shape[0] == -1 or shape[0] == fed > 1):
                shape = (-1, *shape[1:])  # a batch axis the export declared as 1 (LightGBM's label)
            self.output_shapes[k] = shape
            self.warnings.append(f"output '{spec.name}': the model declares shape {list(spec.shape)} but produces "
                                 f"{list(arr.shape)}; the bundle declares {list(shape)}")

    def _with_observed_outputs(self, source: SourceModel) -> SourceModel:
        outputs = tuple(TensorSpec(s.name, s.datatype, self.output_shapes.get(k, s.shape), s.quantization)
                        for k, s in enumerate(source.outputs))
        return dataclasses.replace(source, outputs=outputs)

    def run_onnx2tf(self, source: SourceModel, data: _Data) -> tuple[Onnx2tfResult, SourceModel]:
        """Run onnx2tf; on a crash while quantizing, again for the float variants only; on a dynamic batch
        onnx2tf cannot handle, again with the batch pinned to 1. Returns the result and the interface used."""
        opts = self.opts
        integer = "int8" in _requested_modes(opts) and (opts.quantize != "auto" or data.calibration is not None)
        calibration = None
        if integer:
            assert data.calibration is not None
            calibration = cal.write_for_onnx2tf(data.calibration, source.inputs, source.onnx2tf_inputs, self.workdir)
        elif opts.quantize == "auto":
            self.warnings.append("auto: int8 skipped (it needs --calibration data)")
        cal.write_sample_guard(self.workdir)
        job: Onnx2tfJob = _ExtraArgsJob(
            self.workdir / "model.onnx",
            keep_layout=source.layout_inputs,
            dynamic_range="dynamic" in _requested_modes(opts),
            integer=integer,
            calibration=calibration,
            extra=self.onnx2tf_extra,
        )
        pristine = self.workdir / "model.pristine.onnx"
        shutil.copyfile(job.model, pristine)  # onnx2tf rewrites its input in place
        try:
            try:
                return self._attempt(job, source), source
            except Onnx2tfCrash as exc:
                if not (job.integer or job.dynamic_range):
                    raise
                float_only = _ExtraArgsJob(job.model, keep_layout=job.keep_layout, extra=self.onnx2tf_extra)
                lost = [m for m in ("dynamic", "int8") if m in _requested_modes(opts)]
                for mode in lost:
                    self.lost_modes[mode] = f"onnx2tf crashed while making it: {exc.reason}"
                self.warnings.append(f"{exc.reason}; converting the float variants again without "
                                     f"{' and '.join(lost)}")
                shutil.copyfile(pristine, job.model)
                return self._attempt(float_only, source), source
            except ConversionError as exc:
                batch_pin = self._batch_pin(source, exc)
                if batch_pin is None:
                    raise
                self.warnings.append(f"onnx2tf failed with a dynamic batch ({exc.reason}); converting again with "
                                     "the batch pinned to 1 (the scorer splits larger batches)")
                self.shapes.pin(batch_pin, "batch pinned to 1: onnx2tf failed with a dynamic batch")
                source = self._with_observed_outputs(prepare_copy(self.onnx2tf_model, job.model, self.shapes.pins))
                return self._attempt(job, source), source
        finally:
            final_log = opts.log or log_path_for(opts.out)
            if self._logs:
                write_bytes_atomic(final_log, "\n".join(self._logs).encode())
                self.log_path = final_log

    def _batch_pin(self, source: SourceModel, exc: ConversionError) -> dict[str, tuple[int, ...]] | None:
        """New pins with every dynamic batch set to 1, when onnx2tf failed in a way a static batch can cure
        (real exports: "Dimension -1 must be >= 0", shape errors in ConvTranspose/Add/Conv) and the user
        did not choose the batch; else None."""
        if isinstance(exc, (UnsupportedOperatorError, NetworkAccessError, Onnx2tfTimeout)):
            return None  # a batch of 1 changes none of these
        return self._unpinned_batch(source)

    def _unpinned_batch(self, source: SourceModel) -> dict[str, tuple[int, ...]] | None:
        """Pins setting each dynamic batch the user did not choose to 1; None when there is none (already
        pinned, static, or chosen with --input-shape)."""
        pins = {}
        for s in source.inputs:
            if s.has_batch_dim and s.name not in self.opts.input_shapes:
                pins[s.name] = (1, *s.shape[1:])
        return pins or None

    def retry_flex_free(self, evaluated: list[_Evaluated], source: SourceModel, data: _Data,
                        reference: list[np.ndarray], modes: list[str]
                        ) -> tuple[Onnx2tfResult, SourceModel, list[_Evaluated]] | None:
        """When no variant passes because LiteRT needs TensorFlow (Flex) ops for it, convert again with
        onnx2tf's replacements for the source's operators (``-rtpo``: its compositions of TFLite
        builtins; ``-eru``: recurrent layers unrolled) before falling back. None when there is nothing
        to replace or the replacements were already in use."""
        if self.onnx2tf_extra or any(e.candidate.passed for e in evaluated):
            return None
        if not any(mark in (e.candidate.error or "") for e in evaluated for mark in FLEX_MARKS):
            return None
        extra = flex_free_args(source.op_nodes)
        if not extra:
            return None
        self.onnx2tf_extra = extra
        try:
            result, source = self.run_onnx2tf(source, data)
        except ConversionError as exc:
            self.warnings.append(f"the conversion needs TensorFlow (Flex) ops; onnx2tf {' '.join(extra)} "
                                 f"failed: {exc.reason}")
            self.onnx2tf_extra = ()
            return None
        self.warnings.append(f"the conversion needs TensorFlow (Flex) ops, which LiteRT on a device does not have; "
                             f"converted again with onnx2tf's replacements ({' '.join(extra)})")
        return result, source, [self.evaluate(m, result, source, data, reference, measure=self.opts.quantize == "auto")
                                for m in modes]

    def retry_collapsed(self, evaluated: list[_Evaluated], source: SourceModel, data: _Data,
                        reference: list[np.ndarray], modes: list[str]
                        ) -> tuple[Onnx2tfResult, SourceModel, list[_Evaluated]] | None:
        """A float variant that fails validation with a dynamic batch is often onnx2tf's batch handling
        gone wrong (real exports: correlation 0.26, agreement 0), which no --quantize mode cures: convert
        again with the batch pinned to 1 and validate again before advising anything. Returns the new
        run when it was made (passing or not), None when there is nothing to retry."""
        floats = [e for e in evaluated if e.candidate.mode in ("fp32", "fp16")]
        if not floats or any(e.candidate.passed for e in evaluated) or data.validation.feeds is not None:
            return None
        pins = self._unpinned_batch(source)
        if pins is None:
            return None
        failed = floats[0].candidate
        why = failed.error or "; ".join(failed.failures)
        before = copy.deepcopy(self.shapes)
        self.shapes.pin(pins, "batch pinned to 1: the dynamic-batch conversion failed validation")
        try:
            pinned = self._with_observed_outputs(prepare_copy(self.onnx2tf_model, self.workdir / "model.onnx",
                                                              self.shapes.pins))
            result, pinned = self.run_onnx2tf(pinned, data)
        except ConversionError as exc:
            self.shapes = before
            self.warnings.append(f"{failed.mode} failed validation with a dynamic batch ({why}); converting again "
                                 f"with the batch pinned to 1 failed too: {exc.reason}")
            return None
        self.warnings.append(f"{failed.mode} failed validation with a dynamic batch ({why}); converted again with "
                             "the batch pinned to 1 (the scorer splits larger batches)")
        self.retried_pinned = f"{failed.mode} also failed with the dynamic batch: {why}"
        return result, pinned, [self.evaluate(m, result, pinned, data, reference, measure=self.opts.quantize == "auto")
                                for m in modes]

    def _attempt(self, job: Onnx2tfJob, source: SourceModel) -> Onnx2tfResult:
        done = self.stage("onnx2tf", f"converting with onnx2tf {onnx2tf_version()} ({', '.join(job.variants())})")
        log_tmp = self.workdir / f"onnx2tf-{len(self._logs)}.log"
        try:
            result = run_onnx2tf(job, self.workdir, log_tmp, source, self.opts.timeout_s,
                                 shown_log=self.opts.log or log_path_for(self.opts.out))
        finally:
            done()
            if log_tmp.is_file():
                self._logs.append(read_log(log_tmp))
        self.warnings.extend(result.warnings)
        return result

    def evaluate(self, mode: str, result: Onnx2tfResult, source: SourceModel, data: _Data,
                 reference: list[np.ndarray], measure: bool) -> _Evaluated:
        key = _variant_key(mode, self.opts.int8_io)
        cand = Candidate(mode, VARIANT_SUFFIX[key])
        path = result.files.get(key)
        if path is None:
            cand.error = self.lost_modes.get(mode, "onnx2tf did not produce it")
            return _Evaluated(cand)
        done = self.stage(f"validate {mode}", f"validating {mode} ({path.name})")
        try:
            return self._evaluate(cand, path, source, data, reference, measure)
        finally:
            done()

    def _evaluate(self, cand: Candidate, path: Path, source: SourceModel, data: _Data,
                  reference: list[np.ndarray], measure: bool) -> _Evaluated:
        val = data.validation
        batch = _batch_rows(source.inputs)
        probe_n = batch if batch != VALIDATION_BATCH_ROWS else min(PROBE_ROWS, val.rows)
        try:
            matched = match_interface(
                path.read_bytes(), source.inputs, source.outputs, source.onnx2tf_inputs, source.onnx2tf_outputs,
                _first(val, probe_n),
                self.probe_reference if val.feeds is not None else [r[:probe_n] for r in reference],
            )
        except InterfaceError as exc:
            cand.error = str(exc)
            return _Evaluated(cand)
        cand.size_bytes = len(matched.tflite)
        try:
            runner = LiteRTRunner(matched.tflite, outputs=matched.outputs, batch_dim=source.inputs[0].has_batch_dim)
            got = _run_all(runner.run, val, batch)
        except ConverterError as exc:
            # What the device would hit. Score it on the reference kernels to say how far off it is.
            cand.error = f"LiteRT with XNNPACK (the device default) cannot run it: {str(exc).split(': ', 1)[-1]}"
            try:
                got = _run_all(LiteRTRunner(matched.tflite, delegates=False, outputs=matched.outputs,
                                            batch_dim=source.inputs[0].has_batch_dim).run, val, batch)
                cand.report = compare(source.outputs, reference, got, val.labels, val.source)
                cand.report["xnnpack"] = "refused the model; metrics from the reference kernels"
                cand.failures = failures(cand.report, self.opts.thresholds)
            except ConverterError:
                pass
            return _Evaluated(cand, matched)
        cand.report = compare(source.outputs, reference, got, val.labels, val.source)
        cand.report["interface_mapping"] = matched.method
        cand.failures = failures(cand.report, self.opts.thresholds)
        if measure:
            sample = _first(val, batch if batch != VALIDATION_BATCH_ROWS else 1)
            cand.latency_ms = median_latency_ms(runner.run, sample)
        return _Evaluated(cand, matched)

    # -- choosing and packing ---------------------------------------------------------

    def quantization_field(self, ev: _Evaluated, result: Onnx2tfResult, candidates: list[Candidate],
                           accepted: list[str]) -> dict[str, Any]:
        cand = ev.candidate
        assert ev.matched is not None
        report = dict(cand.report)
        report.update({
            "thresholds": self.opts.thresholds.to_json(),
            "passed": cand.passed,
            "failures": list(cand.failures),
            "size_bytes": cand.size_bytes,
        })
        if cand.latency_ms is not None:
            report["latency_ms_batch1"] = round(cand.latency_ms, 4)
        q: dict[str, Any] = {
            "mode": cand.mode,
            "tflite_variant": cand.variant,
            "io": "int8" if any(s.quantization for s in (*ev.matched.inputs, *ev.matched.outputs)) else "float",
            "converter": {"tool": "onnx2tf", "version": onnx2tf_version(), "args": result.command[1:]},
            "report": report,
        }
        if self.opts.quantize == "auto":
            q["selection"] = {"optimize": self.opts.optimize, "candidates": [c.row() for c in candidates]}
        if accepted:
            q["accepted_despite"] = accepted
        return q

    def diagnose(self, failed: Candidate, source: SourceModel, data: _Data, others: list[Candidate]) -> tuple[str, str]:
        """(why ``failed`` fails, what to try), from its report and the other variants of the same run."""
        reasons = [*([failed.error] if failed.error else []), *failed.failures]
        quantized = failed.mode in ("int8", "dynamic")
        spread = cal.spread_hint(data.calibration or data.validation, source.inputs) if quantized else None
        why = f"{failed.mode} fails validation on {data.validation.rows} rows: {'; '.join(reasons)}"
        if spread:
            why += f" ({spread})"
        hints = []
        if quantized:
            hints.append("standardise the inputs ((x - mean) / std, in the model or before it) and calibrate on "
                         "standardised rows")
        passing = [c.mode for c in sorted(others, key=lambda c: c.size_bytes or 0) if c.passed]
        tried = {failed.mode, *(c.mode for c in others)}
        if passing:
            hints.append(f"--quantize {passing[0]} passes on the same rows ({', '.join(passing)} pass)")
        elif "fp32" not in tried:  # advice never names a mode that was tried and failed the same way
            hints.append("--quantize fp32")
        hints += ["--fallback-onnx to ship the ONNX model for onnxruntime", "--allow-accuracy-drop to ship it anyway"]
        return why, "; ".join(hints)

    def fallback(self, reason: str, source: SourceModel, data: _Data,
                 report: dict[str, Any] | None, candidates: list[Candidate]) -> ConvertResult:
        source_inputs = source.inputs
        opts = self.opts
        done = self.stage("pack", "packing the ONNX model for onnxruntime (fallback)")
        manifest = pack_onnx(
            opts.model, name=opts.name, version=opts.version, keys=opts.keys, out=opts.out,
            chunk_size=opts.chunk_size, golden=_golden(data.validation, source_inputs),
            reason=reason, report=report, architectures=opts.architectures,
            profile_calls=self._profile(data, source_inputs),
            source=self.original_model, rewrites=self.tabular.notes(converted=False),
            outputs=self._with_observed_outputs(source).outputs if self.output_shapes else None,
        )
        done()
        self.warnings.insert(0, f"FALLBACK: wrote an ONNX bundle (onnxruntime backend), not TFLite, because {reason}")
        return ConvertResult(opts.out, manifest, "onnx-fallback", candidates, format_table(candidates, None, None),
                             self.log_path, self.workdir if opts.keep_workdir else None, reason, self.warnings,
                             self.stage_seconds)

    def run(self) -> ConvertResult:
        source, data, reference = self.prepare()
        opts = self.opts  # after prepare: a rewritten tabular model is converted in fp32
        if self.tabular.unconvertible:
            ops = self.tabular.describe_unconvertible()
            if opts.no_fallback:
                raise ConverterError(
                    f"{self.original_model.name}: onnx2tf has no converter for these operators (outside the default "
                    f"ONNX domain): {ops}. Without --no-fallback the converter ships the ONNX model for the "
                    "device's onnxruntime backend (install.sh --with-onnx on the device)")
            return self.fallback(f"onnx2tf has no converter for {ops}", source, data, None, [])
        try:
            result, source = self.run_onnx2tf(source, data)
        except ConversionError as exc:
            if opts.fallback_onnx:
                return self.fallback(exc.reason, source, data, None, [])
            raise
        modes = list(MODES) if opts.quantize == "auto" else [opts.quantize]
        if opts.quantize == "auto" and data.calibration is None:
            modes.remove("int8")
        evaluated = [self.evaluate(m, result, source, data, reference, measure=opts.quantize == "auto") for m in modes]
        for retry in (self.retry_flex_free, self.retry_collapsed):
            retried = retry(evaluated, source, data, reference, modes)
            if retried is not None:
                result, source, evaluated = retried
        candidates = [e.candidate for e in evaluated]
        accepted: list[str] = []
        if opts.quantize == "auto":
            pick = choose(candidates, opts.optimize)
            ref_labels = candidates[0].report.get("labels", {}).get("onnxruntime") if candidates[0].report else None
            table = format_table(candidates, pick, ref_labels)
            if pick is None:
                why = "no variant passes validation: " + "; ".join(
                    f"{c.mode}: {c.error or '; '.join(c.failures)}" for c in candidates
                )
                return self._fail(why, "--fallback-onnx to ship the ONNX model for onnxruntime", data,
                                  source, candidates, None, table)
            chosen = next(e for e in evaluated if e.candidate is pick)
        else:
            chosen = evaluated[0]
            cand = chosen.candidate
            if not cand.passed:
                others = [self.evaluate(m, result, source, data, reference, measure=False).candidate
                          for m in MODES if m != cand.mode and _variant_key(m, opts.int8_io) in result.files]
                table = format_table([cand, *others], None, cand.report.get("labels", {}).get("onnxruntime"))
                why, hints = self.diagnose(cand, source, data, others)
                loadable = cand.error is None and chosen.matched is not None
                if not (opts.allow_accuracy_drop and loadable):
                    return self._fail(why, hints, data, source, [cand, *others], cand.report, table)
                accepted = list(cand.failures)
                self.warnings.append(f"--allow-accuracy-drop: shipping {cand.mode} despite: {'; '.join(accepted)}")
            table = format_table([cand], cand, cand.report.get("labels", {}).get("onnxruntime"))
        assert chosen.matched is not None
        variants = self.variant_requests(chosen, evaluated, result, source, data, reference, candidates)
        done = self.stage("pack", f"packing and signing {chosen.candidate.mode}")
        tflite = self.workdir / "bundle_model.tflite"
        tflite.write_bytes(chosen.matched.tflite)
        manifest = pack_tflite(
            tflite, source=opts.model, provenance=self.original_model, name=opts.name, version=opts.version,
            keys=opts.keys, out=opts.out,
            chunk_size=opts.chunk_size, inputs=chosen.matched.inputs, outputs=chosen.matched.outputs,
            golden=_golden(data.validation, source.inputs),
            validation=data.validation.inputs if data.validation.feeds is None else None,
            max_error=worst_error(chosen.candidate.report) if math.isfinite(worst_error(chosen.candidate.report)) else 0.0,
            quantization=self.quantization_field(chosen, result, candidates, accepted),
            architectures=opts.architectures,
            pinned=self.shapes.to_json(self.onnx_inputs) or None,
            profile_calls=self._profile(data, chosen.matched.inputs),
            rewrites=self.tabular.notes(converted=True),
            variant=variant_name(chosen.candidate.mode), variants=variants, accuracy_budget=opts.accuracy_budget,
            budget_factor=opts.budget_factor,
        )
        done()
        self.warnings += over_budget_warnings(manifest)
        return ConvertResult(opts.out, manifest, chosen.candidate.mode, candidates, table, self.log_path,
                             self.workdir if opts.keep_workdir else None, None, self.warnings, self.stage_seconds)

    def variant_requests(self, chosen: _Evaluated, evaluated: list[_Evaluated], result: Onnx2tfResult,
                         source: SourceModel, data: _Data, reference: list[np.ndarray],
                         candidates: list[Candidate]) -> list[VariantRequest]:
        """The further variants to pack (converter/variants.py): each validated here like the chosen one;
        one that fails, or whose interface differs from the chosen one's (int8 I/O), is left out with a warning."""
        requests: list[VariantRequest] = []
        for mode in wanted_variants(self.opts.variants, self.opts.quantize, chosen.candidate.mode, candidates):
            if mode == "onnx":
                requests.append(VariantRequest("onnx", self.opts.model, {"mode": "onnx", "reason": "packed as a variant"}))
                continue
            ev = next((e for e in evaluated if e.candidate.mode == mode), None)
            if ev is None:
                ev = self.evaluate(mode, result, source, data, reference, measure=False)
            cand = ev.candidate
            why = cand.error or "; ".join(cand.failures)
            differs = ev.matched is not None and chosen.matched is not None and (
                ev.matched.inputs, ev.matched.outputs) != (chosen.matched.inputs, chosen.matched.outputs)
            if differs and not why:
                why = "its tensors differ from the chosen variant's (int8 I/O); variants share one interface"
            if why or ev.matched is None:
                self.warnings.append(f"variant {mode} not packed: {why or 'not converted'}")
                continue
            path = self.workdir / f"variant_{mode}.tflite"
            path.write_bytes(ev.matched.tflite)
            requests.append(VariantRequest(variant_name(mode), path, self.quantization_field(ev, result, candidates, [])))
        return requests

    def _fail(self, why: str, hints: str, data: _Data, source: SourceModel, candidates: list[Candidate],
              report: dict[str, Any] | None, table: str) -> ConvertResult:
        if self.retried_pinned:  # the advice below is for the batch-pinned conversion
            why += f" (with the batch pinned to 1; {self.retried_pinned})"
        if self.opts.fallback_onnx:
            result = self.fallback(why, source, data, report, candidates)
            result.table = table
            return result
        raise AccuracyError(f"{why}. Try: {hints}", {"table": table, "candidates": [c.row() for c in candidates]})


def convert(opts: ConvertOptions, progress: Progress = _silent) -> ConvertResult:
    """Convert, validate, pack and sign; raises a ConverterError (or UsageError) on failure."""
    check_options(opts)
    pipeline = _Pipeline(opts, progress)
    try:
        return pipeline.run()
    finally:
        if not opts.keep_workdir:
            shutil.rmtree(pipeline.workdir, ignore_errors=True)
