"""What the console keeps of a device's messages: bounded, typed digests. Pure code, no I/O.

Devices are not trusted. Every field a device sends is checked for its type and cut to a
bound before it is stored or shown; a document that cannot be read at all (not JSON, not an
object, too big, the wrong shape) becomes a digest with ``problem`` set, which the record
stores and the page shows as malformed, and nothing else about the device changes.

The digest functions never raise, whatever the payload holds (a 400-digit number, NaN,
nesting a thousand deep, invalid UTF-8, a list where an object belongs): a value of the wrong
type is treated as absent, and anything the checks did not foresee becomes a ``problem``
instead of an exception, because an exception here would stop the console's writer.
A digest is bounded (:data:`MAX_DIGEST_CHARS`): that, not the 256 KB a state may have, is
what the console keeps of a device in memory.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from edge_runtime.fleet.health import (
    DesiredReport,
    Health,
    desired_report_from_dict,
    desired_report_of,
    health_from_dict,
    health_of,
)
from edge_runtime.fleet.status import state_problem
from edge_runtime.updates.protocol import EVENTS

MAX_STATE_BYTES = 256 * 1024  # a real state is about 1 KiB; larger ones are malformed
MAX_EVENT_BYTES = 16 * 1024
MAX_DESIRED_BYTES = 256 * 1024
MAX_TEXT_CHARS = 300  # reasons, errors, feature names: cut with an ellipsis
MAX_NAME_CHARS = 64
MAX_MODELS = 32  # per device; more are dropped from the digest (the raw state keeps them)
MAX_FAILED_PER_MODEL = 32
MAX_FAILED_PER_DEVICE = 64  # over all its models: bounds the digest
# What one device's digest can weigh as JSON at most (models, failed reasons, texts): the tests
# hold the worst case to it. The console keeps this per device, never the raw document.
MAX_DIGEST_CHARS = 64 * 1024
MAX_RAW_CHARS = 2000  # of a malformed payload, kept to show what arrived
MAX_VERSION = 2**63 - 1


def cut(value: Any, limit: int = MAX_TEXT_CHARS) -> str:
    """``value`` as text of at most ``limit`` characters (an ellipsis marks a cut); never raises."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, default=str)[: limit + 1]
        except (ValueError, RecursionError, OverflowError, TypeError):
            text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def name_of(value: Any) -> str:
    """A model name a device reported: a string (cut), anything else is no name."""
    return cut(value, MAX_NAME_CHARS) if isinstance(value, str) else ""


def as_version(value: Any) -> int | None:
    """A model version (non-negative 64-bit int, not a bool) or None."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_VERSION:
        return value
    return None


MAX_FLOAT_INT = 2**53  # an int beyond is no reading; float() of a 400-digit one would raise


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int):
        return float(value) if -MAX_FLOAT_INT <= value <= MAX_FLOAT_INT else None
    return value if math.isfinite(value) else None


def _number_text(value: Any) -> str | None:
    """An event's figure as text (ints exactly: ``20250101``, not ``2.02501e+07``); None: not a number."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value) if abs(value) <= MAX_VERSION else None
    f = _finite(value)
    return None if f is None else f"{f:g}"


def parse_payload(payload: bytes, limit: int, what: str, size: int | None = None) -> tuple[Any, str | None]:
    """``(document, None)``, or ``(None, why it cannot be read)``. ``size``: the payload's
    length as received, when ``payload`` has already been cut."""
    size = len(payload) if size is None else size
    if size > limit:
        return None, f"{what} of {size} bytes is over the {limit}-byte limit"
    try:
        return json.loads(payload), None
    except (ValueError, RecursionError):
        return None, f"{what} is not JSON"


def raw_text(payload: bytes) -> str:
    """The start of a payload as text, for showing what a malformed message held."""
    return cut(payload[: MAX_RAW_CHARS * 4].decode("utf-8", "replace"), MAX_RAW_CHARS)


D = TypeVar("D")  # a digest type

@dataclass(frozen=True)
class Drift:
    """A model's drift figures as the device reports them (``state.models[NAME].drift``)."""

    score: float
    alert: bool
    worst_feature: str
    threshold: float | None


def drift_of(value: Any) -> Drift | None:
    """The drift object, or None when absent, null or not of the documented shape."""
    if not isinstance(value, dict):
        return None
    score = _finite(value.get("score"))
    if score is None:
        return None
    return Drift(score, value.get("alert") is True, name_of(value.get("worst_feature")), _finite(value.get("threshold")))


@dataclass(frozen=True)
class ModelDigest:
    """One model on one device: what runs, what failed and why, the drift figures."""

    name: str
    active: int | None  # None: the factory bundle
    failed: dict[str, str] = field(default_factory=dict)  # version -> reason
    drift: Drift | None = None
    error: str = ""  # the device could not read this model's state


@dataclass(frozen=True)
class StateDigest:
    """A device's retained state, bounded. ``problem`` set: the document was malformed."""

    problem: str = ""
    models: tuple[ModelDigest, ...] = ()
    update: str = ""  # "fraud v2 downloading 40%"
    update_model: str = ""
    update_version: int | None = None
    last_error: str = ""
    error_model: str = ""
    error_version: int | None = None
    desired_seq: int | None = None
    runtime: str = ""
    device_time: str = ""
    health: Health | None = None
    desired: DesiredReport | None = None  # the device's answer to its last desired state

    @property
    def status(self) -> str:
        """``malformed``, ``updating``, ``error`` or ``ok``."""
        if self.problem:
            return "malformed"
        if self.update:
            return "updating"
        return "error" if self.last_error else "ok"

    def versions(self) -> dict[str, int | None]:
        """Active version per model."""
        return {m.name: m.active for m in self.models if not m.error}

    def change_key(self) -> str:
        """Everything but the device's clock and its health figures (a temperature moves at every
        publish; only a new alert is a change): two states with the same key are the same state."""
        d = asdict(self)
        d.pop("device_time")
        d.pop("health")
        d["alerts"] = list(self.alerts)
        return json.dumps(d, sort_keys=True)

    @property
    def alerts(self) -> tuple[str, ...]:
        """``under-voltage``, ``throttled``, ``desired rejected``: what needs the operator's eye."""
        health = self.health.alerts if self.health else ()
        return health + (("desired rejected",) if self.desired is not None and self.desired.rejected else ())

    def to_json(self) -> str:
        """For the record."""
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> StateDigest:
        """Back from the record (one written before a field existed reads with its default)."""
        d = json.loads(text)
        models = []
        for m in d.pop("models"):
            drift = Drift(**m.pop("drift")) if m.get("drift") else None
            m.pop("drift", None)
            models.append(ModelDigest(drift=drift, **m))
        health, desired = health_from_dict(d.pop("health", None)), desired_report_from_dict(d.pop("desired", None))
        return StateDigest(models=tuple(models), health=health, desired=desired, **d)

    def tally_state(self) -> dict[str, Any] | None:
        """The few fields :func:`edge_runtime.fleet.rollout.tally` reads, rebuilt from the digest
        (None for a malformed state): rollout progress without keeping the device's document."""
        if self.problem:
            return None
        return {
            "models": {
                m.name: {"active": m.active, "failed": dict.fromkeys(m.failed, "")} for m in self.models if not m.error
            },
            "update": {"model": self.update_model, "version": self.update_version} if self.update else None,
            "last_error": {"model": self.error_model, "version": self.error_version} if self.last_error else None,
        }


def _model_digest(name: str, m: dict[str, Any], failed_left: int) -> ModelDigest:
    if "error" in m and "active" not in m:
        return ModelDigest(name, None, error=cut(m.get("error")))
    failed = {
        cut(v, 20): cut(reason)
        for v, reason in sorted((m.get("failed") or {}).items())[: min(MAX_FAILED_PER_MODEL, failed_left)]
    }
    return ModelDigest(name, as_version(m.get("active")), failed, drift_of(m.get("drift")))


def _never_raising(digest: Callable[[bytes, int | None], D], malformed: Callable[..., D], what: str,
                   payload: bytes, size: int | None) -> D:
    try:
        return digest(payload, size)
    except Exception as exc:  # a case the checks did not foresee: the message is malformed, the console goes on
        return malformed(problem=cut(f"{what} could not be read ({type(exc).__name__})"))


def digest_state(payload: bytes, size: int | None = None) -> StateDigest:
    """The digest of one ``devices/<id>/state`` payload; never raises."""
    return _never_raising(_digest_state, StateDigest, "state", payload, size)


def _digest_state(payload: bytes, size: int | None) -> StateDigest:
    doc, problem = parse_payload(payload, MAX_STATE_BYTES, "state", size)
    if problem is None:
        problem = state_problem(doc)
    if problem is not None:
        return StateDigest(problem=cut(problem))
    models_list: list[ModelDigest] = []
    failed_left = MAX_FAILED_PER_DEVICE
    for name, m in sorted((doc.get("models") or {}).items())[:MAX_MODELS]:
        md = _model_digest(cut(name, MAX_NAME_CHARS), m, failed_left)
        failed_left -= len(md.failed)
        models_list.append(md)
    models = tuple(models_list)
    update, u_model, u_version = "", "", None
    u = doc.get("update")
    if isinstance(u, dict):
        u_model, u_version = name_of(u.get("model")), as_version(u.get("version"))
        pct = _finite(u.get("percent"))
        update = cut(f"{u_model} v{u_version} {cut(u.get('phase') or '', 20)}" + (f" {pct:.0f}%" if pct is not None else ""))
    error, e_model, e_version = "", "", None
    e = doc.get("last_error")
    if isinstance(e, dict):
        e_model, e_version = name_of(e.get("model")), as_version(e.get("version"))
        error = cut(e.get("reason") or "unknown reason")
    seq = doc.get("desired_seq")
    desired = as_version(seq.get("desired")) if isinstance(seq, dict) else None
    return StateDigest(
        models=models,
        update=update,
        update_model=u_model,
        update_version=u_version,
        last_error=error,
        error_model=e_model,
        error_version=e_version,
        desired_seq=desired,
        runtime=cut(doc.get("runtime") or "", 40),
        device_time=cut(doc.get("time") or "", 40),
        health=health_of(doc),
        desired=desired_report_of(doc),
    )


@dataclass(frozen=True)
class EventDigest:
    """One ``devices/<id>/events`` message, bounded. ``problem`` set: it was malformed."""

    kind: str = ""
    model: str = ""
    version: int | None = None
    reason: str = ""
    detail: str = ""  # percent, previous version...
    device_time: str = ""
    problem: str = ""
    from_version: int | None = None  # rolled_back: the version that failed (a typed field: never read back from text)

    def summary(self) -> str:
        """One line for the timeline."""
        if self.problem:
            return f"malformed event: {self.problem}"
        if not self.model:
            what = self.kind
        elif self.version is None:  # rolled_back names the version serving again: none is the factory bundle
            what = f"{self.kind} {self.model}" + (" to the factory bundle" if self.kind == "rolled_back" else "")
        else:
            what = f"{self.kind} {self.model} v{self.version}"
        return cut(" ".join(p for p in (what, self.detail, self.reason and f"reason: {self.reason}") if p), 2 * MAX_TEXT_CHARS)


def digest_event(payload: bytes, size: int | None = None) -> EventDigest:
    """The digest of one event payload; never raises."""
    return _never_raising(_digest_event, EventDigest, "event", payload, size)


def _digest_event(payload: bytes, size: int | None) -> EventDigest:
    doc, problem = parse_payload(payload, MAX_EVENT_BYTES, "event", size)
    if problem is None and not isinstance(doc, dict):
        problem = f"event is {type(doc).__name__}, not an object"
    if problem is None and doc.get("event") not in EVENTS:
        problem = f"unknown event kind {cut(json.dumps(doc.get('event'))[:50], 40)}"
    if problem is not None:
        return EventDigest(problem=problem)
    details = []
    for key in ("percent", "previous", "from_version", "root_version", "dropped_before"):
        figure = _number_text(doc.get(key))
        if figure is not None:
            details.append(f"{key} {figure}")
    return EventDigest(
        kind=str(doc["event"]),
        model=name_of(doc.get("model")),
        version=as_version(doc.get("version")),
        reason=cut(doc.get("reason") or ""),
        detail=", ".join(details),
        device_time=cut(doc.get("time") or "", 40),
        from_version=as_version(doc.get("from_version")),
    )


@dataclass(frozen=True)
class Target:
    """One model of a desired state: a rollout step when recorded."""

    model: str
    version: int
    percent: int
    salt: str


@dataclass(frozen=True)
class DesiredDigest:
    """A desired-state message as published (``problem`` set: unreadable)."""

    seq: int | None = None
    targets: tuple[Target, ...] = ()
    problem: str = ""


def digest_desired(payload: bytes, size: int | None = None) -> DesiredDigest:
    """The seq and the model targets of a desired-state message, unverified; never raises."""
    return _never_raising(_digest_desired, DesiredDigest, "desired state", payload, size)


def _digest_desired(payload: bytes, size: int | None) -> DesiredDigest:
    outer, problem = parse_payload(payload, MAX_DESIRED_BYTES, "desired state", size)
    doc: Any = None
    if problem is None:
        try:
            doc = json.loads(str(outer["desired"]))
        except (ValueError, RecursionError, KeyError, TypeError):
            problem = "desired state has no readable 'desired' document"
    if problem is None and not (isinstance(doc, dict) and as_version(doc.get("seq")) and isinstance(doc.get("models"), dict)):
        problem = "desired state needs a 64-bit 'seq' and a 'models' object"
    if problem is not None:
        return DesiredDigest(problem=problem)
    targets = []
    for name, t in sorted(doc["models"].items())[:MAX_MODELS]:
        version = as_version(t.get("version")) if isinstance(t, dict) else None
        if version is None:
            continue
        rollout = t.get("rollout") if isinstance(t.get("rollout"), dict) else {}
        percent = rollout.get("percent", 100)
        percent = percent if isinstance(percent, int) and not isinstance(percent, bool) and 0 <= percent <= 100 else 100
        targets.append(Target(cut(name, MAX_NAME_CHARS), version, percent, cut(rollout.get("salt") or "", 200)))
    return DesiredDigest(doc["seq"], tuple(targets))


__all__ = [
    "DesiredDigest",
    "Drift",
    "EventDigest",
    "ModelDigest",
    "StateDigest",
    "Target",
    "cut",
    "digest_desired",
    "digest_event",
    "digest_state",
    "raw_text",
]
