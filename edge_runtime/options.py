"""Command-line values shared by ``edge-runtime`` and ``edge-convert``: argparse types and
signing-key files. Below ``cli/`` so that the converter's command line needs nothing from
the device's (``cli/`` is the top layer: nothing imports it)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edge_runtime.bundle.manifest import MAX_CHUNK_SIZE, MIN_CHUNK_SIZE
from edge_runtime.exceptions import TrustError, UsageError
from edge_runtime.trust.device_keys import DevicePublicKey, read_public_keys
from edge_runtime.trust.keys import load_private_key_pem


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, found {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, found {value}")
    return value


def chunk_size(text: str) -> int:
    """argparse type for --chunk-size (bytes, or with a K/M suffix)."""
    t = text.strip().upper()
    mult = 1024 if t.endswith("K") else 1024 * 1024 if t.endswith("M") else 1
    try:
        value = int(t.rstrip("KM")) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size like 262144, 256K or 1M, found {text!r}") from None
    if not MIN_CHUNK_SIZE <= value <= MAX_CHUNK_SIZE:
        raise argparse.ArgumentTypeError(f"chunk size must be in [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}] bytes")
    return value


def load_keys(paths: list[Path]) -> list[Any]:
    """Read signing keys (PKCS#8 PEM)."""
    keys = []
    for p in paths:
        try:
            keys.append(load_private_key_pem(Path(p).read_bytes()))
        except OSError as exc:
            raise UsageError(f"cannot read signing key {p}: {exc.strerror}") from exc
    return keys


def load_recipients(paths: list[Path]) -> list[DevicePublicKey]:
    """Device public keys for ``--to``/``--encrypt-to``: files, or directories of ``*.pub`` files."""
    found: list[DevicePublicKey] = []
    for p in paths:
        try:
            found += read_public_keys(p)
        except TrustError as exc:
            raise UsageError(str(exc)) from exc
    return found


__all__ = ["chunk_size", "load_keys", "load_recipients", "positive_int"]
