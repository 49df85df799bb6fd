"""``fleet publish NEW.bundle --delta-from OLD.bundle``: the operator's side of delta updates.

For each older bundle, one zstd delta per artifact of the new release (the old artifact of the
same name as a dictionary, :func:`edge_runtime.updates.delta.make_delta`), its signed index and
its chunks, as retained messages. A delta whose files together are at least
:data:`~edge_runtime.updates.delta.SKIP_RATIO` of the full artifacts is not published: the
devices fetch the full release, which costs about the same and needs no patching.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_runtime.bundle.manifest import Artifact, Manifest
from edge_runtime.bundle.reader import open_bundle
from edge_runtime.exceptions import UsageError
from edge_runtime.fleet.session import FleetSession
from edge_runtime.trust.keys import PrivateKey
from edge_runtime.trust.root import TrustRoot
from edge_runtime.updates.delta import SKIP_RATIO, delta_artifact, delta_document, make_delta, sign_delta_index
from edge_runtime.updates.protocol import Topics


@dataclass(frozen=True)
class DeltaPlan:
    """The delta of a release from one base version: messages to publish, or why not."""

    base: int
    delta_bytes: int
    full_bytes: int
    messages: dict[str, bytes]  # topic -> retained payload (index last when published in order)
    skipped: str = ""  # non-empty: not published, and why

    @property
    def ratio(self) -> float:
        """Delta size / full size."""
        return self.delta_bytes / self.full_bytes if self.full_bytes else 1.0


def read_artifacts(bundle_path: Path, root: TrustRoot | None) -> tuple[Manifest, dict[str, bytes]]:
    """A verified bundle's manifest and artifact bytes."""
    with open_bundle(Path(bundle_path), root) as bundle:
        m = bundle.manifest
        data = {f: bundle.read_artifact(f) for f in m.artifacts}
    return m, data


def plan_delta(topics: Topics, new: tuple[Manifest, dict[str, bytes]], old: tuple[Manifest, dict[str, bytes]],
               keys: Collection[PrivateKey], skip_ratio: float = SKIP_RATIO) -> DeltaPlan:
    """The delta of ``new`` from ``old`` (each a manifest and its artifacts' bytes)."""
    (nm, ndata), (om, odata) = new, old
    if om.name != nm.name:
        raise UsageError(f"--delta-from {om.name} v{om.version}: another model than {nm.name}")
    if om.version >= nm.version:
        raise UsageError(f"--delta-from v{om.version} must be older than the published v{nm.version}")
    files: dict[str, tuple[str, Artifact]] = {}
    blobs: dict[str, bytes] = {}
    for f in sorted(nm.artifacts):
        base = odata.get(f)
        blob = make_delta(base, ndata[f])
        blobs[f] = blob
        files[f] = (om.artifacts[f].sha256 if base is not None else "", delta_artifact(f, blob, nm.artifacts[f].chunk_size))
    full = sum(a.length for a in nm.artifacts.values())
    size = sum(len(b) for b in blobs.values())
    if size >= skip_ratio * full:
        why = f"the delta from v{om.version} is {size} bytes, {100 * size / max(full, 1):.0f} % of the full {full}"
        return DeltaPlan(om.version, size, full, {}, why)
    messages: dict[str, bytes] = {}
    for f, (_, art) in files.items():
        for i in range(art.chunk_count):
            messages[topics.delta_chunk(nm.name, nm.version, om.version, f, i)] = blobs[f][i * art.chunk_size : (i + 1) * art.chunk_size]
    doc = delta_document(nm, om.version, files)
    messages[topics.delta_index(nm.name, nm.version, om.version)] = sign_delta_index(doc, keys)
    return DeltaPlan(om.version, size, full, messages)




def publish_deltas(session: FleetSession, new_bundle: Path, old_bundles: Sequence[Path], keys: Collection[PrivateKey],
                   root: TrustRoot | None, reuse: bool) -> tuple[list[int], list[str]]:
    """Publish the delta of ``new_bundle`` from each of ``old_bundles`` (chunks, then the signed
    index); returns the bases published (for the desired state's ``deltas``) and notes on those
    skipped. ``reuse``: the release is already published, so a retained delta index is kept as is."""
    if not old_bundles:
        return [], []
    topics = session.topics
    new = read_artifacts(new_bundle, root)
    olds = [read_artifacts(p, root) for p in old_bundles]
    index_topics = {o[0].version: topics.delta_index(new[0].name, new[0].version, o[0].version) for o in olds}
    retained = session.snapshot(list(index_topics.values())) if reuse else {}
    bases: list[int] = []
    notes: list[str] = []
    for old in olds:
        base = old[0].version
        if index_topics[base] in retained:
            bases.append(base)
            continue
        plan = plan_delta(topics, new, old, keys)
        if plan.skipped:
            notes.append(f"no delta published: {plan.skipped}")
            continue
        index = plan.messages.pop(index_topics[base])
        session.publish_all(list(plan.messages.items()), None)
        session.publish(index_topics[base], index).wait(session.timeout_s)  # the index last: its chunks are there
        bases.append(base)
        notes.append(f"delta from v{base}: {plan.delta_bytes} bytes, {100 * plan.ratio:.1f} % of the full {plan.full_bytes}")
    return sorted(bases), notes


__all__ = ["DeltaPlan", "plan_delta", "publish_deltas", "read_artifacts"]
