"""The trust root: keys by key id, the roles ``root`` and ``models`` with thresholds.

``root.json`` is ``{"signed": {...}, "signatures": [{"keyid", "sig"}]}`` where ``signed`` is::

    {"_type": "root", "version": N, "expires": "2027-12-04T20:00:00Z",
     "keys": {KEYID: {"keytype": "ed25519", "public": HEX}},
     "roles": {"root": {"keyids": [...], "threshold": T},
               "models": {"keyids": [...], "threshold": T}}}

Signatures cover the canonical JSON of ``signed``. Version 1 must be signed by a threshold
of its own root keys. Version N+1 is accepted only when signed by a threshold of version
N's root keys *and* a threshold of its own root keys (key rotation as in TUF).

``expires`` (optional; a root without it never expires, as every root made before the
field existed) bounds how long a root may authorise *new* updates: see
:func:`check_root_expiry`. Verification and rotation never look at it. As in TUF, a chain
``1 -> 2 -> 3`` is followed even when 1 and 2 have expired; only the newest root, the one
updates are checked against, must be current, so a device whose root expired while it was
offline still takes the rotation that renews it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edge_runtime.exceptions import CanonicalJSONError, RootExpiredError, RootUpdateError, SignatureError, TrustError
from edge_runtime.trust.canonical import canonical_json, parse_json_object
from edge_runtime.trust.ed25519 import VerifyKey
from edge_runtime.trust.points import weak_public_key

if TYPE_CHECKING:  # making roots (operator side) needs cryptography; verifying them does not (ed25519.py)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ROLES = ("root", "models")
MAX_EXPIRES_CHARS = 40  # "2027-12-04T20:00:00.000000+00:00" and a little slack


@dataclass(frozen=True)
class Role:
    """Key ids allowed to sign for a role and how many must agree."""

    keyids: tuple[str, ...]
    threshold: int


@dataclass(frozen=True)
class TrustRoot:
    """A verified trust root."""

    version: int
    keys: dict[str, VerifyKey]
    roles: dict[str, Role]
    signed: dict[str, Any]
    raw: bytes
    expires: _dt.datetime | None = None  # None: the root never expires (roots made before the field)

    def role(self, name: str) -> Role:
        """The role ``name`` (``root`` or ``models``)."""
        return self.roles[name]

    def expired(self, now: _dt.datetime) -> bool:
        """Whether the root's ``expires`` time is at or before ``now`` (never, without one)."""
        return self.expires is not None and now >= self.expires


def _expect(cond: bool, message: str) -> None:
    if not cond:
        raise TrustError(message)


def format_time(when: _dt.datetime) -> str:
    """A time as root.json writes it: UTC, whole seconds, a trailing ``Z``."""
    return when.astimezone(_dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_expires(value: Any) -> _dt.datetime:
    """The ``expires`` field: an ISO 8601 time with a time zone, returned in UTC."""
    _expect(
        isinstance(value, str) and len(value) <= MAX_EXPIRES_CHARS,
        f"root: 'expires' must be an ISO 8601 time string, found {str(value)[:MAX_EXPIRES_CHARS]!r}",
    )
    try:
        when = _dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise TrustError(f"root: 'expires' must be an ISO 8601 time, found {value!r}") from exc
    _expect(when.tzinfo is not None, f"root: 'expires' needs a time zone (e.g. a trailing Z), found {value!r}")
    return when.astimezone(_dt.UTC)


def _parse_signed_root(signed: Any) -> tuple[int, dict[str, VerifyKey], dict[str, Role]]:
    _expect(isinstance(signed, dict), f"root: 'signed' must be an object, found {type(signed).__name__}")
    _expect(signed.get("_type") == "root", f"root: '_type' must be 'root', found {signed.get('_type')!r}")
    version = signed.get("version")
    _expect(
        isinstance(version, int) and not isinstance(version, bool) and version >= 1,
        f"root: 'version' must be an integer >= 1, found {version!r}",
    )
    raw_keys = signed.get("keys")
    _expect(isinstance(raw_keys, dict) and bool(raw_keys), "root: 'keys' must be a non-empty object")
    keys: dict[str, VerifyKey] = {}
    for kid, entry in raw_keys.items():
        _expect(isinstance(entry, dict), f"root: key {kid!r} must be an object, found {type(entry).__name__}")
        _expect(entry.get("keytype") == "ed25519", f"root: key {kid!r} has keytype {entry.get('keytype')!r}, expected 'ed25519'")
        public = entry.get("public")
        _expect(isinstance(public, str), f"root: key {kid!r} 'public' must be a hex string")
        try:
            pub = VerifyKey(bytes.fromhex(public))
        except ValueError as exc:
            raise TrustError(f"root: key {kid!r} is not a 32-byte Ed25519 public key in hex") from exc
        weak = weak_public_key(pub.raw)
        _expect(weak is None, f"root: key {kid!r} is {weak}")
        expected = hashlib.sha256(pub.raw).hexdigest()  # keys.key_id, without loading cryptography
        _expect(expected == kid, f"root: key id {kid!r} does not match its public key (expected {expected})")
        keys[kid] = pub
    raw_roles = signed.get("roles")
    _expect(isinstance(raw_roles, dict), "root: 'roles' must be an object")
    roles: dict[str, Role] = {}
    for name in ROLES:
        entry = raw_roles.get(name)
        _expect(entry is not None, f"root: role {name!r} is missing")
        _expect(isinstance(entry, dict), f"root: role {name!r} must be an object, found {type(entry).__name__}")
        keyids = entry.get("keyids")
        threshold = entry.get("threshold")
        _expect(
            isinstance(keyids, list) and bool(keyids) and all(isinstance(k, str) for k in keyids),
            f"root: role {name!r} 'keyids' must be a non-empty list of strings",
        )
        _expect(
            isinstance(threshold, int) and not isinstance(threshold, bool) and threshold >= 1,
            f"root: role {name!r} 'threshold' must be an integer >= 1, found {threshold!r}",
        )
        unknown = [k for k in keyids if k not in keys]
        _expect(not unknown, f"root: role {name!r} names unknown key ids {unknown}")
        _expect(
            threshold <= len(set(keyids)),
            f"root: role {name!r} threshold {threshold} exceeds its {len(set(keyids))} keys",
        )
        roles[name] = Role(tuple(keyids), threshold)
    extra = set(raw_roles) - set(ROLES)
    _expect(not extra, f"root: unknown roles {sorted(extra)}")
    return version, keys, roles


def parse_signatures(value: Any, what: str) -> list[tuple[str, bytes]]:
    """Validate a ``[{"keyid", "sig"}]`` list; returns (keyid, raw signature) pairs."""
    if not isinstance(value, list):
        raise SignatureError(f"{what}: 'signatures' must be a list, found {type(value).__name__}")
    out: list[tuple[str, bytes]] = []
    for i, entry in enumerate(value):
        if not isinstance(entry, dict) or not isinstance(entry.get("keyid"), str) or not isinstance(entry.get("sig"), str):
            raise SignatureError(f"{what}: signature {i} must be an object with string 'keyid' and 'sig'")
        try:
            raw = base64.b64decode(entry["sig"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SignatureError(f"{what}: signature {i} is not base64") from exc
        out.append((entry["keyid"], raw))
    return out


def _count_valid(
    keys: dict[str, VerifyKey], role: Role, payload: bytes, signatures: Iterable[tuple[str, bytes]]
) -> tuple[int, list[str]]:
    valid: set[str] = set()
    problems: list[str] = []
    for kid, raw in signatures:
        if kid not in role.keyids or kid not in keys:
            problems.append(f"key {kid[:12]} is not trusted for this role")
            continue
        if not keys[kid].verify(raw, payload):
            problems.append(f"bad signature by key {kid[:12]}")
            continue
        valid.add(kid)
    return len(valid), problems


def verify_signed(
    root: TrustRoot, role: str, payload: bytes, signatures: list[tuple[str, bytes]], what: str
) -> None:
    """Raise SignatureError unless a threshold of ``role`` keys signed ``payload``."""
    r = root.role(role)
    if not signatures:
        raise SignatureError(f"{what}: no signatures (role {role!r} needs {r.threshold})")
    count, problems = _count_valid(root.keys, r, payload, signatures)
    if count < r.threshold:
        detail = "; ".join(problems) if problems else "no further detail"
        raise SignatureError(
            f"{what}: {count} valid signature(s) from role {role!r}, threshold is {r.threshold} ({detail})"
        )


def untrusted_signers(root: TrustRoot, role: str, keyids: Iterable[str]) -> tuple[list[str], int]:
    """Which of ``keyids`` ``root`` does not trust for ``role``, and how many distinct trusted ones
    there are: an operator tool refuses to sign with a key devices would not count, before it
    publishes anything. Pure: no signature is made or checked."""
    r = root.role(role)
    given = list(dict.fromkeys(keyids))
    untrusted = [k for k in given if k not in r.keyids or k not in root.keys]
    return untrusted, len(given) - len(untrusted)


def _load(data: bytes) -> tuple[TrustRoot, list[tuple[str, bytes]]]:
    try:
        doc = parse_json_object(data, "root.json")
    except CanonicalJSONError as exc:
        raise TrustError(str(exc)) from exc
    extra = set(doc) - {"signed", "signatures"}
    _expect(not extra, f"root.json: unknown fields {sorted(extra)}")
    signed = doc.get("signed")
    version, keys, roles = _parse_signed_root(signed)
    assert isinstance(signed, dict)
    expires = parse_expires(signed["expires"]) if "expires" in signed else None
    sigs = parse_signatures(doc.get("signatures"), f"root version {version}")
    return TrustRoot(version, keys, roles, signed, bytes(data), expires), sigs


def load_unverified(data: bytes) -> tuple[TrustRoot, list[tuple[str, bytes]]]:
    """Parse root.json and check its form, *not* its signatures: for operator tools that
    edit and sign a draft. Never trust what this returns."""
    return _load(data)


def verify_root(data: bytes) -> TrustRoot:
    """Parse a pinned root and check it is signed by a threshold of its own root keys."""
    root, sigs = _load(data)
    verify_signed(root, "root", canonical_json(root.signed), sigs, f"root version {root.version}")
    return root


def update_root(current: TrustRoot, data: bytes) -> TrustRoot:
    """Verify root N+1 against the trusted root N; returns the new root or raises.

    Neither root's ``expires`` is looked at: an expired ``current`` may still vouch for its
    successor (TUF's rule), which is how a fleet recovers from an expired root."""
    try:
        new, sigs = _load(data)
    except TrustError as exc:
        raise RootUpdateError(str(exc)) from exc
    version = new.version
    if version != current.version + 1:
        raise RootUpdateError(
            f"root update: expected version {current.version + 1}, found {version}"
            + (" (a skipped version)" if version > current.version + 1 else " (not newer)")
        )
    payload = canonical_json(new.signed)
    try:
        verify_signed(current, "root", payload, sigs, f"root version {version} by the keys of version {current.version}")
        verify_signed(new, "root", payload, sigs, f"root version {version} by its own keys")
    except SignatureError as exc:
        raise RootUpdateError(str(exc)) from exc
    return new


def make_root(
    version: int,
    root_keys: list[Ed25519PublicKey | Ed25519PrivateKey],
    model_keys: list[Ed25519PublicKey | Ed25519PrivateKey],
    root_threshold: int = 1,
    models_threshold: int = 1,
    expires: _dt.datetime | None = None,
) -> dict[str, Any]:
    """The ``signed`` part of a root naming these keys (``expires=None``: a root that never expires)."""
    from edge_runtime.trust.keys import key_id, public_key_hex

    keys = {key_id(k): {"keytype": "ed25519", "public": public_key_hex(k)} for k in [*root_keys, *model_keys]}
    signed: dict[str, Any] = {
        "_type": "root",
        "version": version,
        "keys": keys,
        "roles": {
            "root": {"keyids": sorted({key_id(k) for k in root_keys}), "threshold": root_threshold},
            "models": {"keyids": sorted({key_id(k) for k in model_keys}), "threshold": models_threshold},
        },
    }
    if expires is not None:
        signed["expires"] = format_time(expires)
    return signed


def check_root_expiry(root: TrustRoot, now: _dt.datetime | None) -> None:
    """Raise RootExpiredError when ``root`` has expired at ``now``. ``now=None`` (a clock the
    device does not trust, e.g. a Pi without RTC before time sync) skips the check, as for
    the desired state's own ``expires``; a root without ``expires`` never expires."""
    if now is None or root.expires is None or not root.expired(now):
        return
    raise RootExpiredError(
        f"trust root v{root.version} expired at {format_time(root.expires)}; publish a new root "
        "(edge-runtime keys root renew, then fleet root publish)"
    )


def sign_root(signed: dict[str, Any], signers: list[Ed25519PrivateKey]) -> bytes:
    """A complete root.json document (canonical bytes) signed by ``signers``."""
    from edge_runtime.trust.keys import sign

    payload = canonical_json(signed)
    return canonical_json({"signed": signed, "signatures": [sign(k, payload) for k in signers]})
