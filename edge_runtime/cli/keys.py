"""``edge-runtime keys generate|new-key|show``, ``keys root ...`` (cli/keys_root.py) and
``keys device`` (cli/keys_device.py).

``generate`` is the quick start: one key for both roles, threshold 1. A fleet keeps the
roles apart: ``keys root init`` makes offline root keys (a threshold of them signs each
root version) and an online ``models`` key (docs/updates.md, "Keys and root rotation").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edge_runtime.atomic import write_bytes_atomic
from edge_runtime.cli import keys_device, keys_root
from edge_runtime.cli.common import common_options
from edge_runtime.cli.keys_root import describe_root, expires_at, expires_option, read_file, write_private_key
from edge_runtime.exceptions import TrustError, UsageError
from edge_runtime.trust.keys import generate_private_key, key_id, load_private_key_pem, public_key_hex
from edge_runtime.trust.root import format_time, make_root, sign_root, verify_root
from edge_runtime.trust.rotation import signing_status


def register(sub: Any) -> None:
    """Add the ``keys`` subcommands."""
    p = sub.add_parser("keys", help="signing keys and the trust root")
    ks = p.add_subparsers(dest="keys_command", required=True, parser_class=type(p))
    g = ks.add_parser("generate", parents=[common_options()], help="a new Ed25519 key and a version-1 trust root")
    g.add_argument("--out", type=Path, required=True, help="directory for signing.key and root.json")
    g.add_argument("--force", action="store_true", help="overwrite an existing key")
    expires_option(g)
    g.set_defaults(func=cmd_generate)
    n = ks.add_parser("new-key", parents=[common_options()], help="one new Ed25519 private key (mode 0600)")
    n.add_argument("--out", type=Path, required=True, help="the key file to write")
    n.add_argument("--force", action="store_true", help="overwrite an existing key")
    n.set_defaults(func=cmd_new_key)
    s = ks.add_parser("show", parents=[common_options()], help="describe a signing key or a root.json (signed or a draft)")
    s.add_argument("file", type=Path)
    s.add_argument("--previous", type=Path, default=None, help="count a draft's signatures against this previous root too")
    s.set_defaults(func=cmd_show)
    keys_root.register(ks)
    keys_device.register(ks)


def cmd_generate(args: argparse.Namespace) -> int:
    """Write DIR/signing.key (0600) and DIR/root.json."""
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    key_path = out / "signing.key"
    expires = expires_at(args.expires_days)
    key = generate_private_key()
    write_private_key(key_path, key, args.force)
    write_bytes_atomic(out / "root.json", sign_root(make_root(1, [key], [key], expires=expires), [key]))
    print(f"key id {key_id(key)}")
    until = f", expires {format_time(expires)}" if expires is not None else ", never expires"
    print(f"wrote {key_path} (mode 0600) and {out / 'root.json'} (version 1{until})")
    return 0


def cmd_new_key(args: argparse.Namespace) -> int:
    """Write one new private key; print its id and public key (what ``keys root add-key`` takes)."""
    key = generate_private_key()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_private_key(args.out, key, args.force)
    print(f"key id {key_id(key)}\npublic {public_key_hex(key)}\nwrote {args.out} (mode 0600)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """Print a key's id and public key, or a trust root's expiry and roles."""
    data = read_file(args.file)
    if b"PRIVATE KEY" in data:
        key = load_private_key_pem(data)
        print(f"Ed25519 private key\nkey id: {key_id(key)}\npublic: {public_key_hex(key)}")
        return 0
    try:
        doc = json.loads(data)
    except ValueError:
        raise UsageError(f"{args.file}: neither a PEM private key nor a root.json") from None
    previous = verify_root(read_file(args.previous, "previous root")) if args.previous is not None else None
    if isinstance(doc, dict) and doc.get("signatures") == [] or previous is not None:
        status = signing_status(data, previous)
        state = "complete" if status.complete else "a draft: not enough signatures yet"
        print(f"trust root version {status.root.version} ({state})")
        print(status.describe())
        print("\n".join(describe_root(status.root)))
        if not status.complete:  # exit 1: scripts (device/install.sh) must never pin a draft
            raise TrustError(f"{args.file}: root version {status.root.version} is not fully signed")
        return 0
    try:
        root = verify_root(data)
    except TrustError:
        if not isinstance(doc, dict) or "signed" not in doc:
            raise UsageError(f"{args.file}: neither a PEM private key nor a root.json") from None
        raise
    print(f"trust root version {root.version} (signatures verified)")
    print("\n".join(describe_root(root)))
    return 0
