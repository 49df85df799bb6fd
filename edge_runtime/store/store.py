"""The device store: ``<store>/<name>/<version>/`` plus ``<store>/<name>/state.json``.

Installs are verified before anything is written, written to a temporary directory
(each file fsynced, :func:`edge_runtime.atomic.atomic_dir`), renamed into place and the directory fsynced; only then is
``state.json`` updated (atomically). A crash at any point leaves the old state or the
new one. A version at or below ``highest_seen`` is refused unless it is the very same
bundle. Start-up (:meth:`ModelStore.resolve`) re-verifies what it is about to load and
falls back from the active version to the last known good, then to the factory bundle,
recording each step and its reason in the model's history. Tentative activation (a version
is ``trying`` until it loads in a serving process) is described in :mod:`.state`; retention
(``keep_versions``, :meth:`ModelStore.remove`) in :mod:`.retention`; factory bundles are known
by their verified manifests (:mod:`.factory`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import io
import logging
import os
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.atomic import atomic_dir
from edge_runtime.bundle.manifest import MANIFEST_FILE, NAME_RE, SIGNATURE_FILE, Manifest, parse_manifest
from edge_runtime.bundle.reader import Bundle, BundleLimits, open_bundle, stream_verify, verify_manifest_signature
from edge_runtime.bundle.sealed import content_key, open_sealed
from edge_runtime.exceptions import BadDataError, EdgeRuntimeError, NotFoundError, RollbackError, StoreError
from edge_runtime.store import lifecycle
from edge_runtime.store.factory import FACTORY_SUFFIX, FactoryBundle, FactoryDir
from edge_runtime.store.retention import Pins
from edge_runtime.store.state import ModelState, read_state, write_state
from edge_runtime.trust.device_keys import DeviceKey
from edge_runtime.trust.root import TrustRoot

log = logging.getLogger("edge_runtime.store")

STATE_FILE = "state.json"
LOCK_FILE = ".lock"


@dataclass(frozen=True)
class Resolved:
    """A verified version ready to load: from the store (``model_path``) or the factory (``model_bytes``)."""

    name: str
    version: int
    manifest: Manifest
    source: str
    model_path: Path | None = None
    model_bytes: bytes | None = None
    fallback_reason: str | None = None
    golden_bytes: bytes | None = None  # the verified golden.npz, when the manifest names one
    profile_bytes: bytes | None = None  # the verified profile.json (reference profile), when there is one

    @property
    def model(self) -> Path | bytes:
        """What a backend loads: a path, or bytes for the read-only factory bundle."""
        if self.model_path is not None:
            return self.model_path
        assert self.model_bytes is not None
        return self.model_bytes


@dataclass(frozen=True)
class InstallResult:
    """What ``install`` did."""

    name: str
    version: int
    already_installed: bool


class ModelStore:
    """A versioned model store rooted at ``path`` with an optional read-only factory dir."""

    def __init__(
        self,
        path: Path,
        root: TrustRoot,
        factory: Path | None = None,
        limits: BundleLimits | None = None,
        bundle_check: Callable[[Bundle], None] | None = None,
        keep_versions: int | None = None,
        pins: Pins | None = None,
        *,
        device_key: DeviceKey | None = None,
    ) -> None:
        self.path = Path(path)
        # Run on every bundle before it is installed; raises (e.g. AcceleratorError: it needs a
        # delegate this device lacks) to refuse it. See edge_runtime.inference.delegates.InstallCheck.
        self.bundle_check = bundle_check
        self.root = root
        self.factory = Path(factory) if factory else None
        self.limits = limits or BundleLimits()
        self.write_fault: str | None = None  # the last thing the daemon could not record, and why
        # Retention after each activation (None: keep everything); ``pins`` names the versions
        # the serving config asks for, which are kept too (store/retention.py).
        self.keep_versions = keep_versions
        self.pins = pins
        self.factory_dir = FactoryDir(self.factory, lambda: self.root, self.limits)
        # ``[trust] device_key``: opens encrypted releases (bundle/sealed.py), in memory only.
        self.device_key = device_key

    # -- paths and locking -------------------------------------------------------------

    def model_dir(self, name: str) -> Path:
        """``<store>/<name>``; NotFoundError for a name a manifest could not have."""
        if not NAME_RE.fullmatch(name):
            raise NotFoundError(f"invalid model name {name!r}")
        return self.path / name

    def version_dir(self, name: str, version: int) -> Path:
        """Where version ``version`` of ``name`` lives."""
        return self.model_dir(name) / str(version)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Serialise writers (the daemon, the CLI and the updater) across processes."""
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:  # a read-only store: reads may still lock (the writes fail on their own)
            fd = os.open(self.path / LOCK_FILE, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # -- reading -----------------------------------------------------------------------

    def state(self, name: str) -> ModelState:
        """The recorded state of ``name`` (empty when never installed); StoreError when unreadable."""
        return read_state(self.model_dir(name) / STATE_FILE)

    def readable_state(self, name: str) -> ModelState:
        """:meth:`state`, or an empty state (nothing active) when the file cannot be read: the
        daemon then serves what it can verify without it (the factory bundle)."""
        try:
            return self.state(name)
        except (StoreError, OSError) as exc:
            log.error("%s: %s", name, exc, extra={"model": name, "reason": str(exc)})
            return ModelState()

    def signature(self, names: Iterable[str]) -> Hashable:
        """A value that changes when a model is added or removed or the state of one of ``names``
        is written: cheap enough to poll (a few ``stat`` calls), so a reader knows when to look again."""
        entries: list[Hashable] = []
        try:
            entries.append(os.stat(self.path).st_mtime_ns)
        except OSError:
            entries.append(None)
        for name in sorted(names):
            try:
                st = os.stat(self.model_dir(name) / STATE_FILE)
                entries.append((name, st.st_ino, st.st_mtime_ns, st.st_size))
            except (OSError, NotFoundError):
                entries.append((name, None))
        return tuple(entries)

    @contextlib.contextmanager
    def recording(self, name: str, what: str) -> Iterator[None]:
        """Record something the daemon does; a store that cannot be written (read-only, full,
        unreadable state) is logged and reported, never raised: serving goes on without it."""
        try:
            yield
        except (OSError, StoreError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.write_fault = f"cannot record {what} of {name}: {reason}"
            log.error("%s", self.write_fault, extra={"model": name, "reason": str(exc)})

    def write_state(self, name: str, state: ModelState) -> None:
        """Atomically write the state of ``name`` (the caller holds the lock)."""
        write_state(self.model_dir(name) / STATE_FILE, state)

    def versions(self, name: str) -> list[int]:
        """Installed version numbers of ``name``, ascending."""
        d = self.model_dir(name)
        if not d.is_dir():
            return []
        # Only canonical names ("7", not "007"): version_dir() must find what this lists.
        return sorted(
            int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isascii() and p.name.isdigit() and len(p.name) <= 18 and p.name == str(int(p.name))
        )

    def factory_bundle(self, name: str) -> Path | None:
        """The verified factory bundle whose manifest names ``name``, if one is shipped."""
        return self.factory_dir.bundles().get(name)

    def factory_refused(self, rescan: bool = True) -> list[FactoryBundle]:
        """Factory bundles that failed verification, each with its reason (``rescan=False``: as
        of the last :meth:`models` call, without touching the disk)."""
        return self.factory_dir.refused(rescan)

    def models(self) -> list[str]:
        """Every model name in the store or named by a verified factory bundle's manifest."""
        names: set[str] = set()
        if self.path.is_dir():
            names |= {p.name for p in self.path.iterdir() if p.is_dir() and NAME_RE.fullmatch(p.name)}
        names |= set(self.factory_dir.bundles())
        return sorted(names)

    def verify_version(self, name: str, version: int) -> Manifest:
        """Re-check signature, manifest and every hash of an installed version; raise on failure."""
        d = self.version_dir(name, version)
        try:
            manifest_bytes = (d / MANIFEST_FILE).read_bytes()
            sig = (d / SIGNATURE_FILE).read_bytes()
        except FileNotFoundError as exc:
            raise StoreError(f"{name} v{version}: {Path(exc.filename).name} is missing") from exc
        except OSError as exc:
            raise StoreError(f"{name} v{version}: cannot read {Path(exc.filename or d).name}: {exc.strerror}") from exc
        verify_manifest_signature(self.root, manifest_bytes, sig)
        manifest = parse_manifest(manifest_bytes)
        if manifest.name != name or manifest.version != version:
            raise StoreError(f"{name} v{version}: directory holds {manifest.name} v{manifest.version}")
        for art in manifest.artifacts.values():
            try:
                with open(d / art.file, "rb") as fh:
                    stream_verify(art, fh)
            except FileNotFoundError as exc:
                raise StoreError(f"{name} v{version}: {art.file} is missing") from exc
            except OSError as exc:
                raise StoreError(f"{name} v{version}: cannot read {art.file}: {exc.strerror}") from exc
        return manifest

    def resolved_version(self, name: str, version: int, reason: str | None = None, variant: str | None = None) -> Resolved:
        """Verify an installed version and describe it for loading (its ``variant``, when named:
        the view :meth:`Manifest.for_variant` gives, with that variant's model and golden data)."""
        manifest = self.verify_version(name, version)
        if variant is not None:
            manifest = manifest.for_variant(variant)
        if manifest.encryption is not None:  # ciphertext at rest: decrypted into memory, never to a file
            d = self.version_dir(name, version)
            try:
                opened = open_sealed(manifest, self.device_key, lambda f: open(d / f, "rb"))
            except OSError as exc:
                raise StoreError(f"{name} v{version}: cannot read {Path(exc.filename or d).name}: {exc.strerror}") from exc
            return Resolved(name, version, manifest, "store", model_bytes=opened.model, fallback_reason=reason,
                            golden_bytes=opened.golden, profile_bytes=opened.profile)
        path = self.version_dir(name, version) / manifest.model_file
        golden = self._read_artifact(name, version, manifest, manifest.golden.file if manifest.golden else None)
        profile = self._read_artifact(name, version, manifest, manifest.profile_file)
        return Resolved(name, version, manifest, "store", model_path=path, fallback_reason=reason, golden_bytes=golden,
                        profile_bytes=profile)

    def variant_view(self, resolved: Resolved, variant: str) -> Resolved:
        """``resolved`` as its variant ``variant`` (model file and golden data of that variant)."""
        if resolved.source == "store" and resolved.manifest.encryption is None:
            view = resolved.manifest.for_variant(variant)
            golden = self._read_artifact(resolved.name, resolved.version, view, view.golden.file if view.golden else None)
            path = self.version_dir(resolved.name, resolved.version) / view.model_file
            return dataclasses.replace(resolved, manifest=view, model_path=path, model_bytes=None, golden_bytes=golden)
        if resolved.source == "store":
            return self.resolved_version(resolved.name, resolved.version, resolved.fallback_reason, variant)
        return self.resolved_factory(resolved.name, resolved.fallback_reason, variant)

    def _read_artifact(self, name: str, version: int, manifest: Manifest, file: str | None) -> bytes | None:
        """A small artifact of an installed version, hashed again as it is read (None when ``file`` is)."""
        if file is None:
            return None
        buf = io.BytesIO()
        try:
            with open(self.version_dir(name, version) / file, "rb") as fh:
                stream_verify(manifest.artifacts[file], fh, buf)
        except OSError as exc:
            raise StoreError(f"{name} v{version}: cannot read {file}: {exc.strerror}") from exc
        return buf.getvalue()

    def resolved_factory(self, name: str, reason: str | None = None, variant: str | None = None) -> Resolved:
        """Verify the factory bundle of ``name`` and describe it for loading (``variant`` as in
        :meth:`resolved_version`)."""
        path = self.factory_bundle(name)
        if path is None:
            for fb in self.factory_refused():
                if fb.claimed == name or fb.path.name == f"{name}{FACTORY_SUFFIX}":
                    path = fb.path  # opened below to raise why it was refused, with the error's own type
                    break
            else:
                raise NotFoundError(f"no factory bundle for model {name!r}")
        with open_bundle(path, self.root, self.limits) as bundle:
            if bundle.manifest.name != name:
                raise StoreError(f"factory bundle {path.name} holds model {bundle.manifest.name!r}")
            manifest = bundle.manifest if variant is None else bundle.manifest.for_variant(variant)
            if manifest.encryption is not None:
                opened = open_sealed(manifest, self.device_key, lambda f: io.BytesIO(bundle.read_artifact(f)))
                return Resolved(name, manifest.version, manifest, "factory", model_bytes=opened.model,
                                fallback_reason=reason, golden_bytes=opened.golden, profile_bytes=opened.profile)
            data = bundle.read_artifact(manifest.model_file)
            golden = bundle.read_artifact(manifest.golden.file) if manifest.golden and manifest.golden.file else None
            profile = bundle.read_artifact(manifest.profile_file) if manifest.profile_file else None
        return Resolved(name, manifest.version, manifest, "factory", model_bytes=data, fallback_reason=reason,
                        golden_bytes=golden, profile_bytes=profile)

    # -- installing --------------------------------------------------------------------

    def install(self, bundle_path: Path) -> InstallResult:
        """Verify a bundle file and install it (not activated); raises and writes nothing on failure."""
        with open_bundle(bundle_path, self.root, self.limits) as bundle:
            return self.install_bundle(bundle)

    def install_bundle(self, bundle: Bundle) -> InstallResult:
        """Install an opened, verified bundle."""
        m = bundle.manifest
        if m.encryption is not None:
            content_key(m, self.device_key)  # not a recipient: refused before anything is written
        if self.bundle_check is not None:
            self.bundle_check(bundle)  # before anything is written or locked
        with self.lock():
            state = self.state(m.name)
            target = self.version_dir(m.name, m.version)
            # The floor also counts installed directories, so a lost state.json cannot reopen old versions.
            floor = max([state.highest_seen, *self.versions(m.name)])
            repair: str | None = None
            if target.is_dir():
                try:
                    existing = (target / MANIFEST_FILE).read_bytes()
                except OSError:
                    existing = b""
                if existing != bundle.manifest_bytes:
                    raise RollbackError(
                        f"{m.name} v{m.version} is already installed with different bytes; a new build needs a new version"
                    )
                repair = state.quarantined.get(m.version) or self._damage(m.name, m.version)
                if repair is None:
                    # Renamed into place, then killed before state.json was updated: record it now.
                    if state.raise_floor(m.version):
                        self.write_state(m.name, state)
                    return InstallResult(m.name, m.version, already_installed=True)
                # The same signed manifest over a damaged or quarantined copy: rewrite it.
            elif m.version <= floor:
                raise RollbackError(
                    f"{m.name} v{m.version} is at or below the anti-rollback floor (highest seen: v{floor})"
                )
            self._write_version(bundle, target)
            state = self.state(m.name)
            state.record_install(m.version, repair)
            self.write_state(m.name, state)
        log.info("installed %s v%d", m.name, m.version, extra={"model": m.name, "version": m.version})
        return InstallResult(m.name, m.version, already_installed=False)

    def _damage(self, name: str, version: int) -> str | None:
        """Why an installed version fails verification, or None when it is intact."""
        try:
            self.verify_version(name, version)
        except (BadDataError, StoreError) as exc:
            return str(exc)
        return None

    def _write_version(self, bundle: Bundle, target: Path) -> None:
        # An existing target is a quarantined or damaged copy of the same bytes being repaired;
        # cleanup_partial() removes the .install-*/.trash-* leftovers of a crash.
        with atomic_dir(target, prefix=".install-", trash_prefix=".trash-") as tmp:
            for name, data in ((MANIFEST_FILE, bundle.manifest_bytes), (SIGNATURE_FILE, bundle.signature_bytes)):
                (tmp / name).write_bytes(data)
            for art in bundle.manifest.artifacts:
                with open(tmp / art, "wb") as fh:
                    bundle.copy_artifact(art, fh)

    def cleanup_partial(self) -> list[Path]:
        """Repair what interrupted installs and removals left (call at start-up, not holding
        the lock); returns the paths removed. See :func:`.lifecycle.cleanup_partial`."""
        return lifecycle.cleanup_partial(self)

    # -- activation and rollback ------------------------------------------------------

    def activate(
        self,
        name: str,
        version: int,
        selftest: Callable[[Resolved], None] | None = None,
        *,
        only_if_newer: bool = False,
    ) -> ModelState:
        """Make ``version`` active after verifying it (and running ``selftest`` if given).

        ``only_if_newer`` (a fresh install): leave a newer active version alone, decided under
        the store lock, so two concurrent installs always end with the newer one active.
        """
        resolved = self.resolved_version(name, version)
        if selftest is not None:
            try:
                selftest(resolved)
            except EdgeRuntimeError as exc:
                self.record_failure(name, version, str(exc))
                raise
        with self.lock():
            state = self.state(name)
            if not state.activate(version, self.versions(name), only_if_newer=only_if_newer):
                log.info("%s v%d not activated: v%d is already active", name, version, state.active,
                         extra={"model": name, "version": version})
                return state
            self.write_state(name, state)
        log.info("activated %s v%d", name, version, extra={"model": name, "version": version})
        if self.keep_versions is not None:
            with self.recording(name, "retention"):
                self.prune(name, self.keep_versions)
        return state

    # -- tentative activation and removal: the doing lives in lifecycle.py ---------------

    def begin_trying(self, name: str, version: int) -> None:
        """Persist that a serving process is about to create an interpreter for ``version``
        (unless it is confirmed); call before loading it."""
        lifecycle.begin_trying(self, name, version)

    def end_trying(self, name: str, version: int, *, confirmed: bool) -> None:
        """``version`` loaded and passed its self-test in this serving process (``confirmed``),
        or its load raised (the caller records why)."""
        lifecycle.end_trying(self, name, version, confirmed=confirmed)

    def recover_trying(self, name: str) -> int | None:
        """Start of a serving process: a ``trying`` marker left by a dead one fails that version
        (never retried) and reverts to the previous one. Returns the failed version, if any."""
        return lifecycle.recover_trying(self, name)

    def prune(self, name: str, keep_versions: int) -> list[int]:
        """Delete versions beyond the ``keep_versions`` newest, except protected and pinned ones."""
        return lifecycle.prune(self, name, keep_versions)

    def remove(self, name: str, version: int) -> ModelState:
        """Delete an installed version (``models remove``); StoreError for the active one, the last
        known good, one being tried or served, or one the config pins; NotFoundError when absent."""
        return lifecycle.remove(self, name, version)

    def record_failure(self, name: str, version: int, reason: str, revert_to: int | None = None) -> ModelState:
        """Record that ``version`` failed (e.g. its self-test); optionally make ``revert_to`` active again."""
        state = ModelState(failed={version: reason})
        with self.recording(name, f"the failure of v{version}"), self.lock():
            state = self.state(name)
            state.fail(version, reason, self.versions(name), revert_to)
            self.write_state(name, state)
        log.warning("%s v%d failed: %s", name, version, reason, extra={"model": name, "version": version, "reason": reason})
        return state

    def record_serving(self, name: str, version: int | None, delegate: dict[str, Any] | None = None,
                       factory: bool = False) -> ModelState:
        """Record the version the daemon now answers with (after its self-test passed), what runs
        it (``{"delegate": ..., "skipped": [...]}``) and whether it is the factory bundle's. A model
        served only from the factory gets its ``state.json`` here, so the state the device reports
        says what it serves."""
        state = ModelState(serving=version)
        with self.recording(name, f"serving v{version}"), self.lock():
            state = self.state(name)
            if state.set_serving(version, delegate, factory):
                self.model_dir(name).mkdir(parents=True, exist_ok=True)
                self.write_state(name, state)
        return state

    def rollback(self, name: str) -> ModelState:
        """Make the last known good version active again."""
        with self.lock():
            state = self.state(name)
            if state.last_known_good is None:
                raise StoreError(f"{name}: no last known good version to roll back to")
            self.verify_version(name, state.last_known_good)
            target = state.rollback(self.versions(name))
            self.write_state(name, state)
        log.warning("rolled back %s to v%d", name, target, extra={"model": name, "version": target})
        return state

    def quarantine(self, name: str, version: int, reason: str) -> None:
        """Mark a version that failed verification so it is never loaded again."""
        with self.recording(name, f"the quarantine of v{version}"), self.lock():
            state = self.state(name)
            state.quarantine(version, reason)
            self.write_state(name, state)
        log.error("quarantined %s v%d: %s", name, version, reason, extra={"model": name, "version": version, "reason": reason})

    # -- start-up resolution -----------------------------------------------------------

    def resolve(self, name: str) -> Resolved:
        """The version to serve: active, else last known good, else factory; each re-verified.

        A version that fails verification is quarantined; every fallback is logged and
        recorded in the model's history with its reason.
        """
        reason: str | None = None
        try:
            state = self.state(name)
        except (StoreError, OSError) as exc:
            state = ModelState()
            reason = f"its state cannot be read ({exc}); only the factory bundle is served"
            log.error("%s: %s", name, reason, extra={"model": name, "reason": reason})
        tried: list[int] = []
        for candidate in (state.active, state.last_known_good):
            if candidate is None or candidate in tried or candidate in state.quarantined:
                continue
            tried.append(candidate)
            try:
                resolved = self.resolved_version(name, candidate, reason)
            except (BadDataError, StoreError) as exc:
                why = f"v{candidate} failed verification: {exc}"
                self.quarantine(name, candidate, str(exc))
                reason = why if reason is None else f"{reason}; {why}"
                continue
            if reason is not None:
                self._record_fallback(name, state.active, candidate, reason)
            return resolved
        if reason is None and state.active is not None:
            reason = f"v{state.active} is quarantined: {state.quarantined.get(state.active, 'unknown reason')}"
        resolved = self.resolved_factory(name, reason)
        # Record a new fallback only: a device already on its factory bundle says so once.
        if reason is not None:
            self._record_fallback(name, state.active, None, reason)
        elif not state.serving_factory:  # nothing failed: the store simply has no active version
            self._record_fallback(name, state.active, None, "nothing active in the store", level=logging.INFO)
        return resolved

    def _record_fallback(
        self, name: str, from_version: int | None, to_version: int | None, reason: str, level: int = logging.WARNING
    ) -> None:
        target = "factory" if to_version is None else f"v{to_version}"
        log.log(
            level, "%s: falling back to %s: %s", name, target, reason,
            extra={"model": name, "version": to_version, "reason": reason},
        )
        if not self.model_dir(name).is_dir():
            return  # nothing installed: nothing to record, and no store directory to create
        try:
            with self.lock():
                state = self.state(name)
                state.fall_back(from_version, to_version, reason, self.versions(name))
                self.write_state(name, state)
        except (OSError, StoreError) as exc:
            # Serving the fallback matters more than recording it (e.g. a read-only user running `score`).
            log.error("%s: cannot record the fallback: %s", name, exc, extra={"model": name, "reason": str(exc)})

    # -- verification of everything ----------------------------------------------------

    def verify_all(self) -> list[tuple[str, int, str | None]]:
        """Re-hash every installed version: ``(name, version, problem or None)``."""
        out: list[tuple[str, int, str | None]] = []
        for name in self.models():
            for version in self.versions(name):
                try:
                    self.verify_version(name, version)
                    out.append((name, version, None))
                except (BadDataError, StoreError) as exc:
                    out.append((name, version, str(exc)))
        return out
