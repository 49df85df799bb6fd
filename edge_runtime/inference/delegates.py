"""LiteRT external delegates: loading them, and what a device can run.

* :func:`open_external` loads a delegate through LiteRT's external-delegate API
  (``load_delegate(library, options)``), after checking that the library opens and has the
  plugin entry points, so that each way of failing gets its own plain reason.
* :func:`plan` is the ordered list a model is loaded with: the config's ``delegates``, else
  the manifest's ``runtime.delegates`` (names, each resolved by :func:`resolve` to a file in
  the config's ``[inference] delegate_dirs``); :func:`threads` likewise for XNNPACK threads.
* :class:`InstallCheck` refuses, at install, a bundle whose golden data or reference profile
  does not read within its limits, or that needs a delegate this device cannot load (an
  Edge-TPU-compiled model, or ``runtime.requires_delegate``). Opening a library runs its
  constructor, so that check runs in a child process (:mod:`edge_runtime.inference.probe`).

Trying the list in order, with the CPU last, is :func:`edge_runtime.inference.backend.load_backend`.
"""

from __future__ import annotations

import ctypes
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from edge_runtime.config import InferenceConfig, ModelConfig
from edge_runtime.exceptions import AcceleratorError, DelegateError, InferenceError
from edge_runtime.spec.delegates import (
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


def resolve(spec: DelegateSpec, inference: InferenceConfig | None = None) -> DelegateSpec:
    """A bundle's request by name made loadable: ``library`` set to the file the device config
    maps the name to (``delegate_libraries``, else a well-known name such as ``edgetpu``), found
    in ``delegate_dirs``; else ``unavailable`` says why not. Built-ins and the config's own
    entries (which carry their library) are returned as they are."""
    if not spec.requested:
        return spec
    inf = inference or InferenceConfig()
    file = inf.delegate_libraries.get(spec.name) or KNOWN_LIBRARIES.get(spec.name)
    if file is None:
        return dataclasses.replace(spec, unavailable=(
            f"delegate '{spec.name}': the bundle asks for it by name and this device maps no library to it "
            "([inference] delegate_libraries)"))
    for d in inf.delegate_dirs:
        path = Path(d) / file
        if path.is_file():
            return dataclasses.replace(spec, library=str(path))
    return dataclasses.replace(spec, unavailable=(
        f"delegate '{spec.name}': cannot load {file}: not in [inference] delegate_dirs {list(inf.delegate_dirs)}"))


def probe_library(spec: DelegateSpec) -> None:
    """Raise DelegateError unless ``spec``'s library opens and exports both plugin entry points."""
    if spec.library is None:
        raise DelegateError(spec.unavailable or f"delegate '{spec.name}' names no library", "missing")
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


def plan(mcfg: ModelConfig, manifest: Manifest, inference: InferenceConfig | None = None) -> tuple[DelegateSpec, ...]:
    """The delegates a model is loaded with, in order: the config's, else the bundle's requests
    resolved in the config's ``[inference]`` directories (:func:`resolve`)."""
    if mcfg.delegates:
        return parse_delegates(mcfg.delegates, "delegates")  # validated when the config was read
    return tuple(resolve(s, inference) for s in manifest.runtime.delegates)


def external(specs: tuple[DelegateSpec, ...]) -> list[DelegateSpec]:
    """The entries of a plan that load a library (what a probe process must try first)."""
    return [s for s in specs if not s.builtin]


def threads(mcfg: ModelConfig, manifest: Manifest) -> int:
    """XNNPACK threads per interpreter: the config's, else the bundle's, else 1."""
    return mcfg.num_threads or manifest.runtime.threads or 1


def required(manifest: Manifest, edgetpu_op: bool) -> str | None:
    """The delegate a model cannot run without (``runtime.requires_delegate``, or ``edgetpu``
    when the model holds the Edge TPU compiler's custom operator)."""
    return manifest.runtime.requires_delegate or ("edgetpu" if edgetpu_op else None)


class InstallCheck:
    """Refuses, before anything is written, a bundle this device cannot use (for ModelStore).

    First its ``golden.npz`` and ``profile.json`` are read within their limits
    (:func:`edge_runtime.inference.artifacts.check_artifacts`). Then, when the bundle needs a
    delegate, a child process opens the library and looks for the plugin entry points
    (a crashing constructor fails the check, not the installer); it does not create the
    delegate, which for an Edge TPU would claim the accelerator the running daemon may be using.
    """

    def __init__(self, models: Mapping[str, ModelConfig], inference: InferenceConfig | None = None) -> None:
        self.models = dict(models)
        self.inference = inference or InferenceConfig()

    def __call__(self, bundle: Bundle) -> None:
        """Raise BundleError/ManifestError for a bad artifact and AcceleratorError naming the
        missing delegate; return when the device can use the bundle."""
        from edge_runtime.inference.artifacts import check_artifacts
        from edge_runtime.inference.probe import probe_library_isolated

        manifest = bundle.manifest
        check_artifacts(bundle)
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
        spec = next((s for s in plan(mcfg, manifest, self.inference) if s.name == need), None)
        if spec is None and (need in KNOWN_LIBRARIES or need in self.inference.delegate_libraries):
            spec = resolve(DelegateSpec(need), self.inference)
        if spec is None or spec.builtin:
            raise AcceleratorError(
                f"{what}, which neither [models.{manifest.name}] delegates nor the bundle's runtime.delegates names"
            )
        try:
            probe_library_isolated(spec, self.inference.delegate_probe_timeout_s)
        except DelegateError as exc:
            raise AcceleratorError(f"{what}; this device cannot load it: {exc}") from exc


__all__ = ["XNNPACK", "InstallCheck", "external", "open_external", "plan", "probe_library", "required", "resolve", "threads"]
