"""``fleet prune``: clear the retained chunks (and manifest) of releases no device wants any more.

A release ``name`` v``N`` is pruned when some desired state (the fleet's or a device's)
names ``name`` and every version named for it is above ``N``. Versions above the lowest
wanted one are kept (a release may be published before it is rolled out), and models no
desired state names are left alone. A retained message is cleared by publishing an empty
retained message to its topic.

Given the fleet's root, only desired states that verify against it count: a forged one naming a
high version cannot make the operator clear a release devices still need.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from edge_runtime.exceptions import BadDataError
from edge_runtime.fleet.session import FleetSession
from edge_runtime.trust.canonical import parse_json_object
from edge_runtime.trust.root import TrustRoot
from edge_runtime.updates.protocol import DesiredTopic, DeviceTopic, ManifestTopic
from edge_runtime.updates.verify import verify_desired

log = logging.getLogger("edge_runtime.fleet")


@dataclass(frozen=True)
class Pruned:
    """One release whose retained messages were (or would be) cleared."""

    name: str
    version: int
    topics: int


def wanted_versions(messages: list[bytes]) -> dict[str, set[int]]:
    """Model versions named by desired-state messages (unreadable ones are skipped)."""
    wanted: dict[str, set[int]] = {}
    for message in messages:
        try:
            doc = json.loads(parse_json_object(message, "desired state")["desired"])
            for name, target in doc["models"].items():
                wanted.setdefault(str(name), set()).add(int(target["version"]))
        except Exception:  # noqa: BLE001 - a malformed retained message wants nothing
            continue
    return wanted


def prune_releases(session: FleetSession, dry_run: bool = False, root: TrustRoot | None = None) -> list[Pruned]:
    """Clear every unwanted release's chunks, then its manifest; returns what was pruned.

    With ``root``, a desired state that does not verify against it is ignored (with a warning).
    """
    topics = session.topics
    retained = session.snapshot([topics.desired, topics.devices_filter("desired"), topics.manifests_filter])
    desired: list[bytes] = []
    for t, p in retained.items():
        ref = topics.parse(t)
        if not isinstance(ref, DesiredTopic) and not (isinstance(ref, DeviceTopic) and ref.leaf == "desired"):
            continue
        if root is not None:
            try:
                verify_desired(p, root, fleet=topics.fleet, device=ref.device if isinstance(ref, DeviceTopic) else None)
            except BadDataError as exc:
                log.warning("ignoring the retained desired state on %s: it does not verify (%s)", t, str(exc)[:200])
                continue
        desired.append(p)
    wanted = wanted_versions(desired)
    out: list[Pruned] = []
    for topic, payload in sorted(retained.items()):
        ref = topics.parse(topic)
        if not isinstance(ref, ManifestTopic) or ref.name not in wanted:
            continue
        if ref.version >= min(wanted[ref.name]):
            continue
        try:
            manifest = json.loads(parse_json_object(payload, "manifest message")["manifest"])
            artifacts = {f: len(a["chunk_sha256"]) for f, a in manifest["artifacts"].items()}
        except Exception:  # noqa: BLE001 - cannot tell its chunks: clear the manifest only
            artifacts = {}
        clear = [topics.chunk(ref.name, ref.version, f, i) for f, n in sorted(artifacts.items()) for i in range(n)]
        clear.append(topic)
        if not dry_run:
            session.publish_all([(t, b"") for t in clear])
        out.append(Pruned(ref.name, ref.version, len(clear)))
    return out


__all__ = ["Pruned", "prune_releases", "wanted_versions"]
