"""Bundles and libraries that several suites build: a bundle re-signed with changes, and the
test delegates compiled from tests/inference/delegate_src."""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.bundle.writer import build_manifest, hash_artifact, write_bundle


def rebuilt_bundle(src: Path, out: Path, keys: Any, version: int, runtime: dict[str, Any] | None = None,
             model_suffix: bytes = b"") -> Path:
    """``src`` re-signed as ``version`` with a ``runtime`` field and/or bytes appended to its model."""
    with tarfile.open(src) as tar:
        m_fh, model_fh = tar.extractfile("manifest.json"), tar.extractfile("model.tflite")
        assert m_fh is not None and model_fh is not None
        fields, model = json.loads(m_fh.read()), model_fh.read() + model_suffix
    fields["version"] = version
    fields["artifacts"]["model.tflite"] = hash_artifact("model.tflite", model).to_json()
    if runtime is not None:
        fields["runtime"] = runtime
    write_bundle(out, build_manifest(fields), {"model.tflite": model}, [keys.key])
    return out


@dataclass(frozen=True)
class DelegateLibs:
    """Shared libraries built from ``tests/inference/delegate_src``: a real external delegate
    (claims no nodes; records its options to the file its ``record`` option names), a library
    without the plugin entry points, and a path where no library is."""

    stub: Path
    no_entry_points: Path
    missing: Path
