"""The stand-in module of ``paho_client.defer_module`` (what keeps paho's urllib.request unloaded)
and the updater's start-up without anything staged: the download code is not needed to start,
and what is staged is still cleaned and resumed (test_updater.py resumes a download)."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_runtime.updates.paho_client import defer_module, is_deferred
from edge_runtime.updates.updater import Updater
from updates.conftest import DeviceFactory

PACKAGE = "lean_import_probe"


@pytest.fixture
def package(tmp_path: Path) -> Iterator[Path]:
    """An importable package whose ``heavy`` module counts how often its code ran."""
    pkg = tmp_path / PACKAGE
    pkg.mkdir()
    (pkg / "__init__.py").write_text("RUNS = []\n", encoding="utf-8")
    (pkg / "heavy.py").write_text(f"import {PACKAGE}\n{PACKAGE}.RUNS.append(1)\nVALUE = 42\n", encoding="utf-8")
    sys.path.insert(0, str(tmp_path))
    try:
        yield pkg
    finally:
        sys.path.remove(str(tmp_path))
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def test_a_deferred_module_runs_on_its_first_read_and_then_is_the_real_module(package: Path) -> None:
    defer_module(f"{PACKAGE}.heavy")
    import lean_import_probe.heavy  # type: ignore[import-not-found]  # what paho does: binds the stand-in

    probe = sys.modules[PACKAGE]
    assert probe.RUNS == [] and is_deferred(f"{PACKAGE}.heavy")
    spec = importlib.util.find_spec(f"{PACKAGE}.heavy")  # readable without loading it
    assert spec is not None and spec.origin == str(package / "heavy.py") and probe.RUNS == []
    inspect.getmodule(compile("", str(package / "elsewhere.py"), "exec"))  # scans sys.modules for files
    assert probe.RUNS == [], "reading __file__ does not load it"
    assert lean_import_probe.heavy.VALUE == 42
    assert probe.RUNS == [1] and not is_deferred(f"{PACKAGE}.heavy")
    real = sys.modules[f"{PACKAGE}.heavy"]
    assert probe.heavy is real and real.VALUE == 42, "the package attribute is the real module now"
    assert importlib.import_module(f"{PACKAGE}.heavy") is real and probe.RUNS == [1]


def test_concurrent_first_reads_run_the_module_once(package: Path) -> None:
    defer_module(f"{PACKAGE}.heavy")
    stand_in = sys.modules[f"{PACKAGE}.heavy"]
    start = threading.Barrier(8)
    seen: list[int] = []

    def read() -> None:
        start.wait()
        seen.append(stand_in.VALUE)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [42] * 8 and sys.modules[PACKAGE].RUNS == [1]


def test_an_imported_module_is_left_alone(package: Path) -> None:
    real = importlib.import_module(f"{PACKAGE}.heavy")
    defer_module(f"{PACKAGE}.heavy")
    assert sys.modules[f"{PACKAGE}.heavy"] is real and not is_deferred(f"{PACKAGE}.heavy")


def test_start_up_still_sweeps_what_a_killed_update_left_in_staging(make_device: DeviceFactory) -> None:
    dev = make_device()
    staging = dev.updater.settings.staging_dir
    leftovers = [staging / ".trash-fraud-3-x", staging / "fraud-4"]  # half-deleted; no manifest.msg
    for d in leftovers:
        (d / "part").mkdir(parents=True)
    updater = Updater(dev.updater.settings, dev.store, dev.broker, monotonic=dev.clock)
    updater.load()
    assert not any(d.exists() for d in leftovers) and updater.job is None
