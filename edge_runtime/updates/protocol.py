"""Topics and message shapes of the MQTT update protocol (SPEC section 5).

Everything under ``<prefix>/<fleet>/``::

    desired                                   retained, signed desired state of the fleet
    devices/<id>/desired                      retained, signed per-device override
    models/<name>/<version>/manifest          retained, {"manifest": TEXT, "signatures": [...]}
    models/<name>/<version>/chunks/<file>/<i> retained QoS 1, raw bytes of chunk i
    models/<name>/<version>/delta/<base>/index               retained, signed delta index (updates/delta.py)
    models/<name>/<version>/delta/<base>/chunks/<file>/<i>   retained QoS 1, chunk i of a delta
    trust/root/<N>                            retained, root.json version N
    devices/<id>/state                        retained, published by the device
    devices/<id>/events                       one JSON object per update step
    devices/<id>/online                       retained, true on connect, false as the last will
    devices/<id>/capture/request              retained, signed capture request (docs/monitoring.md)
    devices/<id>/capture/<req>/index          the device's answer: the files and their chunk hashes
    devices/<id>/capture/<req>/chunk/<f>/<i>  QoS 1, raw bytes of chunk i of file f of the answer

A signed desired state travels like a manifest: ``{"desired": TEXT, "signatures": [...]}``
where TEXT is the canonical JSON of the document and the signatures (role ``models``) cover
its UTF-8 bytes, so the device verifies the exact bytes it received. Pure code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from edge_runtime.bundle.manifest import NAME_RE
from edge_runtime.exceptions import UsageError
from edge_runtime.spec.topics import ID_RE, PREFIX_RE
from edge_runtime.trust.canonical import canonical_json

DESIRED_TYPE = "desired"
QOS = 1
# A desired state's seq is a 64-bit signed integer on the device and the operator alike: a
# larger one would be a floor no later state could ever pass (a frozen fleet).
MAX_SEQ = 2**63 - 1

# Event kinds published on devices/<id>/events, in the order an update goes through them.
EVENTS = (
    "notified",
    "downloading",
    "verified",
    "installed",
    "activated",
    "rejected",
    "failed",
    "rolled_back",
    "root_updated",
    "drift",
    "drift_cleared",
    "capture_sent",
    "capture_refused",
    "delta_fallback",  # a delta could not be used: the full artifact is fetched instead
    "deferred",  # a download waits for a budget, an unmetered link or the window
    "waiting_window",  # downloaded and installed: activation waits for the maintenance window
)
CAPTURE_TYPE = "capture-request"
REQUEST_ID_RE = re.compile(r"^[0-9a-f]{8,32}\Z")


def check_id(value: str, what: str) -> str:
    """A fleet or device id usable as one topic level; raises UsageError otherwise."""
    if not ID_RE.match(value):
        raise UsageError(f"{what} {value!r} must match {ID_RE.pattern} (no '/', '+' or '#')")
    return value


# What a received topic names: one small class per kind of topic, :data:`Topic` their union
# (what :meth:`Topics.parse` returns). ``kind`` is a label for logs and queues, never a switch:
# code tells topics apart with ``isinstance`` or ``match``.


@dataclass(frozen=True)
class DesiredTopic:
    """``desired``: the fleet's desired state."""

    kind: ClassVar[str] = "desired"


@dataclass(frozen=True)
class DeviceTopic:
    """``devices/<device>/<leaf>`` with ``leaf`` one of desired, state, events, online."""

    device: str
    leaf: str

    @property
    def kind(self) -> str:
        """``device_<leaf>``."""
        return "device_" + self.leaf


@dataclass(frozen=True)
class CaptureRequestTopic:
    """``devices/<device>/capture/request``."""

    device: str
    kind: ClassVar[str] = "capture_request"


@dataclass(frozen=True)
class CaptureIndexTopic:
    """``devices/<device>/capture/<request>/index``."""

    device: str
    request: str
    kind: ClassVar[str] = "capture_index"


@dataclass(frozen=True)
class CaptureChunkTopic:
    """``devices/<device>/capture/<request>/chunk/<file>/<index>``: ``file`` is a file's number."""

    device: str
    request: str
    file: int
    index: int
    kind: ClassVar[str] = "capture_chunk"


@dataclass(frozen=True)
class RootTopic:
    """``trust/root/<version>``."""

    version: int
    kind: ClassVar[str] = "root"


@dataclass(frozen=True)
class ManifestTopic:
    """``models/<name>/<version>/manifest``."""

    name: str
    version: int
    kind: ClassVar[str] = "manifest"


@dataclass(frozen=True)
class DeltaIndexTopic:
    """``models/<name>/<version>/delta/<base>/index``."""

    name: str
    version: int
    base: int
    kind: ClassVar[str] = "delta_index"


@dataclass(frozen=True)
class ChunkTopic:
    """A chunk of a release's artifact, or of its delta from ``base`` (0: the full artifact)."""

    name: str
    version: int
    file: str
    index: int
    base: int = 0
    kind: ClassVar[str] = "chunk"


Topic = (
    DesiredTopic | DeviceTopic | CaptureRequestTopic | CaptureIndexTopic | CaptureChunkTopic | RootTopic | ManifestTopic
    | DeltaIndexTopic | ChunkTopic
)
DEVICE_TOPICS = (DeviceTopic, CaptureRequestTopic, CaptureIndexTopic, CaptureChunkTopic)


def device_of(ref: Topic | None) -> str:
    """The device a topic is about; "" for fleet-wide topics."""
    return ref.device if isinstance(ref, DEVICE_TOPICS) else ""


@dataclass(frozen=True)
class Topics:
    """Topic names of one fleet."""

    prefix: str
    fleet: str

    def __post_init__(self) -> None:
        if not PREFIX_RE.match(self.prefix):
            raise UsageError(f"prefix {self.prefix!r} must be topic levels of [A-Za-z0-9_.:-] joined by '/'")
        check_id(self.fleet, "fleet")

    @property
    def base(self) -> str:
        """``<prefix>/<fleet>``."""
        return f"{self.prefix}/{self.fleet}"

    @property
    def desired(self) -> str:
        """The fleet's desired state."""
        return f"{self.base}/desired"

    def device_desired(self, device: str) -> str:
        """A device's desired-state override."""
        return f"{self.base}/devices/{device}/desired"

    def manifest(self, name: str, version: int) -> str:
        """A release's manifest message."""
        return f"{self.base}/models/{name}/{version}/manifest"

    def chunk(self, name: str, version: int, file: str, index: int) -> str:
        """Chunk ``index`` of artifact ``file``."""
        return f"{self.base}/models/{name}/{version}/chunks/{file}/{index}"

    def chunks_filter(self, name: str, version: int, file: str, base: int = 0) -> str:
        """Every chunk of an artifact (a fresh download subscribes to this); of its delta from ``base``."""
        if base:
            return f"{self.base}/models/{name}/{version}/delta/{base}/chunks/{file}/+"
        return f"{self.base}/models/{name}/{version}/chunks/{file}/+"

    def delta_index(self, name: str, version: int, base: int) -> str:
        """The signed delta index of a release from version ``base``."""
        return f"{self.base}/models/{name}/{version}/delta/{base}/index"

    def delta_chunk(self, name: str, version: int, base: int, file: str, index: int) -> str:
        """Chunk ``index`` of the delta of artifact ``file`` from version ``base``."""
        return f"{self.base}/models/{name}/{version}/delta/{base}/chunks/{file}/{index}"

    @property
    def manifests_filter(self) -> str:
        """Every release's manifest."""
        return f"{self.base}/models/+/+/manifest"

    def root(self, version: int) -> str:
        """Trust root version ``version``."""
        return f"{self.base}/trust/root/{version}"

    @property
    def roots_filter(self) -> str:
        """Every trust root version."""
        return f"{self.base}/trust/root/+"

    def state(self, device: str) -> str:
        """A device's retained state."""
        return f"{self.base}/devices/{device}/state"

    def events(self, device: str) -> str:
        """A device's event stream."""
        return f"{self.base}/devices/{device}/events"

    def online(self, device: str) -> str:
        """A device's retained online flag."""
        return f"{self.base}/devices/{device}/online"

    def capture_request(self, device: str) -> str:
        """The operator's signed capture request to one device (retained)."""
        return f"{self.base}/devices/{device}/capture/request"

    def capture_index(self, device: str, request: str) -> str:
        """The device's answer to a capture request: files and chunk hashes."""
        return f"{self.base}/devices/{device}/capture/{request}/index"

    def capture_chunk(self, device: str, request: str, file: int, index: int) -> str:
        """Chunk ``index`` of file number ``file`` of a capture answer."""
        return f"{self.base}/devices/{device}/capture/{request}/chunk/{file}/{index}"

    def capture_filter(self, device: str, request: str) -> str:
        """Everything a device sends for one capture request."""
        return f"{self.base}/devices/{device}/capture/{request}/#"

    def devices_filter(self, leaf: str) -> str:
        """``devices/+/<leaf>``: one leaf of every device."""
        return f"{self.base}/devices/+/{leaf}"

    def parse(self, topic: str) -> Topic | None:
        """Classify a topic of this fleet; None for anything else (including malformed levels)."""
        head = self.base + "/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head) :].split("/")
        try:
            if parts == ["desired"]:
                return DesiredTopic()
            if len(parts) == 3 and parts[0] == "devices" and ID_RE.match(parts[1]):
                if parts[2] in ("desired", "state", "events", "online"):
                    return DeviceTopic(parts[1], parts[2])
            if len(parts) >= 4 and parts[0] == "devices" and ID_RE.match(parts[1]) and parts[2] == "capture":
                if parts[3:] == ["request"]:
                    return CaptureRequestTopic(parts[1])
                if REQUEST_ID_RE.match(parts[3]):
                    if parts[4:] == ["index"]:
                        return CaptureIndexTopic(parts[1], parts[3])
                    if len(parts) == 7 and parts[4] == "chunk" and _is_number(parts[5]) and _is_number(parts[6]):
                        return CaptureChunkTopic(parts[1], parts[3], int(parts[5]), int(parts[6]))
            if len(parts) == 3 and parts[:2] == ["trust", "root"] and _is_number(parts[2]):
                return RootTopic(int(parts[2]))
            if len(parts) >= 4 and parts[0] == "models" and NAME_RE.fullmatch(parts[1]) and _is_number(parts[2]):
                name, version = parts[1], int(parts[2])
                if parts[3:] == ["manifest"]:
                    return ManifestTopic(name, version)
                if len(parts) == 6 and parts[3] == "chunks" and _is_number(parts[5]):
                    return ChunkTopic(name, version, parts[4], int(parts[5]))
                if len(parts) >= 6 and parts[3] == "delta" and _is_number(parts[4]) and int(parts[4]) > 0:
                    base = int(parts[4])
                    if parts[5:] == ["index"]:
                        return DeltaIndexTopic(name, version, base)
                    if len(parts) == 8 and parts[5] == "chunks" and _is_number(parts[7]):
                        return ChunkTopic(name, version, parts[6], int(parts[7]), base)
        except ValueError:
            return None
        return None


def _is_number(text: str) -> bool:
    # Canonical decimal only: "07" and "+7" would let one chunk have two topics.
    # isdigit() alone accepts "²", which int() refuses: ASCII first, length before int().
    return text.isascii() and text.isdigit() and len(text) <= 12 and text == str(int(text))


def rollout_salt(name: str, version: int) -> str:
    """The rollout salt of a release: stable, so raising the percentage keeps existing members."""
    return f"{name}-{version}"


def desired_document(
    fleet: str,
    seq: int,
    models: dict[str, dict[str, Any]],
    device: str | None = None,
    expires: str | None = None,
) -> dict[str, Any]:
    """The signed part of a desired state (see docs/updates.md for every field)."""
    doc: dict[str, Any] = {"_type": DESIRED_TYPE, "fleet": fleet, "seq": seq, "models": models}
    if device is not None:
        doc["device"] = device
    if expires is not None:
        doc["expires"] = expires
    return doc


def signed_message(field: str, payload: bytes, signatures: list[dict[str, str]]) -> bytes:
    """``{field: TEXT, "signatures": [...]}`` as canonical JSON bytes."""
    return canonical_json({field: payload.decode("utf-8"), "signatures": signatures})


def manifest_message(manifest_bytes: bytes, signatures: list[dict[str, str]]) -> bytes:
    """The retained message on ``models/<name>/<version>/manifest``."""
    return signed_message("manifest", manifest_bytes, signatures)


__all__ = [
    "CAPTURE_TYPE",
    "DESIRED_TYPE",
    "EVENTS",
    "MAX_SEQ",
    "DEVICE_TOPICS",
    "QOS",
    "CaptureChunkTopic",
    "CaptureIndexTopic",
    "CaptureRequestTopic",
    "ChunkTopic",
    "DeltaIndexTopic",
    "DesiredTopic",
    "DeviceTopic",
    "ManifestTopic",
    "RootTopic",
    "Topic",
    "Topics",
    "check_id",
    "device_of",
    "desired_document",
    "manifest_message",
    "rollout_salt",
    "signed_message",
]
