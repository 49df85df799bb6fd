"""The device's choice among a bundle's variants, and the record that keeps it across restarts.

:func:`select_variant` is the driver: it reads ``<store>/<name>/variants.json``, and when the
record of this version was measured under the same conditions (the :func:`fingerprint` of
runtime version, machine, Python, backend libraries, threads and delegate plan) it reuses
the recorded trials; otherwise it tries every variant
(:func:`edge_runtime.inference.variant_trial.trial_variants`) and records the figures,
atomically. The decision itself is the pure
:func:`edge_runtime.inference.variant_choice.choose_variant`, applied to the trials at every
load, so that a new pin (``[models.NAME] variant``) applies without timing anything again,
and a change of delegates, threads or runtime times again.

The record is a cache of measurements, not state: an unreadable one is logged and measured
again, never trusted in part.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge_runtime import __version__
from edge_runtime.atomic import write_bytes_atomic
from edge_runtime.config import InferenceConfig, ModelConfig
from edge_runtime.inference import delegates
from edge_runtime.inference.selftest import selftest_version
from edge_runtime.inference.variant_choice import Choice, Trial, choose_variant
from edge_runtime.inference.variant_trial import TrialFn, trial_variants
from edge_runtime.store.store import ModelStore, Resolved
from edge_runtime.trust.canonical import canonical_json

log = logging.getLogger("edge_runtime.store")

RECORD_FILE = "variants.json"
MAX_RECORD_BYTES = 256 * 1024
MAX_RECORDS = 16  # versions kept in the record (the newest)
BACKEND_DISTRIBUTIONS = ("ai-edge-litert", "tflite-runtime", "onnxruntime")


def _dist_version(name: str) -> str | None:
    # importlib.metadata (with email, csv, ...) costs the daemon about a megabyte of RSS: imported
    # only when a bundle with several variants is fingerprinted, not by every daemon.
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def fingerprint(resolved: Resolved, mcfg: ModelConfig, inference: InferenceConfig) -> str:
    """What the figures depend on besides the bundle: a change of any of it times the variants again."""
    manifest = resolved.manifest
    plan = delegates.plan(mcfg, manifest, inference)
    parts = {
        "runtime": __version__,
        "machine": platform.machine(),
        "python": list(sys.version_info[:2]),
        "backends": {d: _dist_version(d) for d in BACKEND_DISTRIBUTIONS},
        "threads": delegates.threads(mcfg, manifest),
        "delegates": [[s.name, s.library, [list(o) for o in s.options]] for s in plan],
        "timing_ms": inference.variant_timing_ms,
    }
    return hashlib.sha256(canonical_json(parts)).hexdigest()[:32]


@dataclass(frozen=True)
class VariantRecord:
    """The trials of one version under one fingerprint."""

    fingerprint: str
    trials: tuple[Trial, ...]

    def to_json(self) -> dict[str, Any]:
        """The file's form of one entry."""
        return {"fingerprint": self.fingerprint, "trials": [t.to_json() for t in self.trials]}


def record_key(resolved: Resolved) -> str:
    """The entry of a version in the record: its number (``factory-N`` for the factory bundle)."""
    return str(resolved.version) if resolved.source == "store" else f"factory-{resolved.version}"


def read_records(store: ModelStore, name: str) -> dict[str, VariantRecord]:
    """Every recorded entry of ``name`` (empty when there is no readable record)."""
    path = store.model_dir(name) / RECORD_FILE
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_RECORD_BYTES + 1)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        log.warning("%s: cannot read %s (%s); the variants will be timed again", name, RECORD_FILE, exc.strerror)
        return {}
    try:
        if len(data) > MAX_RECORD_BYTES:
            raise ValueError(f"over {MAX_RECORD_BYTES} bytes")
        obj = json.loads(data)
        if not isinstance(obj, dict):
            raise ValueError("not an object")
        out: dict[str, VariantRecord] = {}
        for key, entry in obj.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("fingerprint"), str) or not isinstance(
                    entry.get("trials"), list):
                raise ValueError(f"entry {str(key)[:20]!r} is malformed")
            out[str(key)] = VariantRecord(entry["fingerprint"], tuple(Trial.from_json(t) for t in entry["trials"]))
        return out
    except ValueError as exc:
        log.warning("%s: %s is unreadable (%s); the variants will be timed again", name, RECORD_FILE, exc)
        return {}


def write_record(store: ModelStore, name: str, key: str, record: VariantRecord) -> None:
    """Record ``record`` as entry ``key`` (lock, read, replace, atomic write), keeping the newest entries."""
    with store.lock():
        records = read_records(store, name)
        records.pop(key, None)
        records[key] = record
        kept = dict(list(records.items())[-MAX_RECORDS:])
        store.model_dir(name).mkdir(parents=True, exist_ok=True)
        blob = json.dumps({k: r.to_json() for k, r in kept.items()}, sort_keys=False).encode()
        write_bytes_atomic(store.model_dir(name) / RECORD_FILE, blob)


def select_variant(store: ModelStore, resolved: Resolved, mcfg: ModelConfig, inference: InferenceConfig,
                   trial: TrialFn | None = None) -> tuple[Resolved, Choice]:
    """The variant of ``resolved`` to serve, as its view, and the choice with every variant's figure.

    Raises InferenceError when no variant can serve (the caller fails the version as it would
    a failed self-test).
    """
    manifest = resolved.manifest.base or resolved.manifest
    trial = trial or trial_variants  # looked up at each call: tests replace the module's trial_variants
    names = [v.name for v in manifest.variants]
    fp = fingerprint(resolved, mcfg, inference)
    key = record_key(resolved)
    record = read_records(store, resolved.name).get(key)
    if record is None or record.fingerprint != fp or [t.variant for t in record.trials] != names:
        log.info("%s v%d: trying each variant on this device (%s)", resolved.name, resolved.version, ", ".join(names),
                 extra={"model": resolved.name, "version": resolved.version})
        trials = trial([store.variant_view(resolved, v) for v in names], mcfg, inference)
        record = VariantRecord(fp, tuple(trials))
        try:
            write_record(store, resolved.name, key, record)
        except OSError as exc:  # a read-only store: the choice stands, it is timed again next start
            log.warning("%s v%d: cannot record the variant trials: %s", resolved.name, resolved.version, exc)
    choice = choose_variant(record.trials, manifest.budget_max_abs_error, mcfg.variant, inference.variant_tie_pct)
    if mcfg.variant and not choice.pinned:  # a config mistake the operator must hear of; serving goes on
        chosen = next(v for v in choice.verdicts if v.variant == choice.chosen)
        log.warning("%s v%d: [models.%s] variant = %r is ignored: %s", resolved.name, resolved.version,
                    resolved.name, mcfg.variant[:64], chosen.reason.split("; ")[0],
                    extra={"model": resolved.name, "version": resolved.version})
    log.info("%s v%d: serving variant %s (%s)", resolved.name, resolved.version, choice.chosen,
             "; ".join(f"{v.variant}: {v.outcome.value}, {v.reason}" for v in choice.verdicts),
             extra={"model": resolved.name, "version": resolved.version})
    return store.variant_view(resolved, choice.chosen), choice


def install_selftest(store: ModelStore, mcfg: ModelConfig | Callable[[str], ModelConfig] | None = None,
                     inference: InferenceConfig | None = None) -> Callable[[Resolved], None]:
    """The self-test an activation runs (``models install|activate``, a device updating without a
    daemon): the golden self-test of a one-variant version; for several variants, every one tried
    and timed here (the record the daemon then reuses), failing only when none can serve.

    ``mcfg`` is one model's config, or the device's ``Config.model`` (an updater activates any
    model): the threads, delegates and pin are those the daemon will use, so that its
    fingerprint matches the record and it does not time the variants again."""
    inference = inference or InferenceConfig()
    fixed = mcfg if isinstance(mcfg, ModelConfig) else ModelConfig()

    def check(resolved: Resolved) -> None:
        model_cfg = mcfg(resolved.name) if callable(mcfg) else fixed
        if len(resolved.manifest.variants) > 1:
            select_variant(store, resolved, model_cfg, inference)
        else:
            selftest_version(resolved, model_cfg, inference)

    return check


__all__ = ["RECORD_FILE", "install_selftest", "VariantRecord", "fingerprint", "read_records", "select_variant", "write_record"]
