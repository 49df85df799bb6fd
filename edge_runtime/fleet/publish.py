"""``fleet publish``: chunks, then the manifest, then the signed desired state, all retained.

The order matters: a device acts on the desired state, fetches the manifest, then the
chunks, so each message it needs is already on the broker when it asks. Publishing the
same bundle again (to raise ``--rollout``) finds its manifest already retained, byte for
byte, and sends no chunk. The rollout salt is ``<name>-<version>``, the same for every
publish of a release, so raising the percentage keeps every device already in it.

The new desired state keeps the other models and the seq of the retained one only when
that one verifies: against the fleet's root when the caller has it, else against the root
the signing keys make on their own. Anything else on the broker (unsigned, forged, another
fleet's, a seq beyond 64 bits) is ignored with a warning, never signed again.

Before anything is published the signing keys are checked against the fleet's root: the
``--root`` given (advanced through the rotations retained on the broker that chain from it),
else the newest root retained under ``trust/root/<N>`` that chains from the lowest
self-signed one. A key that root does not trust for ``models``, or fewer trusted keys than
its threshold, is refused (:func:`check_signing_keys`): every device would reject the
desired state. Without ``--root`` the retained root is only a check against mistakes (the
broker is not a trust anchor); the devices' own pinned roots decide.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.bundle.reader import open_bundle, parse_signature_file
from edge_runtime.exceptions import BadDataError, RollbackError, SignatureError, TrustError, UsageError
from edge_runtime.fleet.delta import publish_deltas
from edge_runtime.fleet.session import FleetSession, ProgressFn
from edge_runtime.spec.window import Window
from edge_runtime.trust.canonical import canonical_json, parse_json_object
from edge_runtime.trust.keys import PrivateKey, key_id, sign
from edge_runtime.trust.root import TrustRoot, make_root, sign_root, untrusted_signers, update_root, verify_root
from edge_runtime.updates.protocol import (
    MAX_SEQ,
    RootTopic,
    Topics,
    check_id,
    desired_document,
    manifest_message,
    rollout_salt,
    signed_message,
)
from edge_runtime.updates.verify import Desired, verify_desired

log = logging.getLogger("edge_runtime.fleet")
MAX_ECHO_CHARS = 300  # of a verification error quoted in a warning
MAX_RETAINED_ROOTS = 64  # root versions read from the broker (hostile: each one is verified)

@dataclass(frozen=True)
class PublishResult:
    """What a publish sent."""

    name: str
    version: int
    seq: int
    desired_topic: str
    percent: int
    chunks_sent: int
    bytes_sent: int
    chunks_already_published: bool
    warnings: tuple[str, ...] = ()
    desired_sha256: str = ""  # of the exact desired-state message: devices report it back (accepted or rejected)
    deltas: tuple[str, ...] = ()  # one line per --delta-from: its size and ratio, or why it was skipped


@dataclass(frozen=True)
class Baseline:
    """What a new desired state builds on: the verified retained one, or nothing."""

    seq: int
    models: dict[str, Any]
    warning: str = ""


def _member(bundle_path: Path, name: str) -> bytes:
    # open_bundle has just verified every hash; read the bytes once more without re-hashing
    # (devices verify every chunk and the whole file themselves).
    with tarfile.open(bundle_path, mode="r:") as tar:
        fh = tar.extractfile(name)
        if fh is None:
            raise BadDataError(f"{bundle_path}: {name} is not a regular file")
        return fh.read()


def read_desired_models(message: bytes | None) -> tuple[int, dict[str, Any]]:
    """``(seq, models)`` of a retained desired-state message, unverified, for display only
    (0 and {} when there is none). Never build a new desired state on it: see :func:`baseline`."""
    if not message:
        return 0, {}
    try:
        outer = parse_json_object(message, "retained desired state")
        doc = parse_json_object(str(outer["desired"]).encode("utf-8"), "retained desired state")
        seq, models = doc["seq"], doc["models"]
    except (BadDataError, KeyError, TypeError) as exc:
        raise BadDataError(f"the retained desired state is unreadable ({str(exc)[:MAX_ECHO_CHARS]})") from exc
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 < seq <= MAX_SEQ or not isinstance(models, dict):
        raise BadDataError("the retained desired state is unreadable (seq must be a 64-bit integer, models an object)")
    return seq, models


def signing_keys_root(keys: Sequence[PrivateKey]) -> TrustRoot:
    """The root the signing keys make on their own (each key in both roles, all of them needed):
    without the fleet's root, the operator builds only on what these very keys signed."""
    signed = make_root(1, list(keys), list(keys), root_threshold=len(keys), models_threshold=len(keys))
    return verify_root(sign_root(signed, list(keys)))


def _models_document(desired: Desired) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, target in desired.models.items():
        entry: dict[str, Any] = {"version": target.version}
        if target.rollout is not None:
            entry["rollout"] = {"percent": target.rollout.percent, "salt": target.rollout.salt}
        if target.rollback:
            entry["rollback"] = True  # an operator-ordered rollback stays one while other models change
        if target.deltas:
            entry["deltas"] = list(target.deltas)
        if target.window is not None:
            entry["window"] = target.window.to_json()
        out[name] = entry
    return out


def _root_versions(retained: dict[str, bytes], topics: Topics) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for topic, payload in retained.items():
        ref = topics.parse(topic)
        if isinstance(ref, RootTopic) and len(out) < MAX_RETAINED_ROOTS:
            out[ref.version] = payload
    return out


def current_root(anchor: TrustRoot | None, retained: dict[int, bytes]) -> TrustRoot | None:
    """The fleet's current root: ``anchor`` advanced through the ``retained`` versions that chain
    from it (as a device does); without an anchor, the lowest retained version that verifies on
    its own, advanced the same way; None when there is neither. Stops at the first gap or failure."""
    current = anchor
    if current is None:
        for version in sorted(retained):
            try:
                candidate = verify_root(retained[version])
            except TrustError as exc:
                log.warning("ignoring the retained trust root %d: %s", version, str(exc)[:MAX_ECHO_CHARS])
                continue
            if candidate.version == version:
                current = candidate
                break
    if current is None:
        return None
    while (data := retained.get(current.version + 1)) is not None:
        try:
            current = update_root(current, data)
        except TrustError as exc:
            log.warning("the retained trust root %d does not chain from %d: %s", current.version + 1, current.version,
                        str(exc)[:MAX_ECHO_CHARS])
            break
    return current


def check_signing_keys(root: TrustRoot, keys: Sequence[PrivateKey], where: str) -> None:
    """Raise SignatureError unless ``root`` trusts every key for ``models`` and they reach its
    threshold: devices would reject what these keys sign. ``where`` says which root it is."""
    role = root.role("models")
    untrusted, trusted = untrusted_signers(root, "models", [key_id(k) for k in keys])
    if not untrusted and trusted >= role.threshold:
        return
    problem = (
        f"--sign-key {', '.join(k[:16] for k in untrusted)} {'is' if len(untrusted) == 1 else 'are'} not trusted"
        if untrusted else f"{trusted} trusted --sign-key(s), the threshold is {role.threshold}"
    )
    raise SignatureError(
        f"{problem} for the models role by {where} (version {root.version}; its models keys: "
        f"{', '.join(k[:16] for k in role.keyids)}, threshold {role.threshold}); every device would reject "
        "this desired state, nothing was published"
    )


def signing_root(session: FleetSession, root: TrustRoot | None, retained: dict[str, bytes]) -> tuple[TrustRoot | None, str]:
    """The root to check the signing keys against and how to name it (``retained`` must hold a
    snapshot of ``trust/root/+``)."""
    current = current_root(root, _root_versions(retained, session.topics))
    if current is None:
        return None, ""
    if root is not None:
        where = "--root" if current.version == root.version else f"--root advanced to the retained root {current.version}"
        return current, where
    return current, f"the fleet's retained trust root ({session.topics.root(current.version)})"


def verify_keys_for_fleet(session: FleetSession, root: TrustRoot | None, keys: Sequence[PrivateKey],
                          retained: dict[str, bytes]) -> None:
    """Refuse ``keys`` the fleet's root does not trust (see :func:`check_signing_keys`); with no
    root known at all, warn that the keys could not be checked."""
    current, where = signing_root(session, root, retained)
    if current is None:
        log.warning("--sign-key not checked: no --root given and no trust root retained on %s",
                    session.topics.roots_filter)
        return
    check_signing_keys(current, keys, where)


def baseline(message: bytes | None, root: TrustRoot, *, fleet: str, device: str | None, topic: str) -> Baseline:
    """The seq and models a new desired state keeps from the retained ``message``: only what
    verifies against ``root``; an unverifiable message is ignored, with a warning that says so."""
    if not message:
        return Baseline(0, {})
    try:
        desired = verify_desired(message, root, fleet=fleet, device=device)
    except BadDataError as exc:
        reason = str(exc)
        if len(reason) > MAX_ECHO_CHARS:
            reason = reason[:MAX_ECHO_CHARS] + "..."
        return Baseline(
            0,
            {},
            f"ignoring the retained desired state on {topic}: it does not verify ({reason}); "
            "the new one names only this release and replaces it",
        )
    return Baseline(desired.seq, _models_document(desired))


def sign_desired(
    topics: Topics,
    seq: int,
    models: dict[str, Any],
    keys: Sequence[PrivateKey],
    device: str | None = None,
    expires: str | None = None,
) -> bytes:
    """A complete signed desired-state message."""
    payload = canonical_json(desired_document(topics.fleet, seq, models, device=device, expires=expires))
    return signed_message("desired", payload, [sign(k, payload) for k in keys])


def next_seq(previous: int, now_s: float | None = None) -> int:
    """Strictly above ``previous`` and at least the current Unix time, so a broker that lost its
    retained messages cannot make the operator reuse a seq devices have already seen."""
    seq = max(previous + 1, int(time.time() if now_s is None else now_s))
    if seq > MAX_SEQ:
        raise UsageError(f"the retained seq {previous} leaves no larger 64-bit seq (the limit is {MAX_SEQ})")
    return seq


def publish_release(
    session: FleetSession,
    bundle_path: Path,
    keys: Sequence[PrivateKey],
    *,
    percent: int = 100,
    device: str | None = None,
    root: TrustRoot | None = None,
    seq: int | None = None,
    expires_in_s: float | None = None,
    force_chunks: bool = False,
    progress: ProgressFn | None = None,
    delta_from: Sequence[Path] = (),
    window: Window | None = None,
) -> PublishResult:
    """Publish a bundle to the fleet of ``session`` and point the desired state at it.

    ``root`` is the fleet's trust root: the bundle and the retained desired state are checked
    against it; without it the retained state must verify against the signing keys' own root.
    """
    if not keys:
        raise UsageError("at least one --sign-key is needed to sign the desired state")
    if not 0 <= percent <= 100:
        raise UsageError(f"--rollout must be a percentage in [0, 100], found {percent}")
    topics = session.topics
    if device is not None:
        check_id(device, "device id")
    if seq is not None and not 1 <= seq <= MAX_SEQ:
        raise UsageError(f"--seq must be an integer in [1, {MAX_SEQ}], found {seq}")
    # The root the fleet holds now: --root moved forward through the rotations retained on the
    # broker (a release signed by a models key added in a later root verifies against that one).
    roots = session.snapshot([topics.roots_filter])
    current, _ = signing_root(session, root, roots)
    fleet_root = current if current is not None else root
    with open_bundle(Path(bundle_path), fleet_root) as bundle:
        m = bundle.manifest
        signatures = json.loads(bundle.signature_bytes)["signatures"]
        parse_signature_file(bundle.signature_bytes)
        manifest_msg = manifest_message(bundle.manifest_bytes, signatures)
        chunks: list[tuple[str, bytes]] = []
        for file in sorted(m.artifacts):
            art = m.artifacts[file]
            data = _member(bundle_path, file)
            chunks += [
                (topics.chunk(m.name, m.version, file, i), data[i * art.chunk_size : (i + 1) * art.chunk_size])
                for i in range(art.chunk_count)
            ]
        manifest_bytes = bundle.manifest_bytes
    desired_topic = topics.device_desired(device) if device else topics.desired
    manifest_topic = topics.manifest(m.name, m.version)
    retained = {**session.snapshot([manifest_topic, desired_topic]), **roots}
    verify_keys_for_fleet(session, root, keys, retained)  # before a single message is published
    existing = retained.get(manifest_topic)
    already = False
    if existing is not None:
        try:
            existing_text = parse_json_object(existing, "retained manifest").get("manifest")
        except BadDataError:
            existing_text = None
        if existing_text == manifest_bytes.decode("utf-8"):
            already = True
        elif existing_text is not None:
            raise RollbackError(
                f"{m.name} v{m.version} is already published with different bytes; a new build needs a new version"
            )
    sent = 0
    if not already or force_chunks:
        sent = session.publish_all(chunks, progress)
    # Deltas before the manifest and the desired state: a device asks for them only after both.
    bases, notes = publish_deltas(session, Path(bundle_path), delta_from, keys, root, reuse=already and not force_chunks)
    for note in notes:
        log.info("%s", note)
    session.publish(manifest_topic, manifest_msg).wait(session.timeout_s)
    base = baseline(
        retained.get(desired_topic),
        fleet_root if fleet_root is not None else signing_keys_root(keys),
        fleet=topics.fleet,
        device=device,
        topic=desired_topic,
    )
    if base.warning:
        log.warning("%s", base.warning)
    old_seq, models = base.seq, dict(base.models)
    models[m.name] = {"version": m.version, "rollout": {"percent": percent, "salt": rollout_salt(m.name, m.version)}}
    if bases:
        models[m.name]["deltas"] = bases
    if window is not None:
        models[m.name]["window"] = window.to_json()
    new_seq = seq if seq is not None else next_seq(old_seq)
    if new_seq <= old_seq:
        raise UsageError(f"--seq {new_seq} must be above the retained seq {old_seq}")
    expires = None
    if expires_in_s is not None:
        when = _dt.datetime.now(_dt.UTC) + _dt.timedelta(seconds=expires_in_s)
        expires = when.replace(microsecond=0).isoformat().replace("+00:00", "Z")
    message = sign_desired(topics, new_seq, models, keys, device=device, expires=expires)
    session.publish(desired_topic, message).wait(session.timeout_s)
    return PublishResult(
        m.name,
        m.version,
        new_seq,
        desired_topic,
        percent,
        len(chunks) if sent else 0,
        sent,
        already,
        (base.warning,) if base.warning else (),
        hashlib.sha256(message).hexdigest(),
        tuple(notes),
    )


__all__ = [
    "Baseline",
    "PublishResult",
    "baseline",
    "check_signing_keys",
    "current_root",
    "next_seq",
    "publish_release",
    "read_desired_models",
    "sign_desired",
    "signing_keys_root",
    "signing_root",
    "verify_keys_for_fleet",
]
