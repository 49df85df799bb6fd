"""Store retention: which installed versions may be deleted, and versions pinned by serving config.

``[store] keep_versions = N``: after an activation, installed versions beyond the N newest are
deleted, except the protected ones: the active version, the last known good, a version being
tried (tentative activation), the one the daemon answers with, and versions the serving config
names (``version_policy = "specific"`` versions, ``traffic`` weights above 0, ``shadow``). The
factory bundle lives outside the store and is never touched. The decision is pure
(:func:`expired`); :meth:`edge_runtime.store.store.ModelStore.remove` does the deleting.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from edge_runtime.config import ModelConfig

Pins = Callable[[str], set[int]]


def expired(installed: Iterable[int], keep_versions: int, protected: Iterable[int]) -> list[int]:
    """Installed versions beyond the ``keep_versions`` newest that are not ``protected``, ascending."""
    newest_first = sorted(set(installed), reverse=True)
    keep = set(newest_first[:keep_versions]) | set(protected)
    return sorted(v for v in newest_first if v not in keep)


def config_pins(models: Mapping[str, ModelConfig]) -> Pins:
    """The versions of a model that its ``[models.NAME]`` table asks the daemon to serve."""

    def pins(name: str) -> set[int]:
        mcfg = models.get(name)
        if mcfg is None:
            return set()
        pinned = {int(v) for v, w in mcfg.traffic.items() if w > 0}
        if mcfg.version_policy == "specific":
            pinned |= set(mcfg.versions)
        if mcfg.shadow:
            pinned.add(mcfg.shadow)
        return pinned

    return pins
