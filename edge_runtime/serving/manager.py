"""The model manager: keeps the loaded versions in line with the store and the config.

It runs on its own thread (``edge-model-manager``) and never blocks the event loop:

* Start-up: every model in the store or factory is resolved (active, else last known
  good, else factory; each re-verified by the store), loaded, self-tested and warmed up.
  A version that fails is recorded as failed and the next one is tried.
* Hot swap: the manager polls the ``state.json`` files every ``[server] swap_poll_ms``
  (and at once on :meth:`wake`). When the active version changes to one not recorded as
  failed, it is loaded, self-tested and warmed up off the loop; only then is the routing
  switched (one assignment on the loop thread), ``serving`` recorded in the store, and
  the old version drained (its queued and running requests finish) and unloaded. A version
  that fails is recorded as failed with ``revert_to`` the version still serving, which
  keeps answering: no request fails during a swap.
* Delegates: a version is loaded on the first of its delegates (config, else manifest; the
  CPU last) that loads, allocates, passes the golden self-test and runs a sample; the
  others are skipped with their reasons, logged, recorded in the store beside ``serving``
  and shown in metrics and metadata.
* Tentative activation: before the first interpreter of a store version that has never
  loaded in a serving process is created, the store records it as ``trying``; once it has
  loaded and passed its self-test it is confirmed. Start-up first fails a version a dead
  process left ``trying`` (a delegate that segfaults), so the previous one is served.
* Reload (SIGHUP): batching parameters apply to running executors at once; a change of
  ``instances``, ``num_threads``, ``delegates``, ``execution``, ``inline_max_us`` or the pinned
  ``variant`` (served from the recorded trials, nothing timed again) rebuilds the
  versions concerned and swaps them in the same way; traffic, shadow and version policy
  are re-applied.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from edge_runtime.config import Config, ModelConfig
from edge_runtime.exceptions import BadDataError, EdgeRuntimeError, InferenceError, NotFoundError, StoreError
from edge_runtime.inference import delegates
from edge_runtime.inference.backend import Backend, load_backend
from edge_runtime.inference.selftest import load_golden, run_selftest
from edge_runtime.monitoring.hub import Monitoring
from edge_runtime.serving.codec import Interface
from edge_runtime.serving.metrics import Metrics
from edge_runtime.serving.models import LoadedVersion, ServedModel, batch_policy, build_routing
from edge_runtime.serving.workers import InlineExecutor, ThreadedExecutor, measure_invoke_us, sample_inputs
from edge_runtime.store.store import ModelStore, Resolved
from edge_runtime.store.variants import select_variant

log = logging.getLogger("edge_runtime.serving")

BUILD_KEYS = ("instances", "num_threads", "delegates", "execution", "inline_max_us", "idle_inline_max_us", "stack_max_us",
              "variant")

# Start-up tries the store's choice, then (each failure recorded, so the store resolves further
# down) the last known good, older good versions and the factory bundle. Each attempt loads a
# model, so a store whose versions all fail is given up on after this many; the model then
# answers 503 with the last problem until the store changes.
MAX_START_ATTEMPTS = 6


def _build_key(cfg: ModelConfig) -> tuple[Any, ...]:
    return tuple(getattr(cfg, k) for k in BUILD_KEYS)


class ModelManager:
    """Loads, swaps and unloads model versions; publishes routings to the event loop."""

    def __init__(
        self,
        store: ModelStore,
        cfg: Config,
        metrics: Metrics,
        loop: asyncio.AbstractEventLoop,
        on_serving_change: Callable[[dict[str, int | None]], None] | None = None,
        monitoring: Monitoring | None = None,
    ) -> None:
        self.store = store
        self.monitoring = monitoring
        self.cfg = cfg
        self.metrics = metrics
        self.loop = loop
        self.on_serving_change = on_serving_change
        self.served: dict[str, ServedModel] = {}  # read and written on the loop thread only
        self._loaded: dict[str, dict[int, LoadedVersion]] = {}  # the manager thread's view
        self._default: dict[str, LoadedVersion] = {}
        self._built: dict[str, list[LoadedVersion]] = {}  # every live LoadedVersion object per model
        self._warned: set[str] = set()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pending_cfg: Config | None = None
        self._busy = threading.Lock()
        self._thread: threading.Thread | None = None
        self._signature: Any = None
        self._notified_problems: dict[str, str] = {}
        self.initial_done = threading.Event()

    # -- public, thread-safe -----------------------------------------------------------

    def start(self) -> None:
        """Load every model now (blocking), then keep watching the store on a thread."""
        with self._busy:
            names = self.store.models()
            for name in names:  # before anything loads: a version that killed the last process
                self.store.recover_trying(name)
            self._signature = self._store_signature()

            def placeholders() -> None:  # known names answer 503 "loading", not 404, meanwhile
                for name in names:
                    self.served.setdefault(name, ServedModel(name))

            self._on_loop(placeholders)
            for name in names:
                self._reconcile(name)
        self.initial_done.set()
        self._notify_serving()
        self._thread = threading.Thread(target=self._run, name="edge-model-manager", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look at the store now instead of at the next poll."""
        self._wake.set()

    def reload(self, cfg: Config) -> None:
        """Apply a new config (SIGHUP) on the manager thread."""
        self._pending_cfg = cfg
        self._wake.set()

    def stop(self, timeout_s: float) -> None:
        """Stop watching, then drain and unload every version (after the HTTP server stopped)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        with self._busy:
            every = [lv for built in self._built.values() for lv in built]
            self._built.clear()
            self._loaded.clear()
            self._default.clear()
            for lv in every:  # the HTTP server has stopped: no thread uses the loop's interpreters any more
                if not lv.executor.inline:
                    lv.executor.retire()
            for lv in every:
                lv.executor.join(timeout_s)

    def serving(self) -> dict[str, int | None]:
        """The default version of each model (None when none is loaded)."""
        served = self.served.copy()  # written on the loop thread; a C-level copy is atomic under the GIL
        default = self._default.copy()
        names = set(self._loaded) | set(served)
        return {n: (default[n].version if n in default else None) for n in sorted(names)}

    def problems(self) -> dict[str, str]:
        """Models that are not being served and why."""
        out = {n: sm.problem for n, sm in self.served.copy().items() if sm.routing is None and sm.problem}
        for fb in self.store.factory_refused(rescan=False):  # a refused factory bundle serves nothing
            name = fb.claimed or fb.path.name
            if name not in self._default.copy():
                out.setdefault(name, f"factory bundle {fb.path.name} refused: {fb.problem}")
        return out

    # -- the manager thread ------------------------------------------------------------

    def _run(self) -> None:
        poll_s = self.cfg.server.swap_poll_ms / 1000
        while not self._stop.is_set():
            woken = self._wake.wait(poll_s)
            if self._stop.is_set():
                return
            self._wake.clear()
            try:
                with self._busy:
                    cfg = self._pending_cfg
                    if cfg is not None:
                        self._pending_cfg = None
                        self._apply_config(cfg)
                        woken = True
                    signature = self._store_signature()
                    if not woken and signature == self._signature:
                        continue
                    self._signature = signature
                    names = sorted(set(self.store.models()) | set(self._loaded))
                    changed = False
                    for name in names:
                        if self._stop.is_set():
                            return
                        changed |= self._reconcile(name)
                if changed or self.problems() != self._notified_problems:  # a model that newly cannot serve
                    self._notify_serving()
            except Exception:  # keep watching; the next change retries
                log.exception("model manager: reconcile failed")

    def _store_signature(self) -> Any:
        return self.store.signature(set(self.store.models()) | set(self._loaded))

    def _apply_config(self, cfg: Config) -> None:
        old = self.cfg
        self.cfg = cfg
        self._warned.clear()
        for name, versions in self._loaded.items():
            mcfg = cfg.model(name)
            if mcfg != old.model(name):
                log.info("serving config of %s changed", name, extra={"model": name})
            for lv in versions.values():
                lv.executor.set_policy(batch_policy(mcfg, lv.iface.batchable))
                if lv.monitor is not None and (mcfg.drift, mcfg.capture) != (lv.config.drift, lv.config.capture):
                    lv.monitor = lv.monitor.reconfigured(mcfg.drift, mcfg.capture)

    # -- reconciling one model ---------------------------------------------------------

    def _reconcile(self, name: str) -> bool:
        """Bring one model in line with the store and config; True when its default changed."""
        mcfg = self.cfg.model(name)
        default = self._default.get(name)
        if default is None:
            default = self._start_model(name, mcfg)
            if default is None:
                return False
            previous: LoadedVersion | None = None
        else:
            previous = default
            default = self._maybe_swap(name, default, mcfg)
        loaded = self._loaded.setdefault(name, {})
        if _build_key(default.config) != _build_key(mcfg):
            rebuilt = self._rebuild(name, default, mcfg)
            if rebuilt is not None:
                default = rebuilt
        loaded[default.version] = default
        wanted = self._wanted_versions(name, default, mcfg)
        for v in sorted(wanted - {default.version}):
            lv = loaded.get(v)
            if lv is not None and _build_key(lv.config) != _build_key(mcfg):
                lv = self._rebuild(name, lv, mcfg)
            if lv is None:
                lv = self._load_extra(name, v, mcfg)
            if lv is not None:
                loaded[v] = lv
        keep = {v: lv for v, lv in loaded.items() if v in wanted or v == default.version}
        current = {id(lv) for lv in keep.values()}
        retired = [lv for lv in self._built.get(name, []) if id(lv) not in current]
        routing, warnings = build_routing(default, keep, mcfg)
        for w in warnings:
            if f"{name}:{w}" not in self._warned:
                self._warned.add(f"{name}:{w}")
                log.warning("%s: %s", name, w, extra={"model": name})
        self._loaded[name] = dict(keep)
        self._default[name] = default
        self._built[name] = list(keep.values())
        self._publish(name, routing, retired)
        try:
            # Recorded as soon as the routing answers with it, before it is reported and before
            # the old version is drained and reported unloaded: a reader of the log never finds
            # state.json behind it.
            changed = previous is None or previous is not default
            if changed:
                self.store.record_serving(name, default.version, default.delegate_report(),
                                          factory=default.source == "factory")
            if previous is not None and previous.version != default.version:
                self.metrics.swap(name, "success")
                log.info(
                    "%s: now serving v%d (was v%d)", name, default.version, previous.version,
                    extra={"model": name, "version": default.version},
                )
        finally:
            self._unload(name, retired)
        return changed

    def _start_model(self, name: str, mcfg: ModelConfig) -> LoadedVersion | None:
        """Start-up resolution with fallback: store's choice, then last known good, then factory."""
        tried: set[tuple[str, int]] = set()
        problem = "nothing to load"
        for _ in range(MAX_START_ATTEMPTS):
            try:
                r = self.store.resolve(name)
                state = self.store.readable_state(name)
                if r.source == "store" and ((r.source, r.version) in tried or r.version in state.failed):
                    r = self.store.resolved_factory(name, f"v{r.version} failed before")
            except EdgeRuntimeError as exc:
                problem = unservable_reason(self.store, name, exc)
                break
            if (r.source, r.version) in tried:
                break
            tried.add((r.source, r.version))
            if r.fallback_reason is not None:
                self.metrics.fallback(name)
            try:
                lv = self._load(r, mcfg)
            except (BadDataError, StoreError, InferenceError) as exc:
                problem = f"{r.source} v{r.version}: {exc}"
                if r.source != "factory":  # recorded before it is reported, like every state change
                    self.store.record_failure(name, r.version, str(exc), revert_to=self._usable_lkg(name, r.version))
                log.error("%s: cannot serve v%d: %s", name, r.version, exc, extra={"model": name, "version": r.version})
                if r.source == "factory":
                    break
                continue
            log.info(
                "%s: serving v%d from the %s on %s (%s, batch-1 run %.1f µs)", name, lv.version, lv.source, lv.delegate,
                lv.mode, lv.invoke_us,
                extra={"model": name, "version": lv.version},
            )
            return lv
        self._publish_problem(name, problem)
        return None

    def _usable_lkg(self, name: str, failing: int) -> int | None:
        state = self.store.readable_state(name)
        lkg = state.last_known_good
        return lkg if lkg != failing and state.usable(lkg) else None

    def _maybe_swap(self, name: str, default: LoadedVersion, mcfg: ModelConfig) -> LoadedVersion:
        state = self.store.readable_state(name)
        target = state.active
        if target is None or target == default.version or not state.usable(target):
            return default
        if target not in self.store.versions(name):
            return default
        existing = self._loaded.get(name, {}).get(target)
        if existing is not None:
            return existing
        revert = default.version if default.source == "store" else None
        try:
            resolved = self.store.resolved_version(name, target)
        except (BadDataError, StoreError) as exc:
            self.store.quarantine(name, target, str(exc))
            self.store.record_failure(name, target, f"verification failed: {exc}", revert_to=revert)
            self.metrics.swap(name, "failed")
            return default
        try:
            return self._load(resolved, mcfg)
        except (BadDataError, StoreError, InferenceError) as exc:
            self.store.record_failure(name, target, str(exc), revert_to=revert)
            self.metrics.swap(name, "failed")
            log.error(
                "%s: v%d not swapped in, v%d keeps serving: %s", name, target, default.version, exc,
                extra={"model": name, "version": target, "reason": str(exc)},
            )
            return default

    def _wanted_versions(self, name: str, default: LoadedVersion, mcfg: ModelConfig) -> set[int]:
        state = self.store.readable_state(name)
        good = [v for v in self.store.versions(name) if state.usable(v)]
        wanted = {default.version}
        if mcfg.version_policy == "all":
            wanted |= set(good)
        elif mcfg.version_policy == "specific":
            wanted |= {v for v in mcfg.versions if v in good}
        elif default.source == "store":
            below = sorted((v for v in good if v < default.version), reverse=True)
            wanted |= set(below[: mcfg.num_versions - 1])
        wanted |= {int(v) for v, w in mcfg.traffic.items() if w > 0 and int(v) in good}
        if mcfg.shadow and mcfg.shadow in good:
            wanted.add(mcfg.shadow)
        return wanted

    def _load_extra(self, name: str, version: int, mcfg: ModelConfig) -> LoadedVersion | None:
        try:
            return self._load(self.store.resolved_version(name, version), mcfg)
        except (BadDataError, StoreError) as exc:
            self.store.quarantine(name, version, str(exc))
        except InferenceError as exc:
            self.store.record_failure(name, version, str(exc))
        return None

    def _rebuild(self, name: str, lv: LoadedVersion, mcfg: ModelConfig) -> LoadedVersion | None:
        try:
            if lv.source == "factory":
                resolved = self.store.resolved_factory(name)
            else:
                resolved = self.store.resolved_version(name, lv.version)
            return self._load(resolved, mcfg)
        except EdgeRuntimeError as exc:
            log.error("%s v%d: rebuild with the new config failed, keeping the old one: %s", name, lv.version, exc)
            return None

    # -- loading -----------------------------------------------------------------------

    def _load(self, resolved: Resolved, mcfg: ModelConfig) -> LoadedVersion:
        """:meth:`_build` a version; a store version is ``trying`` (persisted) until it is built."""
        if resolved.source != "store":
            return self._build_variant(resolved, mcfg)
        self.store.begin_trying(resolved.name, resolved.version)  # before any interpreter exists
        try:
            lv = self._build_variant(resolved, mcfg)
        except BaseException:
            self.store.end_trying(resolved.name, resolved.version, confirmed=False)
            raise
        self.store.end_trying(resolved.name, resolved.version, confirmed=True)
        return lv

    def _build_variant(self, resolved: Resolved, mcfg: ModelConfig) -> LoadedVersion:
        """:meth:`_build` the variant this device serves when the bundle carries several (tried and
        timed once per fingerprint, then chosen from the record: store/variants.py)."""
        if len(resolved.manifest.variants) <= 1:
            return self._build(resolved, mcfg)
        view, choice = select_variant(self.store, resolved, mcfg, self.cfg.inference)
        lv = self._build(view, mcfg)
        lv.variant = choice
        return lv

    def _build(self, resolved: Resolved, mcfg: ModelConfig) -> LoadedVersion:
        """Load, self-test, warm up and time a verified version; pick inline or threaded execution."""
        manifest = resolved.manifest
        t0 = time.perf_counter()
        threads = delegates.threads(mcfg, manifest)
        plan = delegates.plan(mcfg, manifest, self.cfg.inference)
        golden = load_golden(manifest, resolved.golden_bytes)

        def check(candidate: Backend) -> None:  # the self-test runs on the delegate that will serve
            run_selftest(candidate, manifest, resolved.golden_bytes)
            candidate.run(sample_inputs(candidate, golden))

        backend = load_backend(manifest, resolved.model, threads, plan, check)
        backends: list[Backend] = [backend]
        for skip in backend.skipped:
            log.warning(
                "%s v%d: delegate %s skipped (%s): %s", resolved.name, resolved.version, skip.delegate, skip.kind,
                skip.reason, extra={"model": resolved.name, "version": resolved.version, "reason": skip.reason},
            )
        # Further interpreters run on the same delegate, or the version fails to load.
        chosen = next((s for s in plan if s.name == backend.delegate), delegates.XNNPACK)
        same = (chosen,) if manifest.format == "tflite" else ()
        try:
            sample = sample_inputs(backend, golden)
            invoke_us = measure_invoke_us(backend, sample)
            iface = Interface(manifest)
            stats = self.metrics.version(resolved.name, resolved.version)
            inline = mcfg.execution == "inline" or (mcfg.execution == "auto" and invoke_us <= mcfg.inline_max_us)
            executor: InlineExecutor | ThreadedExecutor
            if inline:
                executor = InlineExecutor(backend, stats)
            else:
                for _ in range(mcfg.instances - 1):
                    extra = load_backend(manifest, resolved.model, threads, same, fallback=False)
                    backends.append(extra)
                    extra.run(sample)
                loop_backend = None
                if invoke_us <= mcfg.idle_inline_max_us:
                    loop_backend = load_backend(manifest, resolved.model, threads, same, fallback=False)
                    backends.append(loop_backend)  # closed with the others if start-up fails below
                    loop_backend.run(sample)
                policy = batch_policy(mcfg, iface.batchable)
                workers = [b for b in backends if b is not loop_backend]
                executor = ThreadedExecutor(
                    workers, policy, stats, self.loop, f"{resolved.name}-v{resolved.version}", loop_backend,
                    stack=invoke_us <= mcfg.stack_max_us,
                )
        except BaseException:
            for b in backends:
                b.close()
            raise
        log.debug(
            "%s v%d loaded in %.0f ms", resolved.name, resolved.version, (time.perf_counter() - t0) * 1000,
            extra={"model": resolved.name, "version": resolved.version},
        )
        monitor = None
        if self.monitoring is not None:
            monitor = self.monitoring.attach(
                resolved.name, resolved.version, [s.name for s in iface.inputs], [s.name for s in iface.outputs],
                resolved.profile_bytes, mcfg.drift, mcfg.capture, iface.inputs, iface.outputs,
            )
            if monitor.profile_problem and resolved.profile_bytes is not None:
                log.warning("%s v%d: no drift figures: %s", resolved.name, resolved.version, monitor.profile_problem,
                            extra={"model": resolved.name, "version": resolved.version})
        return LoadedVersion(
            resolved.name, resolved.version, manifest, iface, executor, stats, resolved.source, invoke_us, mcfg,
            monitor=monitor,
            delegate=backend.delegate, skipped=backend.skipped,
        )

    # -- publishing to the event loop ----------------------------------------------------

    def _on_loop(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop thread and wait until it has run."""
        done = threading.Event()

        def call() -> None:
            try:
                fn()
            finally:
                done.set()

        try:
            self.loop.call_soon_threadsafe(call)
        except RuntimeError:  # loop closed: nobody serves requests any more
            fn()
            return
        while not done.wait(0.2):
            if self.loop.is_closed() or not self.loop.is_running():
                fn()
                return

    def _publish(self, name: str, routing: Any, retired: list[LoadedVersion]) -> None:
        """Switch the routing on the loop thread and stop ``retired`` taking requests; see :meth:`_unload`."""
        def install() -> None:
            sm = self.served.get(name)
            if sm is None:
                sm = self.served[name] = ServedModel(name)
            sm.routing = routing
            sm.problem = None
            sm.known_versions = sorted(routing.versions)
            for lv in retired:
                lv.executor.retire()  # inline interpreters are closed here, on their owner thread

        self._on_loop(install)

    def _unload(self, name: str, retired: list[LoadedVersion]) -> None:
        """Wait for retired versions to finish what they had queued (they take no new requests)."""
        for lv in retired:
            drained = lv.executor.join(self.cfg.server.drain_timeout_s)
            if self.monitoring is not None:
                self.monitoring.detach(name, lv.version, lv.monitor)
            log.info(
                "%s: v%d unloaded%s", name, lv.version, "" if drained else " (drain timed out)",
                extra={"model": name, "version": lv.version},
            )

    def _publish_problem(self, name: str, problem: str) -> None:
        def install() -> None:
            sm = self.served.get(name)
            if sm is None:
                sm = self.served[name] = ServedModel(name)
            if sm.routing is None:
                sm.problem = problem

        self._on_loop(install)

    def _notify_serving(self) -> None:
        self._notified_problems = self.problems()
        if self.on_serving_change is not None:
            try:
                self.on_serving_change(self.serving())
            except Exception:
                log.exception("serving-change callback failed")

    # -- metrics views (serving.metrics.LoadedViews; called on the loop thread while scraping)

    def queue_depths(self) -> Iterator[tuple[str, int, int]]:
        """(model, version, requests waiting) per routed version."""
        for name, sm in list(self.served.items()):
            if sm.routing is not None:
                for v, lv in sm.routing.versions.items():
                    yield name, v, lv.executor.queue_depth()

    def delegates(self) -> Iterator[tuple[str, int, str, Any]]:
        """(model, version, delegate in use, skipped delegates) per routed version."""
        for name, sm in list(self.served.items()):
            if sm.routing is not None:
                for v, lv in sm.routing.versions.items():
                    yield name, v, lv.delegate, lv.skipped

    def variants(self) -> Iterator[tuple[str, int, Any]]:
        """(model, version, the variant choice) per routed version of a bundle with several variants."""
        for name, sm in list(self.served.items()):
            if sm.routing is not None:
                for v, lv in sm.routing.versions.items():
                    if lv.variant is not None:
                        yield name, v, lv.variant

    def loaded_roles(self) -> Iterator[tuple[str, int, str]]:
        """(model, version, role) per routed version."""
        for name, sm in list(self.served.items()):
            if sm.routing is not None:
                for v, role in sm.routing.roles():
                    yield name, v, role


def unservable_reason(store: ModelStore, name: str, exc: EdgeRuntimeError) -> str:
    """Why no version of ``name`` can be resolved, as readiness and the ``ready:`` line show it.

    The store falls back to the factory bundle last, so an error from resolving is the factory
    bundle's own unless there is none: say which file was refused, the reason an operator acts on.
    """
    try:
        factory = store.factory_bundle(name)
    except (EdgeRuntimeError, OSError):
        factory = None
    if factory is not None and not isinstance(exc, NotFoundError):
        return f"factory bundle {factory.name} refused: {exc}"
    return str(exc)
