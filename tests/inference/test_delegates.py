"""LiteRT delegates: a real external delegate built from C in the session (tests/conftest.py,
``delegate_libs``), the fallback chain to the CPU with the reason for each skip, the config
and manifest fields, and the install check that refuses a bundle needing an absent delegate.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime.bundle.manifest import manifest_from_json, parse_manifest
from edge_runtime.bundle.reader import BundleLimits, open_bundle
from edge_runtime.config import ModelConfig, parse_config
from edge_runtime.exceptions import AcceleratorError, ConfigError, DelegateError, ManifestError, SelfTestError
from edge_runtime.inference import delegates
from edge_runtime.inference.backend import load_backend
from edge_runtime.inference.base import Backend
from edge_runtime.inference.selftest import run_selftest
from edge_runtime.spec.delegates import CustomOpScanner, DelegateSpec, parse_delegate, parse_delegates
from edge_runtime.store.store import ModelStore
from harness.bundles import DelegateLibs, rebuilt_bundle

FACTORY_SRC = Path(__file__).resolve().parents[2] / "device" / "factory"


def _manifest_and_model(bundle: Path, root: Any) -> tuple[Any, bytes]:
    with open_bundle(bundle, root, BundleLimits()) as b:
        return b.manifest, b.read_artifact(b.manifest.model_file)


def _spec(lib: Path, **options: str) -> DelegateSpec:
    return parse_delegate({"library": str(lib), "options": options}, "test")


# -- the external delegate itself ---------------------------------------------------------


def test_real_delegate_loads_gets_its_options_and_runs_the_model(
    delegate_libs: DelegateLibs, make_bundle: Any, keys: Any, tmp_path: Path, sample_x: np.ndarray
) -> None:
    manifest, model = _manifest_and_model(make_bundle(1), keys.root)
    record = tmp_path / "options.txt"
    spec = _spec(delegate_libs.stub, record=str(record), device="usb", ratio=1.5)
    backend = load_backend(manifest, model, 1, [spec], lambda b: run_selftest(b, manifest))
    assert backend.delegate == "stub_delegate"
    assert backend.skipped == ()
    # The C library wrote every option it received: proof that it was created with them.
    assert sorted(record.read_text().splitlines()) == sorted([f"record={record}", "device=usb", "ratio=1.5"])
    cpu = load_backend(manifest, model)
    assert cpu.delegate == "xnnpack"
    np.testing.assert_allclose(backend.run([sample_x])[0], cpu.run([sample_x])[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("which", "options", "kind", "says"),
    [
        ("missing", {}, "missing", "cannot load"),
        ("no_entry_points", {}, "not_a_delegate", "tflite_plugin_create_delegate"),
        ("stub", {"refuse": "1"}, "refused", "refused by its options (refuse=1)"),  # create returned NULL
        ("stub", {"fail_prepare": "1"}, "refused", "refused"),  # Prepare failed: it refused the graph
    ],
)
def test_a_delegate_that_cannot_run_the_model_falls_back_to_the_cpu_with_the_reason(
    delegate_libs: DelegateLibs, make_bundle: Any, keys: Any, sample_x: np.ndarray,
    which: str, options: dict[str, str], kind: str, says: str,
) -> None:
    manifest, model = _manifest_and_model(make_bundle(1), keys.root)
    lib = getattr(delegate_libs, which)
    backend = load_backend(manifest, model, 1, [_spec(lib, **options)], lambda b: run_selftest(b, manifest))
    assert backend.delegate == "xnnpack"
    (skip,) = backend.skipped
    assert skip.kind == kind and says in skip.reason
    assert str(lib.name) in skip.reason or kind == "refused"
    assert backend.run([sample_x])[0].shape == (len(sample_x), 1)


def test_the_list_is_tried_in_order_and_a_named_builtin_ends_it(delegate_libs: DelegateLibs, make_bundle: Any,
                                                               keys: Any) -> None:
    manifest, model = _manifest_and_model(make_bundle(1), keys.root)
    plan = parse_delegates([str(delegate_libs.missing), "cpu", {"library": str(delegate_libs.stub)}], "t")
    backend = load_backend(manifest, model, 2, plan)
    assert backend.delegate == "cpu"  # reference kernels: the stub after it is never tried
    assert [s.delegate for s in backend.skipped] == ["absent"]


def test_without_fallback_a_failing_delegate_is_an_error(delegate_libs: DelegateLibs, make_bundle: Any,
                                                          keys: Any) -> None:
    manifest, model = _manifest_and_model(make_bundle(1), keys.root)
    with pytest.raises(DelegateError, match="not a TFLite external delegate") as info:
        load_backend(manifest, model, 1, [_spec(delegate_libs.no_entry_points)], fallback=False)
    assert info.value.kind == "not_a_delegate"


def test_the_selftest_runs_on_the_delegate_and_a_wrong_one_is_skipped(
    delegate_libs: DelegateLibs, make_bundle: Any, keys: Any
) -> None:
    """The check (the daemon's: golden self-test, then a sample run) runs on each candidate;
    a delegate whose outputs are wrong is skipped like a wrong model. The stub computes
    nothing itself, so the wrong result is simulated on it: the mechanism is what is tested."""
    manifest, model = _manifest_and_model(make_bundle(1), keys.root)
    seen: list[str] = []

    def check(b: Backend) -> None:
        seen.append(b.delegate)
        run_selftest(b, manifest)
        if b.delegate == "stub_delegate":
            raise SelfTestError("fraud v1: output 'output_0' differs from golden by 0.5 (atol 1e-05, rtol 0)")

    backend = load_backend(manifest, model, 1, [_spec(delegate_libs.stub)], check)
    assert seen == ["stub_delegate", "xnnpack"]
    assert backend.delegate == "xnnpack"
    assert backend.skipped[0].kind == "selftest" and "differs from golden" in backend.skipped[0].reason


def test_a_model_wrong_on_every_delegate_is_refused(delegate_libs: DelegateLibs, wrong_golden_bundle: Path,
                                                    keys: Any) -> None:
    manifest, model = _manifest_and_model(wrong_golden_bundle, keys.root)
    with pytest.raises(SelfTestError, match="no delegate could run fraud v4: stub_delegate skipped: .*differs"):
        load_backend(manifest, model, 1, [_spec(delegate_libs.stub)], lambda b: run_selftest(b, manifest))


def test_onnx_bundles_report_onnxruntime_and_skip_tflite_delegates(tmp_path: Path, keys: Any,
                                                                   delegate_libs: DelegateLibs) -> None:
    from edge_runtime.packaging import PackRequest, pack_model

    out = tmp_path / "fraud-onnx.bundle"
    pack_model(PackRequest(FACTORY_SRC / "fraud.onnx", name="fraud", version=1, keys=[keys.key], out=out,
               golden_inputs=[np.load(FACTORY_SRC / "golden.npy")]))
    manifest, model = _manifest_and_model(out, keys.root)
    backend = load_backend(manifest, model, 1, [_spec(delegate_libs.stub)])
    assert backend.delegate == "onnxruntime"
    assert [s.kind for s in backend.skipped] == ["unsupported"]


# -- config and manifest fields ----------------------------------------------------------


def test_config_takes_delegates_and_threads() -> None:
    cfg = parse_config({"models": {"det": {
        "threads": 4, "delegates": [{"library": "libedgetpu.so.1", "options": {"device": "usb"}}, "xnnpack"],
    }}})
    m = cfg.model("det")
    assert m.num_threads == 4
    spec, xnn = parse_delegates(m.delegates, "d")
    assert (spec.name, spec.library, spec.options) == ("edgetpu", "libedgetpu.so.1", (("device", "usb"),))
    assert xnn.builtin and xnn.name == "xnnpack"


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ({"threads": 2, "num_threads": 2}, "same setting"),
        ({"threads": 65}, "num_threads: expected 1 to 64"),
        ({"delegates": [{"options": {}}]}, "needs 'library'"),
        ({"delegates": [{"library": "x.so", "flavour": 1}]}, "unknown key"),
        ({"delegates": ["xnnpack", "xnnpack"]}, "unique"),
        ({"delegates": "edgetpu"}, "list"),
        ({"delegates": [{"library": "x.so", "options": {"k": [1]}}]}, "options.k"),
    ],
)
def test_bad_delegate_config_names_the_key(table: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_config({"models": {"det": table}})


def test_manifest_runtime_field_is_optional_validated_and_kept(make_bundle: Any, keys: Any) -> None:
    manifest, _ = _manifest_and_model(make_bundle(1), keys.root)
    assert manifest.runtime.delegates == () and manifest.runtime.requires_delegate is None  # old manifests stay valid
    obj = manifest.to_json()
    obj["runtime"] = {"threads": 2, "delegates": ["edgetpu", "xnnpack"], "requires_delegate": "edgetpu"}
    m = manifest_from_json(obj)
    assert m.runtime.threads == 2 and [d.name for d in m.runtime.delegates] == ["edgetpu", "xnnpack"]
    assert parse_manifest(m.canonical()).to_json()["runtime"] == obj["runtime"]  # what was signed round-trips
    assert delegates.threads(ModelConfig(), m) == 2 and delegates.threads(ModelConfig(num_threads=3), m) == 3
    assert delegates.plan(ModelConfig(delegates=["cpu"]), m)[0].name == "cpu"
    for bad, says in (({"threads": "2"}, "threads"), ({"requires_delegate": "xnnpack"}, "requires_delegate"),
                      ({"delegates": [7]}, r"delegates\[0\]"), ({"gpu": True}, "unknown field")):
        obj["runtime"] = bad
        with pytest.raises(ManifestError, match=says):
            manifest_from_json(obj)


def test_custom_op_scanner_finds_the_edgetpu_op_across_writes() -> None:
    scanner = CustomOpScanner()
    scanner.write(b"xxxx edgetpu-cus")
    assert not scanner.found
    scanner.write(b"tom-op yyyy")
    assert scanner.found
    clean = CustomOpScanner()
    for piece in (b"edgetpu-", b"custom", b"-o", b"p"[:0], b"P"):
        clean.write(piece)
    assert not clean.found


# -- refusing at install -----------------------------------------------------------------


def test_store_refuses_a_bundle_that_needs_an_absent_delegate_and_keeps_the_old_model(
    make_bundle: Any, keys: Any, tmp_path: Path, hash_tree: Any, delegate_libs: DelegateLibs
) -> None:
    store = ModelStore(tmp_path / "store", keys.root, None, BundleLimits(), delegates.InstallCheck({}))
    store.install(make_bundle(1))
    store.activate("fraud", 1)
    before = hash_tree(tmp_path / "store")
    edgetpu = rebuilt_bundle(make_bundle(1), tmp_path / "tpu.bundle", keys, 2, model_suffix=b"\0edgetpu-custom-op\0")
    with pytest.raises(AcceleratorError, match=r"fraud v2 needs the 'edgetpu' delegate \(it is compiled for the "
                                               r"Edge TPU.*cannot load libedgetpu.so.1"):
        store.install(edgetpu)
    named = rebuilt_bundle(make_bundle(1), tmp_path / "named.bundle", keys, 3, runtime={"requires_delegate": "npu"})
    with pytest.raises(AcceleratorError, match="needs the 'npu' delegate .*neither \\[models.fraud\\] delegates"):
        store.install(named)
    assert hash_tree(tmp_path / "store") == before
    assert store.state("fraud").active == 1 and store.versions("fraud") == [1]

    # The same bundle installs on a device whose config names a library that has the delegate.
    check = delegates.InstallCheck({"fraud": ModelConfig(delegates=[{"library": str(delegate_libs.stub), "name": "npu"}])})
    ok = ModelStore(tmp_path / "store", keys.root, None, BundleLimits(), check)
    assert ok.install(named).version == 3
    broken = delegates.InstallCheck(
        {"fraud": ModelConfig(delegates=[{"library": str(delegate_libs.no_entry_points), "name": "npu"}])})
    with pytest.raises(AcceleratorError, match="not a TFLite external delegate"):
        broken(open_bundle(named, keys.root, BundleLimits()))


# -- a bundle asks by name; the device config picks the file; loading runs in a probe ---------


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("/usr/lib/libevil.so", "'/usr/lib/libevil.so' is a library path; a bundle asks for a delegate by name"),
        ("../../tmp/libevil.so", "is a library path"),
        ("npu\x00x", "is a library path"),
        ("libedgetpu.so.1", "expected a delegate name matching"),
        ({"library": "libedgetpu.so.1", "name": "edgetpu"}, r"delegates\[0\].library: a bundle asks for a delegate by name"),
        ({"name": "../x"}, r"delegates\[0\].name: '../x' is a library path"),
        ({"options": {}}, "needs 'name'"),
        ({"name": "xnnpack", "options": {"k": "v"}}, "takes no options"),
    ],
)
def test_a_manifest_names_delegates_never_libraries(entry: Any, says: str, make_bundle: Any, keys: Any) -> None:
    obj = _manifest_and_model(make_bundle(1), keys.root)[0].to_json()
    obj["runtime"] = {"delegates": [entry]}
    with pytest.raises(ManifestError, match=says):
        manifest_from_json(obj)


def test_a_requested_name_resolves_only_to_the_file_the_config_maps_in_its_dirs(tmp_path: Path) -> None:
    libdir = tmp_path / "lib"
    libdir.mkdir()
    (libdir / "libnpu_delegate.so").write_bytes(b"")
    inf = parse_config({"inference": {"delegate_dirs": [str(tmp_path / "empty"), str(libdir)],
                                      "delegate_libraries": {"npu": "libnpu_delegate.so"}}}).inference
    assert delegates.resolve(DelegateSpec("npu", None, (("k", "v"),)), inf) == DelegateSpec(
        "npu", str(libdir / "libnpu_delegate.so"), (("k", "v"),))
    unmapped = delegates.resolve(DelegateSpec("gpu"), inf)
    assert unmapped.library is None and "maps no library to it" in unmapped.unavailable
    absent = delegates.resolve(DelegateSpec("edgetpu"), inf)  # a well-known name, not in these dirs
    assert absent.library is None and "cannot load libedgetpu.so.1: not in [inference] delegate_dirs" in absent.unavailable
    assert delegates.resolve(DelegateSpec("xnnpack"), inf).builtin
    with pytest.raises(DelegateError, match="maps no library") as err:
        delegates.probe_library(unmapped)
    assert err.value.kind == "missing"


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ({"delegate_dirs": ["lib"]}, "absolute directory paths"),
        ({"delegate_libraries": {"npu": "/opt/npu/libnpu.so"}}, "expected a library file name"),
        ({"delegate_libraries": {"npu": ".."}}, "expected a library file name"),
        ({"delegate_libraries": {"xnnpack": "libx.so"}}, "is built in"),
        ({"delegate_libraries": {"a.b": "libx.so"}}, "expected a delegate name"),
        ({"delegate_probe_timeout_s": 0}, "delegate_probe_timeout_s"),
        ({"delegates": []}, "unknown key"),
    ],
)
def test_bad_inference_config_names_the_key(table: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_config({"inference": table})


def test_the_install_check_survives_a_library_whose_constructor_crashes(
    make_bundle: Any, keys: Any, tmp_path: Path
) -> None:
    src = tmp_path / "crash.c"
    src.write_text("#include <signal.h>\n__attribute__((constructor)) static void boom(void) { raise(SIGSEGV); }\n")
    lib = tmp_path / "libcrash.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True, capture_output=True, timeout=120)
    named = rebuilt_bundle(make_bundle(1), tmp_path / "named.bundle", keys, 3, runtime={"requires_delegate": "npu"})
    check = delegates.InstallCheck({}, parse_config({"inference": {
        "delegate_dirs": [str(tmp_path)], "delegate_libraries": {"npu": lib.name}}}).inference)
    with pytest.raises(AcceleratorError, match=r"this device cannot load it: delegate 'npu' crashed the probe "
                                               r"process \(signal 11, SIGSEGV\)"):
        check(open_bundle(named, keys.root, BundleLimits()))
