"""``edge-runtime serve``: run the daemon (KServe v2 HTTP API, hot swap, updates)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

from edge_runtime.bundle.reader import BundleLimits
from edge_runtime.cli.common import common_options, device_key, load_root_file, store_options
from edge_runtime.config import Config, load_config
from edge_runtime.exceptions import EdgeRuntimeError, UsageError
from edge_runtime.logs import setup_logging
from edge_runtime.store.retention import config_pins
from edge_runtime.store.store import ModelStore

log = logging.getLogger("edge_runtime.serve")


def register(sub: Any) -> None:
    """Add the ``serve`` subcommand."""
    p = sub.add_parser("serve", parents=[common_options(), store_options()], help="run the daemon")
    p.add_argument("--host", default=None, help="bind address (overrides [server] host)")
    p.add_argument("--port", type=int, default=None, help="TCP port, 0 = any free one (overrides [server] port)")
    p.add_argument("--log-level", default=None, help="debug, info, warning or error (overrides [logging] level)")
    p.set_defaults(func=cmd_serve)


def effective_config(args: argparse.Namespace) -> Config:
    """The config file with the command-line overrides applied (used again on SIGHUP)."""
    cfg = load_config(args.config)
    store = cfg.store
    if args.store is not None:
        store = dataclasses.replace(store, path=str(args.store))
    if args.factory is not None:
        store = dataclasses.replace(store, factory=str(args.factory))
    trust = cfg.trust if args.root is None else dataclasses.replace(cfg.trust, root=str(args.root))
    server = cfg.server
    if args.host is not None:
        server = dataclasses.replace(server, host=args.host)
    if args.port is not None:
        if not 0 <= args.port <= 65535:
            raise UsageError(f"--port: expected 0 to 65535, found {args.port}")
        server = dataclasses.replace(server, port=args.port)
    return dataclasses.replace(cfg, store=store, trust=trust, server=server)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM; 0 after a clean drain."""
    from edge_runtime import daemon

    cfg = effective_config(args)
    setup_logging(args.log_format or cfg.logging.format, "debug" if args.debug else (args.log_level or cfg.logging.level))
    from edge_runtime.inference.delegates import InstallCheck
    from edge_runtime.updates.roots import load_trust_root, updates_state_dir

    # The pinned root, advanced by any rotation the update client verified and saved.
    root = load_trust_root(load_root_file(Path(cfg.trust.root)), updates_state_dir(cfg.mqtt, Path(cfg.store.path)))
    store = ModelStore(
        Path(cfg.store.path),
        root,
        Path(cfg.store.factory) if cfg.store.factory else None,
        BundleLimits(max_bundle_bytes=cfg.store.max_bundle_bytes),
        InstallCheck(cfg.models, cfg.inference),  # the update client installs through this store
        keep_versions=cfg.store.keep_versions,
        pins=config_pins(cfg.models),
        device_key=device_key(cfg),
    )
    # Before the daemon starts (cleanup_partial takes the store lock): remove what installs
    # killed part-way left behind and record installs killed before their state update.
    try:
        store.cleanup_partial()
    except (OSError, EdgeRuntimeError) as exc:  # a read-only or damaged store must not stop serving
        log.error("cannot clean up interrupted installs in %s: %s", store.path, exc)
    return daemon.run(cfg, store, reload_config=lambda: effective_config(args))
