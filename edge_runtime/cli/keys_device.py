"""``edge-runtime keys device --out DIR``: a device's encryption key pair (docs/security.md).

Writes ``DIR/device.key`` (X25519, PKCS#8 PEM, mode 0600: it stays on the device, named by
``[trust] device_key``) and ``DIR/device.pub`` (what ``bundle encrypt --to`` and ``fleet
publish --encrypt-to`` take). Provisioning many devices runs it once per device directory
and collects the ``device.pub`` files into one directory for ``--encrypt-to``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from edge_runtime.atomic import write_bytes_atomic
from edge_runtime.cli.common import common_options
from edge_runtime.exceptions import UsageError
from edge_runtime.trust.device_keys import (
    PRIVATE_FILE,
    PUBLIC_FILE,
    device_key_id,
    generate_device_key,
    private_pem,
    public_pem,
)


def register(ks: Any) -> None:
    """Add ``keys device``."""
    d = ks.add_parser("device", parents=[common_options()], help="a device's encryption key pair (X25519; private 0600)")
    d.add_argument("--out", type=Path, required=True, help="directory for device.key (0600) and device.pub")
    d.add_argument("--force", action="store_true", help="overwrite an existing key")
    d.set_defaults(func=cmd_device)


def cmd_device(args: argparse.Namespace) -> int:
    """Write DIR/device.key and DIR/device.pub; print the key id."""
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = out / PRIVATE_FILE, out / PUBLIC_FILE
    if key_path.exists() and not args.force:
        raise UsageError(f"{key_path} exists; pass --force to replace it (releases encrypted to it stop opening)")
    key = generate_device_key()
    write_bytes_atomic(key_path, private_pem(key), mode=0o600)
    os.chmod(key_path, 0o600)
    write_bytes_atomic(pub_path, public_pem(key), mode=0o644)
    print(f"device key id {device_key_id(key)}")
    print(f"wrote {key_path} (mode 0600; [trust] device_key) and {pub_path} (for --to / --encrypt-to)")
    return 0
