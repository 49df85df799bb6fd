"""The capture ring on a real file system: torn records after kill -9, bounded size, no corrupt segment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.monitoring.capture import (
    FLUSH_BYTES,
    OPEN_SUFFIX,
    CaptureRing,
    CaptureWriter,
    capture_record,
    decode_array,
    read_records,
    record_line,
)
from harness.wait import wait_until


def _record(i: int, rows: int = 4) -> dict[str, object]:
    x = np.full((rows, 30), i, dtype=np.float32)
    return capture_record("fraud", 1, "sample", f"2026-12-03T00:00:{i % 60:02d}.000Z", ["input_0"], [x],
                          ["output_0"], [x[:, :1] / 100])


def _all_sealed_segments_whole(ring_dir: Path) -> int:
    """Every sealed segment parses to its last byte; returns the number of records."""
    n = 0
    for p in sorted(ring_dir.glob("seg-*.jsonl")):
        data = p.read_bytes()
        records, good = read_records(data)
        assert good == len(data), f"{p.name}: only {good} of {len(data)} bytes are whole records"
        n += len(records)
    return n


def test_records_round_trip_with_their_arrays(tmp_path: Path) -> None:
    ring = CaptureRing(tmp_path / "fraud", 10 * 1024 * 1024)
    for i in range(5):
        assert ring.append(_record(i))
    ring.seal()
    (seg,) = ring.segments()
    records, _ = read_records(seg.path.read_bytes())
    assert [r["inputs"]["input_0"]["shape"] for r in records] == [[4, 30]] * 5
    np.testing.assert_array_equal(decode_array(records[3]["inputs"]["input_0"]), np.full((4, 30), 3, np.float32))


def test_a_torn_last_record_is_cut_off_and_the_segment_sealed(tmp_path: Path) -> None:
    d = tmp_path / "fraud"
    d.mkdir()
    whole = record_line(_record(1)) + record_line(_record(2))
    (d / f"seg-000000000000.jsonl{OPEN_SUFFIX}").write_bytes(whole + record_line(_record(3))[:-40])
    ring = CaptureRing(d, 10 * 1024 * 1024)
    assert not list(d.glob(f"*{OPEN_SUFFIX}"))
    assert [s.name for s in ring.segments()] == ["seg-000000000000.jsonl"]
    assert ring.segments()[0].path.read_bytes() == whole
    ring.append(_record(4))  # numbering goes on after the recovered records
    ring.seal()
    assert [s.first for s in ring.segments()] == [0, 2]


def test_a_corrupt_record_ends_what_is_kept(tmp_path: Path) -> None:
    d = tmp_path / "fraud"
    d.mkdir()
    good = record_line(_record(1))
    bad = bytearray(record_line(_record(2)))
    bad[20] ^= 0xFF  # fails its crc32
    (d / f"seg-000000000000.jsonl{OPEN_SUFFIX}").write_bytes(good + bytes(bad) + record_line(_record(3)))
    ring = CaptureRing(d, 10 * 1024 * 1024)
    assert ring.segments()[0].path.read_bytes() == good


def test_a_full_ring_drops_the_oldest_segments_and_counts_them(tmp_path: Path) -> None:
    line = len(record_line(_record(0)))
    ring = CaptureRing(tmp_path / "fraud", 40 * line, segment_bytes=4 * line)
    for i in range(200):
        assert ring.append(_record(i))
    ring.seal()
    st = ring.stats()
    assert st["bytes"] <= 40 * line and st["dropped_segments"] > 0
    kept = _all_sealed_segments_whole(tmp_path / "fraud")
    assert kept + st["dropped_records"] == 200
    newest = read_records(ring.segments()[-1].path.read_bytes())[0][-1]
    assert decode_array(newest["inputs"]["input_0"])[0, 0] == 199  # the newest survive
    again = CaptureRing(tmp_path / "fraud", 40 * line)  # the counters survive a restart
    assert again.stats()["dropped_records"] == st["dropped_records"]


def test_capture_stops_while_the_disk_is_nearly_full(tmp_path: Path) -> None:
    ring = CaptureRing(tmp_path / "fraud", 1024 * 1024, min_free_bytes=2**62)
    assert not ring.append(_record(0))
    assert ring.stats()["skipped_records"] == 1 and ring.segments() == []


def test_the_writer_writes_in_order_in_batches(tmp_path: Path) -> None:
    ring = CaptureRing(tmp_path / "fraud", 10 * 1024 * 1024)
    now = [0.0]
    writer = CaptureWriter(max_records=1000, clock=lambda: now[0])
    for i in range(50):  # within one batch period: nothing written yet
        assert writer.offer(ring, lambda i=i: _record(i))
    assert ring.stats()["written_records"] == 0
    now[0] += 1.0  # the next record finds the batch due: all 51 are written, in order
    assert writer.offer(ring, lambda: _record(50))
    assert ring.stats()["written_records"] == 51
    ring.seal()
    records = read_records(ring.segments()[0].path.read_bytes())[0]
    assert [int(decode_array(r["inputs"]["input_0"])[0, 0]) for r in records] == list(range(51))
    writer.stop()


def test_a_batch_that_fills_a_segment_seals_it_with_fsync_on_the_offering_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ring = CaptureRing(tmp_path / "fraud", 10 * 1024 * 1024, segment_bytes=1024)
    writer = CaptureWriter(max_records=1000, clock=lambda: 0.0)  # never due by time: only by bytes
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(threading.current_thread().name)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    for i in range(10):
        assert writer.offer(ring, record_line(_record(i)))
    assert ring.stats()["written_records"] == 0 and synced == []  # waiting: no write, no fsync
    assert writer.offer(ring, record_line(_record(10)), FLUSH_BYTES)  # the batch is due: written by this call
    assert ring.stats()["written_records"] == 11 and ring.segments()  # a full segment was sealed ...
    assert synced and set(synced) == {threading.current_thread().name}  # ... and fsynced here, not by a timer
    writer.stop()


WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from edge_runtime.monitoring.capture import CaptureRing, capture_record
    ring = CaptureRing(sys.argv[1], 64 * 1024 * 1024, segment_bytes=256 * 1024)
    i = 0
    while True:
        x = np.full((64, 30), i, dtype=np.float32)
        ring.append(capture_record("fraud", 1, "sample", "t", ["input_0"], [x], ["output_0"], [x[:, :1]]))
        i += 1
        if i == 40:
            print("written", flush=True)
""")


def test_kill_9_mid_write_leaves_no_corrupt_segment(tmp_path: Path) -> None:
    d = tmp_path / "fraud"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(d)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "written"
        wait_until(lambda: len(list(d.glob("seg-*.jsonl"))) >= 2, "two sealed segments")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    before = sorted(p.name for p in d.iterdir())
    ring = CaptureRing(d, 64 * 1024 * 1024)
    assert not list(d.glob(f"*{OPEN_SUFFIX}")), before
    n = _all_sealed_segments_whole(d)
    assert n >= 40
    numbers = []
    for seg in ring.segments():
        numbers += [int(decode_array(r["inputs"]["input_0"])[0, 0]) for r in read_records(seg.path.read_bytes())[0]]
    assert numbers == list(range(len(numbers)))  # every record up to the kill, in order, none twice


def test_the_waiting_records_are_bounded_in_bytes_whatever_the_request_size(tmp_path: Path) -> None:
    ring = CaptureRing(tmp_path / "fraud", 10 * 1024 * 1024)
    writer = CaptureWriter(max_records=1000, max_bytes=1000, clock=lambda: 0.0)
    assert writer.offer(ring, record_line(_record(0)), 600)
    assert not writer.offer(ring, record_line(_record(1)), 600)  # 1200 bytes would wait: refused, counted
    assert ring.stats()["skipped_records"] == 1
    writer.flush()
    assert ring.stats()["written_records"] == 1
    assert writer.offer(ring, record_line(_record(2)), 600)  # room again once written
    writer.stop()
    assert ring.stats()["written_records"] == 2  # stop writes what waits
