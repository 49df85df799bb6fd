"""Loaded model versions and request routing: ``/versions/{v}``, A/B traffic weights, shadow.

A :class:`ServedModel` holds one immutable :class:`Routing`. The model manager builds a
new routing on its own thread and installs it with a single assignment on the event-loop
thread, so a request sees either the old routing or the new one, never a mix; the
request handler picks its version and hands the request to that version's executor
without awaiting in between, so a version retired after a switch gets no new work.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_runtime.bundle.manifest import Manifest
from edge_runtime.config import ModelConfig
from edge_runtime.exceptions import NotFoundError, UnavailableError
from edge_runtime.inference.variant_choice import Choice
from edge_runtime.monitoring.hub import VersionMonitor
from edge_runtime.serving.batcher import BatchPolicy
from edge_runtime.serving.codec import Interface
from edge_runtime.serving.metrics import VersionStats
from edge_runtime.serving.workers import Executor
from edge_runtime.spec.delegates import Skipped


@dataclass(eq=False)
class LoadedVersion:
    """One model version with its interpreters, ready to answer."""

    name: str
    version: int
    manifest: Manifest
    iface: Interface
    executor: Executor
    stats: VersionStats
    source: str  # "store" or "factory"
    invoke_us: float  # measured batch-1 run time at load
    config: ModelConfig  # the serving config it was built with
    version_str: str = ""
    monitor: VersionMonitor | None = None  # drift sketches and capture (docs/monitoring.md)
    delegate: str = "xnnpack"  # what runs it: xnnpack, cpu, onnxruntime or an external delegate's name
    skipped: tuple[Skipped, ...] = ()  # delegates tried first and why they were not used
    variant: Choice | None = None  # of a bundle with several variants: the one served, each one's figure

    def __post_init__(self) -> None:
        self.version_str = str(self.version)

    def delegate_report(self) -> dict[str, Any]:
        """What runs this version and what was skipped: the store's, metadata's and fleet state's form."""
        report: dict[str, Any] = {"delegate": self.delegate, "skipped": [s.to_json() for s in self.skipped]}
        if self.variant is not None:
            report["variant"] = self.variant.to_json()
        return report

    @property
    def mode(self) -> str:
        """``inline`` or ``threads``."""
        return "inline" if self.executor.inline else "threads"

    @property
    def closed(self) -> bool:
        """True once retired: it takes no new requests."""
        return self.executor.closed


def batch_policy(cfg: ModelConfig, batchable: bool) -> BatchPolicy:
    """The batching parameters of a model config; no merging when the model has no batch dimension."""
    size = cfg.max_batch_size if batchable else 1
    return BatchPolicy(
        max_batch_size=max(size, 1),
        max_queue_delay_us=cfg.max_queue_delay_us,
        preferred_batch_sizes=tuple(sorted(set(cfg.preferred_batch_sizes))) if batchable else (),
        max_queue_size=cfg.max_queue_size,
    )


@dataclass(frozen=True)
class Routing:
    """Which loaded version answers what. Built off the loop, swapped in by one assignment."""

    default: LoadedVersion  # the store's active (or fallback) version
    versions: Mapping[int, LoadedVersion]  # every addressable version
    weighted: tuple[LoadedVersion, ...] = ()  # A/B: versions for unversioned requests ...
    cumulative: tuple[float, ...] = ()  # ... and their cumulative weights
    shadow: LoadedVersion | None = None

    def pick(self, version: int | None) -> LoadedVersion:
        """The version for a request (``None`` = unversioned: A/B weights, else the default)."""
        if version is None:
            if not self.cumulative:
                return self.default
            r = random.random() * self.cumulative[-1]
            return self.weighted[bisect.bisect_right(self.cumulative, r)]
        lv = self.versions.get(version)
        if lv is None:
            raise NotFoundError(
                f"model {self.default.name!r} has no version {version} loaded; loaded: {sorted(self.versions)}"
            )
        return lv

    def roles(self) -> list[tuple[int, str]]:
        """``(version, role)`` for metrics: default, traffic, shadow or loaded."""
        out = []
        weighted = {lv.version for lv in self.weighted}
        for v, lv in sorted(self.versions.items()):
            if lv is self.default:
                role = "default"
            elif self.shadow is lv:
                role = "shadow"
            elif v in weighted:
                role = "traffic"
            else:
                role = "loaded"
            out.append((v, role))
        return out


def build_routing(
    default: LoadedVersion, loaded: Mapping[int, LoadedVersion], cfg: ModelConfig
) -> tuple[Routing, list[str]]:
    """A routing from the loaded versions and the model's traffic/shadow config; also warnings."""
    warnings: list[str] = []
    versions = dict(loaded)
    versions[default.version] = default
    weighted: list[LoadedVersion] = []
    cumulative: list[float] = []
    total = 0.0
    for key, weight in sorted(cfg.traffic.items(), key=lambda kv: int(kv[0])):
        lv = versions.get(int(key))
        if lv is None:
            warnings.append(f"traffic names v{key}, which is not loaded; its weight is ignored")
            continue
        if weight <= 0:
            continue
        total += weight
        weighted.append(lv)
        cumulative.append(total)
    if cfg.traffic and not weighted:
        warnings.append("no version named in traffic is loaded; every request goes to the default version")
    shadow = None
    if cfg.shadow:
        shadow = versions.get(cfg.shadow)
        if shadow is None:
            warnings.append(f"shadow v{cfg.shadow} is not loaded; nothing is shadowed")
    return Routing(default, versions, tuple(weighted), tuple(cumulative), shadow), warnings


@dataclass(eq=False)
class ServedModel:
    """A model name as the HTTP API sees it."""

    name: str
    routing: Routing | None = None
    problem: str | None = None  # why it is not ready
    known_versions: list[int] = field(default_factory=list)

    def route(self, version: int | None) -> LoadedVersion:
        """The version to answer with; 503 while nothing is loaded, 404 for a version not loaded."""
        routing = self.routing
        if routing is None:
            raise UnavailableError(f"model {self.name!r} is not ready: {self.problem or 'loading'}")
        return routing.pick(version)


def disagreement(answered: list[np.ndarray], shadow: list[np.ndarray]) -> tuple[float, int, int]:
    """``(max abs error, rows whose top-1 differs, rows)`` between two output lists.

    Top-1 is the arg-max over the last axis; for a single-column output (a probability)
    it is the decision at 0.5. Only the first output is used for top-1.
    """
    worst = 0.0
    for a, s in zip(answered, shadow):
        if a.shape != s.shape:
            return float("inf"), 0, 0
        if a.size:
            worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - s.astype(np.float64)))))
    a0, s0 = answered[0], shadow[0]
    if a0.ndim == 0 or a0.size == 0:
        return worst, 0, 0
    if a0.ndim == 1:
        a0, s0 = a0.reshape(1, -1), s0.reshape(1, -1)
    a2 = a0.reshape(-1, a0.shape[-1])
    s2 = s0.reshape(-1, s0.shape[-1])
    if a2.shape[-1] == 1:
        differ = (a2[:, 0] >= 0.5) != (s2[:, 0] >= 0.5)
    else:
        differ = np.argmax(a2, axis=-1) != np.argmax(s2, axis=-1)
    return worst, int(np.count_nonzero(differ)), int(a2.shape[0])
