"""Capture requests as the device checks them: pure, no broker."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edge_runtime.exceptions import BadDataError
from edge_runtime.fleet.capture import capture_request_message
from edge_runtime.trust.canonical import canonical_json
from edge_runtime.trust.keys import sign
from edge_runtime.updates.capture import parse_capture_request
from edge_runtime.updates.protocol import Topics, signed_message
from updates.conftest import FLEET, FleetKeys

TOPICS = Topics("edge", FLEET)


def _parse(message: bytes, keys: FleetKeys, device: str = "pi-1") -> Any:
    return parse_capture_request(message, keys.root, fleet=FLEET, device=device)


def test_a_signed_request_parses_with_its_fields(fleet_keys: FleetKeys) -> None:
    msg = capture_request_message(TOPICS, "pi-1", "0123abcd0123abcd", [fleet_keys.models_key], attempt=3,
                                  model="fraud", since="2026-12-01T00:00:00Z", need={"fraud/seg-000000000000.jsonl": [2, 0]})
    req = _parse(msg, fleet_keys)
    assert (req.request, req.attempt, req.model) == ("0123abcd0123abcd", 3, "fraud")
    assert req.since.isoformat() == "2026-12-01T00:00:00+00:00"
    assert req.need == {"fraud/seg-000000000000.jsonl": (0, 2)}


def _resigned(fleet_keys: FleetKeys, **changes: Any) -> bytes:
    msg = capture_request_message(TOPICS, "pi-1", "0123abcd0123abcd", [fleet_keys.models_key])
    doc = json.loads(json.loads(msg)["capture"])
    doc.update(changes)
    payload = canonical_json({k: v for k, v in doc.items() if v is not None})
    return signed_message("capture", payload, [sign(fleet_keys.models_key, payload)])


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"device": "pi-2"}, "signed for"),
        ({"fleet": "other"}, "signed for"),
        ({"request": "../../x"}, "'request'"),
        ({"need": {"../../etc/passwd": [0]}, }, "'need' entry"),
        ({"need": {"fraud/seg-000000000000.jsonl": [-1]}}, "'need' entry"),
        ({"model": "a/b"}, "'model'"),
        ({"since": "yesterday"}, "'since'"),
        ({"expires": None}, "'expires'"),
        ({"extra": 1}, "unknown fields"),
        ({"_type": "desired"}, "_type"),
    ],
)
def test_a_malformed_request_is_refused(fleet_keys: FleetKeys, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(BadDataError, match=message):
        _parse(_resigned(fleet_keys, **changes), fleet_keys)


def test_a_request_not_signed_by_the_models_role_is_refused(fleet_keys: FleetKeys) -> None:
    for key in (fleet_keys.stranger, fleet_keys.root_key):
        msg = capture_request_message(TOPICS, "pi-1", "0123abcd0123abcd", [key])
        with pytest.raises(BadDataError):
            _parse(msg, fleet_keys)
    with pytest.raises(BadDataError):
        _parse(b'{"capture": "{}", "signatures": []}', fleet_keys)
