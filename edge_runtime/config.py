"""TOML configuration -> frozen dataclasses. Unknown keys and wrong types are errors.

Every size, count and time field carries its unit in its name. See docs/configuration.md.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime.exceptions import BadDataError, ConfigError, UsageError
from edge_runtime.spec.delegates import MAX_THREADS, check_library_map, parse_delegates

DEFAULT_CONFIG_PATH = Path("/etc/edge-runtime/config.toml")
MAX_TIMEOUT_S = 86400.0  # a day: every time limit is finite (asyncio and sockets refuse inf)
MAX_INT = 2**63 - 1
DEFAULT_MAX_MESSAGE_BYTES = 6 * 1024 * 1024  # [mqtt] max_message_bytes: 1.5 x the 4 MiB manifest limit
MIN_MESSAGE_BYTES = 64 * 1024  # a manifest of a small model, a trust root, a desired state
MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # MQTT's own packet limit, rounded down
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class DeviceConfig:
    """``[device]``: identity of this device."""

    id: str = ""  # empty: /etc/machine-id


@dataclass(frozen=True)
class StoreConfig:
    """``[store]``: where models live."""

    path: str = "/var/lib/edge-runtime/models"
    factory: str = "/usr/share/edge-runtime/factory"
    max_bundle_bytes: int = 1024 * 1024 * 1024
    # Installed versions kept after an activation (the newest N; never the active one, the last
    # known good, one being tried or served, or one the serving config names). See docs/store-and-bundles.md.
    keep_versions: int = 3


@dataclass(frozen=True)
class ServerConfig:
    """``[server]``: the local KServe v2 endpoints."""

    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int = 0  # KServe v2 gRPC with the grpc extra: 0 = off, -1 = any free port (logged)
    max_request_bytes: int = 64 * 1024 * 1024  # larger bodies answer 413
    # Numbers a JSON infer body may hold (a model without a batch dimension: its own input size);
    # counted before the body is parsed, more answers 413. Each costs ~32 bytes once parsed.
    max_json_values: int = 1024 * 1024
    swap_poll_ms: int = 500  # how often the daemon looks at the store for a new active version
    drain_timeout_s: float = 10.0  # SIGTERM and hot swap: how long in-flight requests may take to finish
    keep_alive_s: float = 5.0  # idle keep-alive connections are closed after this
    max_header_bytes: int = 64 * 1024  # request line + headers of one request; more answers 400 and closes
    request_header_timeout_s: float = 10.0  # headers must be complete within this (from connect / first byte)
    request_body_timeout_s: float = 30.0  # a body must be complete within this of the end of its headers
    max_connections: int = 256  # open HTTP connections; more are answered 503 and closed (keep under LimitNOFILE)
    grpc_idle_timeout_s: float = 300.0  # a gRPC connection with no call open is closed (GOAWAY) after this


@dataclass(frozen=True)
class TrustConfig:
    """``[trust]``: the pinned trust root, and the device's own decryption key (if any)."""

    root: str = "/etc/edge-runtime/root.json"
    # X25519 private key (edge-runtime keys device) that opens encrypted releases; "" = none.
    device_key: str = ""


@dataclass(frozen=True)
class BrokerOptions:
    """How to reach an MQTT broker: the one set of connection options shared by the device's
    ``[mqtt]`` table, the operator's ``fleet`` commands (``--broker`` and the TLS options) and
    every MQTT link (:class:`edge_runtime.updates.mqtt.LinkSettings`)."""

    url: str = "mqtt://127.0.0.1:1883"
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    username: str = ""
    password: str = ""
    protocol: str = "5"  # "5" or "3.1.1"


@dataclass(frozen=True)
class MqttConfig(BrokerOptions):
    """``[mqtt]``: signed model updates. No table means offline only. The broker keys are
    those of :class:`BrokerOptions`."""

    fleet: str = "default"
    prefix: str = "edge"
    keepalive_s: int = 30
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    download_stall_s: float = 30.0
    max_download_bytes: int = 512 * 1024 * 1024
    max_event_queue: int = 1000
    staging_dir: str = ""  # empty: <state_dir>/staging
    trusted_clock: str = "auto"  # "auto" (systemd-timesyncd sync), "yes", "no"
    # Fields below: see docs/updates.md.
    state_dir: str = ""  # empty: <store>/.updates (seq floors, rotated trust roots, staging)
    client_id: str = ""  # empty: edge-<fleet>-<device id>
    session_expiry_s: int = 7 * 24 * 3600  # MQTT 5 persistent session lifetime after a disconnect
    connect_timeout_s: float = 10.0
    download_window_chunks: int = 256  # chunk topics subscribed at once when resuming
    max_download_bytes_per_s: int = 0  # 0 = unlimited
    receive_maximum: int = 2  # MQTT 5: messages in flight to the device (bounds re-sent chunks after a drop)
    activation_timeout_s: float = 120.0  # how long to wait for the daemon to confirm a swap
    # Largest MQTT message payload the device takes; larger ones are dropped on arrival (MQTT 5:
    # by the broker, never sent). The default fits the largest manifest message (a 4 MiB
    # manifest, JSON-escaped) and chunks of up to 6 MiB; a release with larger chunks needs more.
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES


@dataclass(frozen=True)
class DriftConfig:
    """``[models.NAME.drift]``: drift against the bundle's reference profile (docs/monitoring.md)."""

    threshold: float = 0.25  # PSI at which one ``drift`` event is raised; 0 = measure, never alert
    clear: float = 0.1  # the alert clears (and may be raised again) once the PSI falls below this
    window_rows: int = 1000  # rows in the rolling window
    min_rows: int = 200  # no score until the window holds this many rows
    max_sketched_per_s: int = 500  # above this many requests a second, a uniform sample is sketched; 0 = all


@dataclass(frozen=True)
class CaptureConfig:
    """``[models.NAME.capture]``: sampled requests and answers kept on disk (off by default)."""

    rate: float = 0.0  # share of answered requests captured; 0 = none sampled
    max_mb: float = 50.0  # the model's ring on disk; the oldest segments go first
    shadow_disagreements: bool = True  # when capture is on, always keep what the shadow answered differently
    enabled: bool = False  # on without sampling (shadow disagreements only); rate > 0 turns it on too

    @property
    def on(self) -> bool:
        """Whether anything is captured."""
        return self.max_mb > 0 and (self.rate > 0 or self.enabled)


@dataclass(frozen=True)
class MonitoringConfig:
    """``[monitoring]``: where captures live and how fast they may leave the device."""

    capture_dir: str = ""  # empty: <store>/.capture
    capture_max_kbps: float = 256.0  # upload cap of ``fleet capture pull`` answers (kilobits per second)
    min_free_mb: float = 64.0  # capture stops writing while the file system has less free
    state_interval_s: float = 60.0  # how often drift figures and health refresh the retained device state
    health_interval_s: float = 5.0  # how often the device health is read (throttling alerts)


@dataclass(frozen=True)
class ModelConfig:
    """``[models.NAME]``: serving of one model (SPEC section 4)."""

    max_batch_size: int = 8
    max_queue_delay_us: int = 500
    preferred_batch_sizes: list[int] = field(default_factory=list)
    max_queue_size: int = 256
    instances: int = 1
    num_threads: int = 0  # XNNPACK threads per interpreter (also spelt `threads`); 0 = the bundle's, else 1
    delegates: list[Any] = field(default_factory=list)  # ordered LiteRT delegates; empty = the bundle's, else XNNPACK
    version_policy: str = "latest"  # latest | all | specific
    num_versions: int = 1
    versions: list[int] = field(default_factory=list)
    traffic: dict[str, int] = field(default_factory=dict)
    shadow: int = 0  # 0 = none
    execution: str = "auto"  # auto | inline (on the event loop) | threads (queue + worker threads)
    inline_max_us: int = 100  # auto: run on the event loop when one batch-1 invoke takes at most this
    idle_inline_max_us: int = 2000  # threads: a request alone in the server runs on the loop if a run takes at most this; 0 = never
    stack_max_us: int = 100  # threads: a merged batch is one stacked invoke if a batch-1 invoke takes at most this, else run request by request
    drift: DriftConfig = field(default_factory=DriftConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    variant: str = ""  # pin one of a bundle's variants by name ("" = the device times them and serves the fastest)


# Where Debian/Raspberry Pi OS packages put delegate libraries (libedgetpu1-std: the multiarch dir).
DEFAULT_DELEGATE_DIRS = (
    "/usr/lib/aarch64-linux-gnu", "/usr/lib/arm-linux-gnueabihf", "/usr/lib/x86_64-linux-gnu", "/usr/lib", "/usr/local/lib",
)


@dataclass(frozen=True)
class InferenceConfig:
    """``[inference]``: which delegate libraries a bundle may ask for by name (docs/accelerators.md).

    A bundle's ``runtime.delegates`` holds names only; a name loads the file
    ``delegate_libraries[name]`` (or a well-known one: ``edgetpu`` -> ``libedgetpu.so.1``)
    found in one of ``delegate_dirs``, and nothing else.
    """

    delegate_dirs: list[str] = field(default_factory=lambda: list(DEFAULT_DELEGATE_DIRS))
    delegate_libraries: dict[str, str] = field(default_factory=dict)  # name -> library file name
    # How long the install-time delegate probe (a child process) may take before it counts as failed.
    delegate_probe_timeout_s: float = 120.0
    # Choosing among a bundle's variants (docs/store-and-bundles.md): how long each is timed, and how
    # much slower than the fastest a variant listed earlier in the bundle may be and still be kept.
    variant_timing_ms: int = 300
    variant_tie_pct: float = 5.0


@dataclass(frozen=True)
class LoggingConfig:
    """``[logging]``."""

    level: str = "info"
    format: str = "text"  # text | json


@dataclass(frozen=True)
class UpdatesConfig:
    """``[updates]``: when this device downloads and activates (docs/updates.md)."""

    window: str = ""  # cron of the device's own maintenance window ("" = none); always honoured
    window_minutes: int = 60
    window_tz: str = "UTC"
    daily_budget_bytes: int = 0  # update bytes per UTC day (0 = unlimited)
    metered: bool = False  # a metered link: downloads above metered_max_bytes wait for the window
    metered_max_bytes: int = 0
    nm_metered_file: str = ""  # a file holding NetworkManager's metered flag (yes/no/1..4), when exposed


@dataclass(frozen=True)
class Config:
    """The whole daemon configuration."""

    device: DeviceConfig = field(default_factory=DeviceConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    trust: TrustConfig = field(default_factory=TrustConfig)
    mqtt: MqttConfig | None = None
    models: dict[str, ModelConfig] = field(default_factory=dict)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    source: str = ""
    updates: UpdatesConfig = field(default_factory=UpdatesConfig)

    def model(self, name: str) -> ModelConfig:
        """Serving config of ``name`` (defaults when not configured)."""
        return self.models.get(name, ModelConfig())


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _check(value: Any, tp: Any, where: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _check(value, args[0], where)
    if tp is Any:  # checked by the field's own validation
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, found {type(value).__name__}")
        return [_check(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, found {type(value).__name__}")
        return {str(k): _check(v, item, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value) or abs(value) > MAX_TIMEOUT_S and where.endswith("_s"):
                raise ConfigError(f"{where}: expected a finite number (at most {MAX_TIMEOUT_S:g} s for a time), found {value!r}")
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > MAX_INT:
                raise ConfigError(f"{where}: expected a 64-bit integer, found one of {len(str(abs(value)))} digits")
            return value
    elif isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: expected {_type_name(tp)}, found {type(value).__name__} {value!r}")


def _build(cls: Any, table: Any, where: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, found {type(table).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(repr(k) for k in unknown)}; known: {', '.join(sorted(names))}")
    return cls(**{k: _check(v, hints[k], f"{where}.{k}") for k, v in table.items()})


def _threads_alias(table: Any, where: str) -> Any:
    """``threads`` is another name for ``num_threads`` (the name delegate docs use)."""
    if not isinstance(table, dict) or "threads" not in table:
        return table
    if "num_threads" in table:
        raise ConfigError(f"{where}: 'threads' and 'num_threads' are the same setting; give one")
    out = {k: v for k, v in table.items() if k != "threads"}
    out["num_threads"] = table["threads"]
    return out


def _validate_model(name: str, m: ModelConfig) -> None:
    where = f"models.{name}"
    if m.max_batch_size < 0 or m.max_queue_delay_us < 0 or m.max_queue_size < 1:
        raise ConfigError(f"{where}: max_batch_size and max_queue_delay_us must be >= 0, max_queue_size >= 1")
    if m.instances < 1:
        raise ConfigError(f"{where}.instances: must be >= 1")
    if not 0 <= m.num_threads <= MAX_THREADS:
        raise ConfigError(f"{where}.num_threads: expected 1 to {MAX_THREADS} (0: the bundle's), found {m.num_threads}")
    try:
        parse_delegates(m.delegates, f"{where}.delegates")
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if m.version_policy not in ("latest", "all", "specific"):
        raise ConfigError(f"{where}.version_policy: expected 'latest', 'all' or 'specific', found {m.version_policy!r}")
    if m.version_policy == "specific" and not m.versions:
        raise ConfigError(f"{where}.versions: needed with version_policy 'specific'")
    if m.num_versions < 1:
        raise ConfigError(f"{where}.num_versions: must be >= 1")
    for v, w in m.traffic.items():
        if not (v.isascii() and v.isdigit() and len(v) <= 18) or w < 0:
            raise ConfigError(f"{where}.traffic: keys must be version numbers and weights >= 0, found {v!r} = {w}")
    if m.traffic and sum(m.traffic.values()) <= 0:
        raise ConfigError(f"{where}.traffic: weights must not all be 0")
    if m.execution not in ("auto", "inline", "threads"):
        raise ConfigError(f"{where}.execution: expected 'auto', 'inline' or 'threads', found {m.execution!r}")
    if m.inline_max_us < 0 or m.idle_inline_max_us < 0 or m.shadow < 0 or m.stack_max_us < 0:
        raise ConfigError(f"{where}: inline_max_us, idle_inline_max_us, stack_max_us and shadow must be >= 0")
    if any(b < 1 or (m.max_batch_size and b > m.max_batch_size) for b in m.preferred_batch_sizes):
        raise ConfigError(f"{where}.preferred_batch_sizes: each must be in [1, max_batch_size]")
    d, c = m.drift, m.capture
    if d.threshold < 0 or d.clear < 0 or (d.threshold and d.clear > d.threshold):
        raise ConfigError(f"{where}.drift: threshold and clear must be >= 0 and clear <= threshold, "
                          f"found {d.threshold} and {d.clear}")
    if d.window_rows < 10 or not 1 <= d.min_rows <= d.window_rows or d.max_sketched_per_s < 0:
        raise ConfigError(f"{where}.drift: window_rows must be >= 10, min_rows in [1, window_rows] and "
                          f"max_sketched_per_s >= 0, found {d.window_rows}, {d.min_rows} and {d.max_sketched_per_s}")
    if not 0 <= c.rate <= 1 or c.max_mb < 0:
        raise ConfigError(f"{where}.capture: rate must be in [0, 1] and max_mb >= 0, found {c.rate} and {c.max_mb}")


def check_inference_config(inf: InferenceConfig) -> None:
    """Raise ConfigError naming the first bad ``[inference]`` value."""
    for d in inf.delegate_dirs:
        if not d.startswith("/") or "\x00" in d:
            raise ConfigError(f"inference.delegate_dirs: expected absolute directory paths, found {d!r}")
    try:
        check_library_map(inf.delegate_libraries, "inference.delegate_libraries")
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if not 0 < inf.delegate_probe_timeout_s <= MAX_TIMEOUT_S:
        raise ConfigError(f"inference.delegate_probe_timeout_s: expected (0, {MAX_TIMEOUT_S:g}], "
                          f"found {inf.delegate_probe_timeout_s}")
    if not 1 <= inf.variant_timing_ms <= 60_000 or not 0 <= inf.variant_tie_pct <= 100:
        raise ConfigError("inference: variant_timing_ms must be in [1, 60000] and variant_tie_pct in [0, 100]")


MQTT_PROTOCOLS = ("5", "3.1.1")


def check_broker_options(b: BrokerOptions, where: str) -> None:
    """Raise ConfigError naming the first bad broker key of a table: ``where`` is ``mqtt`` for
    the device's config, ``broker`` for the operator's file (both hold these keys)."""
    from edge_runtime.spec.broker_url import parse_broker_url  # pure; no paho-mqtt

    try:
        parse_broker_url(b.url)
    except UsageError as exc:
        raise ConfigError(f"{where}.url: {exc}") from exc
    if b.protocol not in MQTT_PROTOCOLS:
        raise ConfigError(f"{where}.protocol: expected one of {sorted(MQTT_PROTOCOLS)}, found {b.protocol!r}")


def check_mqtt_config(m: MqttConfig) -> None:
    """Raise ConfigError naming the first ``[mqtt]`` key with a bad value (run by
    :func:`parse_config`, so a bad ``[mqtt]`` stops start-up and a SIGHUP reload alike)."""
    check_broker_options(m, "mqtt")
    if m.trusted_clock not in ("auto", "yes", "no"):
        raise ConfigError(f"mqtt.trusted_clock: expected 'auto', 'yes' or 'no', found {m.trusted_clock!r}")
    positive = {
        "keepalive_s": m.keepalive_s,
        "download_stall_s": m.download_stall_s,
        "download_window_chunks": m.download_window_chunks,
        "max_download_bytes": m.max_download_bytes,
        "max_event_queue": m.max_event_queue,
        "connect_timeout_s": m.connect_timeout_s,
        "activation_timeout_s": m.activation_timeout_s,
        "receive_maximum": m.receive_maximum,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"mqtt.{key}: expected a value > 0, found {value}")
    if m.receive_maximum > 65535:
        raise ConfigError(f"mqtt.receive_maximum: expected 1 to 65535, found {m.receive_maximum}")
    if m.keepalive_s > 65535:
        raise ConfigError(f"mqtt.keepalive_s: expected 1 to 65535, found {m.keepalive_s}")
    if m.reconnect_min_s < 0 or m.reconnect_max_s < m.reconnect_min_s:
        raise ConfigError("mqtt.reconnect_min_s must be >= 0 and reconnect_max_s >= reconnect_min_s")
    if m.max_download_bytes_per_s < 0 or not 0 <= m.session_expiry_s <= 2**32 - 1:
        raise ConfigError("mqtt.max_download_bytes_per_s must be >= 0 and mqtt.session_expiry_s in [0, 2^32-1]")
    if bool(m.cert_file) != bool(m.key_file):
        raise ConfigError("mqtt.cert_file and mqtt.key_file go together (TLS client authentication)")
    if not MIN_MESSAGE_BYTES <= m.max_message_bytes <= MAX_MESSAGE_BYTES:
        raise ConfigError(f"mqtt.max_message_bytes: expected {MIN_MESSAGE_BYTES} to {MAX_MESSAGE_BYTES}, "
                          f"found {m.max_message_bytes}")
    check_topic_level(m.fleet, "mqtt.fleet")
    from edge_runtime.spec.topics import PREFIX_RE

    if not PREFIX_RE.match(m.prefix):
        raise ConfigError(f"mqtt.prefix: expected topic levels of [A-Za-z0-9_.:-] joined by '/' "
                          f"(no '+', '#', empty levels or a leading '/'), found {m.prefix[:80]!r}")


def check_topic_level(value: str, key: str) -> None:
    """Raise ConfigError naming ``key`` unless ``value`` can be one MQTT topic level (a fleet or device id)."""
    from edge_runtime.spec.topics import ID_RE  # the one rule for fleet and device ids

    if not ID_RE.match(value):
        raise ConfigError(f"{key}: expected 1 to 128 of [A-Za-z0-9_.:-], starting with a letter or digit "
                          f"(one MQTT topic level: no '/', '+' or '#'), found {value[:80]!r}")


def check_identity(cfg: Config) -> None:
    """Raise ConfigError naming ``device.id`` when it cannot be one topic level (checked when the
    config is loaded, so a bad id stops the daemon before anything listens). Empty means
    /etc/machine-id, checked by :func:`device_id` users at start-up."""
    if cfg.device.id:
        check_topic_level(cfg.device.id, "device.id")


def parse_config(data: dict[str, Any], source: str = "") -> Config:
    """Build a Config from a parsed TOML document."""
    known = {"device", "store", "server", "trust", "mqtt", "models", "logging", "monitoring", "inference", "updates"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown table(s) {', '.join(repr(k) for k in unknown)}; known: {', '.join(sorted(known))}")
    models_table = data.get("models", {})
    if not isinstance(models_table, dict):
        raise ConfigError("models: expected a table of [models.NAME] tables")
    models = {name: _build(ModelConfig, _threads_alias(t, f"models.{name}"), f"models.{name}") for name, t in models_table.items()}
    for name, m in models.items():
        _validate_model(name, m)
    cfg = Config(
        device=_build(DeviceConfig, data.get("device", {}), "device"),
        store=_build(StoreConfig, data.get("store", {}), "store"),
        server=_build(ServerConfig, data.get("server", {}), "server"),
        trust=_build(TrustConfig, data.get("trust", {}), "trust"),
        mqtt=_build(MqttConfig, data["mqtt"], "mqtt") if "mqtt" in data else None,
        models=models,
        logging=_build(LoggingConfig, data.get("logging", {}), "logging"),
        monitoring=_build(MonitoringConfig, data.get("monitoring", {}), "monitoring"),
        inference=_build(InferenceConfig, data.get("inference", {}), "inference"),
        source=source,
        updates=_build(UpdatesConfig, data.get("updates", {}), "updates"),
    )
    check_inference_config(cfg.inference)
    up = cfg.updates
    if up.daily_budget_bytes < 0 or up.metered_max_bytes < 0:
        raise ConfigError("updates: daily_budget_bytes and metered_max_bytes must be >= 0")
    if up.window:
        from edge_runtime.spec.window import parse_window  # pure, stdlib only

        try:
            parse_window(up.window, up.window_minutes, up.window_tz, "updates.window")
        except BadDataError as exc:
            raise ConfigError(str(exc)) from exc
    mon = cfg.monitoring
    if mon.capture_max_kbps <= 0 or mon.min_free_mb < 0 or mon.state_interval_s <= 0 or mon.health_interval_s <= 0:
        raise ConfigError("monitoring: capture_max_kbps, state_interval_s and health_interval_s must be > 0, "
                          "min_free_mb >= 0")
    if cfg.logging.format not in ("text", "json"):
        raise ConfigError(f"logging.format: expected 'text' or 'json', found {cfg.logging.format!r}")
    if cfg.logging.level.lower() not in LOG_LEVELS:
        raise ConfigError(f"logging.level: expected one of {', '.join(LOG_LEVELS)}, found {cfg.logging.level!r}")
    check_identity(cfg)
    if cfg.mqtt is not None:
        check_mqtt_config(cfg.mqtt)
    if cfg.store.max_bundle_bytes < 1:
        raise ConfigError(f"store.max_bundle_bytes: expected an integer >= 1, found {cfg.store.max_bundle_bytes}")
    if cfg.store.keep_versions < 1:
        raise ConfigError(f"store.keep_versions: expected an integer >= 1, found {cfg.store.keep_versions}")
    if not 0 <= cfg.server.port <= 65535 or not -1 <= cfg.server.grpc_port <= 65535:
        raise ConfigError("server.port and server.grpc_port must be in [0, 65535] (grpc_port -1: any free port)")
    srv = cfg.server
    if srv.max_request_bytes < 1024 or srv.swap_poll_ms < 1 or srv.drain_timeout_s < 0 or srv.keep_alive_s <= 0:
        raise ConfigError(
            "server: max_request_bytes must be >= 1024, swap_poll_ms >= 1, drain_timeout_s >= 0 and keep_alive_s > 0"
        )
    if srv.max_connections < 1 or not 0 < srv.request_body_timeout_s <= MAX_TIMEOUT_S:
        raise ConfigError(
            "server: expected max_connections >= 1 and request_body_timeout_s in (0, "
            f"{MAX_TIMEOUT_S:g}], found {srv.max_connections} and {srv.request_body_timeout_s}"
        )
    if srv.max_json_values < 1:
        raise ConfigError(f"server.max_json_values: expected an integer >= 1, found {srv.max_json_values}")
    if srv.max_header_bytes < 1024 or not srv.request_header_timeout_s > 0:
        raise ConfigError(
            "server: expected max_header_bytes >= 1024 and request_header_timeout_s > 0, found "
            f"{srv.max_header_bytes} and {srv.request_header_timeout_s}"
        )
    if not 0 < srv.grpc_idle_timeout_s <= MAX_TIMEOUT_S:
        raise ConfigError(f"server.grpc_idle_timeout_s: expected a number in (0, {MAX_TIMEOUT_S:g}], "
                          f"found {srv.grpc_idle_timeout_s}")
    return cfg


def load_config(path: Path | None) -> Config:
    """Read a TOML config file; ``None`` means the default path if it exists, else defaults."""
    if path is None:
        if not DEFAULT_CONFIG_PATH.is_file():
            return Config()
        path = DEFAULT_CONFIG_PATH
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    cfg = parse_config(data, str(path))
    return dataclasses.replace(cfg, source=str(path))


def device_id(cfg: Config) -> str:
    """The configured device id, else /etc/machine-id."""
    if cfg.device.id:
        return cfg.device.id
    try:
        return Path("/etc/machine-id").read_text().strip() or "unknown"
    except OSError:
        return "unknown"
