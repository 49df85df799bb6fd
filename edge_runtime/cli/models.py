"""``edge-runtime models list|install|activate|rollback|remove|verify``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edge_runtime.cli.common import common_options, config_from_args, open_store, store_options
from edge_runtime.config import Config
from edge_runtime.exceptions import DelegateError, EdgeRuntimeError, StoreError
from edge_runtime.options import positive_int
from edge_runtime.store.store import ModelStore
from edge_runtime.store.variants import install_selftest
from edge_runtime.text import format_table


def register(sub: Any) -> None:
    """Add the ``models`` subcommands."""
    p = sub.add_parser("models", help="the local model store")
    ms = p.add_subparsers(dest="models_command", required=True, parser_class=type(p))
    parents = [common_options(), store_options()]
    lst = ms.add_parser("list", parents=parents, help="models, versions, what is active and why")
    lst.add_argument("--history", type=int, default=5, help="history entries to show per model")
    lst.set_defaults(func=cmd_list)
    ins = ms.add_parser("install", parents=parents, help="verify and install a bundle, then activate it")
    ins.add_argument("bundle", type=Path)
    ins.add_argument("--no-activate", action="store_true", help="install only")
    ins.set_defaults(func=cmd_install)
    act = ms.add_parser("activate", parents=parents, help="self-test a version and make it active")
    act.add_argument("name")
    act.add_argument("version", type=positive_int)
    act.set_defaults(func=cmd_activate)
    rb = ms.add_parser("rollback", parents=parents, help="make the last known good version active")
    rb.add_argument("name")
    rb.set_defaults(func=cmd_rollback)
    rm = ms.add_parser("remove", parents=parents,
                       help="delete an installed version (never the active one or the last known good)")
    rm.add_argument("name")
    rm.add_argument("version", type=positive_int)
    rm.set_defaults(func=cmd_remove)
    ver = ms.add_parser("verify", parents=parents, help="re-hash every installed version")
    ver.set_defaults(func=cmd_verify)


def _activate(store: ModelStore, name: str, version: int, cfg: Config, only_if_newer: bool = False) -> None:
    try:
        state = store.activate(name, version, selftest=install_selftest(store, cfg.model(name), cfg.inference),
                               only_if_newer=only_if_newer)
    except EdgeRuntimeError as exc:
        # Hash and signature errors name the file only; say which version they are about.
        if str(exc).startswith(f"{name} v"):
            raise
        prefixed = f"{name} v{version}: {exc}"
        raise (DelegateError(prefixed, exc.kind) if isinstance(exc, DelegateError) else type(exc)(prefixed)) from exc
    if state.active != version:
        print(f"{name} v{version} passed its self-test; the newer v{state.active} is already active and stays so")
        return
    print(f"{name} v{version} passed its self-test and is active")


def cmd_install(args: argparse.Namespace) -> int:
    """Verify and install a bundle file."""
    cfg = config_from_args(args)
    store = open_store(args, cfg)
    result = store.install(args.bundle)
    verb = "already installed" if result.already_installed else "installed"
    print(f"{result.name} v{result.version} {verb}")
    if not args.no_activate:
        state = store.state(result.name)
        if state.active is None or result.version > state.active or state.serving_factory:
            # Checked again under the store lock: another install may finish first.
            _activate(store, result.name, result.version, cfg, only_if_newer=True)
    return 0


def cmd_activate(args: argparse.Namespace) -> int:
    """Self-test and activate an installed version."""
    cfg = config_from_args(args)
    store = open_store(args, cfg)
    if args.version not in store.versions(args.name):
        raise StoreError(f"{args.name} v{args.version} is not installed (installed: {store.versions(args.name)})")
    _activate(store, args.name, args.version, cfg)
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """Return to the last known good version."""
    store = open_store(args)
    state = store.rollback(args.name)
    print(f"{args.name}: rolled back to v{state.active}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    """Delete an installed version; exit 1 for the active one, the last known good, one being
    tried or served, one the config serves, or one that is not installed."""
    store = open_store(args)
    store.remove(args.name, args.version)
    print(f"{args.name} v{args.version} removed")
    return 0


def _variant_rows(choice: dict[str, Any] | None) -> list[list[str]]:
    """``variant NAME: chosen|slower|failed|..., ms/row, why`` per variant of a bundle with several."""
    if not choice:
        return []
    rows = []
    for v in choice["variants"]:
        ms = "not timed" if v["ms_per_row"] is None else f"{v['ms_per_row']:.4g} ms/row"
        rows.append(["", "", f"variant {v['variant']}: {v['outcome']}, {ms}: {v['reason']}"])
    return rows


def cmd_list(args: argparse.Namespace) -> int:
    """Print every model and version with its status and recent history."""
    store = open_store(args)
    names = store.models()
    refused = store.factory_refused()
    if not names and not refused:
        print(f"no models in {store.path}")
        return 0
    rows = [["MODEL", "VERSION", "STATUS"]]
    for name in names:
        state = store.state(name)
        for v in store.versions(name):
            tags = []
            if v == state.active and not state.serving_factory:
                tags.append("active")
            if v == state.last_known_good:
                tags.append("last-known-good")
            if v in state.quarantined:
                tags.append(f"quarantined: {state.quarantined[v]}")
            if v in state.failed:
                tags.append(f"failed: {state.failed[v]}")
            if v == state.trying:
                tags.append("trying (not yet loaded by the daemon)")
            report = state.serving_delegate if v == state.serving and not state.serving_factory else None
            if report is not None:
                variant = report.get("variant")
                pinned = " (pinned)" if variant and variant["pinned"] else ""
                tags.append(f"serving {'variant ' + variant['variant'] + pinned + ' ' if variant else ''}on {report['delegate']}")
            rows.append([name, str(v), ", ".join(tags) or "installed"])
            if report is not None:
                for skip in report["skipped"]:
                    rows.append(["", "", f"delegate {skip['delegate']} skipped ({skip['kind']}): {skip['reason']}"])
                rows += _variant_rows(report.get("variant"))
        factory = store.factory_bundle(name)
        if factory is not None:
            tag = "active (fallback)" if state.serving_factory or state.active is None else "standby"
            rows.append([name, "factory", f"{tag}: {factory}"])
        for fb in refused:
            if fb.claimed == name:
                rows.append([name, "factory", f"REFUSED: {fb.path}: {fb.problem}"])
        rows.append(["", f"highest seen: v{state.highest_seen}"])
        for entry in state.history[-args.history :] if args.history > 0 else []:
            detail = ", ".join(f"{k}={v}" for k, v in entry.items() if k not in ("time", "event") and v is not None)
            rows.append(["", f"{entry.get('time', '')} {entry.get('event')}: {detail}"])
    for fb in refused:  # a refused bundle for a model the store does not have
        if fb.claimed not in names:
            rows.append([fb.claimed or "?", "factory", f"REFUSED: {fb.path}: {fb.problem}"])
    print(format_table(rows, min_widths=(15, 7)))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Re-hash every installed version; exit 1 when any fails."""
    store = open_store(args)
    bad = 0
    results = store.verify_all()
    for name, version, problem in results:
        quarantined = version in store.state(name).quarantined
        status = "ok" if problem is None else ("quarantined: " if quarantined else "FAILED: ") + problem
        if problem is not None and not quarantined:
            bad += 1
        print(f"{name} v{version}: {status}")
    if not results:
        print("nothing installed")
    if bad:
        raise StoreError(f"{bad} installed version(s) failed verification")
    return 0
