"""``edge-runtime fleet publish|status|prune|agent``: the operator side of the update protocol.

``publish --steps 10,50,100 --step-wait S --bake B --max-failures P`` raises the rollout in
steps and halts (exit 1, the desired state left at the step's percentage) when the failure
share of the devices that finished the update passes the limit, when devices of a step are
still pending at the end of ``--step-wait``, or when a failure comes during the ``--bake``
hold after a step (edge_runtime/fleet/staged.py). ``publish`` and ``rollback`` refuse a
``--sign-key`` the fleet's root does not trust before publishing anything.

``rollback NAME --to VERSION`` points the fleet back at an earlier, still retained release
and waits for the devices to serve it (edge_runtime/fleet/rollback.py).

``console`` records the fleet's state changes, events and rollout steps in SQLite and serves
them as a web page (edge_runtime/fleet/console/, docs/console.md).

``agent`` is the device side without the HTTP API: it follows the fleet's desired state
into the local store and self-tests in-process, for devices that only score offline
(``edge-runtime score``) and for fleet simulation.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from edge_runtime.cli import fleet_root
from edge_runtime.cli.bundle import encrypt_beside
from edge_runtime.cli.common import common_options, config_from_args, load_root_file, open_store, store_options
from edge_runtime.config import device_id, load_config
from edge_runtime.exceptions import BadDataError, UsageError
from edge_runtime.fleet.capture import CapturePull
from edge_runtime.fleet.capture_index import DEFAULT_MAX_BYTES, DEFAULT_MAX_FILES, PullLimits
from edge_runtime.fleet.operator_config import BROKER_ENV, CONFIG_ENV, FLEET_ENV, load_operator_config, resolve
from edge_runtime.fleet.prune import prune_releases
from edge_runtime.fleet.publish import publish_release
from edge_runtime.fleet.rollback import order_rollback, watch_rollback
from edge_runtime.fleet.rollout import parse_steps
from edge_runtime.fleet.roots import refuse_expired_root
from edge_runtime.fleet.session import BrokerOptions, FleetSession
from edge_runtime.fleet.staged import StagedResult, StepResult, staged_rollout
from edge_runtime.fleet.status import DeviceStates, collect_fleet, format_table, summary_lines
from edge_runtime.options import load_keys
from edge_runtime.spec.window import Window, parse_window
from edge_runtime.text import ProgressLine
from edge_runtime.trust.root import TrustRoot
from edge_runtime.updates.mqtt import redact_url
from edge_runtime.updates.protocol import MAX_SEQ, Topics
from edge_runtime.updates.service import UpdateService
from edge_runtime.updates.verify import verify_desired

log = logging.getLogger("edge_runtime.fleet")
PASSWORD_ENV = "EDGE_MQTT_PASSWORD"
MAX_LISTED = 20  # skipped or missing files named one per line; the rest counted


def _percent(text: str) -> int:
    try:
        value = int(text.rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage 0-100, found {text!r}") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"expected a percentage 0-100, found {value}")
    return value


def _seq(text: str) -> int:
    try:
        value = int(text) if len(text) <= 20 else 0
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_SEQ:
        raise argparse.ArgumentTypeError(f"expected an integer in [1, {MAX_SEQ}] (64 bits)")
    return value


def _size(text: str) -> int:
    """A byte count: ``1048576``, ``512K``, ``256M``, ``2G`` (powers of 1024)."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = units.get(t[-1:], 1)
    digits = t[:-1] if t[-1:] in units else t
    if not digits.isascii() or not digits.isdigit() or len(digits) > 15 or int(digits) * scale < 1:
        raise argparse.ArgumentTypeError(f"expected a positive byte count such as 256M, found {text!r}")
    return int(digits) * scale


def _fleet_root(args: argparse.Namespace) -> TrustRoot | None:
    """``--root``, else the ``[trust] root`` of ``--config``, else None (the signing keys' own root)."""
    if args.root is not None:
        return load_root_file(args.root)
    if args.config is not None:
        return load_root_file(Path(load_config(args.config).trust.root))
    return None


def broker_options() -> argparse.ArgumentParser:
    """Options every operator command takes. Each left out comes from ``EDGE_BROKER``/``EDGE_FLEET``,
    then the operator file (``--fleet-config``, edge_runtime/fleet/operator_config.py), then the default."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--fleet-config", type=Path, default=None, metavar="FILE",
        help=f"operator settings (broker, TLS files, fleet, root); default ${CONFIG_ENV}, else ~/.config/edge-runtime/fleet.toml",
    )
    p.add_argument("--fleet", default=None, help=f"fleet name (topics under PREFIX/FLEET/); or {FLEET_ENV}, or fleet = in the operator file")
    p.add_argument("--broker", default=None, help=f"mqtt://host:port or mqtts://host:port (or {BROKER_ENV}; default mqtt://127.0.0.1:1883)")
    p.add_argument("--prefix", default=None, help="topic prefix (default edge)")
    p.add_argument("--ca-file", default=None, help="CA certificate for mqtts://")
    p.add_argument("--cert-file", default=None, help="client certificate (TLS client authentication)")
    p.add_argument("--key-file", default=None, help="client key (TLS client authentication)")
    p.add_argument("--username", default=None)
    p.add_argument(
        "--password-file", type=Path, default=None,
        help=f"read the broker password from this file (or set {PASSWORD_ENV}); never on the command line",
    )
    p.add_argument("--password", default=None, help=argparse.SUPPRESS)  # refused: argv is visible to every user
    p.add_argument("--protocol", choices=["5", "3.1.1"], default=None, help="MQTT protocol (default 5)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the broker")
    return p


def _apply_operator_config(ns: argparse.Namespace) -> None:
    """Fill the broker options the command line left out (flags > environment > operator file)."""
    if getattr(ns, "_operator_resolved", False):
        return
    flags = {k: getattr(ns, k, None) for k in ("fleet", "broker", "prefix", "ca_file", "cert_file", "key_file",
                                               "username", "password_file", "protocol", "root")}
    r = resolve(flags, os.environ, load_operator_config(ns.fleet_config))
    ns.fleet, ns.broker, ns.prefix, ns.protocol = r.fleet, r.broker, r.prefix, r.protocol
    ns.ca_file, ns.cert_file, ns.key_file, ns.username = r.ca_file, r.cert_file, r.key_file, r.username
    ns.password_file = r.password_file
    # The file's root is a default for commands that take --root, unless --config names a device config.
    if hasattr(ns, "root") and getattr(ns, "config", None) is None:
        ns.root = r.root
    ns._operator_resolved = True


def _operator_parser(base: type[argparse.ArgumentParser]) -> type[argparse.ArgumentParser]:
    """``base`` that resolves the broker options as soon as a subcommand's arguments are parsed,
    so every ``fleet`` subcommand (present and future) sees final values in ``args``."""

    class OperatorParser(base):  # type: ignore[valid-type,misc]
        def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
            ns, rest = super().parse_known_args(args, namespace)
            if hasattr(ns, "fleet_config"):
                _apply_operator_config(ns)
            return ns, rest

    return OperatorParser


def register(sub: Any) -> None:
    """Add the ``fleet`` subcommands."""
    p = sub.add_parser("fleet", help="publish signed updates to a fleet and watch it")
    fs = p.add_subparsers(dest="fleet_command", required=True, parser_class=_operator_parser(type(p)))
    parents = [common_options(), broker_options()]
    pub = fs.add_parser("publish", parents=parents, help="publish a bundle and point the desired state at it")
    pub.add_argument("bundle", type=Path)
    pub.add_argument("--sign-key", type=Path, action="append", required=True, help="signs the desired state; repeat for a threshold")
    pub.add_argument("--rollout", type=_percent, default=None, help="percentage of devices that take it (default 100)")
    pub.add_argument("--steps", default=None, help="raise the rollout in steps, e.g. 10,50,100 (fleet-wide only)")
    pub.add_argument(
        "--step-wait", type=float, default=300.0, help="the longest wait, in seconds, for a step's devices to finish "
        "(default 300); a step ends as soon as they have, and one whose devices are still pending then halts the rollout"
    )
    pub.add_argument(
        "--bake", type=float, default=0.0, metavar="SECONDS",
        help="after a step's devices finished, hold this many seconds watching failures (and --max-drift) "
        "before the next step; a failure during the bake halts (default 0)",
    )
    pub.add_argument(
        "--max-failures", type=float, default=None, metavar="PERCENT",
        help="halt when more than PERCENT %% of the devices that finished the update failed or rejected it",
    )
    pub.add_argument(
        "--max-drift", type=float, default=None, metavar="PSI",
        help="with --max-failures: an updated device whose drift score for the release reaches PSI counts as failed; "
        "each step then runs its whole --step-wait, or with --bake is watched during the bake (docs/monitoring.md)",
    )
    pub.add_argument("--device", default=None, help="publish a per-device override instead of the fleet's desired state")
    pub.add_argument(
        "--root", type=Path, default=None,
        help="the fleet's trust root: --sign-key must be trusted by it, the bundle and the retained desired state must "
        "verify against it (default: [trust] root of --config; without either, --sign-key is checked against the root "
        "retained on the broker and the retained state must be signed by --sign-key)",
    )
    pub.add_argument("--config", type=Path, default=None, help="take the fleet's trust root from this config's [trust] root")
    pub.add_argument("--seq", type=_seq, default=None, help="desired-state seq (default: max(retained + 1, Unix time))")
    pub.add_argument("--expires-in-hours", type=float, default=None, help="devices with a trusted clock ignore it after this")
    pub.add_argument("--force-chunks", action="store_true", help="send the chunks even if the release is already published")
    pub.add_argument(
        "--encrypt-to", type=Path, action="append", default=[], metavar="FILE_OR_DIR",
        help="encrypt the bundle to these devices' public keys (a device.pub or a directory of *.pub) and publish "
        "that, written beside it as NAME.encrypted.bundle; devices left out cannot read it (docs/security.md)",
    )
    pub.add_argument(
        "--delta-from", type=Path, action="append", default=[], metavar="OLD.bundle",
        help="also publish a binary delta from this earlier release (repeatable); devices that have it fetch the delta, "
        "others the full release; a delta of 90 %% or more of the full size is skipped (docs/updates.md)",
    )
    pub.add_argument("--window", default=None, metavar="CRON",
                     help="maintenance window: devices download at once but activate only inside it, e.g. '0 2 * * *'")
    pub.add_argument("--window-minutes", type=int, default=None, metavar="M", help="length of the window (1..1440)")
    pub.add_argument("--window-tz", default="UTC", metavar="TZ", help="IANA time zone the cron is read in (default UTC)")
    pub.set_defaults(func=cmd_publish)
    rb = fs.add_parser("rollback", parents=parents, help="point the fleet back at an earlier release that is still retained")
    rb.add_argument("name", help="the model")
    rb.add_argument("--to", type=int, required=True, metavar="VERSION", help="the earlier version (its manifest still retained)")
    rb.add_argument("--sign-key", type=Path, action="append", required=True, help="signs the desired state; repeat for a threshold")
    rb.add_argument("--root", type=Path, default=None, help="the fleet's trust root (default: [trust] root of --config, "
                    "else the root retained on the broker)")
    rb.add_argument("--config", type=Path, default=None, help="take the fleet's trust root from this config's [trust] root")
    rb.add_argument("--step-wait", type=float, default=300.0, help="seconds to wait for every device to serve VERSION "
                    "(default 300; exit 1 if some do not); 0: publish, report and do not wait")
    rb.set_defaults(func=cmd_rollback)
    st = fs.add_parser("status", parents=parents, help="a table of devices from their retained state")
    st.add_argument("--json", action="store_true", help="print JSON instead of a table")
    st.set_defaults(func=cmd_status)
    pr = fs.add_parser("prune", parents=parents, help="clear retained chunks of releases no device wants any more")
    pr.add_argument("--dry-run", action="store_true", help="list what would be cleared")
    pr.add_argument("--root", type=Path, default=None, help="count only desired states that verify against this root")
    pr.add_argument("--config", type=Path, default=None, help="take the fleet's trust root from this config's [trust] root")
    pr.set_defaults(func=cmd_prune)
    cap = fs.add_parser("capture", help="fetch what a device captured (docs/monitoring.md)")
    cs = cap.add_subparsers(dest="capture_command", required=True, parser_class=type(p))
    pull = cs.add_parser("pull", parents=parents, help="ask a device for its capture and write .npz/.jsonl files")
    pull.add_argument("--device", required=True, help="the device to pull from")
    pull.add_argument("--out", type=Path, required=True, help="directory for the files (an unfinished pull into it resumes)")
    pull.add_argument("--sign-key", type=Path, action="append", required=True, help="signs the request (role models)")
    pull.add_argument("--model", default=None, help="only this model's capture")
    pull.add_argument("--since", default=None, help="only records from this ISO 8601 time on (e.g. 2026-12-01T00:00:00Z)")
    pull.add_argument("--stall", type=float, default=20.0, help="seconds without data before asking again for what is missing")
    pull.add_argument("--wait", type=float, default=600.0, help="give up after this many seconds (the request stays "
                      "retained until then, so an offline device answers when it connects)")
    pull.add_argument("--max-files", type=int, default=DEFAULT_MAX_FILES,
                      help=f"take at most this many files (default {DEFAULT_MAX_FILES}; the request says so too)")
    pull.add_argument("--max-bytes", type=_size, default=DEFAULT_MAX_BYTES,
                      help=f"take at most this many bytes of segments, e.g. 256M (default {DEFAULT_MAX_BYTES // 2**20}M; "
                      "also at most a third of the free space under --out)")
    pull.set_defaults(func=cmd_capture_pull)
    co = fs.add_parser("console", parents=parents, help="a web page of the fleet, its rollouts and their history (read-only)")
    co.add_argument("--db", type=Path, default=None, help="the SQLite record (default: ./edge-console-FLEET.sqlite)")
    co.add_argument("--host", default="127.0.0.1", help="address the page is served on (default 127.0.0.1)")
    co.add_argument("--port", type=int, default=8080, help="port of the page (default 8080; 0: any free port)")
    co.add_argument(
        "--max-failures", type=float, default=None, metavar="PERCENT",
        help="show each rollout's failure share against this limit (as publish --max-failures counts it)",
    )
    co.add_argument("--root", type=Path, default=None, help="mark desired states that do not verify against this trust root")
    co.add_argument("--retain-days", type=float, default=30.0, metavar="D",
                    help="delete history (timeline, drift, versions, failures) older than D days (default 30)")
    co.add_argument("--max-db-mb", type=float, default=256.0, metavar="M",
                    help="keep the record under M MB: the oldest history goes first (default 256)")
    co.add_argument("--device-rate", type=float, default=5.0, metavar="PER_S",
                    help="messages a second each device may send on average, bursts of 120 pass (default 5); "
                         "events over it are dropped and counted, states wait")
    co.add_argument("--max-connections", type=int, default=64, help="HTTP connections served at once; more are refused (default 64)")
    co.add_argument("--read-timeout", type=float, default=5.0, metavar="SECONDS",
                    help="close an HTTP connection that sends nothing for this long (default 5)")
    co.set_defaults(func=cmd_console)
    fleet_root.register(fs, parents, _session)
    pv = fs.add_parser(
        "provision", parents=[common_options()],
        help="certificates, configs and the broker ACL for N devices from the operator's CA (docs/operations.md)",
    )
    pv.add_argument("--devices", type=int, required=True, help="how many devices")
    pv.add_argument("--ca", type=Path, required=True, help="the operator's CA certificate (PEM)")
    pv.add_argument("--ca-key", type=Path, required=True, help="its private key (PEM); never copied into --out")
    pv.add_argument("--ca-init", action="store_true", help="create the CA at --ca/--ca-key if neither file exists")
    pv.add_argument("--root", type=Path, required=True, help="the fleet's trust root (root.json) the devices pin")
    pv.add_argument("--broker", required=True, help="mqtts://host:port the devices and the operator connect to")
    pv.add_argument("--fleet", required=True, help="fleet name")
    pv.add_argument("--prefix", default="edge", help="topic prefix (default edge)")
    pv.add_argument("--out", type=Path, required=True, help="directory to write (re-running completes it)")
    pv.add_argument("--id-prefix", default="pi-", help="device ids are PREFIX + number (default pi-)")
    pv.add_argument("--start", type=int, default=1, help="first device number (default 1)")
    pv.add_argument("--id-width", type=int, default=4, help="digits of the number, zero-padded (default 4: pi-0001)")
    pv.add_argument("--operator-name", default="operator", help="common name of the operator's certificate (default operator)")
    pv.add_argument("--server-name", action="append", default=[], help="another DNS name or IP of the broker for its certificate")
    pv.add_argument("--force", action="store_true", help="replace existing keys and certificates (devices holding the old ones lose access)")
    pv.set_defaults(func=cmd_provision)
    ag = fs.add_parser("agent", parents=[common_options(), store_options()], help="follow updates without serving (self-test in-process)")
    ag.add_argument("--device-id", default=None, help="overrides [device] id")
    ag.set_defaults(func=cmd_agent)


def _password(args: argparse.Namespace) -> str:
    """The broker password from ``--password-file`` or the environment; argv is refused (``ps``
    shows it to every user of the machine, shells keep it in their history)."""
    if args.password is not None or redact_url(args.broker) != args.broker:
        raise UsageError(
            f"a broker password on the command line is visible to every user; use --password-file or {PASSWORD_ENV}"
        )
    if args.password_file is not None:
        try:
            return args.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--password-file {args.password_file}: cannot read it ({exc})") from exc
    return os.environ.get(PASSWORD_ENV, "")


def _session(args: argparse.Namespace) -> FleetSession:
    return FleetSession(_broker_options(args), Topics(args.prefix, args.fleet), args.timeout)


def _broker_options(args: argparse.Namespace) -> BrokerOptions:
    return BrokerOptions(
        url=args.broker,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        username=args.username,
        password=_password(args),
        protocol=args.protocol,
    )


def _bar() -> ProgressLine | None:
    """The chunk progress line on stderr, when stderr is a terminal."""
    return ProgressLine(sys.stderr, "MB", label="chunks", scale=1e6, decimals=1, width=25) if sys.stderr.isatty() else None


def _staged_steps(args: argparse.Namespace) -> list[int] | None:
    """The steps of a watched rollout, or None for a plain publish."""
    if args.steps is not None and args.rollout is not None:
        raise UsageError("--rollout and --steps cannot be combined: give the last percentage as the last step")
    if args.max_drift is not None and (args.max_failures is None or args.max_drift <= 0):
        raise UsageError("--max-drift needs --max-failures (the share of bad devices that halts) and a PSI > 0")
    if args.bake < 0:
        raise UsageError(f"--bake: expected seconds >= 0, found {args.bake:g}")
    if args.steps is None and args.max_failures is None:
        if args.bake > 0:
            raise UsageError("--bake holds the steps of a watched rollout: give --steps or --max-failures too")
        return None
    if args.device is not None:
        raise UsageError("--steps and --max-failures watch a fleet-wide rollout; they cannot be used with --device")
    if args.seq is not None:
        raise UsageError("--steps and --max-failures publish several desired states; --seq cannot be given")
    if args.max_failures is not None and not 0 <= args.max_failures <= 100:
        raise UsageError(f"--max-failures: expected a percentage in [0, 100], found {args.max_failures:g}")
    return parse_steps(args.steps) if args.steps is not None else [100 if args.rollout is None else args.rollout]


def _print_step(step: StepResult) -> None:
    r = step.published
    chunks = f"{r.chunks_sent} chunks, {r.bytes_sent} bytes" if r.chunks_sent else "no chunks"
    baked = f" + {step.baked_s:.1f} s bake" if step.baked_s else ""
    print(f"step {step.percent}%: published desired seq {r.seq} ({chunks}); after {step.waited_s:.1f} s{baked} "
          f"({step.why}): {step.tally.describe()}", flush=True)


def _halt_message(staged: StagedResult, args: argparse.Namespace) -> str:
    """Why a staged rollout halted, in one line: pending devices, the failure share, or the bake."""
    step = staged.steps[-1]
    t = step.tally
    where = "the rollout stays at" if step.percent < 100 else "the rollout had already reached"
    head = f"edge-runtime: rollout of {staged.name} v{staged.version} halted at {step.percent}% (reached {staged.reached}%): "
    if args.max_failures is not None and t.finished and t.failure_percent > args.max_failures:
        during = f" during the {args.bake:g} s bake" if step.why == "failed during the bake" else ""
        why = (f"{t.bad} of {t.finished} devices that finished failed, rejected or drifted on it{during} "
               f"({t.failure_percent:.1f}%), above --max-failures {args.max_failures:g}%")
    elif step.why == "failed during the bake":
        why = f"{t.bad} device(s) failed, rejected or drifted on it during the {args.bake:g} s bake"
    else:
        why = (f"{t.pending} of {t.in_rollout} devices of the step still pending after --step-wait {args.step_wait:g} s "
               f"({t.updated} updated, {t.bad} failed or rejected)")
    return f"{head}{why}; {where} {step.percent}%"


def cmd_publish(args: argparse.Namespace) -> int:
    """Publish a bundle's chunks and manifest, then the signed desired state (in watched steps if asked)."""
    if not args.bundle.is_file():
        raise UsageError(f"{args.bundle}: no such file")
    steps = _staged_steps(args)
    keys = load_keys(args.sign_key)
    root = _fleet_root(args)
    refuse_expired_root(root, datetime.datetime.now(datetime.UTC))  # devices would refuse it: say so first
    if args.encrypt_to:
        args.bundle = encrypt_beside(args.bundle, args.encrypt_to, keys, root)
    expires = args.expires_in_hours * 3600 if args.expires_in_hours is not None else None
    window = _window(args)
    for old in args.delta_from:
        if not old.is_file():
            raise UsageError(f"--delta-from {old}: no such file")
    if steps is not None:
        with _session(args) as session:
            staged = staged_rollout(
                session,
                args.bundle,
                keys,
                steps,
                step_wait_s=args.step_wait,
                bake_s=args.bake,
                max_failures=args.max_failures,
                max_drift=args.max_drift,
                root=root,
                expires_in_s=expires,
                force_chunks=args.force_chunks,
                progress=_bar(),
                delta_from=args.delta_from,
                window=window,
                on_step=_print_step,
                on_bake=lambda percent, t: print(f"baking step {percent}% for {args.bake:g} s: its devices "
                                                 f"finished ({t.updated} updated)", flush=True),
            )
        if staged.halted_at is None:
            print(f"rollout of {staged.name} v{staged.version} reached {staged.final_percent}%")
            return 0
        print(_halt_message(staged, args), file=sys.stderr)
        return 1
    with _session(args) as session:
        r = publish_release(
            session,
            args.bundle,
            keys,
            percent=100 if args.rollout is None else args.rollout,
            device=args.device,
            root=root,
            seq=args.seq,
            expires_in_s=expires,
            force_chunks=args.force_chunks,
            progress=_bar(),
            delta_from=args.delta_from,
            window=window,
        )
    chunks = "chunks already published" if r.chunks_already_published and not r.chunks_sent else f"{r.chunks_sent} chunks ({r.bytes_sent} bytes)"
    print(f"published {r.name} v{r.version}: {chunks}; desired seq {r.seq} at {r.percent}% on {r.desired_topic}")
    for line in r.deltas:
        print(line)
    return 0


def _window(args: argparse.Namespace) -> Window | None:
    """The rollout's maintenance window from --window/--window-minutes/--window-tz."""
    if args.window is None:
        if args.window_minutes is not None:
            raise UsageError("--window-minutes needs --window CRON")
        return None
    if args.window_minutes is None:
        raise UsageError("--window needs --window-minutes M")
    try:
        return parse_window(args.window, args.window_minutes, args.window_tz, "--window")
    except BadDataError as exc:
        raise UsageError(str(exc)) from exc


def cmd_rollback(args: argparse.Namespace) -> int:
    """Point the fleet's desired state back at an earlier release, then count the devices serving it."""
    if args.step_wait < 0:
        raise UsageError(f"--step-wait: expected seconds >= 0, found {args.step_wait:g}")
    keys = load_keys(args.sign_key)
    root = _fleet_root(args)
    with _session(args) as session:
        states = DeviceStates(session.topics)
        session.watch([session.topics.devices_filter("state"), session.topics.devices_filter("online")], states.on_message)
        r = order_rollback(session, args.name, args.to, keys, root=root)
        was = f" (was v{r.previous})" if r.previous is not None else ""
        print(f"desired state {r.name} v{r.version}{was}, rollback allowed: seq {r.seq} on {r.desired_topic}", flush=True)
        t = watch_rollback(states, r, wait_s=args.step_wait)
    print(f"{t.updated} of {t.devices} devices serve {r.name} v{r.version}; {t.failed} failed, {t.rejected} rejected, "
          f"{t.pending} pending")
    if args.step_wait == 0 or (t.updated == t.devices):
        return 0
    print(f"edge-runtime: the rollback of {r.name} to v{r.version} did not reach {t.devices - t.updated} of {t.devices} "
          f"devices within --step-wait {args.step_wait:g} s (a device keeps only versions still installed; "
          "see each one's last_error)", file=sys.stderr)
    return 1


def cmd_status(args: argparse.Namespace) -> int:
    """Print the fleet's devices, then counts (devices, versions, failures, the desired release's progress)."""
    with _session(args) as session:
        view = collect_fleet(session)
    devices = view.devices
    if args.json:
        print(json.dumps(devices, indent=2, sort_keys=True))
    elif devices:
        print(format_table(devices))
        print()
        print("\n".join(summary_lines(view)))
    else:
        print(f"no device of fleet {args.fleet!r} has reported yet")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    """Clear releases no desired state wants any more."""
    root = _fleet_root(args)
    if root is None:
        log.warning("without --root or --config the retained desired states are not verified: "
                    "a forged one can make prune clear a release devices still need")
    with _session(args) as session:
        pruned = prune_releases(session, dry_run=args.dry_run, root=root)
    verb = "would clear" if args.dry_run else "cleared"
    for p in pruned:
        print(f"{verb} {p.name} v{p.version}: {p.topics} retained topics")
    if not pruned:
        print("nothing to prune")
    return 0


def cmd_capture_pull(args: argparse.Namespace) -> int:
    """Pull a device's capture (resumable) and write training files."""
    if args.since is not None:
        try:
            when = datetime.datetime.fromisoformat(args.since)
        except ValueError:
            raise UsageError(f"--since: expected an ISO 8601 time, found {args.since!r}") from None
        if when.tzinfo is None:
            raise UsageError(f"--since: needs a time zone (e.g. a trailing Z), found {args.since!r}")
    try:
        limits = PullLimits(max_files=args.max_files, max_bytes=args.max_bytes)
    except ValueError as exc:
        raise UsageError(f"--max-files/--max-bytes: {exc}") from None
    keys = load_keys(args.sign_key)
    line = ProgressLine(sys.stderr, "chunks", label="capture", width=25) if sys.stderr.isatty() else None
    pull = CapturePull(_broker_options(args), Topics(args.prefix, args.fleet), args.device, keys, args.out, model=args.model,
                       since=args.since, stall_s=args.stall, progress=line, timeout_s=args.timeout, limits=limits)
    result = pull.run(args.wait)
    print(f"pulled {result.records} record(s) in {result.files} file(s), {result.bytes} bytes, from {args.device} "
          f"({result.attempts} request(s))")
    for path in result.written:
        print(f"wrote {path}")
    if result.missing:
        shown = ", ".join(result.missing[:MAX_LISTED]) + (" ..." if len(result.missing) > MAX_LISTED else "")
        print(f"the device no longer had {len(result.missing)} file(s) (dropped by its ring): {shown}", file=sys.stderr)
    for skipped in result.skipped[:MAX_LISTED]:
        print(f"skipped {skipped}", file=sys.stderr)
    if len(result.skipped) > MAX_LISTED:
        print(f"skipped {len(result.skipped) - MAX_LISTED} more", file=sys.stderr)
    if result.truncated:
        print(f"the device held {result.truncated} more file(s) past --max-files/--max-bytes: pull again "
              f"(e.g. with --since) for them", file=sys.stderr)
    return 0 if result.complete else 1


def cmd_console(args: argparse.Namespace) -> int:
    """Record the fleet in SQLite and serve its pages until SIGTERM or SIGINT. Never loads a signing key."""
    # Imported here: only this command needs the web server and the record.
    from edge_runtime.fleet.console.limits import ConsoleLimits
    from edge_runtime.fleet.console.record import Record
    from edge_runtime.fleet.console.server import ConsoleServer
    from edge_runtime.fleet.console.service import ConsoleWatcher

    if args.max_failures is not None and not 0 <= args.max_failures <= 100:
        raise UsageError(f"--max-failures: expected a percentage in [0, 100], found {args.max_failures:g}")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port: expected 0-65535, found {args.port}")
    for flag, value in (("--retain-days", args.retain_days), ("--max-db-mb", args.max_db_mb), ("--device-rate", args.device_rate),
                        ("--read-timeout", args.read_timeout)):
        if not (math.isfinite(value) and value > 0):
            raise UsageError(f"{flag}: expected a positive number, found {value:g}")
    if not 1 <= args.max_connections <= 10_000:
        raise UsageError(f"--max-connections: expected 1-10000, found {args.max_connections}")
    limits = ConsoleLimits(retain_days=args.retain_days, max_db_mb=args.max_db_mb, device_messages_per_s=args.device_rate,
                           max_connections=args.max_connections, read_timeout_s=args.read_timeout)
    topics = Topics(args.prefix, args.fleet)
    options = _broker_options(args)
    verifier = None
    if args.root is not None:
        root = load_root_file(args.root)

        def verifier(message: bytes, device: str | None) -> bool:
            try:
                verify_desired(message, root, fleet=args.fleet, device=device)
            except BadDataError:
                return False
            return True

    db = args.db if args.db is not None else Path(f"edge-console-{args.fleet}.sqlite")
    record = Record(db, topics, verifier=verifier, limits=limits).start()
    try:
        server = ConsoleServer(record, args.fleet, args.host, args.port, max_failures=args.max_failures, limits=limits)
    except OSError as exc:
        record.close()
        raise UsageError(f"cannot serve on {args.host}:{args.port}: {exc}") from exc
    watcher = ConsoleWatcher(options, topics, record).start()
    server.start()
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    print(f"fleet console for {topics.base} on {redact_url(options.url)}: {server.url}/ (record {db})", flush=True)
    try:
        done.wait()
    finally:
        server.stop()
        watcher.stop()
        record.close()
    return 0


def cmd_provision(args: argparse.Namespace) -> int:
    """Write the provisioning directory; print where each part goes."""
    from edge_runtime.fleet.provision import ProvisionRequest, provision  # only this command needs the X.509 code

    req = ProvisionRequest(
        out=args.out, devices=args.devices, ca_cert=args.ca, ca_key=args.ca_key, root=args.root, broker=args.broker,
        fleet=args.fleet, prefix=args.prefix, id_prefix=args.id_prefix, start=args.start, id_width=args.id_width,
        ca_init=args.ca_init, operator_name=args.operator_name, server_names=tuple(args.server_name), force=args.force,
    )
    r = provision(req)
    if r.ca_created:
        print(f"created the CA {args.ca} (its key {args.ca_key}: keep it offline)")
    first, last = r.devices[0], r.devices[-1]
    print(f"{len(r.devices)} devices {first} .. {last}: {len(r.new_keys)} new key(s), {len(r.written)} file(s) written")
    print(f"  devices: {args.out}/devices/<id>/ -> device/install.sh --device-dir {args.out}/devices/<id> on each")
    print(f"  broker:  {args.out}/broker/ (acl, edge-runtime.conf, server certificate) -> /etc/mosquitto/")
    print(f"  operator: --fleet-config {r.operator_config} (or export EDGE_FLEET_CONFIG={r.operator_config})")
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    """Run the update client until SIGTERM or SIGINT."""
    cfg = config_from_args(args)
    if cfg.mqtt is None:
        raise UsageError(f"{cfg.source or 'the configuration'} has no [mqtt] table")
    if args.device_id:
        cfg = dataclasses.replace(cfg, device=dataclasses.replace(cfg.device, id=args.device_id))
    if args.store is not None:
        cfg = dataclasses.replace(cfg, store=dataclasses.replace(cfg.store, path=str(args.store)))
    store = open_store(args, cfg)
    store.cleanup_partial()
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    service = UpdateService(cfg, store, device_id(cfg), selftest_in_process=True).start()
    try:
        done.wait()
    finally:
        service.stop()
    return 0


__all__ = ["register"]
