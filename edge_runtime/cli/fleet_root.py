"""``edge-runtime fleet root publish|show``: hand a new trust root version to a fleet.

Registered under ``fleet`` by cli/fleet.py; the checks are edge_runtime/fleet/roots.py.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_runtime.cli.keys_root import describe_root, read_file
from edge_runtime.fleet.roots import publish_root, read_chain
from edge_runtime.fleet.session import FleetSession
from edge_runtime.trust.root import TrustRoot, format_time, verify_root
from edge_runtime.updates.protocol import Topics

log = logging.getLogger("edge_runtime.fleet")

SessionFn = Callable[[argparse.Namespace], FleetSession]


def register(fs: Any, parents: list[argparse.ArgumentParser], session: SessionFn) -> None:
    """Add ``fleet root ...`` under the ``fleet`` subparsers ``fs``; ``session`` opens the broker session."""
    p = fs.add_parser("root", help="the fleet's trust root: publish a new version, show the retained chain")
    rs = p.add_subparsers(dest="root_command", required=True, parser_class=type(p))
    pub = rs.add_parser("publish", parents=parents, help="publish a signed root version (retained trust/root/N)")
    pub.add_argument("new_root", metavar="ROOT", type=Path, help="the new root.json, signed (edge-runtime keys root sign)")
    pub.add_argument("--previous", type=Path, default=None,
                     help="a root you hold that devices chain from (default: the operator file's root, else the "
                     "broker's lowest retained root)")
    # root=None: the operator file's `root` (docs/operations.md) fills it in, as for --root elsewhere
    pub.set_defaults(func=lambda a: cmd_publish(a, session), root=None)
    show = rs.add_parser("show", parents=parents, help="the retained root versions and where their chain ends")
    show.add_argument("--previous", type=Path, default=None,
                      help="follow the chain from this root (default: the operator file's root)")
    show.set_defaults(func=lambda a: cmd_show(a, session), root=None)


def _path(value: str | Path | None) -> Path | None:
    return Path(value) if value else None


def _anchor(path: Path | None) -> TrustRoot | None:
    return verify_root(read_file(path, "previous root")) if path is not None else None


def cmd_publish(args: argparse.Namespace, session: SessionFn) -> int:
    """Verify the root chains from the fleet's current one, then publish it retained."""
    data = read_file(args.new_root, "root")
    anchor = _anchor(args.previous or _path(args.root))
    with session(args) as s:
        plan = publish_root(s, data, anchor, _dt.datetime.now(_dt.UTC))
    for note in plan.notes:
        log.warning("%s", note)
    topic = Topics(args.prefix, args.fleet).root(plan.new.version)
    if plan.already_published:
        print(f"root version {plan.new.version} is already retained on {topic}; nothing published")
    else:
        print(f"published root version {plan.new.version} on {topic} (chains from version {plan.previous.version})")
    return 0


def cmd_show(args: argparse.Namespace, session: SessionFn) -> int:
    """Print the chain of retained roots and the newest one's roles and expiry."""
    anchor = _anchor(args.previous or _path(args.root))
    with session(args) as s:
        chain = read_chain(s, anchor)
    for note in chain.problems:
        log.warning("%s", note)
    now = _dt.datetime.now(_dt.UTC)
    for root in chain.roots:
        until = "never expires" if root.expires is None else f"expires {format_time(root.expires)}"
        flag = " (EXPIRED)" if root.expired(now) else ""
        print(f"root version {root.version}: {until}{flag}")
    print(f"current: root version {chain.current.version}")
    print("\n".join(describe_root(chain.current, now)))
    return 0
