"""Pick a backend by bundle format and, for TFLite, the first delegate that can run the model.

The interface itself is :class:`edge_runtime.inference.base.Backend` (re-exported here);
the concrete backends import ``base``, never this module, so there is no import circle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from edge_runtime.bundle.manifest import Manifest
from edge_runtime.exceptions import DelegateError, InferenceError, SelfTestError
from edge_runtime.inference.base import Backend
from edge_runtime.inference.delegates import XNNPACK
from edge_runtime.spec.delegates import DelegateSpec, Skipped

# A check run on each candidate before it is accepted (the golden self-test and one run):
# raising SelfTestError or InferenceError skips that delegate.
Check = Callable[[Backend], object]


def _skipped_text(skipped: Sequence[Skipped]) -> str:
    return "; ".join(f"{s.delegate} skipped: {s.reason}" for s in skipped)


def load_backend(
    manifest: Manifest,
    model: Path | bytes,
    num_threads: int = 1,
    delegates: Sequence[DelegateSpec] = (),
    check: Check | None = None,
    *,
    fallback: bool = True,
    on_try: Callable[[DelegateSpec], object] | None = None,
) -> Backend:
    """Load ``model`` (a verified model file, or its bytes) with the backend for its format.

    For TFLite, ``delegates`` are tried in order; one whose library is missing, is not a
    delegate, refuses the model, fails to allocate or run it, or fails ``check`` is skipped
    with its reason (``backend.skipped``). With ``fallback``, the CPU (XNNPACK) is the last
    resort when the list names no built-in. ``backend.delegate`` says what runs the model.
    ``on_try`` hears of each delegate before it is loaded (the probe process reports it, so
    that a crash names its delegate).
    """
    if manifest.format == "onnx":
        from edge_runtime.inference.onnx import OnnxBackend

        onnx_backend: Backend = OnnxBackend(manifest, model, num_threads)
        onnx_backend.delegate = "onnxruntime"
        onnx_backend.skipped = tuple(
            Skipped(s.name, "unsupported", "an ONNX bundle runs on onnxruntime's CPU provider; delegates are for TFLite")
            for s in delegates if not s.builtin
        )
        if check is not None:
            try:
                check(onnx_backend)
            except BaseException:
                onnx_backend.close()
                raise
        return onnx_backend
    if manifest.format != "tflite":
        raise InferenceError(f"no backend for format {manifest.format!r}")
    from edge_runtime.inference.litert import LiteRTBackend

    candidates = list(delegates) or [XNNPACK]
    if fallback and not any(s.builtin for s in candidates):
        candidates.append(XNNPACK)
    skipped: list[Skipped] = []
    for i, spec in enumerate(candidates):
        last = i == len(candidates) - 1
        backend: Backend | None = None
        if on_try is not None:
            on_try(spec)
        try:
            backend = LiteRTBackend(manifest, model, num_threads, spec)
            if check is not None:
                check(backend)
        except (InferenceError, RuntimeError, ValueError) as exc:
            if backend is not None:
                backend.close()
            if not skipped and last:
                raise  # one candidate (the usual CPU case): its own error, unchanged
            kind = exc.kind if isinstance(exc, DelegateError) else "selftest" if isinstance(exc, SelfTestError) else "failed"
            skipped.append(Skipped(spec.name, kind, " ".join(str(exc).split())[:500]))
            if last:
                error = SelfTestError if isinstance(exc, SelfTestError) else InferenceError
                raise error(f"no delegate could run {manifest.name} v{manifest.version}: {_skipped_text(skipped)}") from exc
            continue
        backend.delegate = spec.name
        backend.skipped = tuple(skipped)
        return backend
    raise InferenceError("no delegate to try")  # unreachable: candidates is never empty


__all__ = ["Backend", "Check", "load_backend"]
