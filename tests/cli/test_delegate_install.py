"""``edge-runtime models install`` refuses a bundle that needs a delegate this device cannot
load (an Edge-TPU-compiled model; a manifest's ``runtime.requires_delegate``) with a one-line
reason, keeps the old model active and the store byte-for-byte the same; a device whose
config names a library that is a delegate installs it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

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
