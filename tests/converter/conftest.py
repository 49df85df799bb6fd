"""Fixtures for the converter: test models, their data, and real ``edge-convert`` runs.

Every conversion is the installed ``edge-convert`` console script run in a subprocess inside
a network namespace with no network (``unshare -n``), so a download attempt by onnx2tf
fails the test. Conversions are slow (an MLP about 10 s, the CNN 20-35 s on a busy 2-core
machine), so each model is converted once per mode per session and shared, two at a time.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import conversion_models as models
import numpy as np
import pytest
from conversion_support import FACTORY_SRC, Conversion, ConversionCache, ModelFiles, require_unshare, run_convert


@pytest.fixture(scope="session")
def conv_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the session's models, data and bundles live."""
    return tmp_path_factory.mktemp("converter")


@pytest.fixture(scope="session")
def fraud_files(conv_dir: Path) -> ModelFiles:
    """The demo fraud model (a copy), its standardised calibration rows and labelled hold-out."""
    d = conv_dir / "fraud"
    d.mkdir()
    shutil.copyfile(FACTORY_SRC / "fraud.onnx", d / "fraud.onnx")
    return ModelFiles(d / "fraud.onnx", FACTORY_SRC / "calibration.npy", FACTORY_SRC / "holdout.npz")


@pytest.fixture(scope="session")
def raw_fraud_files(conv_dir: Path) -> ModelFiles:
    """The same MLP with the scaler folded in: raw features in, the int8 collapse case."""
    d = conv_dir / "raw"
    d.mkdir()
    path, mean, std = models.fold_scaler(FACTORY_SRC / "fraud.onnx", FACTORY_SRC / "demo_model.json", d / "raw.onnx")
    holdout = np.load(FACTORY_SRC / "holdout.npz")
    np.savez(d / "validation.npz", x=(holdout["x"] * std + mean).astype(np.float32), y=holdout["y"])
    np.save(d / "calibration.npy", (np.load(FACTORY_SRC / "calibration.npy") * std + mean).astype(np.float32))
    return ModelFiles(path, d / "calibration.npy", d / "validation.npz")


@pytest.fixture(scope="session")
def cnn_files(conv_dir: Path) -> ModelFiles:
    """The NCHW CNN, 100 calibration images and 32 validation images."""
    d = conv_dir / "cnn"
    d.mkdir()
    models.build_cnn(d / "cnn.onnx")
    np.save(d / "calibration.npy", models.cnn_images(100, seed=1))
    np.save(d / "validation.npy", models.cnn_images(32, seed=2))
    return ModelFiles(d / "cnn.onnx", d / "calibration.npy", d / "validation.npy")


@pytest.fixture(scope="session")
def two_io_files(conv_dir: Path) -> ModelFiles:
    """The two-input, two-output model and calibration rows for both inputs."""
    d = conv_dir / "two_io"
    d.mkdir()
    models.build_two_io(d / "two.onnx")
    rng = np.random.default_rng(3)
    np.savez(
        d / "calibration.npz",
        zeta_img=rng.random((60, 16, 16, 3), dtype=np.float32),
        alpha_img=rng.random((60, 16, 16, 3), dtype=np.float32),
    )
    return ModelFiles(d / "two.onnx", d / "calibration.npz")


@pytest.fixture(scope="session")
def unsupported_files(conv_dir: Path) -> ModelFiles:
    """A model with an operator onnx2tf cannot convert."""
    d = conv_dir / "unsupported"
    d.mkdir()
    return ModelFiles(models.build_unsupported(d / "castlike.onnx"))


class ConversionPool:
    """Named ``edge-convert`` jobs run at most once each, ``EDGE_TEST_CONVERT_JOBS`` (default 2) at a time.

    onnx2tf is mostly single-threaded, so two conversions side by side finish sooner on two
    cores; tests ``get`` a job (waiting for it), the prefetch fixture ``submit``s ahead.
    """

    def __init__(self, workers: int) -> None:
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edge-convert-test")
        self.jobs: dict[str, tuple[list[str | Path], Path, dict[str, str] | None]] = {}
        self.futures: dict[str, Future[Conversion]] = {}
        self.lock = threading.Lock()

    def define(self, key: str, args: list[str | Path], bundle: Path, env: dict[str, str] | None = None) -> None:
        """Describe job ``key`` (not started)."""
        self.jobs[key] = (args, bundle, env)

    def submit(self, key: str) -> Future[Conversion]:
        """Start job ``key`` unless it has started already."""
        with self.lock:
            if key not in self.futures:
                args, bundle, env = self.jobs[key]
                self.futures[key] = self.executor.submit(run_convert, args, bundle, env)
            return self.futures[key]

    def get(self, key: str) -> Conversion:
        """Job ``key``'s result, running it now if nobody has."""
        return self.submit(key).result()


@pytest.fixture(scope="session")
def pool(conv_dir: Path, keys: Any, fraud_files: ModelFiles, raw_fraud_files: ModelFiles, cnn_files: ModelFiles,
         two_io_files: ModelFiles, unsupported_files: ModelFiles) -> Iterator[ConversionPool]:
    """Every conversion the tests use, defined once; run on demand."""
    require_unshare()
    p = ConversionPool(int(os.environ.get("EDGE_TEST_CONVERT_JOBS", "2")))
    sign = ["--version", "1", "--sign-key", keys.key_path]
    for mode in ("fp32", "fp16", "dynamic", "int8", "auto"):
        # fp16 (the default) prints the table; int8 runs with --int8-io (integer tensors at the
        # interface); auto's int8 candidate is the float-I/O one.
        a: list[str | Path] = [fraud_files.onnx, "--name", "fraud", *sign, "--quantize", mode,
                               "--validation", fraud_files.validation or ""]
        if mode in ("int8", "auto"):
            a += ["--calibration", fraud_files.calibration or ""]
        a += ["--int8-io"] if mode == "int8" else []
        a += ["--json"] if mode != "fp16" else []
        p.define(f"fraud:{mode}", a, conv_dir / f"fraud-{mode}.bundle")
    # fp16 with further variants, int8 among them (onnx2tf then quantizes though --quantize does not ask).
    p.define("fraud:variants", [fraud_files.onnx, "--name", "fraud", *sign, "--variants", "fp32,int8,onnx",
                                "--validation", fraud_files.validation or "", "--calibration",
                                fraud_files.calibration or "", "--json"], conv_dir / "fraud-variants.bundle")
    for mode in ("fp32", "fp16", "dynamic", "int8"):
        a = [cnn_files.onnx, "--name", "cnn", *sign, "--quantize", mode, "--validation", cnn_files.validation or "",
             "--json"]
        a += ["--calibration", cnn_files.calibration or ""] if mode == "int8" else []
        p.define(f"cnn:{mode}", a, conv_dir / f"cnn-{mode}.bundle")
    bare_path = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    bare_path["PATH"] = "/usr/bin:/bin"  # without the virtual environment's bin/
    p.define("two_io", [two_io_files.onnx, "--name", "two", *sign, "--quantize", "auto", "--calibration",
                        two_io_files.calibration or "", "--json"], conv_dir / "two.bundle", bare_path)
    f = raw_fraud_files
    p.define("collapse", [f.onnx, "--name", "raw", *sign, "--quantize", "int8", "--calibration", f.calibration or "",
                          "--validation", f.validation or ""], conv_dir / "raw.bundle")
    p.define("unsupported:plain", [unsupported_files.onnx, "--name", "counts", *sign], conv_dir / "counts-plain.bundle")
    p.define("unsupported:fallback", [unsupported_files.onnx, "--name", "counts", *sign, "--fallback-onnx"],
             conv_dir / "counts-fallback.bundle")
    yield p
    p.executor.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="session", autouse=True)
def _prefetch(request: pytest.FixtureRequest) -> None:
    """Start, in test order, the conversions the selected test modules list in ``CONVERSIONS``."""
    wanted: list[str] = []
    for item in request.session.items:
        module = getattr(item, "module", None)
        for key in getattr(module, "CONVERSIONS", ()):
            if key not in wanted:
                wanted.append(key)
    if wanted:
        p: ConversionPool = request.getfixturevalue("pool")
        for key in wanted:
            p.submit(key)


@pytest.fixture(scope="session")
def fraud_conversion(pool: ConversionPool) -> ConversionCache:
    """``fraud_conversion(mode)``: the demo model converted in ``mode``."""
    return lambda mode: pool.get(f"fraud:{mode}")


@pytest.fixture(scope="session")
def cnn_conversion(pool: ConversionPool) -> ConversionCache:
    """``cnn_conversion(mode)``: the CNN converted in ``mode`` (JSON output)."""
    return lambda mode: pool.get(f"cnn:{mode}")


@pytest.fixture(scope="session")
def two_io_conversion(pool: ConversionPool) -> Conversion:
    """The two-input model in auto mode, run with a PATH that lacks the virtual environment's bin/."""
    return pool.get("two_io")


@pytest.fixture(scope="session")
def collapse_conversion(pool: ConversionPool) -> Conversion:
    """int8 of the raw-feature MLP (expected to fail validation)."""
    return pool.get("collapse")


@pytest.fixture(scope="session")
def unsupported_conversion(pool: ConversionPool) -> Callable[[bool], Conversion]:
    """``unsupported_conversion(fallback)``: the CastLike model, with or without --fallback-onnx."""
    return lambda fallback: pool.get("unsupported:fallback" if fallback else "unsupported:plain")
