"""``edge-runtime keys root init|add-key|retire-key|renew|sign|verify``: offline root keys.

A root version is made in steps that can happen on different machines: ``add-key`` /
``retire-key`` / ``renew`` write the next version *unsigned* (a draft; editing a draft again
keeps its version, so one rotation may add and retire several keys), each root-key holder
runs ``sign`` on it, ``verify`` checks it against the previous version, and
``fleet root publish`` hands it to the devices. Pure work in edge_runtime/trust/rotation.py.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
import os
from pathlib import Path
from typing import Any

from edge_runtime.atomic import write_bytes_atomic
from edge_runtime.cli.common import common_options
from edge_runtime.exceptions import TrustError, UsageError
from edge_runtime.options import load_keys
from edge_runtime.trust.keys import generate_private_key, key_id, load_public_key, private_key_pem
from edge_runtime.trust.root import (
    TrustRoot,
    check_root_expiry,
    format_time,
    load_unverified,
    make_root,
    sign_root,
    update_root,
    verify_root,
)
from edge_runtime.trust.rotation import (
    add_key,
    add_signatures,
    next_version,
    retire_key,
    set_expires,
    signing_status,
    unsigned,
)

log = logging.getLogger("edge_runtime.cli")

DEFAULT_EXPIRES_DAYS = 365
MAX_ROOT_KEYS = 16


def expires_option(p: argparse.ArgumentParser, default: int | None = DEFAULT_EXPIRES_DAYS) -> None:
    """``--expires-days N`` (0: a root that never expires)."""
    shown = default if default is not None else f"{DEFAULT_EXPIRES_DAYS} for a new version, a draft keeps its own"
    p.add_argument(
        "--expires-days", type=int, default=default, metavar="DAYS",
        help=f"the root expires this many days from now (default {shown}; 0: never). Devices install nothing "
        "new under an expired root until a newer root reaches them",
    )


def expires_at(days: int | None, now: _dt.datetime | None = None) -> _dt.datetime | None:
    """The ``expires`` time ``days`` from ``now`` (None for 0 or no value)."""
    if days is None or days == 0:
        return None
    if days < 0 or days > 100 * 366:
        raise UsageError(f"--expires-days: expected 0 (never) or 1-36600 days, found {days}")
    return (now or _dt.datetime.now(_dt.UTC)) + _dt.timedelta(days=days)


def write_private_key(path: Path, key: Any, force: bool) -> None:
    """Write ``key`` as PKCS#8 PEM, mode 0600; refuses to overwrite without ``force``."""
    if path.exists() and not force:
        raise UsageError(f"{path} exists; pass --force to replace it")
    write_bytes_atomic(path, private_key_pem(key), mode=0o600)
    os.chmod(path, 0o600)


def read_file(path: Path, what: str = "") -> bytes:
    """The bytes of ``path``; a usage error (exit 2) when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what + ' ' if what else ''}{path}: {exc.strerror}") from exc


def describe_root(root: TrustRoot, now: _dt.datetime | None = None) -> list[str]:
    """Lines for a root's expiry and roles (``keys show``, ``keys root ...``)."""
    now = now or _dt.datetime.now(_dt.UTC)
    if root.expires is None:
        lines = ["expires: never (no 'expires' field)"]
    elif root.expired(now):
        lines = [f"expires: {format_time(root.expires)} (EXPIRED: devices install nothing new under it)"]
    else:
        lines = [f"expires: {format_time(root.expires)} (in {(root.expires - now).days} days)"]
    for name, role in sorted(root.roles.items()):
        lines.append(f"role {name}: threshold {role.threshold} of {len(role.keyids)}")
        lines.extend(f"  {kid}" for kid in role.keyids)
    return lines


def _threshold(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {text!r}") from None
    if not 1 <= value <= MAX_ROOT_KEYS:
        raise argparse.ArgumentTypeError(f"expected 1-{MAX_ROOT_KEYS}, found {value}")
    return value


def register(ks: Any) -> None:
    """Add ``keys root ...`` under the ``keys`` subparsers ``ks``."""
    p = ks.add_parser("root", help="offline root keys: create a root, rotate keys, sign and verify root versions")
    rs = p.add_subparsers(dest="root_command", required=True, parser_class=type(p))
    parents = [common_options()]

    i = rs.add_parser("init", parents=parents, help="root keys, a models key and root.json version 1")
    i.add_argument("--out", type=Path, required=True, help="directory for root-N.key, models.key and root.json")
    i.add_argument("--root-keys", type=_threshold, default=3, help="how many root keys (default 3)")
    i.add_argument("--threshold", type=_threshold, default=2, help="root keys needed to sign a root version (default 2)")
    i.add_argument("--models-key", type=Path, action="append", default=None, metavar="FILE",
                   help="an existing models key (private or public; repeat); default: a new DIR/models.key")
    i.add_argument("--models-threshold", type=_threshold, default=1, help="models keys needed per release (default 1)")
    i.add_argument("--force", action="store_true", help="overwrite existing files in DIR")
    expires_option(i)
    i.set_defaults(func=cmd_init)

    for name, helptext in (
        ("add-key", "the next root version (unsigned) with one more key for a role"),
        ("retire-key", "the next root version (unsigned) without one key of a role"),
        ("renew", "the next root version (unsigned) with the same keys and a new expiry"),
    ):
        e = rs.add_parser(name, parents=parents, help=helptext)
        e.add_argument("root", type=Path, help="the current root.json (signed: makes version N+1) or a draft (edited in place)")
        if name != "renew":
            e.add_argument("--role", choices=["models", "root"], default="models", help="the role (default models)")
        if name == "add-key":
            e.add_argument("--key", type=Path, required=True, help="the key file (private or public PEM, or hex)")
        if name == "retire-key":
            e.add_argument("--keyid", required=True, help="the key id (or its first 8+ hex characters)")
        if name != "renew":
            e.add_argument("--threshold", type=_threshold, default=None, help="the role's new threshold (default unchanged)")
        e.add_argument("-o", "--output", type=Path, required=True, help="where the draft is written")
        e.add_argument("--force", action="store_true", help="overwrite an existing OUTPUT (other than ROOT itself)")
        expires_option(e, default=None)
        e.set_defaults(func=cmd_edit, edit=name)

    s = rs.add_parser("sign", parents=parents, help="add root-key signatures to a root version")
    s.add_argument("root", type=Path, help="the draft root.json")
    s.add_argument("--key", type=Path, action="append", required=True, help="a root key (repeat for several)")
    s.add_argument("--previous", type=Path, default=None, help="the previous root version (its root keys may sign too)")
    s.add_argument("-o", "--output", type=Path, default=None, help="write here instead of in place")
    s.set_defaults(func=cmd_sign)

    v = rs.add_parser("verify", parents=parents, help="check a root version is fully signed, chains and is not expired")
    v.add_argument("root", type=Path)
    v.add_argument("--previous", type=Path, default=None, help="the version before: checks the chain (devices do)")
    v.set_defaults(func=cmd_verify)


def cmd_init(args: argparse.Namespace) -> int:
    """Write root-1.key .. root-N.key (0600), models.key unless given, and root.json v1 signed by every root key."""
    if args.threshold > args.root_keys:
        raise UsageError(f"--threshold {args.threshold} exceeds --root-keys {args.root_keys}")
    out: Path = args.out
    expires = expires_at(args.expires_days)
    models: list[Any] = []
    for path in args.models_key or []:
        models.append(load_public_key(read_file(path, "models key")))
    if args.models_threshold > max(1, len(models)):
        raise UsageError(f"--models-threshold {args.models_threshold} exceeds the {max(1, len(models))} models key(s)")
    out.mkdir(parents=True, exist_ok=True)
    names = [f"root-{n}.key" for n in range(1, args.root_keys + 1)] + ([] if models else ["models.key"])
    existing = [n for n in [*names, "root.json"] if (out / n).exists()]
    if existing and not args.force:
        raise UsageError(f"{out / existing[0]} exists; pass --force to replace it")
    root_keys = [generate_private_key() for _ in range(args.root_keys)]
    for n, key in enumerate(root_keys, start=1):
        write_private_key(out / f"root-{n}.key", key, force=True)
    if not models:
        models_key = generate_private_key()
        write_private_key(out / "models.key", models_key, force=True)
        models = [models_key.public_key()]
    signed = make_root(1, list(root_keys), models, args.threshold, args.models_threshold, expires=expires)
    write_bytes_atomic(out / "root.json", sign_root(signed, root_keys))
    root = verify_root((out / "root.json").read_bytes())
    print(f"wrote {out / 'root.json'} (version 1): root role {args.threshold} of {args.root_keys}, "
          f"models role {args.models_threshold} of {len(models)}")
    print("\n".join(describe_root(root)))
    print(f"move {', '.join(f'root-{n}.key' for n in range(1, args.root_keys + 1))} to separate offline places; "
          "keep only the models key on the build host")
    return 0


def _start(path: Path, expires_days: int | None) -> tuple[dict[str, Any], str]:
    """The ``signed`` part to edit: a draft's own (version kept) or version N+1 of a signed root."""
    data = read_file(path, "root")
    draft, sigs = load_unverified(data)
    if not sigs:
        signed = draft.signed if expires_days is None else set_expires(draft.signed, expires_at(expires_days))
        return signed, f"draft version {draft.version} edited"
    try:
        current = verify_root(data)
    except TrustError as exc:
        raise UsageError(
            f"{path} is signed but not by a threshold of its own root keys ({exc}); finish signing it, "
            "or edit the unsigned draft"
        ) from exc
    days = DEFAULT_EXPIRES_DAYS if expires_days is None else expires_days
    return next_version(current, expires_at(days)), f"version {current.version + 1} made from version {current.version}"


def cmd_edit(args: argparse.Namespace) -> int:
    """``add-key`` / ``retire-key`` / ``renew``: write an unsigned root version."""
    signed, how = _start(args.root, args.expires_days)
    if args.edit == "add-key":
        key = load_public_key(read_file(args.key, "key"))
        signed = add_key(signed, args.role, key, args.threshold)
        change = f"key {key_id(key)[:12]} added to role {args.role}"
    elif args.edit == "retire-key":
        before = set(signed["roles"][args.role]["keyids"])
        signed = retire_key(signed, args.role, args.keyid, args.threshold)
        gone = before - set(signed["roles"][args.role]["keyids"])
        change = f"key {next(iter(gone))[:12]} retired from role {args.role}"
    else:
        change = "same keys"
    out: Path = args.output
    if out.exists() and not args.force and out.resolve() != args.root.resolve():
        raise UsageError(f"{out} exists; pass --force to replace it")
    write_bytes_atomic(out, unsigned(signed))
    draft, _ = load_unverified(out.read_bytes())
    print(f"wrote {out}: {how}, {change}; unsigned")
    print("\n".join(describe_root(draft)))
    print(f"next: edge-runtime keys root sign {out} --key ROOT-KEY [--key ROOT-KEY] --previous PREVIOUS-ROOT.json")
    return 0


def _previous(path: Path | None) -> TrustRoot | None:
    return verify_root(read_file(path, "previous root")) if path is not None else None


def cmd_sign(args: argparse.Namespace) -> int:
    """Add signatures by root keys; print how far each threshold is."""
    data = read_file(args.root, "root")
    previous = _previous(args.previous)
    signed = add_signatures(data, load_keys(args.key), previous)
    status = signing_status(signed, previous)
    out = args.output or args.root
    write_bytes_atomic(out, signed)
    print(f"wrote {out}: root version {status.root.version}, {'fully signed' if status.complete else 'not fully signed yet'}")
    print(status.describe())
    if previous is None and status.root.version > 1:
        log.warning("without --previous the threshold of version %d's root keys was not counted", status.root.version - 1)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Exit 0 when the root is fully signed, chains from ``--previous`` and has not expired."""
    data = read_file(args.root, "root")
    previous = _previous(args.previous)
    if previous is not None:
        status = signing_status(data, previous)  # refuses a previous that is not version N-1
        root = update_root(previous, data)
        how = f"chains from version {previous.version}"
    else:
        root = verify_root(data)
        how = "signed by a threshold of its own root keys"
        if root.version > 1:
            log.warning("root version %d: pass --previous to check the chain from version %d (what devices check)",
                        root.version, root.version - 1)
    check_root_expiry(root, _dt.datetime.now(_dt.UTC))
    print(f"trust root version {root.version} verifies: {how}")
    if previous is not None:
        print(status.describe())
    print("\n".join(describe_root(root)))
    return 0
