"""The fleet's trust root as the broker holds it: ``trust/root/<N>``, retained.

Devices follow the chain ``pinned -> 2 -> 3 ...`` through the retained versions, each signed
by a threshold of the previous version's root keys and of its own. :func:`fleet_chain`
walks the same chain on the operator's side, from a root the operator trusts (``--previous``)
or, without one, from the lowest retained version (then only as sure as the broker is: it
says so). :func:`plan_root_publish` decides, purely, whether a new version may be published:
it must be the next version after the chain's end and verify against it, exactly as a device
will check it, and must not be expired already. Everything read from the broker is hostile:
a version number that is not a small integer, an oversized or unverifiable message is
skipped and named, never trusted.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field

from edge_runtime.exceptions import RootExpiredError, RootUpdateError, TrustError, UsageError
from edge_runtime.fleet.session import FleetSession
from edge_runtime.trust.root import TrustRoot, check_root_expiry, format_time, load_unverified, update_root, verify_root

MAX_ROOT_BYTES = 256 * 1024  # a root names a few dozen keys at most: ~100 KB would be a thousand
MAX_ROOT_VERSION_DIGITS = 9
EXPIRES_SOON = _dt.timedelta(days=30)


@dataclass
class Chain:
    """The roots that chain from the start, in order, and what was skipped on the way."""

    roots: list[TrustRoot]
    anchored: bool  # True: starts at a root the operator gave; False: at the lowest retained one
    problems: list[str] = field(default_factory=list)

    @property
    def current(self) -> TrustRoot:
        """The newest root of the chain: the one devices that followed it hold."""
        return self.roots[-1]


def retained_versions(messages: dict[str, bytes], prefix: str) -> tuple[dict[int, bytes], list[str]]:
    """``trust/root/<N>`` messages by version; problems for topics or sizes that are not sane."""
    out: dict[int, bytes] = {}
    problems: list[str] = []
    for topic, payload in messages.items():
        tail = topic[len(prefix):] if topic.startswith(prefix) else ""
        if not tail.isascii() or not tail.isdigit() or len(tail) > MAX_ROOT_VERSION_DIGITS:
            problems.append(f"ignoring retained topic {topic[:120]!r}: not trust/root/<version>")
            continue
        if len(payload) > MAX_ROOT_BYTES:
            problems.append(f"ignoring retained root {tail}: {len(payload)} bytes, limit {MAX_ROOT_BYTES}")
            continue
        out[int(tail)] = payload
    return out, problems


def fleet_chain(retained: dict[int, bytes], anchor: TrustRoot | None) -> Chain:
    """Follow the retained roots from ``anchor`` (or from the lowest retained one, verified by
    itself) as a device would; stops at the first missing or unverifiable version."""
    problems: list[str] = []
    if anchor is None:
        if not retained:
            raise UsageError("no trust root is retained for this fleet: pass --previous ROOT.json (the root devices hold)")
        low = min(retained)
        try:
            anchor = verify_root(retained[low])
        except TrustError as exc:
            raise TrustError(f"the lowest retained root (trust/root/{low}) does not verify: {exc}") from exc
        if anchor.version != low:
            raise TrustError(f"trust/root/{low} holds root version {anchor.version}")
        anchored = False
    else:
        anchored = True
        if anchor.version in retained and retained[anchor.version] != anchor.raw:
            try:
                other, _ = load_unverified(retained[anchor.version])
                same = other.signed == anchor.signed
            except TrustError:
                same = False
            if not same:
                problems.append(f"trust/root/{anchor.version} on the broker differs from the --previous root")
    roots = [anchor]
    while (data := retained.get(roots[-1].version + 1)) is not None:
        try:
            roots.append(update_root(roots[-1], data))
        except RootUpdateError as exc:
            problems.append(f"trust/root/{roots[-1].version + 1} does not chain from version {roots[-1].version}: {exc}")
            break
    beyond = sorted(v for v in retained if v > roots[-1].version + 1)
    if beyond:
        problems.append(f"retained root version(s) {beyond} are unreachable: the chain ends at version {roots[-1].version}")
    return Chain(roots, anchored, problems)


@dataclass(frozen=True)
class RootPublishPlan:
    """What ``fleet root publish`` will do: publish ``new`` (or nothing, when it is already
    retained), with notes for the operator."""

    new: TrustRoot
    previous: TrustRoot
    already_published: bool
    notes: list[str]


def plan_root_publish(data: bytes, chain: Chain, now: _dt.datetime) -> RootPublishPlan:
    """Decide whether root ``data`` may be published after ``chain``; raises with the reason if not."""
    draft, _ = load_unverified(data)
    notes = list(chain.problems)
    current = chain.current
    if draft.version <= current.version:
        held = next((r for r in chain.roots if r.version == draft.version), None)
        if held is not None and held.signed == draft.signed:
            return RootPublishPlan(held, held, True, notes)
        raise UsageError(
            f"the fleet's root is already at version {current.version}; this root is version {draft.version} "
            f"(make the next version from version {current.version})"
        )
    if draft.version > current.version + 1:
        raise UsageError(
            f"this root is version {draft.version} but the fleet's chain ends at version {current.version}: "
            f"devices could never reach it; publish version {current.version + 1} first"
        )
    new = update_root(current, data)  # exactly the device's check
    try:
        check_root_expiry(new, now)
    except RootExpiredError as exc:
        raise RootExpiredError(f"refusing to publish: {exc}") from exc
    if new.expires is None:
        notes.append(f"root version {new.version} has no 'expires': it never expires")
    elif new.expires - now < EXPIRES_SOON:
        notes.append(f"root version {new.version} expires soon, at {format_time(new.expires)}")
    if current.expires is not None and current.expired(now):
        notes.append(
            f"root version {current.version} expired at {format_time(current.expires)}: devices install nothing new "
            f"until they take version {new.version}"
        )
    if not chain.anchored:
        notes.append(f"the chain was checked from the broker's lowest root (version {chain.roots[0].version}); "
                     "pass --previous to check it from a root you hold")
    return RootPublishPlan(new, current, False, notes)


def refuse_expired_root(root: TrustRoot | None, now: _dt.datetime) -> None:
    """For ``fleet publish``: a release published under an expired root is one no device with a
    trusted clock installs; say so before anything is sent (RootExpiredError, exit 1)."""
    if root is not None:
        try:
            check_root_expiry(root, now)
        except RootExpiredError as exc:
            raise RootExpiredError(f"refusing to publish: {exc}") from exc


def read_chain(session: FleetSession, anchor: TrustRoot | None) -> Chain:
    """The fleet's retained roots, followed from ``anchor``."""
    prefix = session.topics.roots_filter[:-1]
    retained, problems = retained_versions(session.snapshot([session.topics.roots_filter]), prefix)
    chain = fleet_chain(retained, anchor)
    chain.problems[:0] = problems
    return chain


def publish_root(session: FleetSession, data: bytes, anchor: TrustRoot | None, now: _dt.datetime) -> RootPublishPlan:
    """Check ``data`` against the fleet's chain and publish it retained (QoS 1, acknowledged)."""
    plan = plan_root_publish(data, read_chain(session, anchor), now)
    if not plan.already_published:
        session.publish(session.topics.root(plan.new.version), plan.new.raw).wait(session.timeout_s)
    return plan


__all__ = [
    "Chain",
    "RootPublishPlan",
    "fleet_chain",
    "plan_root_publish",
    "publish_root",
    "read_chain",
    "refuse_expired_root",
    "retained_versions",
]
