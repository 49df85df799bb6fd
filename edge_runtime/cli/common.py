"""Options and helpers shared by the subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_runtime.bundle.reader import BundleLimits
from edge_runtime.config import Config, load_config
from edge_runtime.exceptions import UsageError
from edge_runtime.inference.delegates import InstallCheck
from edge_runtime.store.retention import config_pins
from edge_runtime.store.store import ModelStore
from edge_runtime.trust.device_keys import DeviceKey, read_device_key
from edge_runtime.trust.root import TrustRoot, verify_root


def common_options() -> argparse.ArgumentParser:
    """A parent parser with the options every subcommand takes."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--log-format", choices=["text", "json"], default=None, help="log line format")
    return p


def store_options() -> argparse.ArgumentParser:
    """A parent parser with the options that locate the store and trust root."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config", type=Path, default=None, help="config file (default /etc/edge-runtime/config.toml)")
    p.add_argument("--store", type=Path, default=None, help="store directory (overrides [store] path)")
    p.add_argument("--factory", type=Path, default=None, help="factory bundle directory (overrides [store] factory)")
    p.add_argument("--root", type=Path, default=None, help="trust root file (overrides [trust] root)")
    return p


def load_root_file(path: Path) -> TrustRoot:
    """Read and verify a pinned trust root file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read trust root {path}: {exc.strerror}") from exc
    return verify_root(data)


def config_from_args(args: argparse.Namespace) -> Config:
    """The config file named by ``--config`` (or the default one)."""
    return load_config(getattr(args, "config", None))


def open_store(args: argparse.Namespace, cfg: Config | None = None) -> ModelStore:
    """The store named by the options and config."""
    from edge_runtime.updates.roots import load_trust_root, updates_state_dir

    cfg = cfg or config_from_args(args)
    store_path = args.store or Path(cfg.store.path)
    # The pinned root, advanced by any rotation the update client verified and saved.
    root = load_trust_root(load_root_file(args.root or Path(cfg.trust.root)), updates_state_dir(cfg.mqtt, store_path))
    factory = args.factory if args.factory is not None else Path(cfg.store.factory)
    return ModelStore(
        store_path, root, factory, BundleLimits(max_bundle_bytes=cfg.store.max_bundle_bytes), InstallCheck(cfg.models, cfg.inference),
        keep_versions=cfg.store.keep_versions, pins=config_pins(cfg.models), device_key=device_key(cfg),
    )


def device_key(cfg: Config) -> DeviceKey | None:
    """The device's decryption key named by ``[trust] device_key``, or None when there is none."""
    return read_device_key(Path(cfg.trust.device_key)) if cfg.trust.device_key else None
