"""TOML configuration: defaults, the shipped example, and errors that name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge_runtime.config import Config, ModelConfig, load_config, parse_config
from edge_runtime.exceptions import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_every_key_has_a_default() -> None:
    cfg = parse_config({})
    assert cfg.store.path == "/var/lib/edge-runtime/models"
    assert cfg.store.factory == "/usr/share/edge-runtime/factory"
    assert cfg.store.max_bundle_bytes == 1024**3
    assert (cfg.server.host, cfg.server.port) == ("127.0.0.1", 8000)
    assert cfg.trust.root == "/etc/edge-runtime/root.json"
    assert cfg.mqtt is None  # no [mqtt] table: offline only
    assert cfg.model("anything") == ModelConfig()


def test_the_shipped_example_config_loads() -> None:
    cfg = load_config(REPO / "device" / "config.toml")
    assert cfg.source.endswith("device/config.toml")
    assert cfg.models["fraud"].max_batch_size == 32
    assert cfg.models["fraud"].max_queue_delay_us == 2000


def test_a_file_sets_values_and_ints_are_accepted_for_floats(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[store]\npath = "/data/models"\nmax_bundle_bytes = 5000\n[server]\ndrain_timeout_s = 3\n'
                 '[mqtt]\nfleet = "lab"\n[models.fraud]\npreferred_batch_sizes = [1, 4]\ntraffic = {"1" = 90, "2" = 10}\n')
    cfg = load_config(p)
    assert isinstance(cfg, Config)
    assert (cfg.store.path, cfg.store.max_bundle_bytes) == ("/data/models", 5000)
    assert cfg.server.drain_timeout_s == 3.0 and isinstance(cfg.server.drain_timeout_s, float)
    assert cfg.mqtt is not None and cfg.mqtt.fleet == "lab" and cfg.mqtt.prefix == "edge"
    assert cfg.models["fraud"].traffic == {"1": 90, "2": 10}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[store]\nmax_bundle_byte = 5\n", r"store: unknown key\(s\) 'max_bundle_byte'; known: factory, keep_versions, max_bundle_bytes"),
        ("[store]\nkeep_versions = 0\n", r"store\.keep_versions: expected an integer >= 1, found 0"),
        ("[stor]\npath = '/x'\n", r"unknown table\(s\) 'stor'"),
        ("[server]\nport = '8000'\n", r"server\.port: expected int, found str '8000'"),
        ("[server]\nport = true\n", r"server\.port: expected int, found bool True"),
        ("[server]\nport = 1.5\n", r"server\.port: expected int, found float 1\.5"),
        ("[server]\nport = 70000\n", r"server\.port and server\.grpc_port must be in \[0, 65535\]"),
        ("[store]\npath = 5\n", r"store\.path: expected str, found int 5"),
        ("[store]\nmax_bundle_bytes = 0\n", r"store\.max_bundle_bytes: expected an integer >= 1, found 0"),
        ("[store]\nmax_bundle_bytes = '1G'\n", r"store\.max_bundle_bytes: expected int, found str '1G'"),
        ("store = 5\n", r"store: expected a table, found int"),
        ("[models.fraud]\npreferred_batch_sizes = [1, '2']\n", r"models\.fraud\.preferred_batch_sizes\[1\]: expected int"),
        ("[models.fraud]\ntraffic = {'1' = 'half'}\n", r"models\.fraud\.traffic\.1: expected int, found str"),
        ("[models.fraud]\nbatch = 3\n", r"models\.fraud: unknown key\(s\) 'batch'"),
        ("[models]\nfraud = 3\n", r"models\.fraud: expected a table, found int"),
        ("[models.fraud]\nversion_policy = 'newest'\n", r"models\.fraud\.version_policy: expected 'latest', 'all' or 'specific'"),
        ("[mqtt]\nkeepalive_s = '30'\n", r"mqtt\.keepalive_s: expected int, found str"),
        ("[logging]\nformat = 'xml'\n", r"logging\.format: expected 'text' or 'json', found 'xml'"),
        ("[trust\nroot = 1", r"not valid TOML"),
    ],
)
def test_bad_values_are_errors_that_name_the_key(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(p)


def test_unreadable_config_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config .*missing\.toml"):
        load_config(tmp_path / "missing.toml")


def test_cli_reports_a_config_error_as_a_usage_error(tmp_path: Path, cli: Any) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[store]\nmax_bundle_bytes = 'big'\n")
    r = cli(["models", "list", "--config", p])
    assert r.code == 2
    assert r.err.strip() == "edge-runtime: store.max_bundle_bytes: expected int, found str 'big'"
