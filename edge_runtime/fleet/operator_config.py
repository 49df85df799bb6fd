"""The operator's own settings for every ``fleet`` command: which broker, which TLS files,
which fleet and trust root, written once instead of on every command line.

The file is TOML, found as ``--fleet-config FILE``, else ``$EDGE_FLEET_CONFIG``, else
``$XDG_CONFIG_HOME/edge-runtime/fleet.toml`` (``~/.config/...``) when it exists::

    fleet = "default"                      # default --fleet
    root = "root.json"                     # default --root (publish, prune, console, ...)

    [broker]
    url = "mqtts://broker.example:8883"    # default --broker
    ca_file = "ca.crt"                     # relative paths: from the file's directory
    cert_file = "operator.crt"
    key_file = "operator.key"
    username = ""
    password_file = ""
    prefix = "edge"
    protocol = "5"

The environment variables ``EDGE_BROKER`` and ``EDGE_FLEET`` override the file; command-line
flags override both. Like the device's config.toml, an unknown key or a wrong type is an error
that names the key: a typo must not silently send a release to the default broker.
Resolution is pure (:func:`resolve`): it takes what the command line, the environment and
the file said and returns the values to use; reading the file is :func:`load_operator_config`.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime.config import BrokerOptions, check_broker_options
from edge_runtime.exceptions import ConfigError, UsageError

CONFIG_ENV = "EDGE_FLEET_CONFIG"
BROKER_ENV = "EDGE_BROKER"
FLEET_ENV = "EDGE_FLEET"
PATH_KEYS = ("ca_file", "cert_file", "key_file", "password_file")


@dataclass(frozen=True)
class BrokerSection(BrokerOptions):
    """``[broker]``: how to reach the fleet's broker. The keys of :class:`BrokerOptions` (checked
    the same way as the device's ``[mqtt]``), but the password is read from ``password_file``,
    never written in the file; and the topic prefix. A key the file leaves out has the default."""

    password_file: str = ""
    prefix: str = "edge"


BROKER_KEYS = frozenset(f.name for f in dataclasses.fields(BrokerSection)) - {"password"}


@dataclass(frozen=True)
class OperatorConfig:
    """The operator file, its relative paths already made absolute."""

    fleet: str = ""
    root: str = ""
    broker: BrokerSection = field(default_factory=BrokerSection)
    source: str = ""


@dataclass(frozen=True)
class Resolved:
    """The values a ``fleet`` command uses after flags, environment and file are combined."""

    fleet: str
    broker: str
    prefix: str
    ca_file: str
    cert_file: str
    key_file: str
    username: str
    password_file: Path | None
    protocol: str
    root: Path | None


def _strings(names: set[str], table: Any, where: str) -> dict[str, str]:
    """Check that ``table`` holds only the keys ``names``, each a string; name the bad key."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, found {type(table).__name__}")
    unknown = sorted(set(table) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key; known: {', '.join(sorted(names))}")
    for key, value in table.items():
        if not isinstance(value, str):
            name = f"{where}.{key}" if where else key
            raise ConfigError(f"{name}: expected a string, found {type(value).__name__} {value!r}")
    return dict(table)


def parse_operator_config(data: dict[str, Any], base_dir: Path, source: str = "") -> OperatorConfig:
    """Build an OperatorConfig from a parsed TOML document; relative paths are taken from ``base_dir``."""
    top = {k: v for k, v in data.items() if k != "broker"}
    unknown = sorted(set(top) - {"fleet", "root"})
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key; known: [broker], fleet, root")
    flat = _strings({"fleet", "root"}, top, "")
    broker = _strings(set(BROKER_KEYS), data.get("broker", {}), "broker")
    for key in PATH_KEYS:
        if broker.get(key):
            broker[key] = str(base_dir / Path(broker[key]).expanduser())
    section = BrokerSection(**broker)
    check_broker_options(section, "broker")
    root = flat.get("root", "")
    if root:
        root = str(base_dir / Path(root).expanduser())
    return OperatorConfig(fleet=flat.get("fleet", ""), root=root, broker=section, source=source)


def config_path(flag: Path | None, env: Mapping[str, str]) -> tuple[Path | None, bool]:
    """Which file to read, and whether it must exist (named explicitly) or is optional (the default)."""
    if flag is not None:
        return flag, True
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV]), True
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path(env.get("HOME", "~")) / ".config"
    return base.expanduser() / "edge-runtime" / "fleet.toml", False


def load_operator_config(flag: Path | None, env: Mapping[str, str] | None = None) -> OperatorConfig:
    """Read the operator file (``--fleet-config``, ``$EDGE_FLEET_CONFIG`` or the default path).

    A file named explicitly must exist; the default path is optional."""
    env = os.environ if env is None else env
    path, required = config_path(flag, env)
    if path is None or (not required and not path.is_file()):
        return OperatorConfig()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        how = "--fleet-config" if flag is not None else CONFIG_ENV if required else "operator config"
        raise ConfigError(f"{how} {path}: cannot read it ({exc.strerror})") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return parse_operator_config(data, path.resolve().parent, str(path))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def resolve(flags: Mapping[str, Any], env: Mapping[str, str], cfg: OperatorConfig) -> Resolved:
    """Combine: a flag given on the command line (not None) wins, then the environment, then the file,
    then the built-in default (:class:`BrokerSection` holds it for a key the file leaves out). ``flags`` holds the argparse values by option name (``broker``,
    ``fleet``, ``prefix``, ``ca_file``, ...; ``root`` only for commands that take ``--root``)."""

    def pick(flag_name: str, env_name: str | None, file_value: str, default: str) -> str:
        value = flags.get(flag_name)
        if value is not None:
            return str(value)
        if env_name and env.get(env_name):
            return env[env_name]
        return file_value or default

    b = cfg.broker
    fleet = pick("fleet", FLEET_ENV, cfg.fleet, "")
    if not fleet:
        where = cfg.source or "the operator file (--fleet-config)"
        raise UsageError(f"no fleet given: pass --fleet F, set {FLEET_ENV}, or write fleet = \"F\" in {where}")
    password_file = flags.get("password_file")
    if password_file is None and b.password_file:
        password_file = Path(b.password_file)
    root = flags.get("root")
    if root is None and cfg.root:
        root = Path(cfg.root)
    return Resolved(
        fleet=fleet,
        broker=pick("broker", BROKER_ENV, b.url, ""),
        prefix=pick("prefix", None, b.prefix, ""),
        ca_file=pick("ca_file", None, b.ca_file, ""),
        cert_file=pick("cert_file", None, b.cert_file, ""),
        key_file=pick("key_file", None, b.key_file, ""),
        username=pick("username", None, b.username, ""),
        password_file=password_file,
        protocol=pick("protocol", None, b.protocol, ""),
        root=root,
    )


def render_operator_config(cfg: OperatorConfig) -> str:
    """The TOML text of ``cfg`` (what ``fleet provision`` writes); empty values are left out."""

    def line(key: str, value: str) -> str:
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'{key} = "{escaped}"\n'

    out = "# edge-runtime operator settings: read by every `edge-runtime fleet` command (docs/operations.md).\n"
    out += "".join(line(k, v) for k, v in (("fleet", cfg.fleet), ("root", cfg.root)) if v)
    out += "\n[broker]\n"
    default = BrokerSection()
    out += "".join(line(f.name, getattr(cfg.broker, f.name)) for f in dataclasses.fields(BrokerSection)
                   if getattr(cfg.broker, f.name) != getattr(default, f.name))
    return out


__all__ = [
    "BROKER_ENV", "CONFIG_ENV", "FLEET_ENV", "BrokerSection", "OperatorConfig", "Resolved", "config_path",
    "load_operator_config", "parse_operator_config", "render_operator_config", "resolve",
]
