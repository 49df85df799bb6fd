"""What the capture pull takes from a device, checked without a broker: names, index, records."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime.exceptions import BadDataError
from edge_runtime.fleet.capture_files import decode_record, write_training_files
from edge_runtime.fleet.capture_index import CaptureIndexError, PullLimits, parse_index
from edge_runtime.fleet.names import MAX_COMPONENT_CHARS, UnsafeNameError, contained_path, safe_component
from edge_runtime.monitoring.capture import capture_record
from edge_runtime.updates.capture import CHUNK_SIZE


@pytest.mark.parametrize("name", [
    "..", ".", ".hidden", "", "a/b", "/etc", "a\\b", "a\x00b", "a\nb", "a\x1bb", "a\x7fb", "a\x9bb",
    "a\u202eb", "a\u200bb", "a\u2028b",
    "x" * (MAX_COMPONENT_CHARS + 1), 7, None,
])
def test_safe_component_refuses_what_is_not_one_plain_name(name: Any) -> None:
    with pytest.raises(UnsafeNameError):
        safe_component(name)


@pytest.mark.parametrize("name", ["fraud", "v1", "seg-000000000000.jsonl", "a..b", "Model_2.v", "é"])
def test_safe_component_keeps_plain_names(name: str) -> None:
    assert safe_component(name) == name


def test_contained_path_refuses_a_symlink_that_leads_out(tmp_path: Path) -> None:
    base = tmp_path / "out"
    base.mkdir()
    os.symlink(tmp_path, base / "link")
    with pytest.raises(UnsafeNameError, match="outside"):
        contained_path(base, "link", "x")
    assert contained_path(base, "dev", "fraud") == base.resolve() / "dev" / "fraud"


def _entry(name: str, data: bytes) -> dict[str, Any]:
    chunks = [hashlib.sha256(data[i:i + CHUNK_SIZE]).hexdigest() for i in range(0, len(data), CHUNK_SIZE)]
    return {"name": name, "length": len(data), "sha256": hashlib.sha256(data).hexdigest(), "chunk_size": CHUNK_SIZE,
            "chunk_sha256": chunks}


def _index(files: list[Any], **extra: Any) -> bytes:
    return json.dumps({"request": "0123abcd", "files": files, "missing": [], **extra}).encode()


def test_bad_entries_are_skipped_and_named_the_rest_accepted() -> None:
    good = _entry("fraud/seg-000000000000.jsonl", b"x" * (CHUNK_SIZE + 5))
    bad = [
        {**_entry("fraud/seg-000000000001.jsonl", b"abc"), "length": -1},
        {**_entry("fraud/seg-000000000002.jsonl", b"abc"), "length": "3"},
        {**_entry("fraud/seg-000000000003.jsonl", b"abc"), "length": True},
        {**_entry("fraud/seg-000000000004.jsonl", b"abc"), "chunk_sha256": []},
        {**_entry("fraud/seg-000000000005.jsonl", b"abc"), "sha256": "../x"},
        {**_entry("fraud/seg-000000000006.jsonl", b"abc"), "chunk_size": 1},
        _entry("../../seg-000000000007.jsonl", b"abc"),
        _entry("/abs/seg-000000000008.jsonl", b"abc"),
        _entry("fraud/seg-000000000000.jsonl", b"x" * (CHUNK_SIZE + 5)),  # twice
        "not an entry",
    ]
    parsed = parse_index(_index([good, *bad]), PullLimits())
    assert [f.name for f in parsed.files] == ["fraud/seg-000000000000.jsonl"]
    assert parsed.files[0].number == 0 and parsed.files[0].chunk_length(1) == 5
    assert len(parsed.skipped) == len(bad)
    assert "-1" in str(parsed.skipped[0]) and "'../../seg-000000000007.jsonl'" in str(parsed.skipped[6])


def test_entries_past_the_request_limits_and_the_budget_are_skipped() -> None:
    files = [_entry(f"fraud/seg-{i:012d}.jsonl", b"y" * 100) for i in range(5)]
    parsed = parse_index(_index(files), PullLimits(max_files=3, max_bytes=10_000))
    assert len(parsed.files) == 3 and all("--max-files 3" in s.reason for s in parsed.skipped)
    parsed = parse_index(_index(files), PullLimits(max_bytes=10_000), budget_bytes=250)
    assert len(parsed.files) == 2 and all("budget of 250" in s.reason for s in parsed.skipped)
    claim = {**_entry("fraud/seg-000000000009.jsonl", b""), "length": 2**31, "chunk_sha256": ["0" * 64] * 65536}
    with pytest.raises(CaptureIndexError, match="expected at most"):  # its hashes alone pass the bound
        parse_index(_index([claim]), PullLimits())


def test_an_index_that_is_not_an_object_with_files_is_refused_whole() -> None:
    for payload in (b"not json", b"[]", b'{"files": {}}', b"[" * 100_000):
        with pytest.raises(CaptureIndexError):
            parse_index(payload, PullLimits())


def test_missing_names_and_truncation_are_checked() -> None:
    parsed = parse_index(_index([], missing=["fraud/seg-000000000001.jsonl", "../x", 7], truncated=12), PullLimits())
    assert parsed.missing == ["fraud/seg-000000000001.jsonl"] and parsed.truncated == 12


def _rec(**changes: Any) -> dict[str, Any]:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    rec = capture_record("fraud", 3, "sample", "2026-12-01T00:00:00+00:00", ["input_0"], [x], ["output_0"], [x[:, :1]])
    rec.update(changes)
    return rec


@pytest.mark.parametrize("changes, message", [
    ({"model": "../../x"}, "model"),
    ({"model": "/tmp/x"}, "model"),
    ({"model": "other"}, "segment of model"),
    ({"version": "x"}, "version"),
    ({"version": -1}, "version"),
    ({"version": 10**400}, "version"),
    ({"inputs": {"../x": {"dtype": "<f4", "shape": [1], "b64": "AAAAAA=="}}}, "tensor name"),
    ({"inputs": {"input_0": {"dtype": "<f4", "shape": [-1], "b64": "AAAAAA=="}}}, "shape"),
    ({"inputs": {"input_0": {"dtype": "<f4", "shape": [3], "b64": "AAAAAA=="}}}, "input_0"),
    ({"inputs": {"input_0": {"dtype": "|O", "shape": [1], "b64": "AAAAAAAAAAA="}}}, "input_0"),
    ({"inputs": {"input_0": {"dtype": "nope", "shape": [1], "b64": ""}}}, "input_0"),
    ({"inputs": [1]}, "inputs"),
    ({"shadow": {"version": "x"}}, "shadow"),
])
def test_a_bad_record_is_refused_with_what_is_wrong(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(BadDataError, match=message):
        decode_record(_rec(**changes), "fraud")


def test_good_records_become_training_files_under_base(tmp_path: Path) -> None:
    recs = [decode_record(_rec(), "fraud"), decode_record(_rec(time="2026-12-01T00:00:01+00:00"), "fraud")]
    written = write_training_files(tmp_path, [r for r in recs if r is not None])
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "fraud/v3/inputs.npz", "fraud/v3/outputs.npz", "fraud/v3/records.jsonl"]
    assert np.load(tmp_path / "fraud" / "v3" / "inputs.npz")["input_0"].shape == (4, 4)
