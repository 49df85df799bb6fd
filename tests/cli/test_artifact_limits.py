"""Attack: a signed bundle whose side artifacts cost more to read than their size says.

``edge-runtime models install`` (the real console script, in its own process) reads
golden.npz and profile.json within their limits before anything is written: a golden.npz
deflate bomb is refused from its zip directory in bounded memory, a profile.json holding a
number no float holds is refused by name, and the version that was active stays active.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.bundles import golden_bomb, resigned_with_artifacts
from harness.daemon import EDGE

# The CLI child's peak RSS is measured by a wrapper process whose only child it is.
_MEASURE = (
    "import json, resource, subprocess, sys\n"
    "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "print(json.dumps({'code': p.returncode, 'out': p.stdout, 'err': p.stderr,\n"
    "                  'rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))\n"
)
MAX_INSTALL_RSS_MB = 400
BOMB_ZERO_BYTES = 512 * 1024 * 1024  # inflated by np.load, this alone is over the RSS bound


def _measured_cli(*args: str | Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(EDGE), *map(str, args)], capture_output=True,
                          text=True, timeout=300, check=True)
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def _active(device: Any) -> list[list[str]]:
    listing = device.cli("models", "list")
    return [x.split()[:3] for x in listing.out.splitlines() if x.startswith("fraud")]


def test_models_install_refuses_a_golden_npz_deflate_bomb_in_bounded_memory(
    device: Any, make_bundle: Callable[..., Path], hash_tree: Callable[[Path], str]
) -> None:
    assert device.cli("models", "install", make_bundle(2)).code == 0
    before = hash_tree(device.store_path)
    bomb = golden_bomb(BOMB_ZERO_BYTES)
    assert len(bomb) < 2 * 1024 * 1024
    bundle = resigned_with_artifacts(make_bundle(2), device.base / "bomb.bundle", device.keys.key, 3, {"golden.npz": bomb},
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
    bundle = resigned_with_artifacts(make_bundle(2), device.base / "profile.bundle", device.keys.key, 3, {"profile.json": profile},
                       profile={"file": "profile.json"})
    result = device.cli("models", "install", bundle, real=True)
    assert result.code == 1, result
    (line,) = result.err_lines
    assert "profile.json: feature 0: 'edges' and 'reference' must hold finite numbers" in line
    assert hash_tree(device.store_path) == before
    assert ["fraud", "2", "active"] in _active(device)
