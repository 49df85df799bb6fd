"""``edge-runtime models install`` refuses a bundle that needs a delegate this device cannot
load (an Edge-TPU-compiled model; a manifest's ``runtime.requires_delegate``) with a one-line
reason, keeps the old model active and the store byte-for-byte the same; a device whose
config names a library that is a delegate installs it.

A bundle asks for a delegate by name only: one naming a library path is refused before the
library is opened; the device config's ``[inference]`` decides which file a name loads. A
delegate that crashes kills the probe process, not ``models install``: the version is
recorded as failed and the old one stays active."""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.bundle.reader import open_bundle
from edge_runtime.bundle.writer import write_bundle
from harness.bundles import DelegateLibs, rebuilt_bundle


def test_models_install_refuses_a_bundle_needing_an_absent_delegate(
    device: Any, make_bundle: Callable[..., Path], hash_tree: Callable[[Path], str]
) -> None:
    assert device.cli("models", "install", make_bundle(2)).code == 0
    before = hash_tree(device.store_path)
    tpu = rebuilt_bundle(make_bundle(2), device.base / "tpu.bundle", device.keys, 3, model_suffix=b"\0edgetpu-custom-op\0")
    result = device.cli("models", "install", tpu)
    assert result.code == 1
    (line,) = result.err_lines
    assert "fraud v3 needs the 'edgetpu' delegate (it is compiled for the Edge TPU" in line
    assert "libedgetpu.so.1" in line and "Traceback" not in result.err
    assert hash_tree(device.store_path) == before
    listing = device.cli("models", "list")
    assert any(x.split()[:3] == ["fraud", "2", "active"] for x in listing.out.splitlines())
    assert not any(x.split()[:2] == ["fraud", "3"] for x in listing.out.splitlines())


def test_models_install_accepts_it_where_the_config_names_a_working_delegate(
    device: Any, make_bundle: Callable[..., Path], delegate_libs: DelegateLibs
) -> None:
    needs = rebuilt_bundle(make_bundle(2), device.base / "npu.bundle", device.keys, 3, runtime={"requires_delegate": "npu"})
    refused = device.cli("models", "install", needs)
    assert refused.code == 1 and "needs the 'npu' delegate" in refused.err
    with device.config.open("a", encoding="utf-8") as fh:
        fh.write(f'[models.fraud]\ndelegates = [{{ library = "{delegate_libs.stub}", name = "npu" }}]\n')
    result = device.cli("models", "install", needs)
    assert result.code == 0, result.err
    assert "fraud v3 installed" in result.out and "passed its self-test and is active" in result.out


# -- round 3: a bundle asks for a delegate by name; loading one runs in a probe process ----------


def _constructor_lib(directory: Path, marker: Path) -> Path:
    """A shared library whose constructor writes ``marker``: proof that something dlopened it."""
    src = directory / "marker.c"
    src.write_text(
        "#include <stdio.h>\n"
        "__attribute__((constructor)) static void mark(void) {\n"
        f'    FILE* fh = fopen("{marker}", "w");\n'
        '    if (fh != NULL) { fputs("constructor ran\\n", fh); fclose(fh); }\n'
        "}\n", encoding="utf-8")
    out = directory / "libmarker.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(out), str(src)], check=True, capture_output=True, timeout=120)
    return out


def _signed_with_runtime(src: Path, out: Path, keys: Any, version: int, runtime: Any) -> Path:
    """``src`` re-signed as ``version`` with a ``runtime`` field the manifest model would refuse
    (written past validation, as a hostile or careless publisher's tool would)."""
    with open_bundle(src, None) as b:
        manifest, model = b.manifest, b.read_artifact("model.tflite")
    hostile = dataclasses.replace(manifest, version=version, extra={**manifest.extra, "runtime": runtime})
    write_bundle(out, hostile, {"model.tflite": model}, [keys.key])
    return out


@pytest.mark.parametrize("runtime", [
    pytest.param(lambda lib: {"delegates": [str(lib)]}, id="path"),
    pytest.param(lambda lib: {"delegates": [{"library": str(lib), "name": "npu"}], "requires_delegate": "npu"}, id="table"),
    pytest.param(lambda lib: {"delegates": ["../../" + lib.name]}, id="relative"),
])
def test_a_bundle_naming_a_delegate_library_path_is_refused_and_the_library_never_loads(
    device: Any, make_bundle: Callable[..., Path], hash_tree: Callable[[Path], str], runtime: Callable[[Path], Any]
) -> None:
    assert device.cli("models", "install", make_bundle(2)).code == 0
    before = hash_tree(device.store_path)
    marker = device.base / "constructor-ran"
    lib = _constructor_lib(device.base, marker)
    bundle = _signed_with_runtime(make_bundle(2), device.base / "path.bundle", device.keys, 3, runtime(lib))
    result = device.cli("models", "install", bundle)
    assert result.code == 1, result
    (line,) = result.err_lines
    assert "runtime.delegates[0]" in line and "by name" in line and "Traceback" not in result.err
    assert not marker.exists()  # the library was never opened: its constructor never ran
    assert hash_tree(device.store_path) == before


def test_a_bundle_asks_for_a_delegate_by_name_and_the_device_config_picks_the_library(
    device: Any, make_bundle: Callable[..., Path], delegate_libs: DelegateLibs
) -> None:
    record = device.base / "options.txt"
    runtime = {"delegates": [{"name": "npu", "options": {"record": str(record)}}], "requires_delegate": "npu"}
    needs = rebuilt_bundle(make_bundle(2), device.base / "npu.bundle", device.keys, 3, runtime=runtime)
    refused = device.cli("models", "install", needs)
    assert refused.code == 1 and "maps no library to it ([inference] delegate_libraries)" in refused.err
    with device.config.open("a", encoding="utf-8") as fh:
        fh.write(f'[inference]\ndelegate_dirs = ["{delegate_libs.stub.parent}"]\n'
                 f'delegate_libraries = {{ npu = "{delegate_libs.stub.name}" }}\n')
    result = device.cli("models", "install", needs)
    assert result.code == 0, result.err
    assert "fraud v3 passed its self-test and is active" in result.out
    # The self-test created the delegate (in its probe process) with the bundle's options.
    assert f"record={record}" in record.read_text().splitlines()


def test_models_install_survives_a_delegate_that_crashes_and_fails_that_version(
    device: Any, make_bundle: Callable[..., Path], delegate_libs: DelegateLibs
) -> None:
    assert device.cli("models", "install", make_bundle(2)).code == 0
    with device.config.open("a", encoding="utf-8") as fh:
        fh.write(f'[models.fraud]\ndelegates = [{{ library = "{delegate_libs.stub}", options = {{ crash = "1" }} }}]\n')
    v3 = rebuilt_bundle(make_bundle(2), device.base / "v3.bundle", device.keys, 3)
    result = device.cli("models", "install", v3, real=True)
    assert result.code == 1, result  # not 139: the crash happened in the probe process
    assert "fraud v3 installed" in result.out
    (line,) = [x for x in result.err_lines if x.startswith("edge-runtime:")]
    assert line == "edge-runtime: fraud v3: delegate 'stub_delegate' crashed the probe process (signal 11, SIGSEGV)"
    rows = [x.split()[:3] for x in device.cli("models", "list").out.splitlines() if x.startswith("fraud")]
    assert ["fraud", "2", "active"] in rows and ["fraud", "3", "failed:"] in rows
