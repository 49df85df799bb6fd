"""What a SIGHUP applies and what it warns about (edge_runtime/reload.py), and the identity checks of the config."""

from __future__ import annotations

from typing import Any

import pytest

from edge_runtime.config import parse_config
from edge_runtime.exceptions import ConfigError
from edge_runtime.reload import applied_live, restart_needed, unknown_models


def _cfg(**tables: Any) -> Any:
    return parse_config(tables)


def test_adding_mqtt_needs_a_restart_and_says_so() -> None:
    assert restart_needed(_cfg(), _cfg(mqtt={"url": "mqtt://127.0.0.1:1"})) == ["[mqtt] added"]
    assert restart_needed(_cfg(mqtt={}), _cfg()) == ["[mqtt] removed"]


def test_each_changed_key_is_named() -> None:
    old = _cfg(server={"port": 1}, mqtt={"fleet": "a"}, monitoring={"capture_max_kbps": 8.0})
    new = _cfg(server={"port": 2}, mqtt={"fleet": "b"}, monitoring={"capture_max_kbps": 9.0})
    assert restart_needed(old, new) == ["[server] port changed", "[mqtt] fleet changed",
                                        "[monitoring] capture_max_kbps changed"]


def test_live_keys_are_applied_not_warned() -> None:
    old, new = _cfg(), _cfg(monitoring={"state_interval_s": 5.0}, server={"drain_timeout_s": 2.0},
                            models={"fraud": {"max_batch_size": 2}})
    assert restart_needed(old, new) == []
    assert applied_live(old, new) == ["[server] drain_timeout_s", "[monitoring] state_interval_s"]


def test_a_models_table_for_a_model_not_installed_is_found() -> None:
    cfg = _cfg(models={"fraud": {}, "frued": {}})
    assert unknown_models(cfg, ["fraud", "wine"]) == ["frued"]


@pytest.mark.parametrize(
    ("tables", "key"),
    [
        ({"device": {"id": "pi/1"}}, "device.id"),
        ({"device": {"id": "pi#"}}, "device.id"),
        ({"device": {"id": "pi 1"}}, "device.id"),
        ({"mqtt": {"fleet": "f+"}}, "mqtt.fleet"),
        ({"mqtt": {"fleet": ""}}, "mqtt.fleet"),
        ({"mqtt": {"prefix": "edge/#"}}, "mqtt.prefix"),
        ({"mqtt": {"prefix": "/edge"}}, "mqtt.prefix"),
        ({"mqtt": {"max_message_bytes": 10}}, "mqtt.max_message_bytes"),
        ({"mqtt": {"max_message_bytes": 2**31}}, "mqtt.max_message_bytes"),
        ({"monitoring": {"health_interval_s": 0}}, "health_interval_s"),
    ],
)
def test_identity_and_limits_are_checked_when_the_config_is_loaded(tables: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config(tables)


def test_good_identity_passes() -> None:
    cfg = parse_config({"device": {"id": "pi-07.site_a:1"}, "mqtt": {"fleet": "f1", "prefix": "acme/edge"}})
    assert cfg.mqtt is not None and cfg.mqtt.max_message_bytes == 6 * 1024 * 1024
