"""The read-only factory directory: each ``*.bundle`` is known by the model its verified manifest
names, never by its file name.

A file name is whatever the image builder typed (``wine-1.bundle``); taking it for a model name
made phantom models in the daemon's status and the console. Each bundle is therefore opened and
verified against the trust root (once per file version and root version: the scan runs on
every poll of the model manager and costs a ``stat`` per file after the first), and a bundle that
fails is *refused*, with its reason, instead of silently missing or shown as an idle fallback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge_runtime.bundle.manifest import NAME_RE
from edge_runtime.bundle.reader import BundleLimits, open_bundle
from edge_runtime.exceptions import EdgeRuntimeError
from edge_runtime.trust.root import TrustRoot

log = logging.getLogger("edge_runtime.store")

FACTORY_SUFFIX = ".bundle"
MAX_FACTORY_FILES = 256  # more *.bundle files than any image ships: the rest are ignored and logged
MAX_REASON_CHARS = 300


@dataclass(frozen=True)
class FactoryBundle:
    """One file of the factory directory: the model and version its verified manifest names,
    or, refused, why (``claimed``: the name an unverified manifest gives, for display only)."""

    path: Path
    name: str | None = None
    version: int | None = None
    problem: str | None = None
    claimed: str | None = None


def _claimed_name(path: Path, limits: BundleLimits) -> str | None:
    """The model name an unverified manifest claims (to label a refusal), when it has a valid one."""
    try:
        with open_bundle(path, None, limits) as bundle:
            name = bundle.manifest.name
    except (EdgeRuntimeError, OSError):
        return None
    return name if NAME_RE.fullmatch(name) else None


def inspect(path: Path, root: TrustRoot, limits: BundleLimits) -> FactoryBundle:
    """Verify one factory bundle (signature and every hash) and say which model it holds."""
    try:
        with open_bundle(path, root, limits) as bundle:
            return FactoryBundle(path, bundle.manifest.name, bundle.manifest.version)
    except (EdgeRuntimeError, OSError) as exc:
        reason = str(exc)[:MAX_REASON_CHARS]
        return FactoryBundle(path, problem=reason, claimed=_claimed_name(path, limits))


class FactoryDir:
    """The factory directory as a mapping from verified model names to bundle files."""

    def __init__(self, path: Path | None, root: Callable[[], TrustRoot], limits: BundleLimits) -> None:
        self.path = path
        self._root = root  # read at each scan: the update client may rotate the store's root
        self.limits = limits
        self._seen: dict[Path, tuple[tuple[int, int, int, int], FactoryBundle]] = {}
        self.last_scan: list[FactoryBundle] = []  # read without scanning (e.g. on the event loop)

    def scan(self) -> list[FactoryBundle]:
        """Every ``*.bundle`` file, verified (cached while the file and root are unchanged), by file name."""
        if self.path is None or not self.path.is_dir():
            return []
        root = self._root()
        files = sorted(p for p in self.path.glob(f"*{FACTORY_SUFFIX}") if p.is_file())
        if len(files) > MAX_FACTORY_FILES:
            log.error("factory directory %s holds %d bundles; only the first %d are read",
                      self.path, len(files), MAX_FACTORY_FILES)
            files = files[:MAX_FACTORY_FILES]
        out: list[FactoryBundle] = []
        seen: dict[Path, tuple[tuple[int, int, int, int], FactoryBundle]] = {}
        for p in files:
            try:
                st = p.stat()
            except OSError:
                continue
            key = (st.st_ino, st.st_size, st.st_mtime_ns, root.version)
            cached = self._seen.get(p)
            if cached is not None and cached[0] == key:
                fb = cached[1]
            else:
                fb = inspect(p, root, self.limits)
                if fb.problem is not None:
                    log.error("factory bundle %s refused: %s", p, fb.problem, extra={"reason": fb.problem})
            seen[p] = (key, fb)
            out.append(fb)
        self._seen = seen
        self.last_scan = _refuse_duplicates(out)
        return self.last_scan

    def bundles(self) -> dict[str, Path]:
        """Verified model name -> its factory bundle."""
        return {fb.name: fb.path for fb in self.scan() if fb.name is not None and fb.problem is None}

    def refused(self, rescan: bool = True) -> list[FactoryBundle]:
        """The factory bundles that failed verification, each with its reason (``rescan=False``:
        as of the last scan, which costs nothing)."""
        return [fb for fb in (self.scan() if rescan else self.last_scan) if fb.problem is not None]


def _refuse_duplicates(bundles: list[FactoryBundle]) -> list[FactoryBundle]:
    """A second bundle for a model already provided (in file-name order) is refused: which one
    the device falls back to must not depend on directory order."""
    first: dict[str, Path] = {}
    out: list[FactoryBundle] = []
    for fb in bundles:
        name = fb.name
        if name is not None and fb.problem is None:
            if name in first:
                fb = FactoryBundle(fb.path, problem=f"holds model {name!r}, already provided by {first[name].name}",
                                   claimed=name)
            else:
                first[name] = fb.path
        out.append(fb)
    return out
