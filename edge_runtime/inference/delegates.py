"""LiteRT external delegates: loading them, and what a device can run.

* :func:`open_external` loads a delegate through LiteRT's external-delegate API
  (``load_delegate(library, options)``), after checking that the library opens and has the
  plugin entry points, so that each way of failing gets its own plain reason.
* :func:`plan` is the ordered list a model is loaded with: the config's ``delegates``, else
  the manifest's ``runtime.delegates``; :func:`threads` likewise for XNNPACK threads.
* :class:`InstallCheck` refuses, at install, a bundle that needs a delegate this device
  cannot load (an Edge-TPU-compiled model, or ``runtime.requires_delegate``).

Trying the list in order, with the CPU last, is :func:`edge_runtime.inference.backend.load_backend`.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from edge_runtime.config import ModelConfig
from edge_runtime.exceptions import AcceleratorError, DelegateError, InferenceError
from edge_runtime.inference.delegate_spec import (
    KNOWN_LIBRARIES,
    CustomOpScanner,
    DelegateSpec,
    parse_delegates,
)

if TYPE_CHECKING:
    from edge_runtime.bundle.manifest import Manifest
    from edge_runtime.bundle.reader import Bundle

CREATE = "tflite_plugin_create_delegate"
DESTROY = "tflite_plugin_destroy_delegate"
XNNPACK = DelegateSpec("xnnpack")


def _load_delegate_fn() -> Any:
    try:
        from ai_edge_litert.interpreter import load_delegate
    except ImportError:
        try:
            from tflite_runtime.interpreter import load_delegate
        except ImportError as exc:
            raise InferenceError("no LiteRT interpreter installed: pip install ai-edge-litert (or tflite-runtime)") from exc
    return load_delegate


def probe_library(spec: DelegateSpec) -> None:
    """Raise DelegateError unless ``spec``'s library opens and exports both plugin entry points."""
    assert spec.library is not None
    try:
        lib = ctypes.CDLL(spec.library)
    except OSError as exc:
        raise DelegateError(f"delegate '{spec.name}': cannot load {spec.library}: {exc}", "missing") from exc
    missing = [sym for sym in (CREATE, DESTROY) if not hasattr(lib, sym)]
    if missing:
        raise DelegateError(
            f"delegate '{spec.name}': {spec.library} is not a TFLite external delegate (no {', '.join(missing)})",
            "not_a_delegate",
        )


def open_external(spec: DelegateSpec) -> Any:
    """A loaded external delegate, for ``Interpreter(experimental_delegates=[...])``."""
    probe_library(spec)
    load_delegate = _load_delegate_fn()
    try:
        return load_delegate(spec.library, dict(spec.options))
    except ValueError as exc:  # tflite_plugin_create_delegate returned NULL; LiteRT adds what it reported
        detail = " ".join(str(exc).split())
        raise DelegateError(f"delegate '{spec.name}' refused to start: {detail}", "refused") from exc
    except (OSError, AttributeError, RuntimeError) as exc:
        raise DelegateError(f"delegate '{spec.name}': {exc}", "failed") from exc


def plan(mcfg: ModelConfig, manifest: Manifest) -> tuple[DelegateSpec, ...]:
    """The delegates a model is loaded with, in order: the config's, else the bundle's."""
    if mcfg.delegates:
        return parse_delegates(mcfg.delegates, "delegates")  # validated when the config was read
    return manifest.runtime.delegates


def threads(mcfg: ModelConfig, manifest: Manifest) -> int:
    """XNNPACK threads per interpreter: the config's, else the bundle's, else 1."""
    return mcfg.num_threads or manifest.runtime.threads or 1


def required(manifest: Manifest, edgetpu_op: bool) -> str | None:
    """The delegate a model cannot run without (``runtime.requires_delegate``, or ``edgetpu``
    when the model holds the Edge TPU compiler's custom operator)."""
    return manifest.runtime.requires_delegate or ("edgetpu" if edgetpu_op else None)


class InstallCheck:
    """Refuses a bundle that needs a delegate this device cannot load (for ModelStore).

    The check opens the library and looks for the plugin entry points; it does not create the
    delegate, which for an Edge TPU would claim the accelerator the running daemon may be using.
    """

    def __init__(self, models: Mapping[str, ModelConfig]) -> None:
        self.models = dict(models)

    def __call__(self, bundle: Bundle) -> None:
        """Raise AcceleratorError naming the missing delegate; return when the device has it."""
        manifest = bundle.manifest
        edgetpu_op = False
        # An encrypted model cannot be scanned before install: its runtime.requires_delegate decides.
        if manifest.format == "tflite" and manifest.model_file in manifest.artifacts:
            scanner = CustomOpScanner()
            bundle.copy_artifact(manifest.model_file, cast(BinaryIO, scanner))
            edgetpu_op = scanner.found
        need = required(manifest, edgetpu_op)
        if need is None:
            return
        why = "it is compiled for the Edge TPU (edgetpu-custom-op)" if edgetpu_op and need == "edgetpu" else (
            f"its manifest says runtime.requires_delegate = {need!r}")
        what = f"{manifest.name} v{manifest.version} needs the '{need}' delegate ({why})"
        mcfg = self.models.get(manifest.name, ModelConfig())
        spec = next((s for s in plan(mcfg, manifest) if s.name == need), None)
        if spec is None and need in KNOWN_LIBRARIES:
            spec = DelegateSpec(need, KNOWN_LIBRARIES[need])
        if spec is None or spec.library is None:
            raise AcceleratorError(
                f"{what}, which neither [models.{manifest.name}] delegates nor the bundle's runtime.delegates names"
            )
        try:
            probe_library(spec)
        except DelegateError as exc:
            raise AcceleratorError(f"{what}; this device cannot load it: {exc}") from exc


__all__ = ["XNNPACK", "InstallCheck", "open_external", "plan", "probe_library", "required", "threads"]
