"""Configuration and secrets, one test per attack, through the real CLI and daemon: the broker
password is never logged nor taken from argv, every configuration value is checked before
start-up, and a SIGHUP with a bad ``[mqtt]`` table keeps the running configuration.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from reliability.attack_support import cli, serving
from reliability.conftest import FLEET, DeviceDir, Mosquitto, mosquitto_config

pytestmark = pytest.mark.integration


# -- the broker password is never logged or taken from argv -----------------------------------

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
    assert serving(dev, daemon.port, holdout_x) == 1
    assert SECRET not in daemon.log()


def test_operator_password_comes_from_a_file_or_the_environment_never_argv(
    password_broker: Mosquitto, tmp_path: Path
) -> None:
    base = ["fleet", "status", "--fleet", FLEET, "--username", "op", "--timeout", "5"]
    url = f"mqtt://127.0.0.1:{password_broker.port}"
    for argv in (["--broker", url, "--password", SECRET], ["--broker", f"mqtt://op:{SECRET}@127.0.0.1:{password_broker.port}"]):
        out = cli(*base, *argv)
        assert out.returncode == 2 and "--password-file" in out.stderr and SECRET not in out.stderr, out.stderr
    pw = tmp_path / "password"
    pw.write_text(SECRET + "\n")
    ok = cli(*base, "--broker", url, "--password-file", pw)
    assert ok.returncode == 0, ok.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    ok = cli(*base, "--broker", url, env={**env, "EDGE_MQTT_PASSWORD": SECRET})
    assert ok.returncode == 0, ok.stderr
    wrong = cli(*base, "--broker", url, env={**env, "EDGE_MQTT_PASSWORD": "wrong"})
    assert wrong.returncode == 1 and "refused the connection" in wrong.stderr, wrong.stderr

# -- every configuration value is checked before the daemon starts (and on SIGHUP) -----------

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
    out = cli("serve", "--config", config, timeout=60)
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
    assert serving(dev, daemon.port, holdout_x) == 1
    assert daemon.tracebacks() == []
