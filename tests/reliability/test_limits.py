"""The size, count and time limits listed in docs/security.md that no other test shows.

Pure checks first (bytes in, the project's own error out), then two HTTP connection limits
against a real daemon. Limits shown elsewhere are named in docs/security.md with their tests.
"""

from __future__ import annotations

import io
import json
import platform
import socket
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_runtime import RUNTIME_MAJOR
from edge_runtime.bundle.manifest import (
    MAX_CHUNK_SIZE,
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_BYTES,
    MIN_CHUNK_SIZE,
    parse_manifest,
)
from edge_runtime.bundle.reader import MAX_MEMBERS, open_bundle
from edge_runtime.exceptions import BundleError, ManifestError
from edge_runtime.store.state import MAX_HISTORY, ModelState
from edge_runtime.trust.canonical import canonical_json
from edge_runtime.trust.keys import sign
from edge_runtime.updates.exceptions import UpdateMessageError
from edge_runtime.updates.protocol import desired_document, signed_message
from edge_runtime.updates.verify import MAX_MODELS, MAX_SALT_CHARS, ModelView, check_release, verify_desired
from harness.wait import DEFAULT_TIMEOUT_S
from reliability.conftest import Daemon, DeviceDir, Releases

FLEET = "f1"


@pytest.fixture(scope="module")
def parts(releases: Releases) -> dict[str, bytes]:
    """The members of a real signed bundle."""
    with tarfile.open(releases.bundle(1)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _desired(keys: Any, models: dict[str, Any]) -> bytes:
    payload = canonical_json(desired_document(FLEET, 1, models))
    return signed_message("desired", payload, [sign(keys.key, payload)])


# -- bundles and manifests -------------------------------------------------------------------


def test_bundle_with_more_than_max_members_is_refused(tmp_path: Path, parts: dict[str, bytes], keys: Any) -> None:
    members = list(parts.items()) + [(f"extra-{i}", b"x") for i in range(MAX_MEMBERS)]
    with pytest.raises(BundleError, match=f"more than {MAX_MEMBERS} members"):
        open_bundle(_tar(tmp_path / "many.bundle", members), keys.root)


def test_manifest_over_max_manifest_bytes_is_refused_before_parsing(tmp_path: Path, parts: dict[str, bytes],
                                                                    keys: Any) -> None:
    big = parts["manifest.json"] + b" " * (MAX_MANIFEST_BYTES + 1 - len(parts["manifest.json"]))
    members = [("manifest.json", big), ("manifest.sig", parts["manifest.sig"]), ("model.tflite", parts["model.tflite"])]
    with pytest.raises(BundleError, match=f"the limit is {MAX_MANIFEST_BYTES}"):
        open_bundle(_tar(tmp_path / "big-manifest.bundle", members), keys.root)


def test_signature_file_over_max_signature_bytes_is_refused(tmp_path: Path, parts: dict[str, bytes], keys: Any) -> None:
    members = [("manifest.json", parts["manifest.json"]), ("manifest.sig", b" " * (MAX_SIGNATURE_BYTES + 1)),
               ("model.tflite", parts["model.tflite"])]
    with pytest.raises(BundleError, match=f"the limit is {MAX_SIGNATURE_BYTES}"):
        open_bundle(_tar(tmp_path / "big-sig.bundle", members), keys.root)


@pytest.mark.parametrize("chunk_size", [MIN_CHUNK_SIZE - 1, MAX_CHUNK_SIZE + 1, 0, -1])
def test_chunk_size_outside_its_bounds_is_refused(parts: dict[str, bytes], chunk_size: int) -> None:
    doc = json.loads(parts["manifest.json"])
    for art in doc["artifacts"].values():
        art["chunk_size"] = chunk_size
    with pytest.raises(ManifestError, match="chunk_size must be in"):
        parse_manifest(canonical_json(doc))


def test_release_over_max_download_bytes_is_refused_before_any_chunk(parts: dict[str, bytes]) -> None:
    from edge_runtime.updates.verify import Release

    manifest = parse_manifest(parts["manifest.json"])
    release = Release(manifest, parts["manifest.json"], parts["manifest.sig"])
    view = ModelView(active=None, highest_seen=0, installed=frozenset(), failed=frozenset(), quarantined=frozenset())
    size = manifest.artifacts["model.tflite"].length
    where = {"runtime_major": RUNTIME_MAJOR, "machine": platform.machine()}
    check_release(release, view, None, max_bytes=size, **where)  # type: ignore[arg-type]
    with pytest.raises(BundleError, match=f"the limit is {size - 1}"):
        check_release(release, view, None, max_bytes=size - 1, **where)  # type: ignore[arg-type]


# -- desired state ------------------------------------------------------------------------------


def test_desired_state_with_more_than_max_models_is_refused(keys: Any) -> None:
    models = {f"m{i}": {"version": 1} for i in range(MAX_MODELS + 1)}
    with pytest.raises(UpdateMessageError, match=f"at most {MAX_MODELS} models"):
        verify_desired(_desired(keys, models), keys.root, fleet=FLEET, device=None)
    assert len(verify_desired(_desired(keys, dict(list(models.items())[:MAX_MODELS])), keys.root, fleet=FLEET,
                              device=None).models) == MAX_MODELS


def test_rollout_salt_over_max_salt_chars_is_refused(keys: Any) -> None:
    entry = {"fraud": {"version": 2, "rollout": {"percent": 10, "salt": "s" * (MAX_SALT_CHARS + 1)}}}
    with pytest.raises(UpdateMessageError, match=f"1 to {MAX_SALT_CHARS} characters"):
        verify_desired(_desired(keys, entry), keys.root, fleet=FLEET, device=None)


def test_model_history_keeps_max_history_entries() -> None:
    state = ModelState()
    for i in range(MAX_HISTORY + 25):
        state.event("serving", version=i)
    assert len(state.history) == MAX_HISTORY and state.history[-1]["version"] == MAX_HISTORY + 24


def test_pending_trust_roots_are_capped(keys: Any, tmp_path: Path) -> None:
    """Roots that cannot be applied yet (a gap in the chain) wait, at most MAX_PENDING_ROOTS of them."""
    from edge_runtime.bundle.reader import BundleLimits
    from edge_runtime.store.store import ModelStore
    from edge_runtime.updates.protocol import RootTopic, Topics
    from edge_runtime.updates.updater import MAX_PENDING_ROOTS, Updater, UpdaterSettings

    class Offline:
        connected = False

        def subscribe(self, filters: list[str], *, new_only: bool = False) -> None: ...
        def unsubscribe(self, filters: list[str]) -> None: ...
        def publish(self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1) -> None: ...

    store = ModelStore(tmp_path / "store", keys.root, None, BundleLimits())
    updater = Updater(UpdaterSettings("dev-1", Topics("edge", FLEET), tmp_path, tmp_path / "staging"), store, Offline())
    updater.load()
    for n in range(3, 3 + 4 * MAX_PENDING_ROOTS):  # root 2 never comes: none of these can be applied
        updater.on_message(RootTopic(n), b'{"signed": {}, "signatures": []}')
    assert len(updater.machine.pending_roots) == MAX_PENDING_ROOTS and store.root.version == 1
    assert min(updater.machine.pending_roots) == 3  # the nearest versions are kept, the farthest dropped


# -- HTTP connections ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, keys: Any, releases: Releases) -> Iterator[Daemon]:
    """A daemon with ``[server] keep_alive_s = 1`` and ``request_header_timeout_s = 2``."""
    from reliability.conftest import new_device

    dev: DeviceDir = new_device(tmp_path_factory.mktemp("limits"), keys, releases)
    dev.write_config(server_toml="keep_alive_s = 1.0\nrequest_header_timeout_s = 2.0\n")
    yield dev.start()
    dev.close()


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closes ``sock`` (whatever it sent first is read and dropped). The deadline
    only bounds a hang: the test is that the server closes the connection, not how fast."""
    sock.settimeout(DEFAULT_TIMEOUT_S)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


@pytest.mark.integration
def test_idle_keepalive_connection_is_closed_after_keep_alive_s(daemon: Daemon) -> None:
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as s:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        assert _closed_by_server(s)


@pytest.mark.integration
def test_connection_that_never_completes_a_request_is_closed(daemon: Daemon) -> None:
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as s:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")  # the header block never ends
        assert _closed_by_server(s)


@pytest.mark.integration
def test_request_headers_over_a_megabyte_are_refused(daemon: Daemon) -> None:
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=30) as s:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (8 << 20) + b"\r\n\r\n")
        status = s.recv(4096).split(b"\r\n", 1)[0]
    assert status.split()[1:2] in ([b"431"], [b"400"], [b"413"]), status
    assert daemon.alive

