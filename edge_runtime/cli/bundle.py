"""``edge-runtime bundle create|encrypt|inspect|verify``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.bundle.manifest import DEFAULT_CHUNK_SIZE, VARIANT_NAME_RE
from edge_runtime.bundle.profile import parse_profile
from edge_runtime.bundle.reader import open_bundle
from edge_runtime.bundle.sealed import encrypt_bundle
from edge_runtime.cli.common import common_options, load_root_file
from edge_runtime.exceptions import ManifestError, UsageError
from edge_runtime.options import chunk_size, load_keys, load_recipients, positive_int
from edge_runtime.packaging import PackRequest, VariantRequest, describe_model, pack_model, profile_batches
from edge_runtime.trust.root import TrustRoot


def _names(text: str | None) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()] if text else []


def register(sub: Any) -> None:
    """Add the ``bundle`` subcommands."""
    p = sub.add_parser("bundle", help="create, inspect and verify model bundles")
    bs = p.add_subparsers(dest="bundle_command", required=True, parser_class=type(p))
    c = bs.add_parser("create", parents=[common_options()], help="pack a .tflite or .onnx model into a signed bundle")
    c.add_argument("model", type=Path)
    c.add_argument("--name", required=True)
    c.add_argument("--version", type=positive_int, required=True)
    c.add_argument("--sign-key", type=Path, action="append", required=True, help="repeat for several signatures")
    c.add_argument("-o", "--out", type=Path, required=True)
    c.add_argument("--chunk-size", type=chunk_size, default=DEFAULT_CHUNK_SIZE)
    c.add_argument("--input-names", help="comma-separated KServe names for the inputs, by position")
    c.add_argument("--output-names", help="comma-separated KServe names for the outputs, by position")
    c.add_argument("--golden-inputs", type=Path, help=".npy/.npz sample inputs for the self-test (default: random)")
    c.add_argument(
        "--atol", type=float, default=None,
        help="self-test absolute tolerance (default: drift allowance, or the measured error with --reference)",
    )
    c.add_argument("--rtol", type=float, default=1e-3, help="self-test relative tolerance")
    c.add_argument("--architectures", default="any", help="comma-separated CPU architectures, or 'any'")
    c.add_argument(
        "--reference", type=Path,
        help="model the packed one approximates (e.g. the float model of an int8 one): golden outputs come "
        "from it and --atol states the measured error against it",
    )
    c.add_argument("--validation", type=Path, help=".npy/.npz inputs to measure the error against --reference on")
    c.add_argument(
        "--profile-data", type=Path,
        help=".npy/.npz rows the model was validated on: recorded as the reference profile drift is measured "
        "against (default: the --validation rows, else no profile; docs/monitoring.md)",
    )
    c.add_argument(
        "--variant", action="append", default=[], metavar="NAME=FILE",
        help="a further faithful variant of the model (another .tflite or the .onnx), repeatable: packed with its "
        "own golden self-test against --reference (else the model); the device times them and serves the fastest "
        "(docs/store-and-bundles.md section 2.5)",
    )
    c.add_argument("--accuracy-budget", type=float, default=None, metavar="MAX_ABS_ERROR",
                   help="with --variant: the largest error against the reference a variant may have to be served")
    c.set_defaults(func=cmd_create)
    e = bs.add_parser("encrypt", parents=[common_options()], help="encrypt a bundle to devices' keys (docs/security.md)")
    e.add_argument("bundle", type=Path)
    e.add_argument("--to", type=Path, action="append", required=True,
                   help="a device.pub, or a directory of *.pub files; repeat for more recipients")
    e.add_argument("--sign-key", type=Path, action="append", required=True, help="models key(s) to sign the new manifest")
    e.add_argument("--root", type=Path, default=None, help="verify the input bundle against this trust root first")
    e.add_argument("-o", "--out", type=Path, required=True)
    e.set_defaults(func=cmd_encrypt)
    for name, fn in (("inspect", cmd_inspect), ("verify", cmd_verify)):
        q = bs.add_parser(name, parents=[common_options()], help=f"{name} a bundle")
        q.add_argument("bundle", type=Path)
        q.add_argument("--root", type=Path, required=(name == "verify"), help="trust root to verify signatures against")
        q.add_argument("--json", action="store_true", help="print the manifest as JSON")
        q.set_defaults(func=fn)


def load_input_arrays(path: Path | None, input_names: list[str], what: str) -> list[np.ndarray] | None:
    """Arrays for the model inputs from a .npy (one input) or .npz (arrays named after the inputs).

    For a one-input model an .npz may instead hold a single array, or an array ``x``
    (as in a features/labels file).
    """
    if path is None:
        return None
    try:
        loaded = np.load(path, allow_pickle=False)
        if not hasattr(loaded, "files"):
            arrays = [np.asarray(loaded)]
        elif all(n in loaded.files for n in input_names):
            arrays = [loaded[n] for n in input_names]
        elif len(input_names) == 1 and len(loaded.files) == 1:
            arrays = [loaded[loaded.files[0]]]
        elif len(input_names) == 1 and "x" in loaded.files:
            arrays = [loaded["x"]]
        else:
            raise UsageError(f"{what} {path}: expected arrays named {input_names}, found {loaded.files}")
    except (OSError, ValueError, EOFError) as exc:
        raise UsageError(f"cannot read {what} {path}: {exc}") from exc
    if len(arrays) != len(input_names):
        raise UsageError(f"{what} {path}: the model has {len(input_names)} inputs, a .npy file holds one array")
    return arrays


def _variant_request(text: str) -> VariantRequest:
    name, sep, file = text.partition("=")
    if not sep or not VARIANT_NAME_RE.match(name) or not Path(file).is_file():
        raise UsageError(f"--variant {text!r}: expected NAME=FILE with NAME matching {VARIANT_NAME_RE.pattern} "
                         "and FILE an existing .tflite or .onnx")
    return VariantRequest(name, Path(file), {"mode": "as-is"})


def cmd_create(args: argparse.Namespace) -> int:
    """Pack a model into a bundle."""
    if not args.model.is_file():
        raise UsageError(f"{args.model}: no such file")
    keys = load_keys(args.sign_key)
    if args.validation is not None and args.reference is None:
        raise UsageError("--validation needs --reference (the model to measure the error against)")
    if args.reference is not None and not args.reference.is_file():
        raise UsageError(f"{args.reference}: no such file")
    _, ins, _ = describe_model(args.model, _names(args.input_names), _names(args.output_names))
    input_names = [s.name for s in ins]
    validation = load_input_arrays(args.validation, input_names, "validation inputs")
    profile_rows = load_input_arrays(args.profile_data, input_names, "profile data") if args.profile_data else validation
    manifest = pack_model(PackRequest(
        args.model,
        name=args.name,
        version=args.version,
        keys=keys,
        out=args.out,
        chunk_size=args.chunk_size,
        input_names=_names(args.input_names),
        output_names=_names(args.output_names),
        golden_inputs=load_input_arrays(args.golden_inputs, input_names, "golden inputs"),
        atol=args.atol,
        rtol=args.rtol,
        architectures=_names(args.architectures),
        quantization={"mode": "as-is"},
        reference=args.reference,
        validation_inputs=validation,
        profile_calls=profile_batches(ins, profile_rows) if profile_rows is not None else None,
        variants=[_variant_request(text) for text in args.variant],
        accuracy_budget=args.accuracy_budget,
    ))
    art = manifest.artifacts[manifest.model_file]
    print(f"wrote {args.out}: {manifest.name} v{manifest.version}, {manifest.format}, {art.length} bytes in {art.chunk_count} chunks")
    if manifest.profile_file:
        print(f"reference profile: {manifest.artifacts[manifest.profile_file].length} bytes ({manifest.profile_file})")
    elif profile_rows is not None:
        print("reference profile: none (see the warning above)")
    accuracy = manifest.quantization.get("accuracy")
    if accuracy is not None:
        print(
            f"against {accuracy['reference']['file']} on {accuracy['rows']} rows: max abs error "
            f"{accuracy['max_abs_error']:.3g}, mean {accuracy['mean_abs_error']:.3g}; golden atol {accuracy['atol']:g}"
        )
    return 0


def plural(count: int, noun: str) -> str:
    """``1 device``, ``3 devices``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def cmd_encrypt(args: argparse.Namespace) -> int:
    """Write the bundle with every artifact encrypted to the recipients, signed again."""
    if not args.bundle.is_file():
        raise UsageError(f"{args.bundle}: no such file")
    recipients = load_recipients(args.to)
    root = load_root_file(args.root) if args.root else None
    m = encrypt_bundle(args.bundle, recipients, load_keys(args.sign_key), args.out, root=root)
    assert m.encryption is not None
    print(f"wrote {args.out}: {m.name} v{m.version} encrypted to {plural(len(m.encryption.recipients), 'device')} "
          f"({', '.join(m.encryption.keyids()[:4])}{', ...' if len(recipients) > 4 else ''})")
    return 0


def encrypt_beside(bundle: Path, to: list[Path], keys: list[Any], root: TrustRoot | None) -> Path:
    """``fleet publish --encrypt-to``: encrypt ``bundle`` to ``to`` into ``NAME.encrypted.bundle``
    beside it and return that path. Each encryption draws a new content key, so the manifest
    differs every time: raise the rollout of the same release by publishing that file again."""
    out = bundle.with_name(bundle.name.removesuffix(".bundle") + ".encrypted.bundle")
    m = encrypt_bundle(bundle, load_recipients(to), keys, out, root=root)
    assert m.encryption is not None
    print(f"encrypted {m.name} v{m.version} to {plural(len(m.encryption.recipients), 'device')}: {out} "
          "(publish this file to change the rollout of this release)")
    return out


def _describe(args: argparse.Namespace, verified: bool) -> int:
    root = load_root_file(args.root) if args.root else None
    with open_bundle(args.bundle, root) as b:
        m = b.manifest
        if args.json:
            print(json.dumps(m.to_json(), indent=2, sort_keys=True))
            return 0
        print(f"{m.name} v{m.version} ({m.format}), created {m.created}")
        print("signature: " + ("verified against the trust root" if root else "NOT checked (no --root)"))
        for f, a in m.artifacts.items():
            print(f"artifact {f}: {a.length} bytes, sha256 {a.sha256[:16]}..., {a.chunk_count} chunks of {a.chunk_size}")
        for side, specs in (("input", m.inputs), ("output", m.outputs)):
            for s in specs:
                q = f" (int {s.quantization.datatype} scale {s.quantization.scale:g} zp {s.quantization.zero_point})" if s.quantization else ""
                print(f"{side} {s.name}: {s.datatype} {list(s.shape)}{q}")
        print(f"quantization: {m.quantization.get('mode')}; compatible: {m.compatible}")
        accuracy = m.quantization.get("accuracy")
        if isinstance(accuracy, dict):
            ref = accuracy.get("reference")
            ref_file = ref.get("file") if isinstance(ref, dict) else None
            print(
                f"accuracy against {ref_file}: max abs error {accuracy.get('max_abs_error')} "
                f"on {accuracy.get('rows')} rows (atol {accuracy.get('atol')})"
            )
        if m.encryption is not None:
            ids = m.encryption.keyids()
            print(f"encrypted ({plural(len(ids), 'recipient')}: {', '.join(ids[:8])}{', ...' if len(ids) > 8 else ''}); "
                  + ", ".join(f"{f.name} {f.length} bytes" for f in m.encryption.files.values()))
        if m.golden is not None:
            print(f"golden self-test: atol {m.golden.atol:g}, rtol {m.golden.rtol:g}")
        for v in m.variants[1:]:
            err = f", max abs error {v.max_abs_error:.3g} against the reference" if v.max_abs_error is not None else ""
            tol = f", golden atol {v.golden.atol:g}" if v.golden is not None else ""
            print(f"variant {v.name}: {v.format} ({v.file}), quantization {v.quantization.get('mode')}{err}{tol}")
        if len(m.variants) > 1:
            budget = f", accuracy budget {m.budget_max_abs_error:g}" if m.budget_max_abs_error is not None else ""
            print(f"variants: {', '.join(v.name for v in m.variants)} (the device serves its fastest{budget})")
        if m.profile_file and m.encryption is not None:
            print("reference profile: encrypted (only a recipient device reads it)")
        elif m.profile_file:
            try:
                prof = parse_profile(b.read_artifact(m.profile_file), m.inputs, m.outputs)
                print(f"reference profile: {prof.rows} rows, {len(prof.features)} features (drift, docs/monitoring.md)")
            except ManifestError as exc:
                print(f"reference profile: unreadable: {exc}")
        else:
            print("reference profile: none (no drift figures on the device)")
    if verified:
        print("OK: layout, signature and every chunk hash verified")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """Describe a bundle (signature checked only with --root)."""
    return _describe(args, verified=args.root is not None)


def cmd_verify(args: argparse.Namespace) -> int:
    """Fully verify a bundle against a trust root."""
    return _describe(args, verified=True)
