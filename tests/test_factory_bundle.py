"""The factory bundle the repository ships (what `make run` serves and install.sh installs) is
current: it verifies against the demo root and carries a reference profile, so the demo shows
drift figures."""

from __future__ import annotations

import json
from pathlib import Path

from edge_runtime.bundle.profile import RECOMMENDED_ROWS, parse_profile
from edge_runtime.bundle.reader import open_bundle
from edge_runtime.trust.root import verify_root

REPO = Path(__file__).resolve().parents[1]


def test_shipped_factory_bundle_carries_a_reference_profile_from_enough_rows() -> None:
    root = verify_root((REPO / "device" / "demo-keys" / "root.json").read_bytes())
    with open_bundle(REPO / "device" / "factory" / "fraud.bundle", root) as bundle:
        manifest = bundle.manifest
        assert manifest.profile_file == "profile.json"
        blob = bundle.read_artifact(manifest.profile_file)
    profile = parse_profile(blob, manifest.inputs, manifest.outputs)
    assert profile.rows >= RECOMMENDED_ROWS and not profile.weak
    assert {f.name for f in profile.features} >= {f"input_0[{i}]" for i in range(30)}
    assert "weak" not in json.loads(blob)
