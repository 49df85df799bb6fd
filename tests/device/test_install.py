"""device/install.sh --root: the tree it writes, idempotence, and a venv without TensorFlow.

Building the virtual environment needs PyPI and takes about half a minute, so the
module installs once (plus one no-op re-run) and every test inspects that tree.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_runtime.config import parse_config

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "device" / "install.sh"
UNINSTALL = REPO / "device" / "uninstall.sh"
CONFIG_EXAMPLE = REPO / "device" / "config.toml"
UNIT = REPO / "systemd" / "edge-runtime.service"
DEMO_ROOT = REPO / "device" / "demo-keys" / "root.json"
FACTORY_BUNDLES = sorted((REPO / "device" / "factory").glob("*.bundle"))

VENV = "opt/edge-runtime/venv"

# The documented tree (docs/raspberry-pi.md): path -> mode.
DIRS = {
    "opt/edge-runtime": 0o755,
    VENV: 0o755,
    "opt/edge-runtime/wheels": 0o755,
    "etc/edge-runtime": 0o755,
    "etc/edge-runtime/mqtt": 0o750,
    "var/lib/edge-runtime": 0o750,
    "var/lib/edge-runtime/models": 0o750,
    "usr/share/edge-runtime/factory": 0o755,
    "etc/systemd/system": 0o755,
}
FILES = {
    "etc/edge-runtime/config.toml": 0o640,
    "etc/edge-runtime/root.json": 0o644,
    "etc/systemd/system/edge-runtime.service": 0o644,
    f"{VENV}/bin/edge-runtime": 0o755,
    "usr/share/doc/edge-runtime/raspberry-pi.md": 0o644,
}


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``edge-runtime`` from the environment running the tests."""
    code = "import sys; from edge_runtime.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd, timeout=120, check=False
    )


def run_script(script: Path, *args: str, timeout_s: float = 900) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["bash", str(script), *args], capture_output=True, text=True, timeout=timeout_s, check=False
    )
    print(f"$ {script.name} {' '.join(args)}\n{result.stdout}{result.stderr}")
    return result


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with its mode and content hash (or link target).

    Byte-code is left out: pip writes it with source timestamps in it, and the service
    never writes it (the venv is read-only to it).
    """
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = f"link -> {os.readlink(path)}"
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = f"dir {stat.S_IMODE(st.st_mode):o}"
            elif not name.endswith(".pyc"):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                out[rel] = f"file {stat.S_IMODE(st.st_mode):o} {digest}"
    return out


@dataclass(frozen=True)
class Installed:
    root: Path
    trust_root: Path
    first: subprocess.CompletedProcess[str]
    second: subprocess.CompletedProcess[str]
    after_first: dict[str, str]
    after_second: dict[str, str]


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, unrelated trust root and its signing key."""
    out = tmp_path_factory.mktemp("keys")
    result = run_cli("keys", "generate", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, keys_dir: Path) -> Iterator[Installed]:
    # The demo root signs the factory bundle, so the installed tree can verify it.
    trust_root = DEMO_ROOT if DEMO_ROOT.is_file() else keys_dir / "root.json"
    root = tmp_path_factory.mktemp("pi") / "root"
    # --with-onnx: the onnx extra too, so ONNX fallback bundles run (and it must not pull TensorFlow either).
    args = ("--root", str(root), "--trust-root", str(trust_root), "--python", sys.executable, "--with-onnx")
    first = run_script(INSTALL, *args)
    assert first.returncode == 0, first.stderr
    after_first = snapshot(root)
    second = run_script(INSTALL, *args)
    assert second.returncode == 0, second.stderr
    yield Installed(root, trust_root, first, second, after_first, snapshot(root))


def test_tree_has_documented_paths_and_modes(installed: Installed) -> None:
    root = installed.root
    assert sorted(p.name for p in root.iterdir()) == ["etc", "opt", "usr", "var"]
    for rel, mode in DIRS.items():
        path = root / rel
        assert path.is_dir(), rel
        assert stat.S_IMODE(path.stat().st_mode) == mode, f"{rel}: {stat.S_IMODE(path.stat().st_mode):o}"
    for rel, mode in FILES.items():
        path = root / rel
        assert path.is_file(), rel
        assert stat.S_IMODE(path.stat().st_mode) == mode, f"{rel}: {stat.S_IMODE(path.stat().st_mode):o}"


def test_installed_files_are_the_repository_files(installed: Installed) -> None:
    root = installed.root
    assert (root / "etc/edge-runtime/root.json").read_bytes() == installed.trust_root.read_bytes()
    assert (root / "etc/edge-runtime/config.toml").read_bytes() == CONFIG_EXAMPLE.read_bytes()
    assert (root / "etc/systemd/system/edge-runtime.service").read_bytes() == UNIT.read_bytes()
    wheels = list((root / "opt/edge-runtime/wheels").iterdir())
    assert len(wheels) == 1, wheels
    assert re.fullmatch(r"edge_runtime-[^-]+-py3-none-any\.whl", wheels[0].name)


def test_factory_bundles_copied(installed: Installed) -> None:
    factory = installed.root / "usr/share/edge-runtime/factory"
    if not FACTORY_BUNDLES:
        # Only while device/factory/*.bundle does not exist yet: then nothing is copied.
        assert list(factory.iterdir()) == []
        assert "no factory bundle" in installed.first.stdout
        return
    assert sorted(p.name for p in factory.iterdir()) == [b.name for b in FACTORY_BUNDLES]
    for bundle in FACTORY_BUNDLES:
        copied = factory / bundle.name
        assert copied.read_bytes() == bundle.read_bytes()
        assert stat.S_IMODE(copied.stat().st_mode) == 0o644


def test_second_run_changes_nothing(installed: Installed) -> None:
    assert installed.after_second == installed.after_first
    assert "virtual environment up to date" in installed.second.stdout
    assert "keeping existing" in installed.second.stdout
    assert "installing" not in installed.second.stdout


def test_root_mode_touches_no_system_state(installed: Installed) -> None:
    out = installed.first.stdout
    assert "not creating system user edge-runtime" in out
    assert "not running systemctl" in out
    # Nothing but the four top-level trees; no passwd or group files were written.
    assert not (installed.root / "etc/passwd").exists()
    assert not (installed.root / "etc/systemd/system/multi-user.target.wants").exists()


def test_venv_has_the_device_extra_and_no_tensorflow(installed: Installed) -> None:
    python = installed.root / VENV / "bin/python"
    result = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json"], capture_output=True, text=True, timeout=120, check=True
    )
    names = {d["name"].lower().replace("_", "-") for d in json.loads(result.stdout)}
    assert not {n for n in names if n.startswith("tensorflow") or n in {"tf-keras", "keras", "onnx2tf"}}, names
    assert "[device,onnx]" in installed.first.stdout
    for required in ("edge-runtime", "ai-edge-litert", "paho-mqtt", "cryptography", "numpy", "httptools", "onnxruntime"):
        assert required in names, f"{required} missing from the device venv: {sorted(names)}"
    assert "uvicorn" not in names  # serving/h1.py serves HTTP


@pytest.mark.skipif(not FACTORY_BUNDLES or not DEMO_ROOT.is_file(), reason="no demo factory bundle yet")
def test_installed_tree_scores_the_factory_model(installed: Installed, tmp_path: Path) -> None:
    root = installed.root
    exe = root / VENV / "bin/edge-runtime"
    sample = REPO / "device" / "factory" / "sample.csv"
    out = tmp_path / "scores.csv"
    result = subprocess.run(
        [
            str(exe),
            "score",
            "--model",
            "fraud",
            str(sample),
            "-o",
            str(out),
            "--store",
            str(tmp_path / "store"),
            "--root",
            str(root / "etc/edge-runtime/root.json"),
            "--factory",
            str(root / "usr/share/edge-runtime/factory"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = out.read_text().splitlines()
    assert len(rows) == len(sample.read_text().splitlines())  # header + one score per row


def test_rerun_keeps_an_edited_config(installed: Installed) -> None:
    config = installed.root / "etc/edge-runtime/config.toml"
    edited = config.read_text().replace('# id = "pi-0001"', 'id = "pi-test"')
    config.write_text(edited)
    result = run_script(
        INSTALL,
        "--root",
        str(installed.root),
        "--trust-root",
        str(installed.trust_root),
        "--python",
        sys.executable,
    )
    assert result.returncode == 0, result.stderr
    assert config.read_text() == edited


def test_refuses_a_different_trust_root(installed: Installed, keys_dir: Path) -> None:
    other = keys_dir / "root.json"
    pinned = installed.root / "etc/edge-runtime/root.json"
    before = pinned.read_bytes()
    if other.read_bytes() == before:
        pytest.skip("the fixture pinned the generated root; nothing different to offer")
    result = run_script(INSTALL, "--root", str(installed.root), "--trust-root", str(other), "--python", sys.executable)
    assert result.returncode != 0
    assert "--replace-trust-root" in result.stderr
    assert pinned.read_bytes() == before


def test_refuses_a_private_key_as_trust_root(tmp_path: Path, keys_dir: Path) -> None:
    root = tmp_path / "root"
    result = run_script(INSTALL, "--root", str(root), "--trust-root", str(keys_dir / "signing.key"))
    assert result.returncode != 0
    assert "private signing key" in result.stderr
    assert not (root / "etc/edge-runtime/root.json").exists()


def test_trust_root_is_required(tmp_path: Path) -> None:
    result = run_script(INSTALL, "--root", str(tmp_path / "root"))
    assert result.returncode != 0
    assert "--trust-root FILE is required" in result.stderr


def test_config_example_is_valid_with_and_without_mqtt() -> None:
    text = CONFIG_EXAMPLE.read_text()
    cfg = parse_config(tomllib.loads(text))
    assert cfg.mqtt is None  # offline unless the user enables [mqtt]
    assert cfg.store.path == "/var/lib/edge-runtime/models"
    assert cfg.store.factory == "/usr/share/edge-runtime/factory"
    assert (cfg.server.host, cfg.server.port) == ("127.0.0.1", 8000)
    assert cfg.trust.root == "/etc/edge-runtime/root.json"
    assert cfg.models["fraud"].max_batch_size == 32
    assert cfg.models["fraud"].max_queue_delay_us == 2000
    # The commented-out [mqtt] example must itself be valid once uncommented.
    enabled = re.sub(r"(?m)^# (\[mqtt\]|url|fleet|prefix|ca_file|cert_file|key_file) ?", r"\1 ", text)
    mqtt = parse_config(tomllib.loads(enabled)).mqtt
    assert mqtt is not None
    assert mqtt.url.startswith("mqtts://")
    assert mqtt.key_file == "/etc/edge-runtime/mqtt/pi-0001.key"


def test_uninstall_keeps_user_data_then_purges(installed: Installed, tmp_path: Path) -> None:
    # Work on a copy so the order of tests in this module does not matter.
    root = tmp_path / "root"
    shutil.copytree(installed.root, root, symlinks=True)
    result = run_script(UNINSTALL, "--root", str(root))
    assert result.returncode == 0, result.stderr
    assert not (root / "opt/edge-runtime").exists()
    assert not (root / "usr/share/edge-runtime").exists()
    assert not (root / "etc/systemd/system/edge-runtime.service").exists()
    assert (root / "etc/edge-runtime/config.toml").is_file()
    assert (root / "etc/edge-runtime/root.json").is_file()
    assert (root / "var/lib/edge-runtime/models").is_dir()
    result = run_script(UNINSTALL, "--root", str(root), "--purge")
    assert result.returncode == 0, result.stderr
    assert not (root / "etc/edge-runtime").exists()
    assert not (root / "var/lib/edge-runtime").exists()


# --- the operator's own keys: --factory, a foreign root, --wheelhouse --------------------------


def _tree_sharing_the_venv(installed: Installed, tmp_path: Path) -> Path:
    """A fresh device tree whose /opt is the module's installed one: the venv is already up
    to date for the same wheel and extras, so a run only does the trust-root and factory steps."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "opt").symlink_to(installed.root / "opt")
    return root


def _install_reusing_venv(installed: Installed, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (wheel,) = (installed.root / "opt/edge-runtime/wheels").glob("edge_runtime-*.whl")
    return run_script(
        INSTALL, "--root", str(root), "--python", sys.executable, "--wheel", str(wheel), "--with-onnx", *args
    )


@pytest.fixture(scope="module")
def own_bundle(tmp_path_factory: pytest.TempPathFactory, keys_dir: Path) -> Path:
    """The operator's model, signed by the operator's key, in a file whose name is not the model's."""
    out = tmp_path_factory.mktemp("own") / "wine-1.bundle"
    result = run_cli(
        "bundle", "create", str(REPO / "device/factory/fraud.tflite"), "--name", "wine", "--version", "1",
        "--sign-key", str(keys_dir / "signing.key"), "-o", str(out),
    )
    assert result.returncode == 0, result.stderr
    return out


def test_factory_bundle_of_a_foreign_root_is_verified_and_named_from_its_manifest(
    installed: Installed, tmp_path: Path, keys_dir: Path, own_bundle: Path
) -> None:
    root = _tree_sharing_the_venv(installed, tmp_path)
    result = _install_reusing_venv(installed, root, "--trust-root", str(keys_dir / "root.json"), "--factory", str(own_bundle))
    assert result.returncode == 0, result.stderr
    factory = root / "usr/share/edge-runtime/factory"
    # The store finds it as <factory>/<model name>.bundle; the demo bundle is not installed.
    assert sorted(p.name for p in factory.iterdir()) == ["wine.bundle"]
    assert (factory / "wine.bundle").read_bytes() == own_bundle.read_bytes()
    assert "model 'wine' (name from its signed manifest)" in result.stdout
    assert (root / "etc/edge-runtime/root.json").read_bytes() == (keys_dir / "root.json").read_bytes()


def test_a_foreign_root_without_factory_installs_no_demo_bundle_and_says_so(
    installed: Installed, tmp_path: Path, keys_dir: Path
) -> None:
    if not FACTORY_BUNDLES:
        pytest.skip("no demo factory bundle in the repository")
    root = _tree_sharing_the_venv(installed, tmp_path)
    result = _install_reusing_venv(installed, root, "--trust-root", str(keys_dir / "root.json"))
    assert result.returncode == 0, result.stderr
    assert list((root / "usr/share/edge-runtime/factory").iterdir()) == []
    assert f"not installing the demo factory bundle {FACTORY_BUNDLES[0].name}" in result.stdout
    assert "no factory model installed: pass --factory BUNDLE" in result.stdout


def test_an_untrusted_factory_bundle_is_refused_with_nothing_written(
    installed: Installed, tmp_path: Path, keys_dir: Path
) -> None:
    if not FACTORY_BUNDLES:
        pytest.skip("no demo factory bundle in the repository")
    root = _tree_sharing_the_venv(installed, tmp_path)
    # The demo bundle is signed by the demo key, which the operator's root does not trust.
    result = _install_reusing_venv(
        installed, root, "--trust-root", str(keys_dir / "root.json"), "--factory", str(FACTORY_BUNDLES[0])
    )
    assert result.returncode != 0
    assert f"--factory {FACTORY_BUNDLES[0]} does not verify against" in result.stderr
    assert list((root / "usr/share/edge-runtime/factory").iterdir()) == []
    assert not (root / "etc/edge-runtime/root.json").exists()
    assert not (root / "etc/edge-runtime/config.toml").exists()


def test_wheelhouse_installs_with_no_index(installed: Installed, tmp_path: Path, keys_dir: Path) -> None:
    """A wheelhouse holding only edge-runtime: pip must look nowhere else, so the first
    dependency is reported missing from the wheelhouse (an index would have been tried)."""
    house = tmp_path / "wheels"
    house.mkdir()
    (wheel,) = (installed.root / "opt/edge-runtime/wheels").glob("edge_runtime-*.whl")
    shutil.copy(wheel, house / wheel.name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    # No configured find-links or index; an index that would fail loudly if pip used it.
    env |= {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": "http://127.0.0.1:9/simple/", "PIP_RETRIES": "0"}
    root = tmp_path / "root"
    args = ["--root", str(root), "--trust-root", str(keys_dir / "root.json"), "--python", sys.executable]
    result = subprocess.run(
        ["bash", str(INSTALL), *args, "--wheelhouse", str(house)],
        capture_output=True, text=True, timeout=300, check=False, env=env,
    )
    print(result.stdout, result.stderr)
    assert result.returncode != 0
    assert f"offline: pip install --no-index --find-links {house}" in result.stdout
    assert f"installing {wheel.name}[device]" in result.stdout  # the wheel came from the wheelhouse
    assert "from versions: none" in result.stderr and "127.0.0.1:9" not in result.stderr
    assert "build it with scripts/build-wheelhouse.sh" in result.stderr
    assert not (root / "etc/edge-runtime/root.json").exists()


def test_device_dir_from_fleet_provision_installs_config_identity_and_root(
    installed: Installed, tmp_path: Path, keys_dir: Path, own_bundle: Path
) -> None:
    from edge_runtime.fleet.provision import ProvisionRequest, provision

    out = tmp_path / "provisioned"
    provision(ProvisionRequest(
        out=out, devices=1, ca_cert=tmp_path / "ca.crt", ca_key=tmp_path / "ca.key", ca_init=True,
        root=keys_dir / "root.json", broker="mqtts://broker.example:8883", fleet="plant-7", start=7,
    ))
    device = out / "devices" / "pi-0007"
    root = _tree_sharing_the_venv(installed, tmp_path)
    # No --trust-root: the provisioned root.json is the one pinned.
    result = _install_reusing_venv(installed, root, "--device-dir", str(device), "--factory", str(own_bundle))
    assert result.returncode == 0, result.stderr
    etc = root / "etc/edge-runtime"
    assert (etc / "config.toml").read_bytes() == (device / "config.toml").read_bytes()
    assert (etc / "root.json").read_bytes() == (keys_dir / "root.json").read_bytes()
    for name, mode in (("ca.crt", 0o644), ("pi-0007.crt", 0o644), ("pi-0007.key", 0o640)):
        assert (etc / "mqtt" / name).read_bytes() == (device / "mqtt" / name).read_bytes()
        assert stat.S_IMODE((etc / "mqtt" / name).stat().st_mode) == mode, name
    cfg = parse_config(tomllib.loads((etc / "config.toml").read_text()))
    assert cfg.device.id == "pi-0007" and cfg.mqtt is not None and cfg.mqtt.key_file == "/etc/edge-runtime/mqtt/pi-0007.key"
    assert (root / "usr/share/edge-runtime/factory/wine.bundle").is_file()
    # An edited config is never replaced by a later run.
    (etc / "config.toml").write_text((etc / "config.toml").read_text() + "\n[models.wine]\nmax_batch_size = 8\n")
    again = _install_reusing_venv(installed, root, "--device-dir", str(device), "--factory", str(own_bundle))
    assert again.returncode == 0, again.stderr
    assert "edited on this device" in again.stdout and "max_batch_size = 8" in (etc / "config.toml").read_text()
