"""Capture requests answered once: the nonce book, and the device's responder with a fake transport."""

from __future__ import annotations

import datetime as _dt
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.exceptions import BadDataError
from edge_runtime.fleet.capture import capture_request_message
from edge_runtime.fleet.capture_index import PullLimits
from edge_runtime.trust.canonical import canonical_json
from edge_runtime.trust.keys import sign
from edge_runtime.updates.capture import CaptureResponder, parse_capture_request
from edge_runtime.updates.nonces import NonceBook, load_book
from edge_runtime.updates.protocol import Topics, signed_message
from harness.wait import wait_until
from updates.conftest import FLEET, FleetKeys

TOPICS = Topics("edge", FLEET)
NOW = _dt.datetime(2026, 12, 4, 12, 0, tzinfo=_dt.UTC)
HOUR = _dt.timedelta(hours=1)


def test_a_nonce_is_admitted_once_and_forgotten_after_its_request_expires() -> None:
    book = NonceBook()
    assert book.admit("a" * 32, NOW + HOUR, NOW)
    assert not book.admit("a" * 32, NOW + HOUR, NOW)
    assert book.admit("b" * 32, NOW + 2 * HOUR, NOW + 1.5 * HOUR)  # "a" expired meanwhile: dropped
    assert list(book.seen) == ["b" * 32]


def test_a_full_book_drops_the_entry_expiring_soonest() -> None:
    book = NonceBook(capacity=3)
    for i, n in enumerate("abc"):
        assert book.admit(n * 32, NOW + (i + 1) * HOUR, None)
    assert book.admit("d" * 32, NOW + 9 * HOUR, None)
    assert sorted(book.seen) == ["b" * 32, "c" * 32, "d" * 32]


def test_a_saved_book_survives_and_a_damaged_one_starts_empty(tmp_path: Path) -> None:
    path = tmp_path / "nonces.json"
    book = NonceBook()
    book.admit("c" * 32, NOW + HOUR, NOW)
    path.write_bytes(book.to_bytes())
    assert not load_book(path).admit("c" * 32, NOW + HOUR, NOW)
    for junk in (b"not json", b"[]", json.dumps({"seen": {"../x": 1, "d" * 32: "x"}}).encode()):
        path.write_bytes(junk)
        assert load_book(path).seen == {}


class _Published:
    def wait(self, timeout: float) -> None:
        pass


class FakeLink:
    """The transport side of the responder: records what it publishes."""

    connected = True

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> _Published:
        with self.lock:
            self.published.append((topic, payload))
        return _Published()

    def indexes(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(p) for t, p in self.published if t.endswith("/index")]


def _responder(fleet_keys: FleetKeys, tmp_path: Path, link: FakeLink, events: list[Any]) -> CaptureResponder:
    cap = tmp_path / "capture" / "fraud"
    cap.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        (cap / f"seg-{i:012d}.jsonl").write_bytes(b"x" * 100)
    return CaptureResponder(TOPICS, "pi-1", lambda: fleet_keys.root, link, capture_dir=tmp_path / "capture",
                            max_kbps=1e6, on_done=lambda kind, fields: events.append((kind, fields)),
                            nonce_file=tmp_path / "state" / "capture-nonces.json")


def test_a_replayed_request_is_refused_with_an_event_also_after_a_restart(fleet_keys: FleetKeys, tmp_path: Path) -> None:
    link, events = FakeLink(), list[Any]()
    device = _responder(fleet_keys, tmp_path, link, events)
    msg = capture_request_message(TOPICS, "pi-1", "0123abcd0123abcd", [fleet_keys.models_key])
    device.on_request(msg)
    wait_until(lambda: ("capture_sent", {"request": "0123abcd0123abcd", "chunks": 3, "bytes": 300, "files": 3})
               in events, "the answer")
    device.on_request(msg)
    assert events[-1] == ("capture_refused", {"request": "0123abcd0123abcd", "reason": "replay"})
    device.stop()
    restarted = _responder(fleet_keys, tmp_path, link, events)
    restarted.on_request(msg)
    assert events[-1] == ("capture_refused", {"request": "0123abcd0123abcd", "reason": "replay"})
    assert len(link.indexes()) == 1
    # The operator's next request (a fresh nonce, same request id) is answered.
    restarted.on_request(capture_request_message(TOPICS, "pi-1", "0123abcd0123abcd", [fleet_keys.models_key]))
    wait_until(lambda: len(link.indexes()) == 2, "the second answer")
    restarted.stop()


def test_the_answer_keeps_to_the_request_limits(fleet_keys: FleetKeys, tmp_path: Path) -> None:
    link, events = FakeLink(), list[Any]()
    device = _responder(fleet_keys, tmp_path, link, events)
    device.on_request(capture_request_message(TOPICS, "pi-1", "0123abcd0123abcd", [fleet_keys.models_key],
                                              limits=PullLimits(max_files=2, max_bytes=10_000)))
    index = wait_until(lambda: link.indexes(), "the answer")[0]
    assert len(index["files"]) == 2 and index["truncated"] == 1
    device.stop()


@pytest.mark.parametrize("nonce", [None, "", "A" * 32, "a" * 31, 7])
def test_a_request_without_a_proper_nonce_is_refused(fleet_keys: FleetKeys, nonce: Any) -> None:
    msg = capture_request_message(TOPICS, "pi-1", "0123abcd0123abcd", [fleet_keys.models_key])
    doc = json.loads(json.loads(msg)["capture"])
    doc["nonce"] = nonce
    payload = canonical_json({k: v for k, v in doc.items() if v is not None})
    with pytest.raises(BadDataError, match="nonce"):
        parse_capture_request(signed_message("capture", payload, [sign(fleet_keys.models_key, payload)]),
                              fleet_keys.root, fleet=FLEET, device="pi-1")
