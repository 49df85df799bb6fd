"""``fleet rollback NAME --to VERSION``: point the fleet back at an earlier release, and watch it land.

A device never goes below its anti-rollback floor on its own: a replayed or forged desired
state naming an old version is refused. An operator-ordered rollback is therefore explicit
and signed: the new desired state names ``VERSION`` with ``"rollback": true`` in the model's
entry, signed by the ``models`` keys like any desired state. A device takes it only when
that version is still installed in its store (its manifest, still retained on the broker,
is verified again against the installed bytes) and never when the version is in its
``failed`` list; a version no longer installed cannot be fetched again below the floor, and
the device says so (``rejected``). docs/security.md weighs what this gives an attacker who
holds a models key.

The release must still be retained on the broker (its manifest): the command refuses
otherwise, before publishing anything, as it refuses a signing key the fleet's root does
not trust (:func:`~edge_runtime.fleet.publish.verify_keys_for_fleet`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edge_runtime.bundle.manifest import NAME_RE
from edge_runtime.exceptions import UsageError
from edge_runtime.fleet.publish import (
    MAX_ECHO_CHARS,
    baseline,
    next_seq,
    sign_desired,
    signing_keys_root,
    signing_root,
    verify_keys_for_fleet,
)
from edge_runtime.fleet.rollout import Tally, tally
from edge_runtime.fleet.session import FleetSession
from edge_runtime.fleet.status import DeviceStates
from edge_runtime.trust.keys import PrivateKey
from edge_runtime.trust.root import TrustRoot
from edge_runtime.updates.protocol import rollout_salt
from edge_runtime.updates.verify import verify_manifest_message

log = logging.getLogger("edge_runtime.fleet")
POLL_S = 0.2


@dataclass(frozen=True)
class RollbackResult:
    """What ``fleet rollback`` published."""

    name: str
    version: int
    previous: int | None  # the version the retained desired state named before
    seq: int
    desired_topic: str
    desired_sha256: str
    warnings: tuple[str, ...] = ()


def order_rollback(
    session: FleetSession,
    name: str,
    version: int,
    keys: Sequence[PrivateKey],
    *,
    root: TrustRoot | None = None,
) -> RollbackResult:
    """Publish a desired state that sends the fleet back to ``name`` v``version`` (still retained)."""
    if not keys:
        raise UsageError("at least one --sign-key is needed to sign the desired state")
    if not NAME_RE.fullmatch(name):
        raise UsageError(f"model name {name!r} must match {NAME_RE.pattern}")
    if version < 1:
        raise UsageError(f"--to must be a version >= 1, found {version}")
    topics = session.topics
    manifest_topic = topics.manifest(name, version)
    retained = session.snapshot([manifest_topic, topics.desired, topics.roots_filter])
    verify_keys_for_fleet(session, root, keys, retained)
    manifest = retained.get(manifest_topic)
    if manifest is None:
        raise UsageError(
            f"{name} v{version} is not retained on the broker ({manifest_topic}): devices could not verify it; "
            "publish its bundle again or pick a release that is still retained"
        )
    check_root, _ = signing_root(session, root, retained)
    if check_root is not None:
        verify_manifest_message(manifest, check_root, name=name, version=version)  # BadDataError: exit 1
    base = baseline(
        retained.get(topics.desired),
        root if root is not None else signing_keys_root(keys),
        fleet=topics.fleet,
        device=None,
        topic=topics.desired,
    )
    if base.warning:
        log.warning("%s", base.warning)
    current = base.models.get(name)
    previous = current.get("version") if isinstance(current, dict) else None
    if isinstance(previous, int) and previous < version:
        raise UsageError(
            f"the fleet's desired state names {name} v{previous}; v{version} is newer: use fleet publish, not rollback"
        )
    models = dict(base.models)
    models[name] = {"version": version, "rollback": True}
    seq = next_seq(base.seq)
    message = sign_desired(topics, seq, models, keys)
    session.publish(topics.desired, message).wait(session.timeout_s)
    warnings = (base.warning[:MAX_ECHO_CHARS],) if base.warning else ()
    return RollbackResult(name, version, previous if isinstance(previous, int) else None, seq, topics.desired,
                          hashlib.sha256(message).hexdigest(), warnings)


def watch_rollback(
    states: DeviceStates,
    result: RollbackResult,
    *,
    wait_s: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Tally:
    """Where the rollback stands once every reporting device has finished, or after ``wait_s``:
    ``updated`` devices serve ``--to``; failed and rejected ones refused it; pending ones have not
    answered yet."""
    salt = rollout_salt(result.name, result.version)
    deadline = clock() + wait_s
    while True:
        t = tally(states.devices(), result.name, result.version, 100, salt, published=[result.desired_sha256])
        if t.pending == 0 or clock() >= deadline:
            return t
        sleep(POLL_S)


__all__ = ["RollbackResult", "order_rollback", "watch_rollback"]
