"""Hardening round 2 (issue 13): one test per attack, against the real component.

Each test drives the real thing: the ``edge-runtime`` CLI in a subprocess, the daemon
process over real HTTP and MQTT, a real mosquitto. It checks that the attack is refused or
bounded, says why, and that the device keeps serving. Peak RSS and times are recorded with
the ``figures`` fixture (printed at the end of the run; docs/security.md quotes them).
"""

from __future__ import annotations

import fcntl
import gzip
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime.fleet.session import BrokerOptions, FleetSession
from edge_runtime.trust.canonical import canonical_json
from edge_runtime.trust.keys import generate_private_key, private_key_pem, sign
from edge_runtime.trust.root import make_root, sign_root
from edge_runtime.updates.protocol import MAX_SEQ, Topics, desired_document, signed_message
from edge_runtime.updates.verify import verify_desired
from harness.http import request
from harness.wait import wait_until
from reliability.conftest import (
    EDGE,
    FLEET,
    Daemon,
    DeviceDir,
    Figures,
    Mosquitto,
    Observer,
    Releases,
    infer_rows,
    mosquitto_config,
    scale,
)

pytestmark = pytest.mark.integration
TOPICS = Topics("edge", FLEET)
HUGE = 10**4300 - 2  # one digit short of Python's int-from-text limit: 4300 digits


def _retain(broker: Mosquitto, messages: dict[str, bytes]) -> None:
    """Put retained messages on the broker, as anyone allowed to publish could."""
    with FleetSession(BrokerOptions(url=broker.url), TOPICS, timeout_s=20) as session:
        for topic, payload in messages.items():
            session.publish(topic, payload).wait(20)


def _retained(broker: Mosquitto, topic: str) -> bytes | None:
    with FleetSession(BrokerOptions(url=broker.url), TOPICS, timeout_s=20) as session:
        return session.snapshot([topic]).get(topic)


def _cli(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EDGE), *map(str, args)], capture_output=True, text=True, timeout=timeout, check=False, env=env)


def _unsigned_desired(seq: Any, models: dict[str, Any]) -> bytes:
    """A desired state with the right shape and no valid signature (text built by hand so
    that numbers Python would refuse to serialise can be sent)."""
    inner = f'{{"_type":"desired","fleet":"{FLEET}","models":{json.dumps(models)},"seq":{seq}}}'
    return json.dumps({"desired": inner, "signatures": []}).encode()


def _signed_desired(keys: Any, seq: int, models: dict[str, Any]) -> bytes:
    payload = canonical_json(desired_document(FLEET, seq, models))
    return signed_message("desired", payload, [sign(keys.key, payload)])


def _serving(dev: DeviceDir, port: int, x: np.ndarray) -> int:
    status, version, _ = infer_rows(port, x[:1])
    assert status == 200, f"{dev.device_id} stopped serving"
    return version


# -- 1. the operator signs only what it verified --------------------------------------------

JUNK_STATES = {
    "unsigned_extra_model_and_huge_seq": _unsigned_desired(5_000_000_000, {"aaa": {"version": 1}, "fraud": {"version": 1}}),
    "unsigned_4300_digit_seq": _unsigned_desired(HUGE, {"fraud": {"version": 1}}),
    "not_json": b"\xff garbage {",
    "json_but_not_a_desired_state": b'{"desired": 5, "signatures": 7}',
}


@pytest.mark.parametrize("with_root", [False, True], ids=["signing_keys_root", "fleet_root"])
@pytest.mark.parametrize("junk", sorted(JUNK_STATES))
def test_publish_over_a_forged_retained_desired_state_ignores_it(
    broker: Mosquitto, releases: Releases, keys: Any, junk: str, with_root: bool
) -> None:
    _retain(broker, {TOPICS.desired: JUNK_STATES[junk]})
    extra = ["--root", str(keys.root_path)] if with_root else []
    out = _cli("fleet", "publish", releases.bundle(2), "--fleet", FLEET, "--broker", broker.url,
               "--sign-key", keys.key_path, *extra)
    assert out.returncode == 0, out.stderr
    assert "ignoring the retained desired state" in out.stderr and "--seq" not in out.stderr
    assert len(out.stderr) < 2000, "the warning must not echo the forged message"
    desired = verify_desired(_retained(broker, TOPICS.desired) or b"", keys.root, fleet=FLEET, device=None)
    assert set(desired.models) == {"fraud"} and desired.models["fraud"].version == 2
    assert desired.seq < 10**12, "the forged seq must not be copied"


def test_publish_keeps_a_verified_retained_state_and_the_device_follows(
    make_device: Callable[..., DeviceDir], broker: Mosquitto, observer: Observer, releases: Releases, keys: Any,
    holdout_x: np.ndarray,
) -> None:
    other = {"other": {"version": 3, "rollout": {"percent": 0, "salt": "other-3"}}}  # no device takes it
    _retain(broker, {TOPICS.desired: _signed_desired(keys, 7_000_000_000, {"fraud": {"version": 1}, **other})})
    dev = make_device()
    dev.write_config(broker.url)
    daemon = dev.start()
    out = _cli("fleet", "publish", releases.bundle(2), "--fleet", FLEET, "--broker", broker.url,
               "--sign-key", keys.key_path, "--config", dev.base / "config.toml")
    assert out.returncode == 0 and "ignoring" not in out.stderr, out.stderr
    desired = verify_desired(_retained(broker, TOPICS.desired) or b"", keys.root, fleet=FLEET, device=None)
    assert desired.seq == 7_000_000_001 and desired.models["other"].version == 3
    wait_until(lambda: observer.of(dev.device_id, "activated"), "v2 activated")
    assert _serving(dev, daemon.port, holdout_x) == 2
    assert daemon.tracebacks() == []


def test_publish_refuses_a_seq_beyond_64_bits(broker: Mosquitto, releases: Releases, keys: Any) -> None:
    for seq in (str(MAX_SEQ + 1), "1" * 5000):
        out = _cli("fleet", "publish", releases.bundle(2), "--fleet", FLEET, "--broker", broker.url,
                   "--sign-key", keys.key_path, "--seq", seq)
        assert out.returncode == 2 and "64 bits" in out.stderr and len(out.stderr) < 500, out.stderr
    assert _retained(broker, TOPICS.desired) is None
    # A verified retained state at the limit leaves no larger seq: refused, with a reason.
    _retain(broker, {TOPICS.desired: _signed_desired(keys, MAX_SEQ, {"fraud": {"version": 1}})})
    out = _cli("fleet", "publish", releases.bundle(2), "--fleet", FLEET, "--broker", broker.url, "--sign-key", keys.key_path)
    assert out.returncode == 2 and "no larger 64-bit seq" in out.stderr, out.stderr


def test_device_rejects_a_signed_desired_seq_beyond_64_bits(
    make_device: Callable[..., DeviceDir], broker: Mosquitto, observer: Observer, keys: Any, holdout_x: np.ndarray
) -> None:
    dev, daemon = _serving_on_broker(make_device, broker, observer)
    _retain(broker, {TOPICS.desired: _signed_desired(keys, MAX_SEQ + 1, {"fraud": {"version": 1}})})
    event = wait_until(lambda: observer.of(dev.device_id, "rejected"), "a rejected event")[0]
    assert "seq" in event["reason"] and str(MAX_SEQ) in event["reason"]
    assert _serving(dev, daemon.port, holdout_x) == 1
    assert daemon.tracebacks() == []


# -- 4. a number Python refuses to read is a rejection, not a lost root ------------------------


def test_huge_number_next_to_a_valid_root_rotation_keeps_the_rotation(
    make_device: Callable[..., DeviceDir], broker: Mosquitto, observer: Observer, keys: Any, holdout_x: np.ndarray,
    tmp_path: Path,
) -> None:
    dev, daemon = _serving_on_broker(make_device, broker, observer)
    new_root_key = generate_private_key()
    (tmp_path / "new-root.key").write_bytes(private_key_pem(new_root_key))
    v2 = sign_root(make_root(2, [new_root_key], [keys.key]), [keys.key, new_root_key])
    garbage = b'{"signed": {"version": ' + b"9" * 5000 + b"}, \"signatures\": []}"
    # Garbage first (it waits for v2), then the valid v2, then a desired state and a manifest
    # with such a number: every one a `rejected` event, and the rotation applied.
    _retain(broker, {TOPICS.root(3): garbage})
    _retain(broker, {TOPICS.root(2): v2})
    wait_until(lambda: observer.of(dev.device_id, "root_updated"), "root v2 applied")
    wait_until(lambda: observer.state(dev.device_id).get("trust_root_version") == 2, "state naming root v2")
    _retain(broker, {TOPICS.desired: _unsigned_desired("9" * 5000, {})})
    wait_until(
        lambda: [e for e in observer.of(dev.device_id, "rejected") if "desired" in e["reason"]], "desired rejected"
    )
    assert any("trust root 3" in e["reason"] for e in observer.of(dev.device_id, "rejected"))
    assert _serving(dev, daemon.port, holdout_x) == 1
    assert daemon.tracebacks() == [], daemon.log()
    daemon.stop()
    assert (dev.store_path / ".updates" / "roots" / "root.2.json").read_bytes() == v2


# -- 2. one HTTP request cannot take the daemon's memory -----------------------------------------

MIB = 1024 * 1024


def _peak_rss(daemon: Daemon) -> int:
    """The daemon's peak resident set size so far (VmHWM)."""
    for line in Path(f"/proc/{daemon.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


def _zeros_body(values: int) -> bytes:
    rows = values // 30
    head = b'{"inputs":[{"name":"input_0","datatype":"FP32","shape":[%d,30],"data":[' % rows
    return head + b"0," * (rows * 30 - 1) + b"0]}]}"


@pytest.mark.parametrize("encoding", ["gzip", "identity"])
def test_gzip_bomb_of_json_zeros_is_refused_before_parsing(
    make_device: Callable[..., DeviceDir], holdout_x: np.ndarray, figures: Figures, encoding: str
) -> None:
    dev = make_device()
    dev.write_config()
    daemon = dev.start()
    _serving(dev, daemon.port, holdout_x)
    body = _zeros_body(30 * MIB)  # 60 MiB of JSON: 31 million zeros, under max_request_bytes (64 MiB)
    sent = gzip.compress(body, 9) if encoding == "gzip" else body
    peak_before = _peak_rss(daemon)
    t0 = time.monotonic()
    status, answer = request(daemon.port, "POST", "/v2/models/fraud/infer", sent, {"Content-Encoding": encoding})
    took = time.monotonic() - t0
    peak_after = _peak_rss(daemon)
    assert status == 413, answer[:300]
    assert b"max_json_values" in answer
    # The body itself (and its inflated copy) is all the request may cost: no parsed values.
    assert peak_after - peak_before < 1.5 * len(body), (peak_before, peak_after)
    assert _serving(dev, daemon.port, holdout_x) == 1
    assert daemon.tracebacks() == []
    figures.add(encoding=encoding, sent_bytes=len(sent), json_bytes=len(body), peak_rss_before_mb=peak_before // MIB,
                peak_rss_after_mb=peak_after // MIB, answer_s=round(took, 3))


def _serving_on_broker(make_device: Callable[..., DeviceDir], broker: Mosquitto,
                       observer: Observer) -> tuple[DeviceDir, Daemon]:
    """A device whose daemon runs against ``broker`` and has published its first state."""
    dev = make_device()
    dev.write_config(broker.url)
    daemon = dev.start()
    wait_until(lambda: observer.state(dev.device_id), "the daemon's first state")
    return dev, daemon


# -- 3. unsigned garbage over MQTT costs CPU, not memory ----------------------------------------


def test_unsigned_desired_flood_with_unique_huge_field_names_is_bounded(
    make_device: Callable[..., DeviceDir], broker: Mosquitto, observer: Observer, holdout_x: np.ndarray,
    figures: Figures,
) -> None:
    dev, daemon = _serving_on_broker(make_device, broker, observer)
    rss_before, peak_before = daemon.rss_bytes(), _peak_rss(daemon)
    count = scale(100, 300)
    t0 = time.monotonic()
    with FleetSession(BrokerOptions(url=broker.url), TOPICS, timeout_s=60) as session:
        for i in range(count):
            name = f"{i:06d}" + "k" * MIB  # a unique 1 MB field name the device would echo
            payload = json.dumps({"desired": "{}", "signatures": [], name: 1}).encode()
            session.publish(TOPICS.desired, payload).wait(60)
    last = f"{count - 1:06d}"
    wait_until(lambda: any(last in e["reason"] for e in observer.of(dev.device_id, "rejected")),
               "the last message's rejection")
    took = time.monotonic() - t0
    rss_after, peak_after = daemon.rss_bytes(), _peak_rss(daemon)
    rejected = observer.of(dev.device_id, "rejected")
    # Messages on one topic that arrive faster than they are verified are coalesced (newest
    # wins), so at most one event per message, and always one for the last.
    assert 1 <= len(rejected) <= count
    assert max(len(e["reason"]) for e in rejected) <= 400
    state = wait_until(lambda: (s := observer.state(dev.device_id)).get("last_error") and last in
                       s["last_error"]["reason"] and s, "last_error naming the last message")
    assert len(json.dumps(state)) < 4096
    assert (dev.store_path / ".updates" / "updater.json").stat().st_size < 4096
    assert rss_after - rss_before < 40 * MIB, (rss_before, rss_after)
    assert _serving(dev, daemon.port, holdout_x) == 1
    assert daemon.tracebacks() == []
    figures.add(messages=count, message_bytes=MIB, rss_before_mb=rss_before // MIB, rss_after_mb=rss_after // MIB,
                peak_before_mb=peak_before // MIB, peak_after_mb=peak_after // MIB, seconds=round(took, 1))


# -- 5. a store that cannot be written or read does not stop serving -----------------------------


def _mount(args: list[str], what: str) -> None:
    proc = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount {what} (needs root): {proc.stderr.strip()}")


def _umount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def _serves_and_reports(dev: DeviceDir, daemon: Daemon, x: np.ndarray, version: int, needle: str) -> None:
    assert _serving(dev, daemon.port, x) == version
    assert daemon.wait_line(needle, timeout=10) is not None, daemon.log()
    assert daemon.alive and daemon.tracebacks() == [], daemon.log()


def test_read_only_store_still_serves_the_verified_version(
    make_device: Callable[..., DeviceDir], broker: Mosquitto, observer: Observer, holdout_x: np.ndarray
) -> None:
    dev = make_device()
    dev.write_config(broker.url)
    _mount(["--bind", str(dev.store_path), str(dev.store_path)], "a bind mount")
    try:
        _mount(["-o", "remount,ro,bind", str(dev.store_path)], "a read-only bind mount")
        daemon = dev.start()
        _serves_and_reports(dev, daemon, holdout_x, 1, "cannot record serving v1 of fraud")
        # The fault is reported in the device's retained state, too.
        state = wait_until(lambda: (s := observer.state(dev.device_id)).get("store_fault") and s, "store_fault")
        assert "Read-only file system" in state["store_fault"], state
        assert daemon.stop() == 0
    finally:
        _umount(dev.store_path)


def test_full_disk_before_serving_is_recorded_still_serves(
    make_device: Callable[..., DeviceDir], tmp_path: Path, holdout_x: np.ndarray
) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    _mount(["-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], "a tmpfs")
    try:
        dev = make_device(store_path=mnt / "store")
        dev.write_config()
        fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:  # fill the file system to the last byte
            while os.write(fd, b"\0" * 512):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        daemon = dev.start()
        _serves_and_reports(dev, daemon, holdout_x, 1, "No space left on device")
        assert daemon.stop() == 0
    finally:
        _umount(mnt)


BAD_STATES = {
    "not_json": b"\x00\xffnot json",
    "highest_seen_1e400": b'{"active": 1, "highest_seen": 1e400}',
    "active_is_a_list": b'{"active": [1], "highest_seen": 1}',
    "failed_key_superscript": '{"active": 1, "failed": {"\u00b2": "x"}}'.encode(),
    "not_an_object": b"[1, 2]",
}


@pytest.mark.parametrize("kind", sorted(BAD_STATES))
def test_unreadable_state_file_serves_the_factory_bundle(
    make_device: Callable[..., DeviceDir], holdout_x: np.ndarray, kind: str
) -> None:
    dev = make_device()
    dev.write_config()
    state_file = dev.store_path / "fraud" / "state.json"
    state_file.write_bytes(BAD_STATES[kind])
    daemon = dev.start()
    _serves_and_reports(dev, daemon, holdout_x, 1, "only the factory bundle is served")
    status, body = request(daemon.port, "GET", "/v2/models/fraud")
    assert status == 200, body
    assert state_file.read_bytes() == BAD_STATES[kind], "the damaged file is left for the operator to see"
    assert daemon.stop() == 0


# -- 6. the broker password is never logged or taken from argv -----------------------------------

SECRET = "s3cret-Pa55"


@pytest.fixture
def password_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A mosquitto that needs user ``op``/``dev`` with password :data:`SECRET`."""
    b = Mosquitto(tmp_path / "pw-broker")
    b.dir.mkdir(parents=True, exist_ok=True)
    pw = b.dir / "passwd"
    for user in ("op", "dev"):
        flag = ["-c"] if user == "op" else []
        subprocess.run(["mosquitto_passwd", *flag, "-b", str(pw), user, SECRET], check=True, capture_output=True)
    pw.chmod(0o600)
    b.config = mosquitto_config(b.port, ["allow_anonymous false", f"password_file {pw}"])
    b.start()
    yield b
    b.stop()


def test_broker_password_in_the_device_url_is_never_logged(
    make_device: Callable[..., DeviceDir], password_broker: Mosquitto, holdout_x: np.ndarray
) -> None:
    dev = make_device()
    dev.write_config(f"mqtt://dev:{SECRET}@127.0.0.1:{password_broker.port}")
    daemon = dev.start()
    assert daemon.wait_line("connected to mqtt://dev:***@127.0.0.1", timeout=30) is not None, daemon.log()
    password_broker.stop()  # the disconnect and the failing reconnects are logged too
    assert daemon.wait_line("disconnected from mqtt://dev:***@", timeout=30) is not None, daemon.log()
    assert daemon.wait_line("broker unavailable", timeout=30) is not None, daemon.log()
    assert _serving(dev, daemon.port, holdout_x) == 1
    assert SECRET not in daemon.log()


def test_operator_password_comes_from_a_file_or_the_environment_never_argv(
    password_broker: Mosquitto, tmp_path: Path
) -> None:
    base = ["fleet", "status", "--fleet", FLEET, "--username", "op", "--timeout", "5"]
    url = f"mqtt://127.0.0.1:{password_broker.port}"
    for argv in (["--broker", url, "--password", SECRET], ["--broker", f"mqtt://op:{SECRET}@127.0.0.1:{password_broker.port}"]):
        out = _cli(*base, *argv)
        assert out.returncode == 2 and "--password-file" in out.stderr and SECRET not in out.stderr, out.stderr
    pw = tmp_path / "password"
    pw.write_text(SECRET + "\n")
    ok = _cli(*base, "--broker", url, "--password-file", pw)
    assert ok.returncode == 0, ok.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    ok = _cli(*base, "--broker", url, env={**env, "EDGE_MQTT_PASSWORD": SECRET})
    assert ok.returncode == 0, ok.stderr
    wrong = _cli(*base, "--broker", url, env={**env, "EDGE_MQTT_PASSWORD": "wrong"})
    assert wrong.returncode == 1 and "refused the connection" in wrong.stderr, wrong.stderr


# -- 7. odd version numbers in a path are 404, never 500 -----------------------------------------


def test_superscript_and_5000_digit_versions_in_the_path_are_404(
    make_device: Callable[..., DeviceDir], holdout_x: np.ndarray
) -> None:
    dev = make_device()
    dev.write_config()
    daemon = dev.start()
    odd = ["%C2%B2", "%D9%A3", "1" * 5000, "0" * 30 + "1"]
    for version in odd:
        for method, suffix in (("GET", ""), ("GET", "/ready"), ("GET", "/stats"), ("GET", "/config"), ("POST", "/infer")):
            status, body = request(daemon.port, method, f"/v2/models/fraud/versions/{version}{suffix}", b"{}")
            assert status in (400, 404), (version[:20], suffix, status, body[:200])
            assert len(body) < 1000
    status, body = request(daemon.port, "POST", "/v2/models/fraud/infer", b"{}", {"Content-Length": "9" * 5000})
    assert status in (400, 413), (status, body[:200])
    assert _serving(dev, daemon.port, holdout_x) == 1
    assert daemon.tracebacks() == [], daemon.log()


# -- 8. trickled bodies time out; connections past the cap are refused at once ------------------


def _read_status(s: socket.socket) -> int | None:
    """The status of an answer already waiting on ``s`` (None: nothing yet; 0: closed without one)."""
    try:
        data = s.recv(4096)
    except (BlockingIOError, TimeoutError):
        return None
    except OSError:
        return 0
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0


def test_trickled_bodies_time_out_and_connections_past_the_cap_get_503(
    make_device: Callable[..., DeviceDir], holdout_x: np.ndarray, figures: Figures
) -> None:
    cap, timeout_s, clients = 16, 2.0, 48
    dev = make_device()
    dev.write_config(server_toml=f"max_connections = {cap}\nrequest_body_timeout_s = {timeout_s}\n")
    daemon = dev.start()
    head = b"POST /v2/models/fraud/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
    peak_before = _peak_rss(daemon)
    socks: list[socket.socket] = []
    statuses: dict[int, int] = {}
    t0 = time.monotonic()
    try:
        for _ in range(clients):
            s = socket.create_connection(("127.0.0.1", daemon.port))
            s.sendall(head)
            socks.append(s)
        for s in socks:
            s.settimeout(0.05)
        refused_at = time.monotonic()
        # Trickle one byte per connection every 0.25 s until every connection has its answer.
        while len(statuses) < clients and time.monotonic() - t0 < timeout_s * 10:
            for i, s in enumerate(socks):
                if i in statuses:
                    continue
                status = _read_status(s)
                if status is not None:
                    statuses[i] = status
                    continue
                try:
                    s.send(b"0")
                except OSError:
                    statuses[i] = 0
            if time.monotonic() - refused_at < 1.0:  # a full server still answers: with a clear 503
                st, body = request(daemon.port, "GET", "/v2/health/ready")
                assert st in (200, 503), st
            time.sleep(0.25)
        took = time.monotonic() - t0
    finally:
        for s in socks:
            s.close()
    counts = {st: list(statuses.values()).count(st) for st in set(statuses.values())}
    assert len(statuses) == clients, statuses
    assert counts.get(408, 0) >= cap - 2 and counts.get(503, 0) >= clients - cap - 2, counts
    assert set(counts) <= {408, 503}, counts
    assert took < timeout_s * 5
    assert daemon.wait_line("max_connections is 16", timeout=5) is not None
    assert _serving(dev, daemon.port, holdout_x) == 1
    assert daemon.tracebacks() == []
    figures.add(clients=clients, max_connections=cap, request_body_timeout_s=timeout_s, answers=counts,
                all_answered_s=round(took, 2), peak_rss_before_mb=peak_before // MIB,
                peak_rss_after_mb=_peak_rss(daemon) // MIB)


# -- 9. one device's malformed state does not stop `fleet status` --------------------------------


def test_fleet_status_shows_malformed_device_states_as_bad_and_lists_the_rest(
    make_device: Callable[..., DeviceDir], broker: Mosquitto
) -> None:
    dev = make_device(device_id="good-1")
    dev.write_config(broker.url)
    daemon = dev.start()  # (no observer: the test helper itself would choke on the bad states)
    wait_until(lambda: _retained(broker, TOPICS.state("good-1")), "the real device's state")
    bad = {
        "bad-models-list": b'{"models": [1]}',
        "bad-failed-superscript": json.dumps({"models": {"fraud": {"active": 1, "failed": {"\u00b2": "x"}}}}).encode(),
        "bad-not-json": b"\xff{",
        "bad-huge-number": b'{"models": {"fraud": {"active": ' + b"9" * 5000 + b"}}}",
        "bad-update-string": b'{"update": "x", "last_error": 7}',
    }
    _retain(broker, {TOPICS.state(d): payload for d, payload in bad.items()})
    out = _cli("fleet", "status", "--fleet", FLEET, "--broker", broker.url)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    good = next(line for line in lines if line.startswith("good-1"))
    assert "fraud v1" in good
    for device in bad:
        row = next(line for line in lines if line.startswith(device))
        assert "BAD STATE" in row, row
    assert f"{len(bad)} with a malformed state" in out.stdout
    as_json = _cli("fleet", "status", "--fleet", FLEET, "--broker", broker.url, "--json")
    assert as_json.returncode == 0 and len(json.loads(as_json.stdout)) == len(bad) + 1, as_json.stderr
    assert daemon.alive


# -- 10. tar headers are capped before tarfile reads them ----------------------------------------

# VmHWM, not ru_maxrss: on Linux ru_maxrss survives fork and exec, so it would report pytest's own.
PEAK_WRAPPER = (
    "import sys\n"
    "from edge_runtime.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "hwm = [x for x in open('/proc/self/status') if x.startswith('VmHWM:')][0].split()[1]\n"
    "print('peak_rss_kb', hwm, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def _install_measured(dev: DeviceDir, bundle: Path) -> tuple[subprocess.CompletedProcess[str], int]:
    """``edge-runtime models install`` in a subprocess; returns it and its peak RSS in bytes."""
    out = subprocess.run([sys.executable, "-c", PEAK_WRAPPER, "models", "install", str(bundle), "--config",
                          str(dev.base / "config.toml")], capture_output=True, text=True, timeout=120, check=False)
    line = next(x for x in out.stderr.splitlines() if x.startswith("peak_rss_kb"))
    return out, int(line.split()[1]) * 1024


def _pax_bomb(path: Path, claimed: int) -> Path:
    """A tar whose first header is a pax header claiming ``claimed`` bytes (a sparse file on disk)."""
    header = tarfile.TarInfo("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    header.size = claimed
    with open(path, "wb") as fh:
        fh.write(header.tobuf(tarfile.USTAR_FORMAT))
        fh.write(b"%d path=manifest.json\n" % 22)
        fh.truncate(512 + claimed + 1024)
    return path


def _gnu_sparse_1_0(path: Path) -> Path:
    info = tarfile.TarInfo("model.tflite")
    data = b"not a sparse map\n" + bytes(495)
    info.size = len(data)
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "model.tflite",
                        "GNU.sparse.realsize": "4096"}
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("kind", ["pax_header_300_mb", "gnu_sparse_1_0", "gnu_long_name_300_mb"])
def test_hostile_tar_headers_are_refused_before_tarfile_reads_them(
    make_device: Callable[..., DeviceDir], tmp_path: Path, figures: Figures, kind: str,
    hash_tree: Callable[[Path], str],
) -> None:
    dev = make_device()
    dev.write_config()
    before = hash_tree(dev.store_path)
    if kind == "pax_header_300_mb":
        bundle = _pax_bomb(tmp_path / "bomb.bundle", 300 * MIB)
    elif kind == "gnu_long_name_300_mb":
        bundle = _pax_bomb(tmp_path / "longname.bundle", 300 * MIB)
        with open(bundle, "r+b") as fh:  # the same header as a GNU long-name header ('L')
            block = bytearray(fh.read(512))
            block[156:157] = tarfile.GNUTYPE_LONGNAME
            block[148:156] = b"        "
            block[148:155] = b"%06o\0" % sum(block)
            fh.seek(0)
            fh.write(block)
    else:
        bundle = _gnu_sparse_1_0(tmp_path / "sparse.bundle")
    out, peak = _install_measured(dev, bundle)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr and ("header of" in out.stderr or "sparse" in out.stderr or "tar" in out.stderr)
    assert peak < 120 * MIB, peak
    assert hash_tree(dev.store_path) == before
    figures.add(kind=kind, file_bytes=bundle.stat().st_size, cli_peak_rss_mb=peak // MIB,
                reason=out.stderr.strip().splitlines()[0][:120])


# -- 11. concurrent installs end with the newer version active -----------------------------------


def _lock_free(dev: DeviceDir) -> bool:
    fd = os.open(dev.store_path / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing releases the lock
    return True


def _installed_and_unlocked(dev: DeviceDir, version: int) -> bool:
    try:
        installed = dev.store().state("fraud").highest_seen >= version
    except Exception:  # noqa: BLE001 - a state file being replaced: look again
        return False
    return installed and _lock_free(dev)


def test_concurrent_installs_leave_the_newer_version_active(
    make_device: Callable[..., DeviceDir], releases: Releases, holdout_x: np.ndarray
) -> None:
    dev = make_device()
    config = dev.write_config()
    daemon = dev.start()
    raced = 0
    for older in range(2, 14, 2):
        newer = older + 1
        # The older install is frozen (SIGSTOP) between its install and its activation, the
        # newer one installs and activates, then the older one goes on: the worst interleaving.
        slow = subprocess.Popen([str(EDGE), "models", "install", str(releases.bundle(older)), "--config", str(config)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while slow.poll() is None and not _installed_and_unlocked(dev, older):
            time.sleep(0.0005)
        slow.send_signal(signal.SIGSTOP)
        if not _lock_free(dev):  # stopped inside the lock (its activation): let it finish first
            slow.send_signal(signal.SIGCONT)
            slow.wait(120)
        caught = slow.poll() is None and dev.store().state("fraud").active != older
        fast = _cli("models", "install", releases.bundle(newer), "--config", config)
        slow.send_signal(signal.SIGCONT)
        _, slow_err = slow.communicate(timeout=120)
        assert fast.returncode == 0 and slow.returncode == 0, (fast.stderr, slow_err)
        assert dev.store().state("fraud").active == newer, slow_err
        wait_until(lambda n=newer: _serving(dev, daemon.port, holdout_x) == n, f"the daemon serving v{newer}")
        raced += caught
        if raced >= 2:
            break
    assert raced >= 1, "the older install was never caught between its install and its activation"
    assert daemon.tracebacks() == []


# -- 12. every configuration value is checked before the daemon starts (and on SIGHUP) -----------

BAD_CONFIGS = {
    "keep_alive_s_inf": ("server_toml", "keep_alive_s = inf", "server.keep_alive_s"),
    "request_header_timeout_s_inf": ("server_toml", "request_header_timeout_s = inf", "server.request_header_timeout_s"),
    "request_body_timeout_s_nan": ("server_toml", "request_body_timeout_s = nan", "server.request_body_timeout_s"),
    "max_request_bytes_huge": ("server_toml", "max_request_bytes = 9223372036854775807000", "max_request_bytes"),
    "logging_level_verbose": ("extra", '[logging]\nlevel = "verbose"', "logging.level"),
    "traffic_superscript": ("extra", '[models.fraud]\ntraffic = {"\u00b2" = 5}', "models.fraud.traffic"),
    "activation_timeout_s_nan": ("extra_mqtt", "activation_timeout_s = nan", "mqtt.activation_timeout_s"),
    "mqtt_url_http": ("extra_mqtt", 'url = "http://127.0.0.1:1"', "mqtt.url"),
    "mqtt_protocol_4": ("extra_mqtt", 'protocol = "4"', "mqtt.protocol"),
}


@pytest.mark.parametrize("kind", sorted(BAD_CONFIGS))
def test_bad_config_value_stops_start_up_naming_the_key(make_device: Callable[..., DeviceDir], kind: str) -> None:
    dev = make_device()
    where, text, key = BAD_CONFIGS[kind]
    if where == "server_toml":
        config = dev.write_config(server_toml=text)
    elif where == "extra_mqtt":
        config = dev.write_config(models_toml=f'[mqtt]\nfleet = "f"\n{text}\n')
    else:
        config = dev.write_config(models_toml=text + "\n")
    out = _cli("serve", "--config", config, timeout=60)
    assert out.returncode == 2, (out.returncode, out.stderr[-500:])
    assert key in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_sighup_with_a_bad_mqtt_table_keeps_the_running_config(
    make_device: Callable[..., DeviceDir], holdout_x: np.ndarray
) -> None:
    dev = make_device()
    config = dev.write_config()
    daemon = dev.start()
    config.write_text(config.read_text() + '[mqtt]\nurl = "http://nowhere"\nfleet = "f"\n')
    daemon.proc.send_signal(signal.SIGHUP)
    assert daemon.wait_line("config not reloaded", timeout=30) is not None, daemon.log()
    assert "mqtt.url" in daemon.log()
    assert _serving(dev, daemon.port, holdout_x) == 1
    assert daemon.tracebacks() == []


# -- 13. names, roots and file modes -------------------------------------------------------------


def test_names_and_ids_with_a_trailing_newline_are_refused(
    make_device: Callable[..., DeviceDir], releases: Releases, broker: Mosquitto, keys: Any
) -> None:
    dev = make_device()
    config = dev.write_config()
    for argv in (["models", "activate", "fraud\n", "1"], ["models", "rollback", "fraud\n"]):
        out = _cli(*argv, "--config", config)
        assert out.returncode in (1, 2) and "Traceback" not in out.stderr, out.stderr
    assert sorted(p.name for p in dev.store_path.iterdir() if not p.name.startswith(".")) == ["fraud"]
    for option in ("--device", "--fleet"):
        args = {"--fleet": FLEET, "--device": None}
        args[option] = "pi-1\n"
        extra = [a for k, v in args.items() if v is not None for a in (k, v)]
        out = _cli("fleet", "publish", releases.bundle(2), "--broker", broker.url, "--sign-key", keys.key_path, *extra)
        assert out.returncode == 2 and "must match" in out.stderr, out.stderr


def _root_variants(keys: Any) -> dict[str, bytes]:
    stranger_signed = make_root(1, [keys.stranger], [keys.stranger])
    real = json.loads(keys.root_bytes)
    forged = canonical_json({"signed": stranger_signed, "signatures": real["signatures"]})
    # "signed" twice: a parser that keeps the first sees the stranger's root, one that keeps
    # the last sees the real one the signatures are for.
    twice = forged[:-1] + b',"signed":' + canonical_json(real["signed"]) + b"}"
    small = make_root(1, [keys.key], [keys.key])
    weak_id = "00" * 8
    small["keys"][weak_id] = {"keytype": "ed25519", "public": "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"}
    return {"signed_twice": twice, "small_order_key": sign_root(small, [keys.key])}


@pytest.mark.parametrize("kind", ["signed_twice", "small_order_key"])
def test_hostile_trust_roots_are_refused(releases: Releases, keys: Any, tmp_path: Path, kind: str) -> None:
    root = tmp_path / "root.json"
    root.write_bytes(_root_variants(keys)[kind])
    out = _cli("bundle", "verify", releases.bundle(1), "--root", root)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert ("twice" if kind == "signed_twice" else "small order") in out.stderr, out.stderr


def test_store_files_follow_the_umask(make_device: Callable[..., DeviceDir], releases: Releases) -> None:
    dev = make_device()
    config = dev.write_config()
    out = subprocess.run([str(EDGE), "models", "install", str(releases.bundle(2)), "--config", str(config)],
                         capture_output=True, text=True, timeout=120, check=False, preexec_fn=lambda: os.umask(0o077))
    assert out.returncode == 0, out.stderr
    state = dev.store_path / "fraud" / "state.json"
    assert state.stat().st_mode & 0o777 == 0o600
    assert (dev.store_path / "fraud" / "2").stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o077 == 0 for p in (dev.store_path / "fraud" / "2").iterdir())


def test_prune_ignores_a_forged_desired_state_naming_a_higher_version(
    broker: Mosquitto, releases: Releases, keys: Any
) -> None:
    for v in (1, 2):
        out = _cli("fleet", "publish", releases.bundle(v), "--fleet", FLEET, "--broker", broker.url,
                   "--sign-key", keys.key_path, "--root", keys.root_path)
        assert out.returncode == 0, out.stderr
    _retain(broker, {TOPICS.desired: _unsigned_desired(7, {"fraud": {"version": 99}})})
    out = _cli("fleet", "prune", "--fleet", FLEET, "--broker", broker.url, "--root", keys.root_path)
    assert out.returncode == 0 and "nothing to prune" in out.stdout, out.stdout + out.stderr
    assert "does not verify" in out.stderr
    assert _retained(broker, TOPICS.manifest("fraud", 2)) and _retained(broker, TOPICS.manifest("fraud", 1))
    unverified = _cli("fleet", "prune", "--fleet", FLEET, "--broker", broker.url, "--dry-run")
    assert "not verified" in unverified.stderr


def test_trickling_clients_under_a_256_descriptor_limit_never_exhaust_descriptors(
    make_device: Callable[..., DeviceDir], holdout_x: np.ndarray, figures: Figures
) -> None:
    """The issue's case: 239 trickling connections against `ulimit -n 256` (the default cap of
    256 connections is lowered to fit, so new connections get a 503, never a reset or EMFILE)."""
    import resource

    dev = make_device()
    config = dev.write_config(server_toml="request_body_timeout_s = 3.0\n")
    proc = subprocess.Popen([str(EDGE), "serve", "--config", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)))
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    socks: list[socket.socket] = []
    try:
        port = int(wait_until(lambda: next((x.rsplit(":", 1)[1] for x in list(lines) if "listening on http://" in x), None), "the listening line"))
        wait_until(lambda: request(port, "GET", "/v2/health/ready")[0] == 200, "ready")
        head = b"POST /v2/models/fraud/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
        for _ in range(239):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(head)
            socks.append(s)
        # A new client while the trickling ones hold their connections: refused clearly, not reset.
        status, body = request(port, "GET", "/v2/health/ready")
        assert status == 503 and b"max_connections" in body, (status, body)
        for s in socks:
            s.close()
        wait_until(lambda: request(port, "GET", "/v2/health/ready")[0] == 200, "ready again")
        assert _serving(dev, port, holdout_x) == 1
        log = "".join(lines)
        assert "does not fit the open-file limit 256: using 192" in log, log
        assert "Too many open files" not in log and "Traceback" not in log, log
        figures.add(nofile=256, trickling=239, effective_max_connections=192, refused_new_client=status)
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        proc.wait(30)
