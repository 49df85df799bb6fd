"""The operator file and environment for every ``fleet`` command: precedence and errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_runtime.config import parse_config
from edge_runtime.exceptions import ConfigError, UsageError
from edge_runtime.fleet.operator_config import (
    BROKER_KEYS,
    OperatorConfig,
    config_path,
    load_operator_config,
    parse_operator_config,
    render_operator_config,
    resolve,
)
from fleet.conftest import FLEET, Mosquitto, cli

FILE = """
fleet = "from-file"
root = "root.json"
[broker]
url = "mqtts://file.example:8883"
ca_file = "ca.crt"
cert_file = "/abs/operator.crt"
key_file = "operator.key"
prefix = "site"
"""


def _cfg(tmp_path: Path, text: str = FILE) -> OperatorConfig:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return load_operator_config(path, env={})


def test_relative_paths_are_taken_from_the_files_directory(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    base = tmp_path.resolve()
    assert cfg.broker.ca_file == str(base / "ca.crt")
    assert cfg.broker.cert_file == "/abs/operator.crt"
    assert cfg.root == str(base / "root.json")


def test_file_gives_every_default(tmp_path: Path) -> None:
    r = resolve({}, {}, _cfg(tmp_path))
    assert (r.fleet, r.broker, r.prefix, r.protocol) == ("from-file", "mqtts://file.example:8883", "site", "5")
    assert r.key_file == str(tmp_path.resolve() / "operator.key")
    assert r.root == tmp_path.resolve() / "root.json"


def test_environment_overrides_the_file_and_flags_override_both(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    env = {"EDGE_BROKER": "mqtt://env:1883", "EDGE_FLEET": "from-env"}
    r = resolve({}, env, cfg)
    assert (r.broker, r.fleet) == ("mqtt://env:1883", "from-env")
    r = resolve({"broker": "mqtt://flag:1883", "fleet": "from-flag", "prefix": "p", "root": Path("/r.json")}, env, cfg)
    assert (r.broker, r.fleet, r.prefix, r.root) == ("mqtt://flag:1883", "from-flag", "p", Path("/r.json"))
    assert r.ca_file == str(tmp_path.resolve() / "ca.crt")  # a flag not given still comes from the file


def test_built_in_defaults_without_a_file() -> None:
    r = resolve({"fleet": "f"}, {}, OperatorConfig())
    assert (r.broker, r.prefix, r.protocol, r.ca_file, r.root) == ("mqtt://127.0.0.1:1883", "edge", "5", "", None)


def test_no_fleet_anywhere_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--fleet F, set EDGE_FLEET"):
        resolve({}, {}, OperatorConfig())


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[broker]\nurll = "mqtt://x:1"\n', "broker.urll: unknown key"),
        ('flet = "x"\n', "flet: unknown key"),
        ("[broker]\nca_file = 3\n", "broker.ca_file: expected a string"),
        ("fleet = true\n", "fleet: expected a string"),
        ('[broker]\nprotocol = "4"\n', "broker.protocol"),
        ('[broker]\nurl = "http://x"\n', "broker.url"),
        ('broker = "x"\n', "broker: expected a table"),
    ],
)
def test_unknown_key_or_wrong_type_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        _cfg(tmp_path, text)


def test_which_file(tmp_path: Path) -> None:
    assert config_path(Path("/x.toml"), {"EDGE_FLEET_CONFIG": "/y.toml"}) == (Path("/x.toml"), True)
    assert config_path(None, {"EDGE_FLEET_CONFIG": "/y.toml"}) == (Path("/y.toml"), True)
    assert config_path(None, {"XDG_CONFIG_HOME": "/c"}) == (Path("/c/edge-runtime/fleet.toml"), False)
    assert load_operator_config(None, {"XDG_CONFIG_HOME": str(tmp_path)}) == OperatorConfig()  # optional
    with pytest.raises(ConfigError, match="EDGE_FLEET_CONFIG"):
        load_operator_config(None, {"EDGE_FLEET_CONFIG": str(tmp_path / "missing.toml")})


def test_rendered_file_reads_back(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    again = parse_operator_config(__import__("tomllib").loads(render_operator_config(cfg)), tmp_path.resolve(), cfg.source)
    assert again == cfg


def test_fleet_status_reads_the_broker_from_the_file(tmp_path: Path, mosquitto: Mosquitto) -> None:
    config = tmp_path / "fleet.toml"
    config.write_text(f'fleet = "{FLEET}"\n[broker]\nurl = "{mosquitto.url}"\n')
    result = cli("fleet", "status", "--fleet-config", config, "--timeout", "10")
    assert result.returncode == 0, result.stderr
    assert f"no device of fleet {FLEET!r} has reported yet" in result.stdout
    # A flag still wins over the file: nothing listens on port 9.
    refused = cli("fleet", "status", "--fleet-config", config, "--broker", "mqtt://127.0.0.1:9", "--timeout", "5")
    assert refused.returncode == 1 and "127.0.0.1:9" in refused.stderr


@pytest.mark.parametrize(("key", "value"), [("protocol", "4"), ("url", "http://x")])
def test_the_broker_table_is_checked_as_the_devices_mqtt_table_is(tmp_path: Path, key: str, value: str) -> None:
    with pytest.raises(ConfigError) as device:
        parse_config({"mqtt": {key: value}})
    with pytest.raises(ConfigError) as operator:
        _cfg(tmp_path, f'[broker]\n{key} = "{value}"\n')
    assert str(device.value).replace("mqtt.", "broker.", 1) in str(operator.value)


def test_the_broker_table_never_holds_a_password(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="broker.password: unknown key"):
        _cfg(tmp_path, '[broker]\npassword = "secret"\n')
    assert {"password_file", "prefix"} <= BROKER_KEYS and "password" not in BROKER_KEYS
