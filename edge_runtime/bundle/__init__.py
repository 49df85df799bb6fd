"""Model bundles: the manifest, safe reading and verification, and creation."""

from typing import TYPE_CHECKING, Any

from edge_runtime.bundle.manifest import Artifact, Golden, Manifest, parse_manifest
from edge_runtime.bundle.reader import Bundle, BundleLimits, open_bundle

if TYPE_CHECKING:
    from edge_runtime.bundle.writer import build_manifest, hash_artifact, write_bundle

_WRITER = ("build_manifest", "hash_artifact", "write_bundle")  # signing: loaded on first use (needs cryptography)


def __getattr__(name: str) -> Any:
    if name in _WRITER:
        from edge_runtime.bundle import writer

        return getattr(writer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Artifact",
    "Bundle",
    "BundleLimits",
    "Golden",
    "Manifest",
    "build_manifest",
    "hash_artifact",
    "open_bundle",
    "parse_manifest",
    "write_bundle",
]
