"""Run onnx2tf in a subprocess and turn what it prints into variants or one clear error.

onnx2tf calls ``sys.exit``, takes about 1 GB of RAM and leaves TensorFlow state behind,
so it always runs as ``python -m onnx2tf`` with an explicit argument list, in a scratch
working directory, on a copy of the model (it rewrites its ``-i`` file in place). Its
environment puts this interpreter's ``bin/`` first on PATH (it runs ``onnxsim`` by name and
silently skips simplification when that is missing) and points every proxy variable at a
closed local port, so any download attempt fails at once instead of fetching something.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from converter.exceptions import (
    ConversionError,
    NetworkAccessError,
    Onnx2tfCrash,
    Onnx2tfTimeout,
    UnsupportedOperatorError,
)
from converter.source import SourceModel

MODEL_STEM = "model"
OUT_DIR = "out"
DEAD_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens, connections are refused at once
# Variant key -> the suffix onnx2tf gives the file (``<stem>_<suffix>.tflite``).
VARIANT_SUFFIX = {
    "fp32": "float32",
    "fp16": "float16",
    "dynamic": "dynamic_range_quant",
    "int8": "integer_quant",
    "int8-io": "full_integer_quant",
}
DEFAULT_TIMEOUT_S = 3600.0
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class Onnx2tfJob:
    """What to ask onnx2tf for."""

    model: Path
    keep_layout: tuple[str, ...] = ()
    dynamic_range: bool = False
    integer: bool = False
    calibration: Mapping[str, Path] | None = None

    def args(self) -> list[str]:
        """The onnx2tf argument list (without the program)."""
        args = ["-i", self.model.name, "-o", OUT_DIR]
        if self.keep_layout:
            args += ["-k", *self.keep_layout]
        if self.integer:
            if not self.calibration:
                raise ValueError("integer quantization needs calibration data")
            # -oiqt also writes the dynamic-range variant. -iqd/-oqd int8 are the defaults,
            # spelled out because the int8-I/O contract depends on them.
            args += ["-oiqt", "-iqd", "int8", "-oqd", "int8"]
            for name, path in self.calibration.items():
                # Rows are already in the form the model takes: onnx2tf's (x - mean) / std is the identity.
                args += ["-cind", name, path.name, "[0.]", "[1.]"]
        elif self.dynamic_range:
            args += ["-odrqt"]
        return args

    def variants(self) -> tuple[str, ...]:
        """The variant keys this job should produce."""
        if self.integer:
            return ("fp32", "fp16", "dynamic", "int8", "int8-io")
        if self.dynamic_range:
            return ("fp32", "fp16", "dynamic")
        return ("fp32", "fp16")


def onnx2tf_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment onnx2tf runs in: our venv's bin/ first on PATH, every proxy dead."""
    env = dict(os.environ if base is None else base)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, *[p for p in env.get("PATH", "").split(os.pathsep) if p and p != bin_dir]])
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env[var] = DEAD_PROXY
    for var in ("NO_PROXY", "no_proxy"):
        env.pop(var, None)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("CUDA_VISIBLE_DEVICES", "")  # a build host's GPU is not ours to grab
    return env


@dataclass(frozen=True)
class Onnx2tfResult:
    """The files onnx2tf wrote, and what it warned about."""

    files: dict[str, Path]
    command: list[str]
    warnings: list[str]


def run_onnx2tf(job: Onnx2tfJob, workdir: Path, log_path: Path, source: SourceModel | None = None,
                timeout_s: float = DEFAULT_TIMEOUT_S, shown_log: Path | None = None) -> Onnx2tfResult:
    """Run onnx2tf in ``workdir``, its output going to ``log_path``; returns the variants found.

    Errors and warnings name ``shown_log`` (where the caller keeps the log) if given.
    """
    shown = shown_log or log_path
    cmd = [sys.executable, "-m", "onnx2tf", *job.args()]
    ooms_before = oom_kills()
    with open(log_path, "wb") as log:
        log.write(("$ onnx2tf " + " ".join(job.args()) + "\n").encode())
        log.flush()
        try:
            proc = subprocess.run(
                cmd, cwd=workdir, env=onnx2tf_env(), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, timeout=timeout_s, check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise Onnx2tfTimeout(f"onnx2tf did not finish within {timeout_s:.0f} s", shown) from exc
    text = read_log(log_path)
    if proc.returncode != 0:
        ooms_after = oom_kills()
        oom = ooms_before is not None and ooms_after is not None and ooms_after > ooms_before
        raise explain_failure(text, proc.returncode, shown, source, oom_killed=oom)
    out = workdir / OUT_DIR
    files = {k: out / f"{MODEL_STEM}_{suffix}.tflite" for k, suffix in VARIANT_SUFFIX.items()}
    files = {k: p for k, p in files.items() if p.is_file() and p.stat().st_size > 0}
    missing = [k for k in job.variants() if k not in files]
    if "fp32" in missing:
        raise ConversionError("onnx2tf exited 0 but wrote no float32 model", shown)
    warnings = []
    if missing:
        warnings.append(f"onnx2tf did not produce the {', '.join(missing)} variant(s); see {shown}")
    if "Failed to optimize the onnx file" in text:
        warnings.append("onnx2tf could not run onnxsim, so the model was converted unsimplified")
    return Onnx2tfResult(files, ["onnx2tf", *job.args()], warnings)


def read_log(path: Path) -> str:
    """onnx2tf's output without its terminal colour codes."""
    return _ANSI_RE.sub("", path.read_text(encoding="utf-8", errors="replace"))


def _last_match(pattern: str, text: str) -> re.Match[str] | None:
    matches = list(re.finditer(pattern, text, re.MULTILINE))
    return matches[-1] if matches else None


def _exception_line(lines: Sequence[str]) -> str | None:
    """The most informative ``SomethingError: message`` line of a traceback."""
    for i in range(len(lines) - 1, -1, -1):
        m = re.match(r"^(\w+(?:Error|Exception)): (.*)$", lines[i])
        if m:
            message = m.group(2).strip()
            if message.startswith("Exception encountered when calling layer"):
                following = next((ln.strip() for ln in lines[i + 1 : i + 6] if ln.strip()), "")
                message = following or message
            return f"{m.group(1)}: {message}"
    return None


def _last_stage(lines: Sequence[str]) -> str | None:
    """What onnx2tf was doing when it died, from its last progress lines."""
    for line in reversed(lines[-400:]):
        m = re.search(r"onnx_op_type: (\w+)", line)
        if m:
            return f"converting a {m.group(1)} node"
        if "quantiz" in line.lower():
            return "quantizing"
    return None


def _counter(text: str, key: str) -> int | None:
    for line in text.splitlines():
        k, _, value = line.partition(" ")
        if k == key and value.strip().isdigit():
            return int(value)
    return None


def cgroup_oom_kills() -> int | None:
    """The out-of-memory kill count of this process's cgroup (cgroup v2), if readable."""
    try:
        rel = Path("/proc/self/cgroup").read_text().strip().split("::", 1)[-1]
        return _counter((Path("/sys/fs/cgroup") / rel.lstrip("/") / "memory.events").read_text(), "oom_kill")
    except (OSError, IndexError):
        return None


def kernel_oom_kills(vmstat: Path = Path("/proc/vmstat")) -> int | None:
    """The kernel's whole-machine out-of-memory kill count (``oom_kill`` in /proc/vmstat, Linux 4.13+):
    a kill by the global OOM killer, which a build host without a memory cgroup limit gets, counts
    here and not in any cgroup's ``memory.events``."""
    try:
        return _counter(vmstat.read_text(), "oom_kill")
    except OSError:
        return None


def oom_kills() -> int | None:
    """Out-of-memory kills seen by the cgroup and the whole kernel together (both only ever rise:
    the sum rises when either does); None when neither can be read."""
    counts = [c for c in (cgroup_oom_kills(), kernel_oom_kills()) if c is not None]
    return sum(counts) if counts else None


def explain_failure(text: str, returncode: int, log_path: Path, source: SourceModel | None = None,
                    oom_killed: bool = False) -> ConversionError:
    """One error that names what onnx2tf choked on, read from its output.

    A death by signal is a crash named after its signal; out of memory is said only with evidence
    (the cgroup's or the kernel's OOM-kill count rose, or Python raised MemoryError).
    """
    name = source.original_name if source is not None else (lambda n: n)
    lines = text.splitlines()
    if re.search(r"requests\.exceptions\.|ConnectionError|ProxyError|Max retries exceeded", text):
        return NetworkAccessError(
            "onnx2tf tried to download something and was stopped (the converter never downloads)", log_path,
            "this model's shape triggers a fetch the converter does not pre-empt; please report it",
        )
    m = _last_match(r"ERROR: (\w+) OP is not yet implemented", text)
    if m:
        op = m.group(1)
        node_m = _last_match(rf"onnx_op_type: {re.escape(op)}\s+onnx_op_name: (\S+)", text)
        nodes = [name(node_m.group(1))] if node_m else list(source.op_nodes.get(op, [])) if source else []
        where = f" (node{'s' if len(nodes) > 1 else ''} {', '.join(repr(n) for n in nodes[:5])})" if nodes else ""
        return UnsupportedOperatorError(
            f"onnx2tf {onnx2tf_version()} has no converter for the ONNX operator {op}{where}", op,
            nodes[0] if nodes else None, log_path,
            "rewrite that part of the model with supported operators, or pass --fallback-onnx to ship the ONNX "
            "model for onnxruntime",
        )
    signum = -returncode if returncode < 0 else (returncode - 128 if 128 < returncode < 160 else None)
    if signum is not None:
        try:
            sig_name = signal.Signals(signum).name
        except ValueError:
            sig_name = f"signal {signum}"
        stage = _last_stage(lines)
        where = f" while {stage}" if stage else ""
        if sig_name == "SIGKILL":
            if oom_killed or "MemoryError" in text:
                return Onnx2tfCrash(
                    f"onnx2tf was killed by the out-of-memory killer (SIGKILL){where}", sig_name, log_path,
                    "it needs about 1 GB of RAM for small models and more for large ones: free memory or add swap",
                )
            return Onnx2tfCrash(
                f"onnx2tf was killed by SIGKILL{where} (no out-of-memory kill was recorded: something outside "
                "stopped it)", sig_name, log_path,
            )
        description = {"SIGSEGV": "segmentation fault", "SIGABRT": "abort", "SIGBUS": "bus error",
                       "SIGILL": "illegal instruction", "SIGFPE": "arithmetic fault"}.get(sig_name)
        return Onnx2tfCrash(
            f"onnx2tf crashed with {sig_name}{f' ({description})' if description else ''}{where}", sig_name,
            log_path, "a crash inside onnx2tf/TensorFlow on this model, not a problem of the machine: try another "
            "--quantize mode, or --fallback-onnx to ship the ONNX model for onnxruntime",
        )
    if "MemoryError" in text:
        return ConversionError(
            "onnx2tf ran out of memory (MemoryError)", log_path,
            "it needs about 1 GB of RAM for small models and more for large ones",
        )
    node_m = _last_match(r"ERROR: onnx_op_name: (\S+)", text)
    reason = _exception_line(lines)
    advice = None
    if "Dimension -1 must be >= 0" in text:
        advice = "a dynamic dimension onnx2tf cannot handle: export the model with fixed shapes"
    if node_m:
        node = node_m.group(1)
        type_m = _last_match(rf"onnx_op_type: (\w+)\s+onnx_op_name: {re.escape(node)}\s*$", text)
        op = f" ({type_m.group(1)})" if type_m else ""
        return ConversionError(f"onnx2tf failed on node '{name(node)}'{op}: {reason or 'no reason given'}", log_path, advice)
    tail = reason or next((ln.strip() for ln in reversed(lines) if ln.strip()), "no output")
    return ConversionError(f"onnx2tf failed (exit {returncode}): {tail}", log_path, advice)


def onnx2tf_version() -> str:
    """The installed onnx2tf version."""
    try:
        return metadata.version("onnx2tf")
    except metadata.PackageNotFoundError:  # pragma: no cover - the converter extra pins it
        return "unknown"
