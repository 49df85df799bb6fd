"""``edge-runtime keys device --out DIR [--device ID ...]``: device encryption key pairs
(docs/store-and-bundles.md section 2.4, docs/security.md).

Without ``--device``: ``DIR/device.key`` (X25519, PKCS#8 PEM, mode 0600: it stays on the
device, named by ``[trust] device_key``) and ``DIR/device.pub`` (what ``bundle encrypt --to``
and ``fleet publish --encrypt-to`` take). Run on the device itself, only the public half ever
leaves it. With ``--device ID`` (repeatable), the provisioning station makes them in bulk:
``DIR/ID/device.key`` and ``DIR/ID/device.pub`` for each device, and a copy of every public key
in ``DIR/recipients/ID.pub``, the directory ``--encrypt-to`` takes.
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
    DeviceKey,
    device_key_id,
    generate_device_key,
    private_pem,
    public_pem,
)
from edge_runtime.updates.protocol import check_id

RECIPIENTS_DIR = "recipients"


def register(ks: Any) -> None:
    """Add ``keys device``."""
    d = ks.add_parser("device", parents=[common_options()], help="a device's encryption key pair (X25519; private 0600)")
    d.add_argument("--out", type=Path, required=True, help="directory for device.key (0600) and device.pub")
    d.add_argument("--device", action="append", default=[], metavar="ID",
                   help="make a pair per device under DIR/ID/, public keys collected in DIR/recipients/ (repeatable)")
    d.add_argument("--force", action="store_true", help="overwrite an existing key")
    d.set_defaults(func=cmd_device)


def _write_pair(out: Path, force: bool) -> DeviceKey:
    key_path = out / PRIVATE_FILE
    if key_path.exists() and not force:
        raise UsageError(f"{key_path} exists; pass --force to replace it (releases encrypted to it stop opening)")
    out.mkdir(parents=True, exist_ok=True)
    key = generate_device_key()
    write_bytes_atomic(key_path, private_pem(key), mode=0o600)
    os.chmod(key_path, 0o600)
    write_bytes_atomic(out / PUBLIC_FILE, public_pem(key), mode=0o644)
    return key


def cmd_device(args: argparse.Namespace) -> int:
    """Write the key pair(s); print each key id."""
    out: Path = args.out
    if not args.device:
        key = _write_pair(out, args.force)
        print(f"device key id {device_key_id(key)}")
        print(f"wrote {out / PRIVATE_FILE} (mode 0600; [trust] device_key) and {out / PUBLIC_FILE} (for --to / --encrypt-to)")
        return 0
    for device in args.device:
        check_id(device, "--device")
    if len(set(args.device)) != len(args.device):
        raise UsageError("--device: an id is given twice")
    for device in args.device:  # every private key checked before any is written
        if (out / device / PRIVATE_FILE).exists() and not args.force:
            raise UsageError(f"{out / device / PRIVATE_FILE} exists; pass --force to replace it")
    for device in args.device:
        key = _write_pair(out / device, args.force)
        (out / RECIPIENTS_DIR).mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(out / RECIPIENTS_DIR / f"{device}.pub", public_pem(key), mode=0o644)
        print(f"{device}: device key id {device_key_id(key)}")
    print(f"wrote {len(args.device)} key pairs under {out}/ID/ (copy device.key to each device, mode 0600); "
          f"public keys for --encrypt-to in {out / RECIPIENTS_DIR}")
    return 0
