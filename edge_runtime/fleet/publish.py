"""``fleet publish``: chunks, then the manifest, then the signed desired state, all retained.

The order matters: a device acts on the desired state, fetches the manifest, then the
chunks, so each message it needs is already on the broker when it asks. Publishing the
same bundle again (to raise ``--rollout``) finds its manifest already retained, byte for
byte, and sends no chunk. The rollout salt is ``<name>-<version>``, the same for every
publish of a release, so raising the percentage keeps every device already in it.
"""

from __future__ import annotations

import datetime as _dt
import json
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.bundle.reader import open_bundle, parse_signature_file
from edge_runtime.exceptions import BadDataError, RollbackError, UsageError
from edge_runtime.fleet.session import FleetSession, ProgressFn
from edge_runtime.trust.canonical import canonical_json, parse_json_object
from edge_runtime.trust.keys import PrivateKey, sign
from edge_runtime.trust.root import TrustRoot
from edge_runtime.updates.protocol import (
    Topics,
    check_id,
    desired_document,
    manifest_message,
    rollout_salt,
    signed_message,
)
from edge_runtime.updates.verify import verify_desired


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


def _member(bundle_path: Path, name: str) -> bytes:
    # open_bundle has just verified every hash; read the bytes once more without re-hashing
    # (devices verify every chunk and the whole file themselves).
    with tarfile.open(bundle_path, mode="r:") as tar:
        fh = tar.extractfile(name)
        if fh is None:
            raise BadDataError(f"{bundle_path}: {name} is not a regular file")
        return fh.read()


def read_desired_models(message: bytes | None) -> tuple[int, dict[str, Any]]:
    """``(seq, models)`` of a retained desired-state message (0 and {} when there is none)."""
    if not message:
        return 0, {}
    try:
        outer = parse_json_object(message, "retained desired state")
        doc = json.loads(outer["desired"])
        return int(doc["seq"]), dict(doc["models"])
    except (BadDataError, KeyError, TypeError, ValueError) as exc:
        raise BadDataError(f"the retained desired state is unreadable ({exc}); clear it or publish with --seq") from exc


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
    return max(previous + 1, int(time.time() if now_s is None else now_s))


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
) -> PublishResult:
    """Publish a bundle to the fleet of ``session`` and point the desired state at it."""
    if not keys:
        raise UsageError("at least one --sign-key is needed to sign the desired state")
    if not 0 <= percent <= 100:
        raise UsageError(f"--rollout must be a percentage in [0, 100], found {percent}")
    topics = session.topics
    if device is not None:
        check_id(device, "device id")
    with open_bundle(Path(bundle_path), root) as bundle:
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
    retained = session.snapshot([manifest_topic, desired_topic])
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
    session.publish(manifest_topic, manifest_msg).wait(session.options.timeout_s)
    old_message = retained.get(desired_topic)
    if root is not None and old_message is not None:
        verify_desired(old_message, root, fleet=topics.fleet, device=device)  # refuse to build on a forged state
    old_seq, models = read_desired_models(old_message)
    models[m.name] = {"version": m.version, "rollout": {"percent": percent, "salt": rollout_salt(m.name, m.version)}}
    new_seq = seq if seq is not None else next_seq(old_seq)
    if new_seq <= old_seq:
        raise UsageError(f"--seq {new_seq} must be above the retained seq {old_seq}")
    expires = None
    if expires_in_s is not None:
        when = _dt.datetime.now(_dt.UTC) + _dt.timedelta(seconds=expires_in_s)
        expires = when.replace(microsecond=0).isoformat().replace("+00:00", "Z")
    message = sign_desired(topics, new_seq, models, keys, device=device, expires=expires)
    session.publish(desired_topic, message).wait(session.options.timeout_s)
    return PublishResult(
        m.name,
        m.version,
        new_seq,
        desired_topic,
        percent,
        len(chunks) if sent else 0,
        sent,
        already,
    )


__all__ = ["PublishResult", "next_seq", "publish_release", "read_desired_models", "sign_desired"]
