"""Pure checks of update messages: bytes and plain values in, a typed result or an error out.

No file, clock or network access here (the caller passes ``now`` and what the store holds),
so every attack on the protocol is a plain unit test. The updater calls these in order:

1. :func:`verify_root_message` for ``trust/root/<N>``;
2. :func:`verify_desired`, :func:`check_seq`, :func:`check_expiry` for a desired state,
   then :func:`targets_for` (override + rollout membership) and :func:`plan_target`;
3. :func:`verify_manifest_message` and :func:`check_release` before a single chunk is fetched;
4. :func:`check_chunk` for every chunk as it arrives.
"""

from __future__ import annotations

import datetime as _dt
import enum
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from edge_runtime.bundle.manifest import NAME_RE, Artifact, Manifest, is_compatible, parse_manifest
from edge_runtime.exceptions import (
    BadDataError,
    BundleError,
    CanonicalJSONError,
    ManifestError,
    RollbackError,
    RootUpdateError,
)
from edge_runtime.spec.window import Window, window_from_json
from edge_runtime.trust.canonical import canonical_json, parse_json_object
from edge_runtime.trust.root import TrustRoot, parse_signatures, update_root, verify_signed
from edge_runtime.updates.exceptions import (
    ChunkError,
    ExpiredError,
    IncompatibleError,
    ReplayError,
    UpdateMessageError,
)
from edge_runtime.updates.protocol import DESIRED_TYPE, MAX_SEQ

MAX_SALT_CHARS = 128
MAX_MODELS = 256
MAX_DELTA_BASES = 16  # from-versions one entry may offer deltas for
TARGET_FIELDS = frozenset({"version", "rollout", "rollback", "deltas", "window"})
DESIRED_FIELDS = frozenset({"_type", "fleet", "device", "seq", "models", "expires"})


@dataclass(frozen=True)
class Rollout:
    """A staged rollout: devices whose bucket is below ``percent`` take the release."""

    percent: int
    salt: str


@dataclass(frozen=True)
class ModelTarget:
    """The version a desired state asks for, and to whom. ``rollback``: the operator ordered this
    version although it may be older than the active one (``fleet rollback``): the device goes
    back to it only if it still has it installed (see :func:`plan_target`)."""

    version: int
    rollout: Rollout | None
    rollback: bool = False
    deltas: tuple[int, ...] = ()  # from-versions with a published delta (updates/delta.py)
    window: Window | None = None  # the rollout's maintenance window (updates/policy.py)


@dataclass(frozen=True)
class Desired:
    """A verified desired state."""

    fleet: str
    device: str | None
    seq: int
    models: dict[str, ModelTarget]
    expires: _dt.datetime | None
    digest: str  # sha256 of the signed bytes: tells a retained re-delivery from a conflict


@dataclass(frozen=True)
class SeqFloor:
    """The newest desired state followed on one topic."""

    seq: int
    digest: str


@dataclass(frozen=True)
class Release:
    """A verified manifest message."""

    manifest: Manifest
    manifest_bytes: bytes
    signature_bytes: bytes  # a manifest.sig document, as the store keeps it


@dataclass(frozen=True)
class ModelView:
    """What the store holds for one model name (taken from its state and directory)."""

    active: int | None
    highest_seen: int
    installed: frozenset[int]
    failed: frozenset[int]
    quarantined: frozenset[int]


MAX_ECHO_CHARS = 60


def echo(value: Any) -> str:
    """``repr(value)`` cut short: errors quote what a message held, never all of it."""
    text = repr(value)
    return text if len(text) <= MAX_ECHO_CHARS else text[: MAX_ECHO_CHARS - 3] + "..."


def echo_names(names: Any) -> str:
    """A few of the sorted names of a JSON object's fields, each cut short."""
    ordered = sorted(str(n) for n in names)
    shown = ", ".join(echo(n) for n in ordered[:5])
    return f"[{shown}{', ...' if len(ordered) > 5 else ''}]"


def _int(value: Any, what: str, low: int, high: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise UpdateMessageError(f"{what}: expected an integer {bound}, found {echo(value)}")
    return value


def open_signed_message(message: bytes, field: str, root: TrustRoot, what: str) -> tuple[bytes, list[Any]]:
    """Check ``{field: TEXT, "signatures": [...]}`` against the ``models`` role; returns (TEXT bytes, signatures)."""
    try:
        outer = parse_json_object(message, what)
    except CanonicalJSONError as exc:
        raise UpdateMessageError(str(exc)) from exc
    if set(outer) != {field, "signatures"}:
        raise UpdateMessageError(f"{what}: expected exactly the fields {field!r} and 'signatures', found {echo_names(outer)}")
    text = outer[field]
    if not isinstance(text, str):
        raise UpdateMessageError(f"{what}: {field!r} must be the canonical JSON text, found {type(text).__name__}")
    payload = text.encode("utf-8")
    verify_signed(root, "models", payload, parse_signatures(outer["signatures"], what), what)
    return payload, outer["signatures"]


def open_signed_document(message: bytes, field: str, root: TrustRoot, what: str, doc_type: str,
                         fields: frozenset[str]) -> tuple[dict[str, Any], bytes]:
    """A signed message's document and its signed bytes (see :func:`open_signed_message`):
    canonical JSON of ``_type`` ``doc_type`` with no field outside ``fields``;
    UpdateMessageError otherwise."""
    payload, _ = open_signed_message(message, field, root, what)
    try:
        doc = parse_json_object(payload, what, require_canonical=True)
    except CanonicalJSONError as exc:
        raise UpdateMessageError(str(exc)) from exc
    extra = set(doc) - fields
    if extra:
        raise UpdateMessageError(f"{what}: unknown fields {echo_names(extra)}")
    if doc.get("_type") != doc_type:
        raise UpdateMessageError(f"{what}: '_type' must be {doc_type!r}, found {echo(doc.get('_type'))}")
    return doc, payload


def parse_utc_time(value: Any, what: str, field: str = "expires") -> _dt.datetime:
    """An ISO 8601 time with a time zone (``field`` of ``what``), in UTC; UpdateMessageError otherwise."""
    if not isinstance(value, str):
        raise UpdateMessageError(f"{what}: '{field}' must be an ISO 8601 UTC time string, found {echo(value)}")
    try:
        when = _dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise UpdateMessageError(f"{what}: '{field}' must be an ISO 8601 time, found {echo(value)}") from exc
    if when.tzinfo is None:
        raise UpdateMessageError(f"{what}: '{field}' needs a time zone (e.g. a trailing Z), found {echo(value)}")
    return when.astimezone(_dt.UTC)


def _parse_target(name: Any, entry: Any, what: str) -> ModelTarget:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise UpdateMessageError(f"{what}: model name {echo(name)} must match {NAME_RE.pattern}")
    where = f"{what} model {name!r}"
    if not isinstance(entry, dict) or not set(entry) <= TARGET_FIELDS:
        raise UpdateMessageError(f"{where}: expected {{version, rollout, rollback, deltas, window}}, found {echo(entry)}")
    version = _int(entry.get("version"), f"{where} version", 1)
    rollback = entry.get("rollback", False)
    if rollback is not True and rollback is not False:
        raise UpdateMessageError(f"{where}: rollback must be true or false, found {echo(rollback)}")
    deltas = entry.get("deltas", [])
    if not isinstance(deltas, list) or len(deltas) > MAX_DELTA_BASES:
        raise UpdateMessageError(f"{where}: deltas must be a list of at most {MAX_DELTA_BASES} versions")
    bases = tuple(_int(b, f"{where} delta base", 1, version - 1) for b in deltas)
    window = window_from_json(entry["window"], f"{where} window") if "window" in entry else None
    raw = entry.get("rollout")
    if raw is None:
        return ModelTarget(version, None, rollback, bases, window)
    if not isinstance(raw, dict) or set(raw) != {"percent", "salt"}:
        raise UpdateMessageError(f"{where}: rollout must be {{percent, salt}}, found {echo(raw)}")
    percent = _int(raw["percent"], f"{where} rollout percent", 0, 100)
    salt = raw["salt"]
    if not isinstance(salt, str) or not 0 < len(salt) <= MAX_SALT_CHARS:
        raise UpdateMessageError(f"{where}: rollout salt must be a string of 1 to {MAX_SALT_CHARS} characters")
    return ModelTarget(version, Rollout(percent, salt), rollback, bases, window)


def verify_desired(message: bytes, root: TrustRoot, *, fleet: str, device: str | None) -> Desired:
    """Verify a desired-state message of ``fleet`` (``device`` set for a per-device override)."""
    what = f"desired state for device {device}" if device else f"desired state of fleet {fleet}"
    doc, payload = open_signed_document(message, "desired", root, what, DESIRED_TYPE, DESIRED_FIELDS)
    # The fleet and device are inside the signature so a message cannot be replayed elsewhere.
    if doc.get("fleet") != fleet:
        raise UpdateMessageError(f"{what}: signed for fleet {echo(doc.get('fleet'))}, this device is in fleet {fleet!r}")
    if doc.get("device") != device:
        raise UpdateMessageError(f"{what}: signed for device {echo(doc.get('device'))}, expected {device!r}")
    seq = _int(doc.get("seq"), f"{what} seq", 1, MAX_SEQ)
    models = doc.get("models")
    if not isinstance(models, dict) or len(models) > MAX_MODELS:
        raise UpdateMessageError(f"{what}: 'models' must be an object of at most {MAX_MODELS} models")
    targets = {name: _parse_target(name, entry, what) for name, entry in models.items()}
    expires = parse_utc_time(doc["expires"], what) if "expires" in doc else None
    return Desired(fleet, device, seq, targets, expires, hashlib.sha256(payload).hexdigest())


def check_seq(desired: Desired, floor: SeqFloor | None) -> bool:
    """True for a newer desired state, False for a re-delivery of the current one; else ReplayError."""
    if floor is None or desired.seq > floor.seq:
        return True
    if desired.seq == floor.seq and desired.digest == floor.digest:
        return False
    if desired.seq == floor.seq:
        raise ReplayError(f"desired state seq {desired.seq} was already followed with different contents")
    raise ReplayError(f"desired state seq {desired.seq} is older than the seq {floor.seq} already followed (a replay)")


def check_expiry(desired: Desired, now: _dt.datetime | None) -> None:
    """Raise ExpiredError if ``desired`` has expired; ``now=None`` (untrusted clock) skips the check."""
    if now is None or desired.expires is None:
        return
    if now >= desired.expires:
        raise ExpiredError(f"desired state seq {desired.seq} expired at {desired.expires.isoformat()}, it is now {now.isoformat()}")


def rollout_bucket(device_id: str, salt: str) -> int:
    """``sha256(salt + device_id) mod 100`` with the digest read as a big-endian integer."""
    digest = hashlib.sha256((salt + device_id).encode("utf-8")).digest()
    return int.from_bytes(digest, "big") % 100


def in_rollout(device_id: str, rollout: Rollout | None) -> bool:
    """Whether ``device_id`` takes a release under ``rollout`` (no rollout: everyone)."""
    return rollout is None or rollout_bucket(device_id, rollout.salt) < rollout.percent


def target_entries(device_id: str, fleet: Desired | None, device: Desired | None) -> dict[str, ModelTarget]:
    """The target of each model this device should run: the override wins per model name."""
    out: dict[str, ModelTarget] = {}
    for desired in (fleet, device):
        if desired is None:
            continue
        for name, target in desired.models.items():
            if in_rollout(device_id, target.rollout):
                out[name] = target
            elif desired is device:
                out.pop(name, None)  # an override that excludes the device cancels the fleet's target
    return out


def targets_for(device_id: str, fleet: Desired | None, device: Desired | None) -> dict[str, int]:
    """The version of each model this device should run (see :func:`target_entries`)."""
    return {name: t.version for name, t in target_entries(device_id, fleet, device).items()}


def claimed_seq(message: bytes) -> int | None:
    """The seq a desired-state message claims, unverified, for the report of its rejection:
    an integer in [1, MAX_SEQ] or None (unparseable, missing, a bool, a 5,000-digit number).
    Never raises; the caller must not act on it."""
    try:
        outer = parse_json_object(message, "desired state")
        text = outer.get("desired")
        doc = parse_json_object(text.encode("utf-8"), "desired state") if isinstance(text, str) else {}
    except (CanonicalJSONError, ValueError, RecursionError):
        return None
    seq = doc.get("seq")
    if isinstance(seq, int) and not isinstance(seq, bool) and 1 <= seq <= MAX_SEQ:
        return seq
    return None


def desired_report(message: bytes, scope: str, seq: int | None, reason: str | None = None) -> dict[str, Any]:
    """The state document's ``desired``: what the device made of the last desired-state message of
    ``scope`` (``fleet`` or ``device``). ``sha256`` is of the exact message bytes, so the operator
    can tell whether it is the one it published; ``reason`` (already bounded by the caller) marks
    a rejection, and ``seq`` is then only what the message claimed."""
    report: dict[str, Any] = {
        "seq": seq,
        "status": "rejected" if reason is not None else "applied",
        "sha256": hashlib.sha256(message).hexdigest(),
        "scope": scope,
    }
    if reason is not None:
        report["reason"] = reason
    return report


class Plan(enum.StrEnum):
    """What a target needs (:func:`plan_target`)."""

    NOTHING = "none"  # already active
    FETCH = "fetch"  # download it (not installed, or installed but quarantined)
    ACTIVATE = "activate"  # installed and clean: re-verify its manifest, then activate
    FAILED = "failed"  # failed before on this device: never retried


def plan_target(name: str, version: int, view: ModelView, *, rollback: bool = False) -> Plan:
    """What to do for a target (see :class:`Plan`).

    Raises RollbackError for a version older than the active one or below the floor, unless
    ``rollback`` (a signed, operator-ordered rollback) names a version still installed: that one
    is activated again (its manifest is re-verified first). A failed version is never taken,
    rollback or not; one no longer installed cannot be fetched again below the floor.
    """
    if version in view.failed:
        return Plan.FAILED
    if view.active == version:
        return Plan.NOTHING
    if rollback and view.active is not None and version < view.active:
        if version not in view.installed:
            raise RollbackError(
                f"{name} v{version}: the ordered rollback needs it installed, and this device no longer has it "
                f"(the anti-rollback floor v{view.highest_seen} keeps it from being fetched again)"
            )
        return Plan.FETCH if version in view.quarantined else Plan.ACTIVATE
    if view.active is not None and version < view.active:
        raise RollbackError(f"{name} v{version} is older than the active v{view.active} (versions only go up)")
    if version in view.installed:
        return Plan.FETCH if version in view.quarantined else Plan.ACTIVATE
    if version <= view.highest_seen:
        raise RollbackError(f"{name} v{version} is at or below the anti-rollback floor (highest seen: v{view.highest_seen})")
    return Plan.FETCH


def verify_manifest_message(message: bytes, root: TrustRoot, *, name: str, version: int) -> Release:
    """Verify the manifest message of ``name`` v``version`` (signatures, canonical form, identity)."""
    what = f"manifest message of {name} v{version}"
    payload, signatures = open_signed_message(message, "manifest", root, what)
    try:
        manifest = parse_manifest(payload)
    except ManifestError as exc:
        raise UpdateMessageError(f"{what}: {exc}") from exc
    # Mix-and-match: a validly signed manifest of another model or version under this topic.
    if manifest.name != name or manifest.version != version:
        raise UpdateMessageError(
            f"{what}: the signed manifest is for {manifest.name} v{manifest.version}, expected {name} v{version}"
        )
    return Release(manifest, payload, canonical_json({"signatures": signatures}))


def check_release(
    release: Release,
    view: ModelView,
    installed_manifest: bytes | None,
    *,
    runtime_major: int,
    machine: str,
    max_bytes: int,
) -> None:
    """Refuse a release before downloading it: rollback, changed bytes, compatibility, size."""
    m = release.manifest
    if installed_manifest is not None and installed_manifest != release.manifest_bytes:
        raise RollbackError(f"{m.name} v{m.version} is already installed with different bytes; a new build needs a new version")
    if installed_manifest is None and m.version <= view.highest_seen:
        raise RollbackError(f"{m.name} v{m.version} is at or below the anti-rollback floor (highest seen: v{view.highest_seen})")
    reason = is_compatible(m, runtime_major, machine)
    if reason is not None:
        raise IncompatibleError(f"{m.name} v{m.version} is {reason}")
    total = sum(a.length for a in m.artifacts.values())
    if total > max_bytes:
        raise BundleError(f"{m.name} v{m.version} has {total} bytes of artifacts, the limit is {max_bytes}")


def check_chunk(artifacts: dict[str, Artifact], file: str, index: int, data: bytes) -> None:
    """Raise ChunkError unless ``data`` is exactly chunk ``index`` of artifact ``file``."""
    art = artifacts.get(file)
    if art is None:
        raise ChunkError(f"chunk of artifact {echo(file)}, the manifest names {sorted(artifacts)}", "file")
    if not 0 <= index < art.chunk_count:
        raise ChunkError(f"{file} chunk {index}: the manifest declares {art.chunk_count} chunks", "index")
    if len(data) > art.chunk_size:
        raise ChunkError(f"{file} chunk {index} is {len(data)} bytes, larger than chunk_size {art.chunk_size}", "oversized")
    want = art.chunk_length(index)
    if len(data) != want:
        raise ChunkError(f"{file} chunk {index} is {len(data)} bytes, expected {want}", "length")
    if hashlib.sha256(data).hexdigest() != art.chunk_sha256[index]:
        raise ChunkError(f"{file} chunk {index} does not match its sha256 in the manifest", "sha256")


def verify_root_message(current: TrustRoot, topic_version: int, payload: bytes) -> TrustRoot | None:
    """The next trust root, None for a version already trusted; RootUpdateError otherwise."""
    if topic_version <= current.version:
        return None
    new = update_root(current, payload)
    if new.version != topic_version:
        raise RootUpdateError(f"trust/root/{topic_version} holds root version {new.version}")
    return new


class PendingRoots:
    """Root versions received but not applied: version N+2 waits for N+1 (retained messages
    arrive in any order). Pure: the caller saves and installs what :meth:`offer` returns."""

    def __init__(self, limit: int = 16) -> None:
        self.limit = limit
        self._waiting: dict[int, bytes] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def __iter__(self) -> Iterator[int]:
        """The versions waiting."""
        return iter(sorted(self._waiting))

    def offer(self, current: TrustRoot, version: int, payload: bytes) -> tuple[list[TrustRoot], list[str]]:
        """Take ``trust/root/<version>``; returns the roots that now chain from ``current``, in
        order, and the reasons for what is refused (or still waiting for a missing version)."""
        if version <= current.version:
            return [], []
        self._waiting[version] = payload
        while len(self._waiting) > self.limit:
            del self._waiting[max(self._waiting)]
        rotated: list[TrustRoot] = []
        problems: list[str] = []
        while (data := self._waiting.pop(current.version + 1, None)) is not None:
            try:
                new = verify_root_message(current, current.version + 1, data)
            except BadDataError as exc:  # never raised past here: the roots already popped would be lost
                problems.append(f"trust root {current.version + 1}: {exc}")
                break
            assert new is not None  # a version above the current one always yields a root or an error
            current = new
            rotated.append(current)
        for n in sorted(v for v in self._waiting if v > current.version + 1):
            try:
                verify_root_message(current, n, self._waiting[n])
            except BadDataError as exc:  # always: "a skipped version"
                problems.append(f"trust root {n}: {exc}")
        return rotated, problems


__all__ = [
    "Desired",
    "ModelTarget",
    "ModelView",
    "PendingRoots",
    "Plan",
    "Release",
    "Rollout",
    "SeqFloor",
    "claimed_seq",
    "desired_report",
    "target_entries",
    "check_chunk",
    "check_expiry",
    "check_release",
    "check_seq",
    "in_rollout",
    "open_signed_message",
    "plan_target",
    "rollout_bucket",
    "targets_for",
    "verify_desired",
    "verify_manifest_message",
    "verify_root_message",
]
