"""Editing and signing trust roots: the operator's side of key rotation, pure.

A new root version is written in three steps, each a function here and a command in
``edge-runtime keys root`` (docs/updates.md, "Keys and root rotation"):

1. *draft*: :func:`next_version` (or :func:`add_key` / :func:`retire_key` /
   :func:`set_threshold` on a draft) makes the ``signed`` part of version N+1, unsigned;
2. *sign*: :func:`add_signatures` adds signatures by root keys, one holder at a time (the
   root keys are offline, often on different machines);
3. *check*: :func:`signing_status` says how many valid signatures the draft holds against
   the threshold of its own root keys and of version N's; devices accept it only when
   both are met (:func:`~edge_runtime.trust.root.update_root`).

Every edit returns a new dict and checks the result is a well-formed root, so a command
never writes a root no device would parse (a role without keys, a threshold above its keys).
"""

from __future__ import annotations

import base64
import copy
import datetime as _dt
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_runtime.exceptions import TrustError
from edge_runtime.trust.canonical import canonical_json
from edge_runtime.trust.keys import key_id, public_key_hex, sign
from edge_runtime.trust.root import ROLES, TrustRoot, _count_valid, format_time, load_unverified

MIN_KEYID_PREFIX = 8  # hex characters: errors print 12, a person may type fewer


def _check(signed: dict[str, Any]) -> dict[str, Any]:
    """``signed`` if it is a well-formed root; TrustError otherwise."""
    load_unverified(canonical_json({"signed": signed, "signatures": []}))
    return signed


def _role(signed: dict[str, Any], role: str) -> dict[str, Any]:
    if role not in ROLES:
        raise TrustError(f"unknown role {role!r}: expected one of {', '.join(ROLES)}")
    entry: dict[str, Any] = signed["roles"][role]
    return entry


def _drop_unused_keys(signed: dict[str, Any]) -> None:
    used = {k for r in signed["roles"].values() for k in r["keyids"]}
    signed["keys"] = {k: v for k, v in signed["keys"].items() if k in used}


def next_version(current: TrustRoot, expires: _dt.datetime | None) -> dict[str, Any]:
    """The ``signed`` part of version N+1: the same keys and roles, a new ``expires``
    (``None`` leaves the field out: a root that never expires)."""
    signed = copy.deepcopy(current.signed)
    signed["version"] = current.version + 1
    signed.pop("expires", None)
    if expires is not None:
        signed["expires"] = format_time(expires)
    return _check(signed)


def set_expires(signed: dict[str, Any], expires: _dt.datetime | None) -> dict[str, Any]:
    """A copy of ``signed`` with a new ``expires`` (None: never)."""
    out = copy.deepcopy(signed)
    out.pop("expires", None)
    if expires is not None:
        out["expires"] = format_time(expires)
    return _check(out)


def add_key(
    signed: dict[str, Any], role: str, key: Ed25519PublicKey | Ed25519PrivateKey, threshold: int | None = None
) -> dict[str, Any]:
    """A copy of ``signed`` where ``key`` may sign for ``role`` (threshold unchanged unless given)."""
    out = copy.deepcopy(signed)
    entry = _role(out, role)
    kid = key_id(key)
    if kid in entry["keyids"]:
        raise TrustError(f"key {kid[:12]} already signs for role {role!r}")
    out["keys"][kid] = {"keytype": "ed25519", "public": public_key_hex(key)}
    entry["keyids"] = sorted([*entry["keyids"], kid])
    if threshold is not None:
        entry["threshold"] = threshold
    return _check(out)


def find_keyid(signed: dict[str, Any], role: str, prefix: str) -> str:
    """The one key id of ``role`` that starts with ``prefix`` (at least 8 hex characters)."""
    entry = _role(signed, role)
    wanted = prefix.strip().lower()
    if len(wanted) < MIN_KEYID_PREFIX:
        raise TrustError(f"key id {prefix!r}: give at least {MIN_KEYID_PREFIX} hex characters")
    found = [k for k in entry["keyids"] if k.startswith(wanted)]
    if not found:
        raise TrustError(f"no key of role {role!r} has an id starting with {wanted!r}")
    if len(found) > 1:
        raise TrustError(f"key id {wanted!r} names {len(found)} keys of role {role!r}: give more characters")
    return found[0]


def retire_key(signed: dict[str, Any], role: str, keyid: str, threshold: int | None = None) -> dict[str, Any]:
    """A copy of ``signed`` where key ``keyid`` (or a unique prefix) no longer signs for
    ``role``; a key no role names any more leaves ``keys``. Refuses to leave a role without
    keys or with a threshold above its keys (give ``threshold``)."""
    out = copy.deepcopy(signed)
    entry = _role(out, role)
    kid = find_keyid(out, role, keyid)
    remaining = [k for k in entry["keyids"] if k != kid]
    if not remaining:
        raise TrustError(f"key {kid[:12]} is the last key of role {role!r}: add its successor first")
    entry["keyids"] = remaining
    if threshold is not None:
        entry["threshold"] = threshold
    if entry["threshold"] > len(remaining):
        raise TrustError(
            f"role {role!r} would keep {len(remaining)} key(s) with threshold {entry['threshold']}: "
            "lower the threshold (--threshold)"
        )
    _drop_unused_keys(out)
    return _check(out)


def set_threshold(signed: dict[str, Any], role: str, threshold: int) -> dict[str, Any]:
    """A copy of ``signed`` with ``role``'s threshold changed."""
    out = copy.deepcopy(signed)
    _role(out, role)["threshold"] = threshold
    return _check(out)


def unsigned(signed: dict[str, Any]) -> bytes:
    """A root.json document with no signatures yet (a draft)."""
    return canonical_json({"signed": _check(signed), "signatures": []})


def add_signatures(data: bytes, signers: list[Ed25519PrivateKey], previous: TrustRoot | None = None) -> bytes:
    """``data`` (root.json, signed or not) with a signature by each of ``signers`` added (a
    key that signed before signs again, replacing its entry). Each signer must be a root key
    of the draft itself or of ``previous``: a models key signing a root is a mistake, refused."""
    draft, sigs = load_unverified(data)
    doc_sigs = [{"keyid": kid, "sig": base64.b64encode(raw).decode("ascii")} for kid, raw in sigs]
    allowed = set(draft.role("root").keyids) | (set(previous.role("root").keyids) if previous is not None else set())
    payload = canonical_json(draft.signed)
    for key in signers:
        kid = key_id(key)
        if kid not in allowed:
            where = f"version {draft.version}" + (f" or version {previous.version}" if previous is not None else "")
            raise TrustError(f"key {kid[:12]} is not a root key of {where}: it cannot sign this root")
        doc_sigs = [s for s in doc_sigs if s.get("keyid") != kid] + [sign(key, payload)]
    return canonical_json({"signed": draft.signed, "signatures": doc_sigs})


@dataclass(frozen=True)
class Tally:
    """Valid signatures by one root's root keys against its threshold."""

    version: int
    valid: int
    threshold: int

    @property
    def met(self) -> bool:
        """The threshold is reached."""
        return self.valid >= self.threshold


@dataclass(frozen=True)
class SigningStatus:
    """How far a draft root is from being accepted: its own root keys and the previous root's."""

    root: TrustRoot
    own: Tally
    previous: Tally | None  # None: version 1, or no previous root given

    @property
    def complete(self) -> bool:
        """Devices holding the previous root (or, for version 1, anyone) would accept it."""
        return self.own.met and (self.previous is None or self.previous.met)

    def describe(self) -> str:
        """One line per threshold, e.g. ``version 2's root keys: 1 of 2 (needs 1 more)``."""
        lines = []
        for label, t in (("its own", self.own), ("the previous", self.previous)):
            if t is None:
                continue
            more = "met" if t.met else f"needs {t.threshold - t.valid} more"
            lines.append(f"signatures by {label} root keys (version {t.version}): {t.valid} of {t.threshold} ({more})")
        return "\n".join(lines)


def signing_status(data: bytes, previous: TrustRoot | None) -> SigningStatus:
    """Count the valid root signatures of ``data`` for its own and ``previous``'s root role.
    ``previous`` must be the version just before (TrustError otherwise)."""
    draft, sigs = load_unverified(data)
    if previous is not None and draft.version != previous.version + 1:
        raise TrustError(f"the previous root is version {previous.version}; this root is version {draft.version}, expected {previous.version + 1}")
    payload = canonical_json(draft.signed)
    own, _ = _count_valid(draft.keys, draft.role("root"), payload, sigs)
    tally_prev = None
    if previous is not None:
        n, _ = _count_valid(previous.keys, previous.role("root"), payload, sigs)
        tally_prev = Tally(previous.version, n, previous.role("root").threshold)
    return SigningStatus(draft, Tally(draft.version, own, draft.role("root").threshold), tally_prev)


__all__ = [
    "SigningStatus",
    "Tally",
    "add_key",
    "add_signatures",
    "find_keyid",
    "next_version",
    "retire_key",
    "set_expires",
    "set_threshold",
    "signing_status",
    "unsigned",
]
