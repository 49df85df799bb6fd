"""Attack: a signed bundle whose side artifacts cost more to read than their size says.

``edge-runtime models install`` (the real console script, in its own process) reads
golden.npz and profile.json within their limits before anything is written: a golden.npz
deflate bomb is refused from its zip directory in bounded memory, a profile.json holding a
number no float holds is refused by name, and the version that was active stays active.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from numpy.lib import format as npy_format

from edge_runtime.bundle.writer import build_manifest, hash_artifact, write_bundle
from harness.daemon import EDGE

# The CLI child's peak RSS is measured by a wrapper process whose only child it is.
_MEASURE = (
    "import json, resource, subprocess, sys\n"
    "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "print(json.dumps({'code': p.returncode, 'out': p.stdout, 'err': p.stderr,\n"
    "                  'rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))\n"
)
MAX_INSTALL_RSS_MB = 400
BOMB_ZERO_BYTES = 768 * 1024 * 1024  # inflated by np.load, this alone is over the RSS bound


def _measured_cli(*args: str | Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(EDGE), *map(str, args)], capture_output=True,
                          text=True, timeout=300, check=True)
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def _npy_header(shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _golden_bomb(zero_bytes: int) -> bytes:
    """A golden.npz whose input_0 is ``zero_bytes`` of float32 zeros, deflated (~1000x)."""
    rows = zero_bytes // (30 * 4)
    header = _npy_header((rows, 30))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        info = zipfile.ZipInfo("input_0.npy")
        info.compress_type = zipfile.ZIP_DEFLATED
        info.file_size = len(header) + rows * 30 * 4
        with zf.open(info, "w") as fh:
            fh.write(header)
            zeros = bytes(30 * 4 * 65536)
            for _ in range(rows // 65536):
                fh.write(zeros)
            fh.write(bytes(30 * 4 * (rows % 65536)))
        zf.writestr("output_0.npy", _npy_header((5, 1)) + bytes(20))
    return buf.getvalue()


def _resigned(src: Path, out: Path, keys: Any, version: int, artifacts: dict[str, bytes], **fields_update: Any) -> Path:
    """``src`` re-signed as ``version`` with extra artifacts and manifest fields."""
    with tarfile.open(src) as tar:
        m_fh, model_fh = tar.extractfile("manifest.json"), tar.extractfile("model.tflite")
        assert m_fh is not None and model_fh is not None
        fields, model = json.loads(m_fh.read()), model_fh.read()
    fields["version"] = version
    for name, data in artifacts.items():
        fields["artifacts"][name] = hash_artifact(name, data).to_json()
    fields.update(fields_update)
    write_bundle(out, build_manifest(fields), {"model.tflite": model, **artifacts}, [keys.key])
    return out


def _active(device: Any) -> list[list[str]]:
    listing = device.cli("models", "list")
    return [x.split()[:3] for x in listing.out.splitlines() if x.startswith("fraud")]


def test_models_install_refuses_a_golden_npz_deflate_bomb_in_bounded_memory(
    device: Any, make_bundle: Callable[..., Path], hash_tree: Callable[[Path], str]
) -> None:
    assert device.cli("models", "install", make_bundle(2)).code == 0
    before = hash_tree(device.store_path)
    bomb = _golden_bomb(BOMB_ZERO_BYTES)
    assert len(bomb) < 2 * 1024 * 1024
    bundle = _resigned(make_bundle(2), device.base / "bomb.bundle", device.keys, 3, {"golden.npz": bomb},
                       golden={"file": "golden.npz", "atol": 1e-4, "rtol": 1e-3})
    result = _measured_cli("models", "install", bundle, "--config", device.config)
    assert result["code"] == 1, result
    (line,) = result["err"].splitlines()
    assert "golden.npz: member 'input_0.npy' declares" in line and "Traceback" not in result["err"]
    assert result["rss_mb"] < MAX_INSTALL_RSS_MB, result["rss_mb"]
    assert hash_tree(device.store_path) == before  # refused before anything was written
    assert ["fraud", "2", "active"] in _active(device) and not any(r[1] == "3" for r in _active(device))


def test_models_install_refuses_a_profile_json_whose_numbers_no_float_holds(
    device: Any, make_bundle: Callable[..., Path], hash_tree: Callable[[Path], str]
) -> None:
    assert device.cli("models", "install", make_bundle(2)).code == 0
    before = hash_tree(device.store_path)
    feature = {"edges": [10**400], "index": 0, "name": "x[0]", "reference": [0.5, 0.5], "side": "input", "tensor": 0}
    profile = json.dumps({"_type": "edge-runtime/profile", "bins": 10, "features": [feature], "rows": 10},
                         sort_keys=True, separators=(",", ":")).encode()
    bundle = _resigned(make_bundle(2), device.base / "profile.bundle", device.keys, 3, {"profile.json": profile},
                       profile={"file": "profile.json"})
    result = device.cli("models", "install", bundle, real=True)
    assert result.code == 1, result
    (line,) = result.err_lines
    assert "profile.json: feature 0: 'edges' and 'reference' must hold finite numbers" in line
    assert hash_tree(device.store_path) == before
    assert ["fraud", "2", "active"] in _active(device)
