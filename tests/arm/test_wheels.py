"""aarch64 proof: every dependency of a device install has a binary wheel for a 64-bit Pi.

Resolves ``[project].dependencies`` plus the ``device`` extra from pyproject.toml with
``pip download --only-binary=:all:`` for manylinux aarch64 and CPython 3.11, 3.12 and
3.13, and fails naming each requirement that has no wheel. Needs PyPI; run it with
``make test-arm`` (``pytest -m arm``). Prints the download size and an installed-size
estimate (the sum of the files inside the wheels).

The glibc ceiling is 2.36, Debian bookworm's (Raspberry Pi OS 12), the oldest OS the
device supports: a wheel that needs a newer glibc would install on trixie but not there.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import parse_wheel_filename

REPO = Path(__file__).resolve().parents[2]
PYTHON_VERSIONS = ["3.11", "3.12", "3.13"]
GLIBC_MIN, GLIBC_MAX = 17, 36  # manylinux_2_17 (= manylinux2014) ... manylinux_2_36
PLATFORMS = ["manylinux2014_aarch64"] + [f"manylinux_2_{m}_aarch64" for m in range(GLIBC_MIN, GLIBC_MAX + 1)]

pytestmark = pytest.mark.arm


def device_requirements(python_version: str) -> list[str]:
    """Requirements of a device install, markers evaluated for a 64-bit Pi."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    raw = list(project.get("dependencies", [])) + list(project["optional-dependencies"]["device"])
    env = {
        "python_version": python_version,
        "python_full_version": f"{python_version}.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "aarch64",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "device",
    }
    merged: dict[str, Requirement] = {}
    for line in raw:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        req.marker = None
        # The same name may appear in both lists: keep every specifier, once.
        name = req.name.lower()
        if name in merged:
            merged[name].specifier &= req.specifier
            merged[name].extras |= req.extras
        else:
            merged[name] = req
    return sorted(str(r) for r in merged.values())


def pip_download(requirements: list[str], python_version: str, dest: Path) -> subprocess.CompletedProcess[str]:
    platform_args = [arg for tag in PLATFORMS for arg in ("--platform", tag)]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        *platform_args,
        "--python-version",
        python_version,
        "--implementation",
        "cp",
        "--abi",
        f"cp{python_version.replace('.', '')}",
        "-d",
        str(dest),
        *requirements,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)


def unresolvable(stderr: str) -> list[str]:
    """Names pip reports as having no usable distribution."""
    found = re.findall(r"(?:satisfies the requirement|No matching distribution found for) ([A-Za-z0-9_.\-]+)", stderr)
    return sorted(set(found))


def required_glibc(wheel: Path) -> tuple[int, int] | None:
    """Lowest glibc any of the wheel's tags accepts; None for a pure-Python wheel."""
    _, _, _, tags = parse_wheel_filename(wheel.name)
    versions = []
    for tag in tags:
        if tag.platform == "any":
            return None
        if tag.platform == "manylinux2014_aarch64":
            versions.append((2, 17))
        elif m := re.fullmatch(r"manylinux_(\d+)_(\d+)_aarch64", tag.platform):
            versions.append((int(m.group(1)), int(m.group(2))))
    return min(versions) if versions else None


@pytest.mark.parametrize("python_version", PYTHON_VERSIONS)
def test_device_extra_has_aarch64_wheels(
    python_version: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    requirements = device_requirements(python_version)
    assert any(r.startswith("ai-edge-litert") for r in requirements), requirements
    result = pip_download(requirements, python_version, tmp_path)
    if result.returncode != 0:
        # Attribute the failure: try each top-level requirement on its own.
        blocked = []
        for req in requirements:
            one = pip_download([req], python_version, tmp_path / "one")
            if one.returncode != 0:
                blocked.append(f"{req} (no wheel for: {', '.join(unresolvable(one.stderr)) or '?'})")
        pytest.fail(
            f"CPython {python_version} aarch64: no binary wheel for {'; '.join(blocked) or unresolvable(result.stderr)}"
            f"\n{result.stderr[-3000:]}"
        )

    wheels = sorted(tmp_path.glob("*.whl"))
    assert wheels, result.stdout
    assert not list(tmp_path.glob("*.tar.gz")) and not list(tmp_path.glob("*.zip")), "sdists were downloaded"
    cp_tag = f"cp{python_version.replace('.', '')}"
    for wheel in wheels:
        _, _, _, tags = parse_wheel_filename(wheel.name)
        assert any(t.platform == "any" or t.platform.endswith("_aarch64") for t in tags), wheel.name
        assert any(t.interpreter in {cp_tag, "py3", "cp3"} or t.abi in {"abi3", "none"} for t in tags), wheel.name
    names = {parse_wheel_filename(w.name)[0] for w in wheels}
    assert not {n for n in names if n.startswith("tensorflow")}, names

    download_bytes = sum(w.stat().st_size for w in wheels)
    installed_bytes = 0
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            installed_bytes += sum(info.file_size for info in zf.infolist())
    glibc = max((g for w in wheels if (g := required_glibc(w)) is not None), default=None)
    glibc_text = f"{glibc[0]}.{glibc[1]}" if glibc else "any"
    with capsys.disabled():
        print(
            f"\naarch64 cp{python_version}: {len(wheels)} wheels, {download_bytes / 2**20:.1f} MiB download, "
            f"~{installed_bytes / 2**20:.1f} MiB installed, needs glibc >= {glibc_text}"
        )
        for wheel in wheels:
            print(f"    {wheel.name}  {wheel.stat().st_size / 2**20:.1f} MiB")
