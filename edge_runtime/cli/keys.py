"""``edge-runtime keys generate|show``."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from edge_runtime.atomic import write_bytes_atomic
from edge_runtime.cli.common import common_options
from edge_runtime.exceptions import TrustError, UsageError
from edge_runtime.trust.keys import generate_private_key, key_id, load_private_key_pem, private_key_pem, public_key_hex
from edge_runtime.trust.root import make_root, sign_root, verify_root


def register(sub: Any) -> None:
    """Add the ``keys`` subcommands."""
    p = sub.add_parser("keys", help="signing keys and the trust root")
    ks = p.add_subparsers(dest="keys_command", required=True, parser_class=type(p))
    g = ks.add_parser("generate", parents=[common_options()], help="a new Ed25519 key and a version-1 trust root")
    g.add_argument("--out", type=Path, required=True, help="directory for signing.key and root.json")
    g.add_argument("--force", action="store_true", help="overwrite an existing key")
    g.set_defaults(func=cmd_generate)
    s = ks.add_parser("show", parents=[common_options()], help="describe a signing key or a root.json")
    s.add_argument("file", type=Path)
    s.set_defaults(func=cmd_show)


def cmd_generate(args: argparse.Namespace) -> int:
    """Write DIR/signing.key (0600) and DIR/root.json."""
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    key_path = out / "signing.key"
    if key_path.exists() and not args.force:
        raise UsageError(f"{key_path} exists; pass --force to replace it")
    key = generate_private_key()
    write_bytes_atomic(key_path, private_key_pem(key), mode=0o600)
    os.chmod(key_path, 0o600)
    write_bytes_atomic(out / "root.json", sign_root(make_root(1, [key], [key]), [key]))
    print(f"key id {key_id(key)}")
    print(f"wrote {key_path} (mode 0600) and {out / 'root.json'} (version 1)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """Print a key's id and public key, or a trust root's roles."""
    try:
        data = args.file.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror}") from exc
    if b"PRIVATE KEY" in data:
        key = load_private_key_pem(data)
        print(f"Ed25519 private key\nkey id: {key_id(key)}\npublic: {public_key_hex(key)}")
        return 0
    try:
        root = verify_root(data)
    except TrustError:
        try:
            json.loads(data)
        except ValueError:
            raise UsageError(f"{args.file}: neither a PEM private key nor a root.json") from None
        raise
    print(f"trust root version {root.version} (signatures verified)")
    for name, role in sorted(root.roles.items()):
        print(f"role {name}: threshold {role.threshold} of {len(role.keyids)}")
        for kid in role.keyids:
            print(f"  {kid}")
    return 0
