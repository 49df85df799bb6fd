"""A simulated fleet: many real device update clients in one or a few processes.

Each simulated device is what ``edge-runtime fleet agent`` runs: its own device id, store
directory, MQTT client id and persistent session, running the real
:class:`~edge_runtime.updates.service.UpdateService` (and so the real
:class:`~edge_runtime.updates.updater.Updater`), with the self-test in-process and no HTTP
serving. Nothing of the protocol is re-implemented here.

:class:`Fault` makes the self-test of chosen versions fail on chosen devices, as a device
whose interpreter mis-computes an operator the new release uses would: the device loads the
release with the real backend, but its outputs are shifted before the real golden
comparison, which then fails; the device records the failure, rolls back and reports it.

:class:`SimulatedFleet` spreads the devices over worker processes (``processes=0`` keeps
them in the calling process). Each device costs two threads (the service's ``edge-mqtt``
and ``edge-updates``) and about five file descriptors; worker processes keep the GIL
contention of hundreds of threads off one interpreter and let the fleet use every core.
Workers are started with ``spawn`` (forking a process that already runs threads is unsafe).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.bundle.reader import BundleLimits
from edge_runtime.config import parse_config
from edge_runtime.exceptions import TransportError, UsageError
from edge_runtime.inference.backend import Backend, load_backend
from edge_runtime.inference.selftest import run_selftest, selftest_version
from edge_runtime.store.store import ModelStore, Resolved
from edge_runtime.trust.root import TrustRoot, verify_root
from edge_runtime.updates.protocol import check_id
from edge_runtime.updates.service import UpdateService

log = logging.getLogger("edge_runtime.fleet.simulate")

START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0
FAULT_OFFSET = 1.0  # added to every output of a faulty device: far outside any golden tolerance
DEFAULT_MQTT: dict[str, Any] = {"reconnect_min_s": 0.1, "reconnect_max_s": 2.0, "download_stall_s": 10.0}


@dataclass(frozen=True)
class Fault:
    """Devices whose self-test of ``model`` at any of ``versions`` fails."""

    model: str
    versions: frozenset[int]
    devices: frozenset[str]

    def applies(self, device: str, name: str, version: int) -> bool:
        """Whether ``device`` mis-computes ``name`` v``version``."""
        return device in self.devices and name == self.model and version in self.versions


class MiscomputingBackend(Backend):
    """A real backend whose outputs come back shifted by ``offset`` (a faulty device's interpreter)."""

    def __init__(self, inner: Backend, offset: float = FAULT_OFFSET) -> None:
        super().__init__(inner.manifest)
        self.inner = inner
        self.offset = offset

    def _invoke(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError("run() delegates to the wrapped backend")  # pragma: no cover

    def run(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The wrapped backend's outputs plus ``offset``."""
        return [np.asarray(out, dtype=np.float64) + self.offset for out in self.inner.run(arrays)]

    def close(self) -> None:
        """Release the wrapped interpreter."""
        self.inner.close()


def device_selftest(device: str, faults: Iterable[Fault]) -> Callable[[Resolved], None]:
    """The in-process self-test of one simulated device: the real one, with ``faults`` applied."""
    mine = [f for f in faults if device in f.devices]
    if not mine:
        return selftest_version

    def selftest(resolved: Resolved) -> None:
        backend = load_backend(resolved.manifest, resolved.model)
        if any(f.applies(device, resolved.name, resolved.version) for f in mine):
            backend = MiscomputingBackend(backend)
        try:
            run_selftest(backend, resolved.manifest, resolved.golden_bytes)
        finally:
            backend.close()

    return selftest


@dataclass(frozen=True)
class SimSettings:
    """What every simulated device shares. ``mqtt`` adds or overrides ``[mqtt]`` keys."""

    url: str
    fleet: str
    root_file: Path
    work_dir: Path
    factory_dir: Path | None = None
    prefix: str = "edge"
    mqtt: Mapping[str, Any] = field(default_factory=dict)
    faults: tuple[Fault, ...] = ()
    log_level: str = "warning"
    # Per-device [mqtt] keys over ``mqtt`` (each device's own TLS client certificate, as
    # ``fleet provision`` writes them) and [store] keys (e.g. keep_versions).
    device_mqtt: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    store: Mapping[str, Any] = field(default_factory=dict)
    # ``[updates]`` tables (windows, budgets) by device id, "*" for every other device.
    updates: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def store_dir(self, device: str) -> Path:
        """Where ``device`` keeps its store (and, under ``.updates``, its update state)."""
        return self.work_dir / device / "store"


def device_ids(count: int, prefix: str = "sim") -> list[str]:
    """``sim-0000``, ``sim-0001``, ... (zero-padded so they sort in order)."""
    width = max(4, len(str(count - 1)))
    return [f"{prefix}-{i:0{width}d}" for i in range(count)]


class DeviceGroup:
    """Simulated devices in this process."""

    def __init__(self, settings: SimSettings, ids: Sequence[str]) -> None:
        for d in ids:
            check_id(d, "device id")
        self.settings = settings
        self.ids = list(ids)
        self.root: TrustRoot = verify_root(Path(settings.root_file).read_bytes())
        self.services: dict[str, UpdateService] = {}

    def _service(self, device: str) -> UpdateService:
        s = self.settings
        store_table: dict[str, Any] = {"path": str(s.store_dir(device)), **dict(s.store)}
        if s.factory_dir is not None:
            store_table["factory"] = str(s.factory_dir)
        doc: dict[str, Any] = {
            "device": {"id": device},
            "store": store_table,
            "trust": {"root": str(s.root_file)},
            "mqtt": {"url": s.url, "fleet": s.fleet, "prefix": s.prefix, **DEFAULT_MQTT, **dict(s.mqtt),
                     **dict(s.device_mqtt.get(device, {}))},
        }
        updates = s.updates.get(device, s.updates.get("*"))
        if updates is not None:
            doc["updates"] = dict(updates)
        cfg = parse_config(doc, source=f"simulated device {device}")
        store = ModelStore(Path(cfg.store.path), self.root, s.factory_dir, BundleLimits(),
                           keep_versions=cfg.store.keep_versions)
        # A faulty device runs the real in-process self-test with its fault applied.
        return UpdateService(cfg, store, device, selftest_in_process=True, selftest=device_selftest(device, s.faults))

    def start(self, timeout_s: float = START_TIMEOUT_S) -> DeviceGroup:
        """Start every device; returns once each has loaded its saved update state."""
        for d in self.ids:
            self.services[d] = self._service(d).start()
        deadline = time.monotonic() + timeout_s
        for d, svc in self.services.items():
            if not svc.loaded.wait(max(0.0, deadline - time.monotonic())):
                raise TransportError(f"simulated device {d} did not start within {timeout_s:g} s")
        return self

    def stop(self) -> None:
        """Stop every device (in parallel: each says ``online: false`` and disconnects)."""
        with ThreadPoolExecutor(max_workers=16, thread_name_prefix="sim-stop") as pool:
            list(pool.map(lambda svc: svc.stop(), self.services.values()))
        self.services.clear()


def process_stats(devices: int) -> dict[str, Any]:
    """Resource use of this process: RSS and its peak (kB), threads, open descriptors, CPU seconds."""
    status: dict[str, str] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            status[key] = value.strip()
        fds = len(os.listdir("/proc/self/fd"))
    except OSError:
        fds = -1
    t = os.times()
    return {
        "pid": os.getpid(),
        "devices": devices,
        "rss_kb": int(status.get("VmRSS", "0 kB").split()[0]),
        "hwm_kb": int(status.get("VmHWM", "0 kB").split()[0]),
        "threads": int(status.get("Threads", "0")),
        "fds": fds,
        "cpu_s": round(t.user + t.system, 2),
    }


def _worker_main(settings: SimSettings, ids: list[str], conn: Connection, index: int) -> None:
    """A worker process: run ``ids`` until told to stop (or until the parent goes away)."""
    handler = logging.FileHandler(Path(settings.work_dir) / f"worker-{index}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(threadName)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    group = DeviceGroup(settings, ids)
    try:
        group.start()
    except Exception as exc:  # reported to the parent, which raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        group.stop()
        return
    conn.send(("started", len(ids)))
    try:
        while True:
            try:
                command = conn.recv()
            except EOFError:
                break
            if command == "stats":
                conn.send(("stats", process_stats(len(ids))))
            elif command == "stop":
                break
    finally:
        group.stop()
        try:
            conn.send(("stopped", len(ids)))
        except OSError:
            pass


class SimulatedFleet:
    """``ids`` as simulated devices in ``processes`` worker processes (0: in this process)."""

    def __init__(self, settings: SimSettings, ids: Sequence[str], processes: int = 0) -> None:
        if processes < 0:
            raise UsageError(f"processes must be >= 0, found {processes}")
        if len(set(ids)) != len(ids):
            raise UsageError("simulated device ids must be unique")
        self.settings = settings
        self.ids = list(ids)
        self.processes = min(processes, len(self.ids))
        self.root = verify_root(Path(settings.root_file).read_bytes())
        self._local: DeviceGroup | None = None
        self._workers: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []

    def __enter__(self) -> SimulatedFleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout_s: float = START_TIMEOUT_S) -> SimulatedFleet:
        """Start every device; returns once all have started (they connect on their own threads)."""
        Path(self.settings.work_dir).mkdir(parents=True, exist_ok=True)
        if self.processes == 0:
            self._local = DeviceGroup(self.settings, self.ids).start(timeout_s)
            return self
        ctx = multiprocessing.get_context("spawn")
        for k in range(self.processes):
            ids = self.ids[k :: self.processes]
            parent, child = ctx.Pipe()
            worker = ctx.Process(target=_worker_main, args=(self.settings, ids, child, k), name=f"sim-worker-{k}", daemon=True)
            worker.start()
            child.close()
            self._workers.append((worker, parent))
        deadline = time.monotonic() + timeout_s
        for proc, conn in self._workers:
            kind, value = self._receive(proc, conn, deadline)
            if kind != "started":
                name = proc.name
                self.stop()
                raise TransportError(f"simulator worker {name} failed to start: {value}")
        return self

    @staticmethod
    def _receive(proc: multiprocessing.process.BaseProcess, conn: Connection, deadline: float) -> tuple[str, Any]:
        while not conn.poll(0.1):
            if not proc.is_alive():
                return "error", f"exited with code {proc.exitcode}"
            if time.monotonic() > deadline:
                return "error", "no answer in time"
        try:
            message: tuple[str, Any] = conn.recv()
        except EOFError:
            return "error", f"exited with code {proc.exitcode}"
        return message

    def stats(self) -> list[dict[str, Any]]:
        """Resource use of each process that runs devices."""
        if self._local is not None:
            return [process_stats(len(self.ids))]
        out = []
        for proc, conn in self._workers:
            conn.send("stats")
            kind, value = self._receive(proc, conn, time.monotonic() + 30)
            if kind == "stats":
                out.append(value)
        return out

    def store(self, device: str) -> ModelStore:
        """A read-only view of ``device``'s store (its state files are on disk)."""
        return ModelStore(self.settings.store_dir(device), self.root, self.settings.factory_dir, BundleLimits())

    def active(self, device: str, name: str) -> int | None:
        """The active version of ``name`` in ``device``'s store."""
        return self.store(device).state(name).active

    def stop(self) -> None:
        """Stop every device and worker."""
        if self._local is not None:
            self._local.stop()
            self._local = None
        for _, conn in self._workers:
            try:
                conn.send("stop")
            except OSError:
                pass
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc, conn in self._workers:
            self._receive(proc, conn, deadline)
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(5)
            conn.close()
        self._workers.clear()


__all__ = [
    "DeviceGroup",
    "Fault",
    "MiscomputingBackend",
    "SimSettings",
    "SimulatedFleet",
    "device_ids",
    "device_selftest",
    "process_stats",
]
