"""``edge-runtime score --model NAME[:VERSION] INPUT [-o OUTPUT]``: offline batch scoring."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from edge_runtime.cli.common import common_options, config_from_args, open_store, store_options
from edge_runtime.exceptions import NotFoundError, UsageError
from edge_runtime.inference.backend import load_backend
from edge_runtime.inference.selftest import run_selftest
from edge_runtime.options import positive_int
from edge_runtime.scoring import score_file, terminal_progress
from edge_runtime.store.store import ModelStore, Resolved
from edge_runtime.store.variants import select_variant


def register(sub: Any) -> None:
    """Add the ``score`` command."""
    p = sub.add_parser("score", parents=[common_options(), store_options()], help="score a file offline")
    p.add_argument("--model", required=True, help="NAME or NAME:VERSION")
    p.add_argument("input", type=Path, help=".npy, .npz, .csv or .jsonl")
    p.add_argument("-o", "--output", type=Path, default=None, help=".csv, .jsonl, .npy or .npz (default: CSV on stdout)")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--threads", type=positive_int, default=1, help="interpreter threads")
    p.set_defaults(func=cmd_score)


def resolve(store: ModelStore, spec: str) -> Resolved:
    """NAME (the active version, with fallback) or NAME:VERSION."""
    name, _, version = spec.partition(":")
    if not name:
        raise UsageError(f"--model {spec!r}: expected NAME or NAME:VERSION")
    if name not in store.models():
        raise NotFoundError(f"unknown model {name!r}; the store has {store.models() or 'no models'}")
    if not version:
        return store.resolve(name)
    if not (version.isascii() and version.isdigit() and len(version) <= 18):
        raise UsageError(f"--model {spec!r}: version must be an integer")
    if int(version) not in store.versions(name):
        raise NotFoundError(f"{name} v{version} is not installed (installed: {store.versions(name)})")
    return store.resolved_version(name, int(version))


def cmd_score(args: argparse.Namespace) -> int:
    """Score every row of the input file."""
    cfg = config_from_args(args)
    store = open_store(args, cfg)
    resolved = resolve(store, args.model)
    if len(resolved.manifest.variants) > 1:  # the device's choice (recorded, else timed now), the pin honoured
        mcfg = dataclasses.replace(cfg.model(resolved.name), num_threads=args.threads)
        resolved, choice = select_variant(store, resolved, mcfg, cfg.inference)
        print(f"{resolved.name} v{resolved.version}: variant {choice.chosen}", file=sys.stderr)
    backend = load_backend(resolved.manifest, resolved.model, args.threads)
    run_selftest(backend, resolved.manifest, resolved.golden_bytes)
    progress = terminal_progress(sys.stderr) if sys.stderr.isatty() else None
    rows = score_file(backend, args.input, args.output, args.batch_size, progress)
    if progress is not None:
        sys.stderr.write("\n")
    where = f" to {args.output}" if args.output else ""
    source = "factory bundle" if resolved.source == "factory" else "store"
    print(f"scored {rows} rows with {resolved.name} v{resolved.version} ({source}){where}", file=sys.stderr)
    return 0
