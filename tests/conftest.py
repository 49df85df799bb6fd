"""Shared fixtures: test keys and trust roots, signed bundles built from the demo model, a
device directory (store, factory, config) and a runner for the real ``edge-runtime`` CLI.

Everything is built in temporary directories from the files in ``device/factory/``; no
test touches the checkout's own store or keys.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime.bundle.reader import BundleLimits
from edge_runtime.bundle.writer import build_manifest, write_bundle
from edge_runtime.packaging import PackRequest, pack_model
from edge_runtime.store.store import ModelStore
from edge_runtime.trust.keys import PrivateKey, generate_private_key, private_key_pem
from edge_runtime.trust.root import TrustRoot, make_root, sign_root, verify_root
from harness.bundles import DelegateLibs, pack_variant_bundle
from harness.daemon import EDGE

REPO = Path(__file__).resolve().parents[1]
FACTORY_SRC = REPO / "device" / "factory"
# LiteRT's C++ code prints this once per process on stderr; it is not ours to silence.
LITERT_NOISE = "INFO: Created TensorFlow Lite XNNPACK delegate"


@dataclass(frozen=True)
class KeySet:
    """A signing key trusted by ``root`` and one that is not."""

    key: PrivateKey
    key_path: Path
    root_bytes: bytes
    root_path: Path
    root: TrustRoot
    stranger: PrivateKey
    stranger_path: Path


@dataclass(frozen=True)
class CliResult:
    """What one run of ``edge-runtime`` did."""

    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        """Lines on stderr, without LiteRT's own start-up notice."""
        return [line for line in self.err.splitlines() if line.strip() and not line.startswith(LITERT_NOISE)]


def run_cli(args: Sequence[str | Path], cwd: Path | None = None, timeout: float = 120, real: bool = False) -> CliResult:
    """Run ``edge-runtime ARGS``: in this process through ``cli.main`` (fast), or with
    ``real=True`` as the installed console script in a subprocess."""
    if real or cwd is not None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
        proc = subprocess.run(
            [str(EDGE), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout, check=False
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)
    from edge_runtime.cli import main

    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            # An exception escaping main() would be a traceback for a user: let it fail the test.
            code = main([str(a) for a in args])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return CliResult(code, out.getvalue(), err.getvalue())


def tree_hash(path: Path) -> str:
    """sha256 over every path, file type, mode and file content under ``path``."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        st = p.lstat()
        h.update(str(p.relative_to(path)).encode() + b"\0" + oct(st.st_mode).encode() + b"\0")
        if p.is_symlink():
            h.update(os.readlink(p).encode())
        elif p.is_file():
            h.update(p.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def direct_litert(model: Path, x: np.ndarray) -> np.ndarray:
    """Run a float-I/O .tflite straight through ai_edge_litert, the whole batch at once."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(model))
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    interp.resize_tensor_input(inp["index"], x.shape)
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], x.astype(np.float32))
    interp.invoke()
    return np.asarray(interp.get_tensor(out["index"]))


class TarCraft:
    """Read a bundle's members and write tars with any members at all, for attack tests."""

    @staticmethod
    def members(path: Path) -> dict[str, bytes]:
        """Name -> bytes of every regular member, in order."""
        out: dict[str, bytes] = {}
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                fh = tar.extractfile(m)
                assert fh is not None
                out[m.name] = fh.read()
        return out

    @staticmethod
    def write(path: Path, members: Sequence[tuple[str, bytes] | tarfile.TarInfo], fmt: int = tarfile.PAX_FORMAT) -> Path:
        """A tar at ``path`` holding ``members``: (name, bytes) files or ready-made TarInfo entries."""
        with tarfile.open(path, "w", format=fmt) as tar:
            for m in members:
                if isinstance(m, tarfile.TarInfo):
                    tar.addfile(m)
                else:
                    info = tarfile.TarInfo(m[0])
                    info.size = len(m[1])
                    tar.addfile(info, io.BytesIO(m[1]))
        return path

    @staticmethod
    def link(name: str, target: str, hard: bool = False) -> tarfile.TarInfo:
        """A symlink (or hard link) member."""
        info = tarfile.TarInfo(name)
        info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
        info.linkname = target
        return info


@pytest.fixture(scope="session")
def tarcraft() -> type[TarCraft]:
    """Helpers to take bundles apart and write hostile tars."""
    return TarCraft


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeySet:
    """A fresh key, its version-1 trust root (both roles, threshold 1) and a stranger's key."""
    d = tmp_path_factory.mktemp("keys")
    key, stranger = generate_private_key(), generate_private_key()
    root_bytes = sign_root(make_root(1, [key], [key]), [key])
    (d / "signing.key").write_bytes(private_key_pem(key))
    (d / "stranger.key").write_bytes(private_key_pem(stranger))
    (d / "root.json").write_bytes(root_bytes)
    return KeySet(key, d / "signing.key", root_bytes, d / "root.json", verify_root(root_bytes), stranger, d / "stranger.key")


BundleFactory = Callable[..., Path]


@pytest.fixture(scope="session")
def make_bundle(tmp_path_factory: pytest.TempPathFactory, keys: KeySet) -> BundleFactory:
    """``make_bundle(version, model="fraud.tflite", **pack_model_kwargs) -> Path`` (cached per arguments)."""
    d = tmp_path_factory.mktemp("bundles")
    cache: dict[str, Path] = {}
    golden = np.load(FACTORY_SRC / "golden.npy")

    def build(version: int, model: str = "fraud.tflite", name: str = "fraud", **kw: Any) -> Path:
        key = f"{name}-{version}-{model}-{sorted(kw.items())!r}"
        if key not in cache:
            out = d / f"{name}-v{version}-{len(cache)}.bundle"
            kw.setdefault("keys", [keys.key])
            kw.setdefault("golden_inputs", [golden])
            pack_model(PackRequest(
                FACTORY_SRC / model, name=name, version=version, out=out,
                input_names=["input_0"], output_names=["output_0"], **kw,
            ))
            cache[key] = out
        return cache[key]

    return build


@dataclass
class Device:
    """A device directory: store, factory bundle dir and a config naming them and the root."""

    base: Path
    keys: KeySet
    store_path: Path
    factory: Path
    config: Path
    extra_config: str = ""
    calls: list[CliResult] = field(default_factory=list)

    def cli(self, *args: str | Path, real: bool = False) -> CliResult:
        """Run ``edge-runtime ARGS --config CONFIG`` (in a subprocess with ``real=True``)."""
        result = run_cli([*args, "--config", self.config], real=real)
        self.calls.append(result)
        return result

    def store(self) -> ModelStore:
        """The store, opened in this process."""
        return ModelStore(self.store_path, self.keys.root, self.factory, BundleLimits())

    def tree_hash(self) -> str:
        """Hash of the whole store tree (state.json, version dirs, lock file)."""
        return tree_hash(self.store_path)


@pytest.fixture
def device(tmp_path: Path, keys: KeySet, make_bundle: BundleFactory) -> Device:
    """A device whose factory directory holds v1 of ``fraud`` (the float model) signed by the test key."""
    factory = tmp_path / "factory"
    factory.mkdir()
    shutil.copyfile(make_bundle(1), factory / "fraud.bundle")
    store_path = tmp_path / "store"
    config = tmp_path / "config.toml"
    config.write_text(
        f'[store]\npath = "{store_path}"\nfactory = "{factory}"\n[trust]\nroot = "{keys.root_path}"\n', encoding="utf-8"
    )
    return Device(tmp_path, keys, store_path, factory, config)


@pytest.fixture(scope="session")
def wrong_golden_bundle(make_bundle: Callable[..., Path], keys: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v4 of the float model, validly signed, whose manifest states golden outputs the model does not produce."""
    with tarfile.open(make_bundle(4)) as tar:
        manifest_fh, model_fh = tar.extractfile("manifest.json"), tar.extractfile("model.tflite")
        assert manifest_fh is not None and model_fh is not None
        fields, model = json.loads(manifest_fh.read()), model_fh.read()
    out = fields["golden"]["outputs"]["output_0"]
    out["data"] = [min(1.0, v + 0.25) if v < 0.5 else v - 0.25 for v in out["data"]]
    path = tmp_path_factory.mktemp("wrong") / "fraud-v4-wrong-golden.bundle"
    write_bundle(path, build_manifest(fields), {"model.tflite": model}, [keys.key])
    return path


@pytest.fixture(scope="session")
def delegate_libs(tmp_path_factory: pytest.TempPathFactory) -> DelegateLibs:
    """Build the test delegates with ``cc`` once per session (scripts/system-deps.sh installs gcc)."""
    cc = shutil.which("cc")
    if cc is None:
        pytest.fail("no C compiler (cc): run scripts/system-deps.sh")
    src = Path(__file__).resolve().parent / "inference" / "delegate_src"
    d = tmp_path_factory.mktemp("delegates")
    built = {}
    for name in ("stub_delegate", "no_entry_points"):
        out = d / f"lib{name}.so"
        subprocess.run(
            [cc, "-shared", "-fPIC", "-O1", "-Wall", "-Wextra", "-Werror", "-o", str(out), str(src / f"{name}.c")],
            check=True, capture_output=True, timeout=120,
        )
        built[name] = out
    return DelegateLibs(built["stub_delegate"], built["no_entry_points"], d / "libabsent.so.1")


@pytest.fixture(scope="session")
def cli() -> Callable[..., CliResult]:
    """``cli(args, cwd=None, real=False)``: run ``edge-runtime`` (``real``: the console script, in a subprocess)."""
    return run_cli


@pytest.fixture(scope="session")
def litert() -> Callable[[Path, np.ndarray], np.ndarray]:
    """``litert(model_path, x)``: the interpreter run directly, for comparisons."""
    return direct_litert


@pytest.fixture(scope="session")
def hash_tree() -> Callable[[Path], str]:
    """``hash_tree(path)``: sha256 of a whole directory tree."""
    return tree_hash


@pytest.fixture(scope="session")
def sample_x() -> np.ndarray:
    """The demo sample rows (standardised features), float32 [20, 30]."""
    return np.load(FACTORY_SRC / "sample.npy").astype(np.float32)


@pytest.fixture(scope="session")
def holdout_x() -> np.ndarray:
    """The demo model's held-out rows, float32 [143, 30]."""
    return np.load(FACTORY_SRC / "holdout.npz")["x"].astype(np.float32)


@pytest.fixture(scope="session")
def variant_bundle(tmp_path_factory: pytest.TempPathFactory, keys: KeySet) -> Callable[..., Path]:
    """``variant_bundle(version, broken=None, budget=None)``: fraud with two variants (harness/bundles.py
    ``pack_variant_bundle``), signed with the test key. Cached per arguments."""
    d = tmp_path_factory.mktemp("variants")
    cache: dict[tuple[int, str | None, float | None], Path] = {}

    def build(version: int, broken: str | None = None, budget: float | None = None) -> Path:
        if (version, broken, budget) not in cache:
            out = d / f"fraud-v{version}-{broken or 'good'}-{budget}.bundle"
            cache[(version, broken, budget)] = pack_variant_bundle(out, keys.key, version, broken, budget)
        return cache[(version, broken, budget)]

    return build
