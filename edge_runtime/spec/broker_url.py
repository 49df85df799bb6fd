"""Broker URLs: ``mqtt://[user[:password]@]host[:port]`` or ``mqtts://`` for TLS.

Pure and free of paho-mqtt, so that the configuration can be checked (``parse_config``)
on a device that runs offline. Every log line and error shows a URL through
:func:`redact_url`.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from edge_runtime.exceptions import UsageError

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


@dataclass(frozen=True)
class BrokerAddress:
    """Where the broker is: ``mqtt://host:port`` or ``mqtts://host:port`` (TLS)."""

    host: str
    port: int
    tls: bool
    username: str = ""
    password: str = ""


def redact_url(url: str) -> str:
    """``url`` without its password (``mqtt://user:***@host``): the form every log line and
    error message uses."""
    try:
        parts = urlsplit(url)
        userinfo, at, host = parts.netloc.rpartition("@")
    except ValueError:
        return "<unparsable broker URL>"
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def parse_broker_url(url: str) -> BrokerAddress:
    """Parse a broker URL; user and password may be given as ``mqtt://user:pass@host``."""
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise UsageError(f"broker URL {shown!r}: {exc}") from None
    if parts.scheme not in DEFAULT_PORTS:
        raise UsageError(f"broker URL {shown!r}: expected mqtt://host[:port] or mqtts://host[:port]")
    if not parts.hostname:
        raise UsageError(f"broker URL {shown!r} has no host")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise UsageError(f"broker URL {shown!r}: bad port") from None
    return BrokerAddress(
        parts.hostname, port, parts.scheme == "mqtts", unquote(parts.username or ""), unquote(parts.password or "")
    )


__all__ = ["DEFAULT_PORTS", "BrokerAddress", "parse_broker_url", "redact_url"]
