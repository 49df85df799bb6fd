"""The bundle manifest: a typed model of ``manifest.json`` and its validation.

Pure code: bytes in, a :class:`Manifest` or a :class:`ManifestError` out.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from edge_runtime.bundle.crypto import ENC_SUFFIX, Encryption, parse_encryption
from edge_runtime.exceptions import CanonicalJSONError, ManifestError
from edge_runtime.spec.delegates import RuntimeHints, parse_runtime
from edge_runtime.spec.tensors import TensorSpec, parse_tensor_spec
from edge_runtime.trust.canonical import canonical_json, parse_json_object

MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
ARTIFACT_FILES = {"tflite": "model.tflite", "onnx": "model.onnx"}
# Golden self-test data too large to sit in the manifest travels as its own hashed artifact.
GOLDEN_FILE = "golden.npz"
# The reference profile of the validation data, what drift is measured against (docs/monitoring.md).
PROFILE_FILE = "profile.json"
MAX_PROFILE_BYTES = 1024 * 1024
PLAINTEXT_ARTIFACTS = frozenset({*ARTIFACT_FILES.values(), GOLDEN_FILE, PROFILE_FILE})
# An encrypted bundle carries ``<name>.enc`` instead (bundle/crypto.py): names a runtime without
# encryption refuses at install, before anything is written, instead of loading ciphertext.
ALLOWED_ARTIFACTS = PLAINTEXT_ARTIFACTS | frozenset(n + ENC_SUFFIX for n in PLAINTEXT_ARTIFACTS)
FORMATS = frozenset(ARTIFACT_FILES)
DEFAULT_CHUNK_SIZE = 256 * 1024
MAX_CHUNK_SIZE = 64 * 1024 * 1024
MIN_CHUNK_SIZE = 1024
# What a device accepts (bundles made before golden.npz existed carried golden data inline).
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
# What the packer aims for: bundles it writes keep their manifest under this (checked by the converter).
TARGET_MANIFEST_BYTES = 64 * 1024
# Golden data inline in the manifest at most this many bytes of JSON; beyond, it goes to golden.npz.
MAX_INLINE_GOLDEN_BYTES = 16 * 1024
MAX_GOLDEN_BYTES = 32 * 1024 * 1024
# What golden.npz may hold once read: the total of its arrays (edge_runtime.bundle.npz checks the
# sizes it declares before inflating anything, whatever the file's own length).
MAX_GOLDEN_ARRAY_BYTES = 64 * 1024 * 1024
MAX_SIGNATURE_BYTES = 64 * 1024
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
# Faithful variants of one model (docs/store-and-bundles.md "Variants"): each further variant's
# model file and golden file have these names, so that the artifact check stays a closed rule.
VARIANT_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}\Z")
VARIANT_FILE_RE = re.compile(
    r"^(?:model-[a-z0-9][a-z0-9-]{0,31}\.(?:tflite|onnx)|golden-[a-z0-9][a-z0-9-]{0,31}\.npz)\Z"
)
MAX_VARIANTS = 8
QUANTIZE_MODES = ("fp32", "fp16", "dynamic", "int8")
SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")


@dataclass(frozen=True)
class Artifact:
    """One file of a bundle: its length, whole-file sha256 and per-chunk sha256."""

    file: str
    length: int
    sha256: str
    chunk_size: int
    chunk_sha256: tuple[str, ...]

    @property
    def chunk_count(self) -> int:
        """How many chunks the file has."""
        return len(self.chunk_sha256)

    def chunk_length(self, index: int) -> int:
        """The length of chunk ``index`` (the last one may be short)."""
        start = index * self.chunk_size
        return max(0, min(self.chunk_size, self.length - start))

    def to_json(self) -> dict[str, Any]:
        """The manifest form."""
        return {
            "length": self.length,
            "sha256": self.sha256,
            "chunk_size": self.chunk_size,
            "chunk_sha256": list(self.chunk_sha256),
        }


@dataclass(frozen=True)
class Golden:
    """Golden self-test samples: inputs, expected outputs and a tolerance.

    Either inline (``inputs``/``outputs`` as ``{name: {shape, data}}``) or, with ``file`` set,
    in the bundle's ``golden.npz`` artifact (arrays ``input_<i>``/``output_<i>`` in manifest
    order), hashed and signed like the model file.
    """

    inputs: dict[str, dict[str, Any]]
    outputs: dict[str, dict[str, Any]]
    atol: float
    rtol: float
    file: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The manifest form."""
        if self.file is not None:
            return {"file": self.file, "atol": self.atol, "rtol": self.rtol}
        # Copies: callers may edit the result, and this object is frozen.
        return copy.deepcopy({"inputs": self.inputs, "outputs": self.outputs, "atol": self.atol, "rtol": self.rtol})


@dataclass(frozen=True)
class Variant:
    """One faithful variant of the model: its format, model file, quantization report and golden
    self-test. Every variant shares the manifest's interface (inputs and outputs)."""

    name: str
    format: str
    file: str
    quantization: dict[str, Any]
    golden: Golden | None

    @property
    def max_abs_error(self) -> float | None:
        """The converter's measured error against the reference (onnxruntime), when it recorded one."""
        return recorded_max_abs_error(self.quantization)


def recorded_max_abs_error(quantization: dict[str, Any]) -> float | None:
    """The max abs error a ``quantization`` field records against the reference (its ``accuracy``,
    else its ``report``); a non-finite one is never within a budget (``max()`` would drop a NaN)."""
    for key in ("accuracy", "report"):
        section = quantization.get(key)
        value = section.get("max_abs_error") if isinstance(section, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value) if math.isfinite(value) else math.inf
    return None


def primary_variant_name(obj: dict[str, Any]) -> str:
    """The name of the manifest's own (top-level) variant: its ``variant`` field, else one made of
    the format and the quantization mode (``tflite-fp16``), else the format (``onnx``)."""
    name = obj.get("variant")
    if isinstance(name, str):
        return name
    q = obj.get("quantization")
    mode = q.get("mode") if isinstance(q, dict) else None
    fmt = str(obj.get("format"))
    return f"{fmt}-{mode}" if fmt == "tflite" and mode in QUANTIZE_MODES else fmt


@dataclass(frozen=True)
class Manifest:
    """A validated manifest.

    ``variants`` lists every faithful variant, the top-level one first (a manifest without a
    ``variants`` field has just that one). :meth:`for_variant` gives the view a backend loads:
    the same manifest with the variant's format, model file, quantization and golden data; its
    JSON stays the signed manifest's.
    """

    name: str
    version: int
    created: str
    format: str
    artifacts: dict[str, Artifact]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    quantization: dict[str, Any]
    golden: Golden | None
    compatible: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    # The optional ``runtime`` object (threads, delegates, requires_delegate), validated; its
    # JSON form stays in ``extra`` so that to_json() gives back what was signed.
    runtime: RuntimeHints = field(default_factory=RuntimeHints)
    # The optional ``encryption`` object (bundle/crypto.py), validated; its JSON stays in ``extra``.
    encryption: Encryption | None = None
    variants: tuple[Variant, ...] = ()
    # Set on a view of one variant (for_variant): its name, and the signed manifest it came from.
    variant: str | None = None
    base: Manifest | None = None
    # The largest error against the reference any variant may have to be served (``accuracy_budget``).
    budget_max_abs_error: float | None = None

    @property
    def model_file(self) -> str:
        """The artifact the backend loads."""
        if self.variant is not None:
            return next(v.file for v in self.variants if v.name == self.variant)
        return ARTIFACT_FILES[self.format]

    @property
    def variant_name(self) -> str:
        """The name of the variant this manifest (or view) loads."""
        return self.variant if self.variant is not None else self.variants[0].name if self.variants else self.format

    def for_variant(self, name: str) -> Manifest:
        """The view of variant ``name``: what the backend, the self-test and serving read."""
        signed = self.base or self
        for v in signed.variants:
            if v.name == name:
                return dataclasses.replace(signed, format=v.format, quantization=v.quantization, golden=v.golden,
                                           variant=v.name, base=signed)
        raise ManifestError(f"{self.name} v{self.version} has no variant {name!r} ({[v.name for v in signed.variants]})")

    @property
    def profile_file(self) -> str | None:
        """The reference-profile artifact, when the bundle has one."""
        sealed = self.encryption.files if self.encryption is not None else {}
        return PROFILE_FILE if PROFILE_FILE in self.artifacts or PROFILE_FILE in sealed else None

    def to_json(self) -> dict[str, Any]:
        """The manifest as a JSON-able dict (of a variant's view, the signed manifest's)."""
        if self.base is not None:
            return self.base.to_json()
        out: dict[str, Any] = copy.deepcopy(self.extra)
        out.update(
            {
                "name": self.name,
                "version": self.version,
                "created": self.created,
                "format": self.format,
                "artifacts": {k: a.to_json() for k, a in self.artifacts.items()},
                "inputs": [t.to_json() for t in self.inputs],
                "outputs": [t.to_json() for t in self.outputs],
                "quantization": copy.deepcopy(self.quantization),
                "compatible": copy.deepcopy(self.compatible),
            }
        )
        if self.golden is not None:
            out["golden"] = self.golden.to_json()
        return out

    def canonical(self) -> bytes:
        """Canonical JSON bytes, the form that is signed."""
        return canonical_json(self.to_json())


def _require(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str = "manifest") -> Any:
    if key not in obj:
        raise ManifestError(f"{what}: missing field '{key}'")
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in kinds):
        raise ManifestError(f"{what}: field '{key}' has the wrong type ({type(value).__name__})")
    return value


def _variant_file(file: str) -> bool:
    plain = file[: -len(ENC_SUFFIX)] if file.endswith(ENC_SUFFIX) else file
    return VARIANT_FILE_RE.match(plain) is not None


def _parse_artifact(file: str, obj: Any) -> Artifact:
    what = f"manifest artifact '{file}'"
    if file not in ALLOWED_ARTIFACTS and not _variant_file(file):
        raise ManifestError(f"manifest: artifact {file!r} is not one of {sorted(ALLOWED_ARTIFACTS)}")
    if not isinstance(obj, dict):
        raise ManifestError(f"{what}: expected an object")
    length = _require(obj, "length", int, what)
    sha = _require(obj, "sha256", str, what)
    chunk_size = _require(obj, "chunk_size", int, what)
    chunks = _require(obj, "chunk_sha256", list, what)
    if length < 1:
        raise ManifestError(f"{what}: length must be >= 1, found {length}")
    if not SHA256_RE.match(sha):
        raise ManifestError(f"{what}: sha256 must be 64 lower-case hex digits")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ManifestError(f"{what}: chunk_size must be in [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}], found {chunk_size}")
    expected = -(-length // chunk_size)
    if len(chunks) != expected:
        raise ManifestError(f"{what}: {length} bytes in chunks of {chunk_size} make {expected} chunks, manifest lists {len(chunks)}")
    if not all(isinstance(c, str) and SHA256_RE.match(c) for c in chunks):
        raise ManifestError(f"{what}: every chunk_sha256 must be 64 lower-case hex digits")
    return Artifact(file, length, sha, chunk_size, tuple(chunks))


def _parse_golden(obj: Any, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...],
                  artifacts: dict[str, Any], golden_file: str = GOLDEN_FILE) -> Golden:
    if not isinstance(obj, dict):
        raise ManifestError("manifest: 'golden' must be an object")
    atol = _require(obj, "atol", (int, float), "manifest golden")
    rtol = _require(obj, "rtol", (int, float), "manifest golden")
    if not (0 <= atol < float("inf") and 0 <= rtol < float("inf")):
        raise ManifestError("manifest golden: atol and rtol must be >= 0 and finite")
    if "file" in obj:
        if set(obj) != {"file", "atol", "rtol"}:
            raise ManifestError("manifest golden: a golden 'file' carries no inline inputs/outputs")
        if obj["file"] != golden_file or golden_file not in artifacts:
            raise ManifestError(f"manifest golden: 'file' must be {golden_file!r}, listed in artifacts")
        if artifacts[golden_file].length > MAX_GOLDEN_BYTES:
            raise ManifestError(f"manifest: {golden_file} is {artifacts[golden_file].length} bytes, the limit is {MAX_GOLDEN_BYTES}")
        return Golden({}, {}, float(atol), float(rtol), golden_file)
    sides: list[dict[str, dict[str, Any]]] = []
    for side, specs in (("inputs", inputs), ("outputs", outputs)):
        tensors = _require(obj, side, dict, "manifest golden")
        names = {s.name for s in specs}
        if set(tensors) != names:
            raise ManifestError(f"manifest golden: {side} must name exactly {sorted(names)}, found {sorted(tensors)}")
        for name, t in tensors.items():
            if not isinstance(t, dict) or not isinstance(t.get("shape"), list) or not isinstance(t.get("data"), list):
                raise ManifestError(f"manifest golden {side} '{name}': expected {{shape: [...], data: [...]}}")
            count = 1
            for d in t["shape"]:
                if not isinstance(d, int) or isinstance(d, bool) or d < 0:
                    raise ManifestError(f"manifest golden {side} '{name}': bad shape {t['shape']}")
                count *= d
            if count != len(t["data"]) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in t["data"]
            ):
                raise ManifestError(f"manifest golden {side} '{name}': data must hold {count} numbers")
        sides.append(tensors)
    return Golden(sides[0], sides[1], float(atol), float(rtol))


def manifest_from_json(obj: dict[str, Any]) -> Manifest:
    """Validate a manifest dict."""
    name = _require(obj, "name", str)
    if not NAME_RE.match(name):
        raise ManifestError(f"manifest: name {name!r} must match {NAME_RE.pattern}")
    version = _require(obj, "version", int)
    if version < 1:
        raise ManifestError(f"manifest: version must be >= 1, found {version}")
    created = _require(obj, "created", str)
    fmt = _require(obj, "format", str)
    if fmt not in FORMATS:
        raise ManifestError(f"manifest: format {fmt!r} is not one of {sorted(FORMATS)}")
    raw_artifacts = _require(obj, "artifacts", dict)
    artifacts = {f: _parse_artifact(f, a) for f, a in raw_artifacts.items()}
    encryption: Encryption | None = None
    # What the checks below see: the plaintext files (of an encrypted bundle, as it lists them).
    plaintext = PLAINTEXT_ARTIFACTS | frozenset(f.removesuffix(ENC_SUFFIX) for f in artifacts if _variant_file(f))
    present: dict[str, Any] = {f: a for f, a in artifacts.items() if f in plaintext}
    if obj.get("encryption") is not None:
        encryption = parse_encryption(obj["encryption"], {f: a.length for f, a in artifacts.items()}, plaintext)
        present = dict(encryption.files)
    elif len(present) != len(artifacts):
        raise ManifestError(f"manifest: artifacts {sorted(set(artifacts) - set(present))} need an 'encryption' field")
    if ARTIFACT_FILES[fmt] not in present:
        raise ManifestError(f"manifest: format {fmt!r} needs the artifact {ARTIFACT_FILES[fmt]!r}")
    raw_inputs = _require(obj, "inputs", list)
    raw_outputs = _require(obj, "outputs", list)
    if not raw_inputs or not raw_outputs or len(raw_inputs) > 64 or len(raw_outputs) > 64:
        raise ManifestError("manifest: needs 1 to 64 inputs and 1 to 64 outputs")
    inputs = tuple(parse_tensor_spec(t, f"manifest input {i}") for i, t in enumerate(raw_inputs))
    outputs = tuple(parse_tensor_spec(t, f"manifest output {i}") for i, t in enumerate(raw_outputs))
    for side, specs in (("input", inputs), ("output", outputs)):
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ManifestError(f"manifest: duplicate {side} names {names}")
    quantization = obj.get("quantization", {"mode": "none"})
    if not isinstance(quantization, dict):
        raise ManifestError("manifest: 'quantization' must be an object")
    golden = _parse_golden(obj["golden"], inputs, outputs, present) if obj.get("golden") is not None else None
    if GOLDEN_FILE in present:
        if golden is None or golden.file != GOLDEN_FILE:
            raise ManifestError(f"manifest: artifact {GOLDEN_FILE!r} is listed but 'golden' does not name it")
        if present[GOLDEN_FILE].length > MAX_GOLDEN_BYTES:
            raise ManifestError(
                f"manifest: {GOLDEN_FILE} is {present[GOLDEN_FILE].length} bytes, the limit is {MAX_GOLDEN_BYTES}"
            )
    profile = obj.get("profile")
    if profile is not None or PROFILE_FILE in present:
        if profile != {"file": PROFILE_FILE} or PROFILE_FILE not in present:
            raise ManifestError(f"manifest: 'profile' must be {{\"file\": \"{PROFILE_FILE}\"}}, with that artifact listed")
        if present[PROFILE_FILE].length > MAX_PROFILE_BYTES:
            raise ManifestError(
                f"manifest: {PROFILE_FILE} is {present[PROFILE_FILE].length} bytes, the limit is {MAX_PROFILE_BYTES}"
            )
    compatible = _require(obj, "compatible", dict)
    runtime_major = compatible.get("runtime_major")
    archs = compatible.get("architectures")
    if not isinstance(runtime_major, int) or isinstance(runtime_major, bool):
        raise ManifestError("manifest: compatible.runtime_major must be an integer")
    if not isinstance(archs, list) or not archs or not all(isinstance(a, str) for a in archs):
        raise ManifestError("manifest: compatible.architectures must be a non-empty list of strings")
    runtime = RuntimeHints()
    if obj.get("runtime") is not None:
        try:
            runtime = parse_runtime(obj["runtime"])
        except ValueError as exc:
            raise ManifestError(f"manifest: {exc}") from exc
    variants = _parse_variants(obj, fmt, quantization, golden, inputs, outputs, present)
    budget = _parse_budget(obj.get("accuracy_budget"))
    known = {"name", "version", "created", "format", "artifacts", "inputs", "outputs", "quantization", "golden", "compatible"}
    extra = {k: v for k, v in obj.items() if k not in known}
    return Manifest(
        name, version, created, fmt, artifacts, inputs, outputs, quantization, golden, compatible, extra, runtime,
        encryption, variants, budget_max_abs_error=budget,
    )


def _parse_budget(obj: Any) -> float | None:
    """``accuracy_budget``: ``{"max_abs_error": X}``, the error against the reference no served variant may exceed."""
    if obj is None:
        return None
    if not isinstance(obj, dict) or set(obj) != {"max_abs_error"}:
        raise ManifestError("manifest: 'accuracy_budget' must be {\"max_abs_error\": number}")
    value = obj["max_abs_error"]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < float("inf"):
        raise ManifestError("manifest: accuracy_budget.max_abs_error must be a finite number >= 0")
    return float(value)


def _parse_variants(obj: dict[str, Any], fmt: str, quantization: dict[str, Any], golden: Golden | None,
                    inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...],
                    present: dict[str, Any]) -> tuple[Variant, ...]:
    """The top-level variant, then each of ``variants``: unique names, each model file of its format
    and listed, no file shared, and no variant-named artifact that no variant uses."""
    first = primary_variant_name(obj)
    if "variant" in obj and not isinstance(obj["variant"], str) or not VARIANT_NAME_RE.match(first):
        raise ManifestError(f"manifest: variant name {str(obj.get('variant', first))[:40]!r} must match {VARIANT_NAME_RE.pattern}")
    out = [Variant(first, fmt, ARTIFACT_FILES[fmt], quantization, golden)]
    raw = obj.get("variants")
    if raw is None:
        raw = []
    if not isinstance(raw, list) or len(raw) > MAX_VARIANTS:
        raise ManifestError(f"manifest: 'variants' must be a list of at most {MAX_VARIANTS}")
    used = {ARTIFACT_FILES[fmt], *([golden.file] if golden is not None and golden.file else [])}
    for i, v in enumerate(raw):
        what = f"manifest variant {i}"
        if not isinstance(v, dict) or not {"name", "format", "file"} <= set(v) <= {
                "name", "format", "file", "quantization", "golden"}:
            raise ManifestError(f"{what}: expected {{name, format, file[, quantization, golden]}}")
        name, vfmt, file = _require(v, "name", str, what), _require(v, "format", str, what), _require(v, "file", str, what)
        if not VARIANT_NAME_RE.match(name) or name in {x.name for x in out}:
            raise ManifestError(f"{what}: name {name[:40]!r} must be unique and match {VARIANT_NAME_RE.pattern}")
        if vfmt not in FORMATS:
            raise ManifestError(f"{what}: format {vfmt[:20]!r} is not one of {sorted(FORMATS)}")
        ext = ARTIFACT_FILES[vfmt].rsplit(".", 1)[1]
        if file not in (ARTIFACT_FILES[vfmt], f"model-{name}.{ext}") or file in used or file not in present:
            raise ManifestError(f"{what}: file must be {ARTIFACT_FILES[vfmt]!r} or 'model-{name}.{ext}', "
                                "listed in artifacts and used by no other variant")
        vq = v.get("quantization", {"mode": "unknown"})
        if not isinstance(vq, dict):
            raise ManifestError(f"{what}: 'quantization' must be an object")
        for key in ("accuracy", "report"):  # the recorded error the accuracy budget is held against
            section = vq.get(key)
            err = section.get("max_abs_error") if isinstance(section, dict) else None
            if err is not None and (isinstance(err, bool) or not isinstance(err, (int, float))
                                    or not math.isfinite(err) or err < 0):
                raise ManifestError(f"{what}: quantization.{key}.max_abs_error must be a finite number >= 0")
        vgolden = None
        if v.get("golden") is not None:
            vgolden = _parse_golden(v["golden"], inputs, outputs, present, f"golden-{name}.npz")
        used |= {file, *([vgolden.file] if vgolden is not None and vgolden.file else [])}
        out.append(Variant(name, vfmt, file, vq, vgolden))
    stray = sorted(f for f in present if VARIANT_FILE_RE.match(f) and f not in used)
    if stray:
        raise ManifestError(f"manifest: artifacts {stray} belong to no variant")
    return tuple(out)


def parse_manifest(data: bytes) -> Manifest:
    """Parse and validate canonical manifest bytes."""
    try:
        obj = parse_json_object(data, "manifest.json", require_canonical=True)
    except CanonicalJSONError as exc:
        raise ManifestError(str(exc)) from exc
    return manifest_from_json(obj)


def is_compatible(manifest: Manifest, runtime_major: int, machine: str) -> str | None:
    """None when the manifest suits this runtime and CPU, else the reason it does not."""
    want_major = manifest.compatible.get("runtime_major")
    if want_major != runtime_major:
        return f"built for runtime major version {want_major}, this runtime is {runtime_major}"
    archs = manifest.compatible.get("architectures", [])
    if "any" not in archs and machine not in archs:
        return f"built for architectures {archs}, this device is {machine}"
    return None
