"""What the attack tests of this folder share (test_*_attacks.py): messages retained on the
broker as anyone allowed to publish could put them there, the CLI in a subprocess, desired
states built by hand (numbers Python would refuse to serialise) or signed, and the daemon's
serving and peak memory."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.fleet.session import BrokerOptions, FleetSession
from edge_runtime.trust.canonical import canonical_json
from edge_runtime.trust.keys import sign
from edge_runtime.updates.protocol import Topics, desired_document, signed_message
from reliability.conftest import EDGE, FLEET, Daemon, DeviceDir, Mosquitto, infer_rows

TOPICS = Topics("edge", FLEET)
HUGE = 10**4300 - 2  # one digit short of Python's int-from-text limit: 4300 digits


def retain(broker: Mosquitto, messages: dict[str, bytes]) -> None:
    """Put retained messages on the broker, as anyone allowed to publish could."""
    with FleetSession(BrokerOptions(url=broker.url), TOPICS, timeout_s=20) as session:
        for topic, payload in messages.items():
            session.publish(topic, payload).wait(20)


def retained(broker: Mosquitto, topic: str) -> bytes | None:
    """The message retained on ``topic`` (None: nothing retained)."""
    with FleetSession(BrokerOptions(url=broker.url), TOPICS, timeout_s=20) as session:
        return session.snapshot([topic]).get(topic)


def cli(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``edge-runtime ARGS`` in a subprocess, its output captured."""
    return subprocess.run([str(EDGE), *map(str, args)], capture_output=True, text=True, timeout=timeout, check=False, env=env)


def unsigned_desired(seq: Any, models: dict[str, Any]) -> bytes:
    """A desired state with the right shape and no valid signature (text built by hand so
    that numbers Python would refuse to serialise can be sent)."""
    inner = f'{{"_type":"desired","fleet":"{FLEET}","models":{json.dumps(models)},"seq":{seq}}}'
    return json.dumps({"desired": inner, "signatures": []}).encode()


def signed_desired(keys: Any, seq: int, models: dict[str, Any]) -> bytes:
    """A desired state signed with the fleet's release key."""
    payload = canonical_json(desired_document(FLEET, seq, models))
    return signed_message("desired", payload, [sign(keys.key, payload)])


def serving(dev: DeviceDir, port: int, x: np.ndarray) -> int:
    """The version answering an infer request (the device must still answer)."""
    status, version, _ = infer_rows(port, x[:1])
    assert status == 200, f"{dev.device_id} stopped serving"
    return version


MIB = 1024 * 1024


def peak_rss(daemon: Daemon) -> int:
    """The daemon's peak resident set size so far (VmHWM)."""
    for line in Path(f"/proc/{daemon.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")
