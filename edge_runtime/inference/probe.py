"""Load delegates in a child process, so that one that crashes cannot take the caller down.

Opening a delegate library runs its constructor, and creating the delegate runs its vendor
code: either may segfault. ``models install`` (and the install check the update client runs
inside the daemon) must then report a failed version, not die half-way with the version
installed and neither active nor failed. So they run that part here, in
``python -m edge_runtime.inference.probe``:

* :func:`probe_library_isolated`: open the library and look for the plugin entry points;
* :func:`selftest_isolated`: load the model on its delegate plan and run the golden
  self-test (what :func:`edge_runtime.inference.selftest.selftest_version` does in-process).

The child reads one JSON request on stdin and writes JSON lines on stdout: ``{"trying":
NAME}`` before each delegate, then ``{"ok": ...}`` or ``{"error": ..., "type": ...}``. A child
killed by a signal is reported as ``delegate NAME crashed the probe process (signal 11,
SIGSEGV)``, naming the delegate it was trying.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from edge_runtime.exceptions import (
    BundleError,
    DelegateError,
    EdgeRuntimeError,
    InferenceError,
    ManifestError,
    SelfTestError,
)
from edge_runtime.spec.delegates import DelegateSpec

MAX_PROBE_OUTPUT_BYTES = 256 * 1024  # what is kept of the child's stdout/stderr
_ERRORS: dict[str, type[EdgeRuntimeError]] = {
    "SelfTestError": SelfTestError, "DelegateError": DelegateError, "InferenceError": InferenceError,
    "BundleError": BundleError, "ManifestError": ManifestError,
}


def _spec_json(spec: DelegateSpec) -> dict[str, Any]:
    return {"name": spec.name, "library": spec.library, "options": dict(spec.options), "unavailable": spec.unavailable}


def _spec_from_json(obj: dict[str, Any]) -> DelegateSpec:
    return DelegateSpec(obj["name"], obj["library"], tuple(obj["options"].items()), obj["unavailable"])


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _run_child(request: dict[str, Any], timeout_s: float, what: str) -> dict[str, Any]:
    """Run the probe child on ``request``; its last result line, or DelegateError when it died."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "edge_runtime.inference.probe"], input=json.dumps(request).encode(),
            capture_output=True, timeout=timeout_s, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise DelegateError(f"{what}: the probe process did not finish within {timeout_s:g} s", "failed") from exc
    except OSError as exc:
        raise DelegateError(f"{what}: cannot start the probe process: {exc}", "failed") from exc
    lines = []
    for raw in proc.stdout[-MAX_PROBE_OUTPUT_BYTES:].splitlines():
        try:
            obj = json.loads(raw)
        except ValueError:
            continue  # a delegate's own prints
        if isinstance(obj, dict):
            lines.append(obj)
    trying = next((x["trying"] for x in reversed(lines) if "trying" in x), None)
    result = next((x for x in reversed(lines) if "ok" in x or "error" in x), None)
    if proc.returncode < 0 or (result is None and proc.returncode != 0):
        how = (f"signal {-proc.returncode}, {_signal_name(-proc.returncode)}" if proc.returncode < 0
               else f"exit status {proc.returncode}")
        culprit = f"delegate '{trying}'" if trying else what
        tail = " ".join(proc.stderr[-400:].decode("utf-8", "replace").split())
        raise DelegateError(f"{culprit} crashed the probe process ({how})" + (f": {tail}" if tail and proc.returncode > 0 else ""),
                            "crashed")
    if result is None:
        raise DelegateError(f"{what}: the probe process gave no answer", "failed")
    return result


def _raise_from(result: dict[str, Any]) -> None:
    if "error" in result:
        cls = _ERRORS.get(str(result.get("type")), InferenceError)
        message = str(result["error"])
        if cls is DelegateError:
            raise DelegateError(message, str(result.get("kind", "failed")))
        raise cls(message)


def probe_library_isolated(spec: DelegateSpec, timeout_s: float) -> None:
    """:func:`edge_runtime.inference.delegates.probe_library` in a child process: DelegateError
    unless the library opens and has the entry points, or when opening it kills the child."""
    if spec.library is None:  # nothing to open: the reason is known without a child
        from edge_runtime.inference.delegates import probe_library

        probe_library(spec)
        return
    _raise_from(_run_child({"mode": "library", "delegate": _spec_json(spec)}, timeout_s, f"delegate '{spec.name}'"))


def selftest_isolated(manifest_bytes: bytes, model: Path | bytes, golden_bytes: bytes | None, threads: int,
                      plan: tuple[DelegateSpec, ...], timeout_s: float, what: str,
                      variant: str | None = None) -> dict[str, Any]:
    """Load the model on ``plan`` and run its golden self-test in a child process; the delegate
    that serves it and those skipped (``{"delegate", "skipped"}``), or the child's error
    (SelfTestError, DelegateError, ...) raised here, a crash included."""
    with tempfile.TemporaryDirectory(prefix="edge-probe-") as tmp:
        d = Path(tmp)
        (d / "manifest.json").write_bytes(manifest_bytes)
        if isinstance(model, bytes):
            (d / "model").write_bytes(model)
            model = d / "model"
        golden = None
        if golden_bytes is not None:
            (d / "golden.npz").write_bytes(golden_bytes)
            golden = str(d / "golden.npz")
        request = {"mode": "selftest", "manifest": str(d / "manifest.json"), "model": str(model), "golden": golden,
                   "threads": threads, "delegates": [_spec_json(s) for s in plan], "variant": variant}
        result = _run_child(request, timeout_s, what)
    _raise_from(result)
    return result


# -- the child -----------------------------------------------------------------------------


def _say(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _child_selftest(req: dict[str, Any]) -> dict[str, Any]:
    from edge_runtime.bundle.manifest import parse_manifest
    from edge_runtime.inference.backend import load_backend
    from edge_runtime.inference.selftest import run_selftest

    manifest = parse_manifest(Path(req["manifest"]).read_bytes())
    if req.get("variant"):  # one of the bundle's variants: its format and golden data
        manifest = manifest.for_variant(str(req["variant"]))
    golden = Path(req["golden"]).read_bytes() if req["golden"] else None
    plan = tuple(_spec_from_json(s) for s in req["delegates"])
    backend = load_backend(manifest, Path(req["model"]), int(req["threads"]), plan,
                           lambda b: run_selftest(b, manifest, golden), on_try=lambda s: _say({"trying": s.name}))
    try:
        return {"ok": True, "delegate": backend.delegate, "skipped": [s.to_json() for s in backend.skipped]}
    finally:
        backend.close()


def main() -> int:
    """The child: one request on stdin, JSON lines on stdout; 0 with an answer, 1 with an error."""
    try:
        req = json.loads(sys.stdin.buffer.read())
        if req["mode"] == "library":
            from edge_runtime.inference.delegates import probe_library

            spec = _spec_from_json(req["delegate"])
            _say({"trying": spec.name})
            probe_library(spec)
            _say({"ok": True})
        else:
            _say(_child_selftest(req))
    except DelegateError as exc:
        _say({"error": str(exc), "type": "DelegateError", "kind": exc.kind})
        return 1
    except EdgeRuntimeError as exc:
        _say({"error": str(exc), "type": type(exc).__name__})
        return 1
    except (OSError, ValueError, KeyError, TypeError) as exc:
        _say({"error": f"probe: {exc}", "type": "InferenceError"})
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
