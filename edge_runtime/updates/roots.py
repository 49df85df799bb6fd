"""Rotated trust roots kept beside the store.

The pinned root (``[trust] root``, often on a read-only ``/etc``) is never rewritten. A
rotation received over MQTT is verified with :func:`~edge_runtime.trust.root.update_root`
and saved as ``<state_dir>/roots/root.<N>.json`` (atomic write). At start-up
:func:`load_trust_root` chains from the pinned root through every saved version, each
verified again, and stops at the first gap or failure, so a tampered file only loses the
rotations after it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from edge_runtime.atomic import write_bytes_atomic
from edge_runtime.config import Config, MqttConfig
from edge_runtime.exceptions import TrustError
from edge_runtime.trust.root import TrustRoot, format_time, update_root, verify_root

log = logging.getLogger("edge_runtime.updates")

ROOTS_DIR = "roots"
STATE_DIR_NAME = ".updates"


def updates_state_dir(mqtt: MqttConfig | None, store_path: Path) -> Path:
    """Where the updater keeps its state: ``[mqtt] state_dir``, else ``<store>/.updates``."""
    if mqtt is not None and mqtt.state_dir:
        return Path(mqtt.state_dir)
    return Path(store_path) / STATE_DIR_NAME


def root_file(state_dir: Path, version: int) -> Path:
    """The saved copy of root ``version``."""
    return Path(state_dir) / ROOTS_DIR / f"root.{version}.json"


def save_root(state_dir: Path, root: TrustRoot) -> Path:
    """Persist a verified rotated root atomically; returns its path."""
    path = root_file(state_dir, root.version)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, root.raw)
    until = f"expires {format_time(root.expires)}" if root.expires is not None else "never expires"
    log.info("trust root v%d taken (%s), saved as %s", root.version, until, path)
    return path


def load_trust_root(pinned: TrustRoot, state_dir: Path) -> TrustRoot:
    """The newest root that chains from ``pinned`` through the saved rotations."""
    current = pinned
    while True:
        path = root_file(state_dir, current.version + 1)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return current
        except OSError as exc:
            log.warning("cannot read %s: %s", path, exc.strerror, extra={"reason": str(exc)})
            return current
        try:
            current = update_root(current, data)
        except TrustError as exc:
            log.error("ignoring saved trust root %s: %s", path, exc, extra={"reason": str(exc)})
            return current


def trust_root_for(cfg: Config, store_path: Path | None = None) -> TrustRoot:
    """The pinned root of ``cfg`` advanced by the rotations saved for its store (for the daemon and CLI)."""
    try:
        pinned = verify_root(Path(cfg.trust.root).read_bytes())
    except OSError as exc:
        raise TrustError(f"cannot read trust root {cfg.trust.root}: {exc.strerror}") from exc
    return load_trust_root(pinned, updates_state_dir(cfg.mqtt, Path(store_path or cfg.store.path)))


__all__ = ["load_trust_root", "root_file", "save_root", "trust_root_for", "updates_state_dir"]
