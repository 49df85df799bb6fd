"""``fleet capture pull`` against a lying device: real mosquitto, the real CLI in a subprocess.

The "device" is only an MQTT client on the device's topics: it answers each signed capture
request with a hostile index and chunks. One attack per test; each checks that nothing lands
outside ``--out``, that the operator's memory and disk do not follow the device's claims, and
that a bad entry or record is skipped and named while the rest is pulled (exit code 1, no
traceback).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import pytest

from edge_runtime.monitoring.capture import capture_record, record_line
from edge_runtime.updates.capture import CHUNK_SIZE
from fleet.conftest import FLEET, TOPICS, FleetKeys, Mosquitto

pytestmark = pytest.mark.integration

GIB = 1024**3
# Runs the CLI; at exit (also after SystemExit) writes /proc/self/status, whose VmHWM is the peak.
HWM_WRAPPER = (
    "import atexit, shutil, sys\n"
    "out = sys.argv[1]\n"
    "atexit.register(lambda: shutil.copyfile('/proc/self/status', out))\n"
    "from edge_runtime.cli import main\n"
    "sys.exit(main(sys.argv[2:]))\n"
)
RSS_BOUND_KB = 300 * 1024  # generous: the CLI's own imports are ~100 MB
ZERO_CHUNK_SHA = hashlib.sha256(bytes(CHUNK_SIZE)).hexdigest()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One broker for every attack of this module (each uses its own device id)."""
    b = Mosquitto(tmp_path_factory.mktemp("capture-broker")).start()
    yield b
    b.stop()


def _record(model: str = "fraud", version: Any = 1, rows: int = 2, seed: int = 0) -> dict[str, Any]:
    x = np.random.default_rng(seed).normal(size=(rows, 4)).astype(np.float32)
    return capture_record(model, version, "sample", f"2026-12-01T00:00:{seed:02d}+00:00", ["input_0"], [x],
                          ["output_0"], [x[:, :1]])


def _segment(*records: dict[str, Any]) -> bytes:
    return b"".join(record_line(r) for r in records)


def _entry(name: str, data: bytes) -> dict[str, Any]:
    chunks = [hashlib.sha256(data[i:i + CHUNK_SIZE]).hexdigest() for i in range(0, len(data), CHUNK_SIZE)]
    return {"name": name, "length": len(data), "sha256": hashlib.sha256(data).hexdigest(), "chunk_size": CHUNK_SIZE,
            "chunk_sha256": chunks}


@dataclass
class Answer:
    """What the lying device sends for each request: the index, then the chunks of ``data``
    (file number -> bytes; a file it has no bytes for gets none)."""

    files: list[Any]
    data: dict[int, bytes]


class LyingDevice:
    """An MQTT client that answers ``device``'s capture requests with ``answer``."""

    def __init__(self, broker: Mosquitto, device: str, answer: Answer) -> None:
        self.device = device
        self.answer = answer
        self.requests = 0
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"liar-{device}")
        self.client.on_message = self._on_request
        self.client.on_connect = lambda c, *_: c.subscribe(TOPICS.capture_request(device), qos=1)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def _on_request(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        if not msg.payload:
            return
        doc = json.loads(json.loads(msg.payload)["capture"])
        self.requests += 1
        req = doc["request"]
        index = {"request": req, "attempt": doc.get("attempt", 0), "device": self.device, "files": self.answer.files,
                 "missing": []}
        client.publish(TOPICS.capture_index(self.device, req), json.dumps(index).encode(), qos=1)
        for number, data in self.answer.data.items():
            for i in range(0, max(1, -(-len(data) // CHUNK_SIZE))):
                client.publish(TOPICS.capture_chunk(self.device, req, number, i), data[i * CHUNK_SIZE:(i + 1) * CHUNK_SIZE],
                               qos=1)

    def close(self) -> None:
        """Disconnect."""
        self.client.loop_stop()
        self.client.disconnect()


@dataclass
class Pulled:
    """A finished ``fleet capture pull``."""

    code: int
    out: str
    err: str
    max_rss_kb: int


def _pull(broker: Mosquitto, keys: FleetKeys, device: str, out: Path, *extra: str, timeout_s: float = 120,
          run: int = 0) -> Pulled:
    """Run the CLI and measure its peak RSS: VmHWM of its own address space, written at exit.
    (Not wait4's ru_maxrss: Linux carries the forking parent's RSS into it across exec, so a
    child of a big pytest process reports the parent's size.)"""
    hwm = out.parent / f"{device}-{run}.hwm"
    args = [sys.executable, "-c", HWM_WRAPPER, str(hwm), "fleet", "capture", "pull", "--fleet", FLEET, "--broker", broker.url, "--device", device,
            "--out", str(out), "--sign-key", str(keys.path("signing.key")), "--wait", "30", "--stall", "60", *extra]
    so, se = out.parent / f"{device}-{run}.stdout", out.parent / f"{device}-{run}.stderr"
    with open(so, "wb") as fo, open(se, "wb") as fe:
        proc = subprocess.Popen(args, stdout=fo, stderr=fe)
        killer = threading.Timer(timeout_s, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
    del usage
    peak = re.search(r"^VmHWM:\s+(\d+) kB", hwm.read_text(), re.M) if hwm.exists() else None
    assert peak is not None, se.read_text()
    return Pulled(proc.returncode, so.read_text(), se.read_text(), int(peak.group(1)))


def _files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink())


@pytest.fixture
def attack(broker: Mosquitto, fleet_keys: FleetKeys, tmp_path: Path, request: pytest.FixtureRequest
           ) -> Iterator[Callable[..., tuple[Pulled, Path]]]:
    """``attack(answer)``: a lying device answering with ``answer``, and the pull into ``<tmp>/a/b/out``;
    ``attack(answer, *options, run=1)`` pulls again into the same ``--out`` (a resumed pull)."""
    liars: list[LyingDevice] = []
    device = "liar-" + hashlib.sha256(request.node.name.encode()).hexdigest()[:10]

    def run(answer: Answer, *extra: str, run: int = 0) -> tuple[Pulled, Path]:
        if not liars:
            liars.append(LyingDevice(broker, device, answer))
        out = tmp_path / "a" / "b" / "out"
        out.parent.mkdir(parents=True, exist_ok=True)
        return _pull(broker, fleet_keys, device, out, *extra, run=run), out

    yield run
    for liar in liars:
        liar.close()


def _assert_nothing_outside(tmp_path: Path, out: Path) -> None:
    outside = [p for p in _files_under(tmp_path) if out not in p.parents and p.parent != out.parent]
    assert outside == [], outside


@pytest.mark.parametrize("hostile", ["../../x", "ABSOLUTE"])
def test_a_record_naming_a_path_writes_nothing_outside_out(
        attack: Callable[..., tuple[Pulled, Path]], tmp_path: Path, hostile: str) -> None:
    model = str(tmp_path / "elsewhere") if hostile == "ABSOLUTE" else hostile
    seg = _segment(_record(seed=1), _record(model=model, seed=2), _record(seed=3))
    pulled, out = attack(Answer([_entry("fraud/seg-000000000000.jsonl", seg)], {0: seg}))
    _assert_nothing_outside(tmp_path, out)
    assert pulled.code == 1, pulled.err
    assert "Traceback" not in pulled.err
    assert "record 1" in pulled.err and "model" in pulled.err, pulled.err
    dev = next(p for p in out.iterdir() if not p.name.startswith("."))
    got = np.load(dev / "fraud" / "v1" / "inputs.npz")["input_0"]
    assert got.shape == (4, 4)  # the two good records


def test_a_2gib_claim_takes_neither_memory_nor_disk(
        attack: Callable[..., tuple[Pulled, Path]], tmp_path: Path) -> None:
    # Every chunk hash is that of zeros: a file preallocated by the claim "has" them all at once.
    n = 2 * GIB // CHUNK_SIZE
    huge = {"name": "fraud/seg-000000000001.jsonl", "length": 2 * GIB, "sha256": "0" * 64,
            "chunk_size": CHUNK_SIZE, "chunk_sha256": [ZERO_CHUNK_SHA] * n}
    first, _ = attack(Answer([huge], {}), "--wait", "5")
    pulled, out = attack(Answer([huge], {}), "--wait", "5", run=1)  # a resumed pull re-hashes what it holds
    print(f"peak RSS of the pull: {max(first.max_rss_kb, pulled.max_rss_kb) // 1024} MB")
    assert max(first.max_rss_kb, pulled.max_rss_kb) < RSS_BOUND_KB
    assert max((p.stat().st_size for p in _files_under(tmp_path)), default=0) < 16 * 1024 * 1024
    assert sum(p.stat().st_blocks * 512 for p in _files_under(tmp_path)) < 16 * 1024 * 1024
    # 65,536 chunk hashes: more than any index for the request's limits, refused before parsing.
    assert pulled.code == 1 and "Traceback" not in pulled.err
    assert "capture index" in pulled.err and "expected at most" in pulled.err, pulled.err
    _assert_nothing_outside(tmp_path, out)


def test_an_index_of_50000_files_leaves_a_bounded_number_of_files(
        attack: Callable[..., tuple[Pulled, Path]], tmp_path: Path) -> None:
    one = b"\x00"
    entries = [_entry(f"fraud/seg-{i:012d}.jsonl", one) for i in range(50_000)]
    pulled, out = attack(Answer(entries, {}))
    assert pulled.code == 1 and "Traceback" not in pulled.err
    assert "capture index" in pulled.err and "expected at most" in pulled.err, pulled.err
    assert len(_files_under(tmp_path)) < 10
    _assert_nothing_outside(tmp_path, out)


def test_a_negative_length_a_2gib_entry_and_a_version_x_are_skipped_and_named_the_rest_pulled(
        attack: Callable[..., tuple[Pulled, Path]], tmp_path: Path) -> None:
    good = _segment(_record(seed=5), _record(version="x", seed=6), _record(seed=7))
    negative = {**_entry("fraud/seg-000000000007.jsonl", b"abc"), "length": -1}
    huge = {**_entry("fraud/seg-000000000008.jsonl", b"abc"), "length": 2 * GIB}
    pulled, out = attack(Answer([negative, huge, _entry("fraud/seg-000000000000.jsonl", good)], {2: good}))
    assert pulled.code == 1 and "Traceback" not in pulled.err, pulled.err
    assert "seg-000000000007.jsonl" in pulled.err and "-1" in pulled.err, pulled.err
    assert "seg-000000000008.jsonl" in pulled.err and "2147483648" in pulled.err, pulled.err
    assert "record 1" in pulled.err and "'x'" in pulled.err, pulled.err
    assert "pulled 2 record(s) in 1 file(s)" in pulled.out, pulled.out
    dev = next(p for p in out.iterdir() if not p.name.startswith("."))
    assert np.load(dev / "fraud" / "v1" / "inputs.npz")["input_0"].shape == (4, 4)
    _assert_nothing_outside(tmp_path, out)
