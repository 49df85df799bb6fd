"""Model bundles: the manifest, safe reading and verification, and creation."""

from edge_runtime.bundle.manifest import Artifact, Golden, Manifest, parse_manifest
from edge_runtime.bundle.reader import Bundle, BundleLimits, open_bundle
from edge_runtime.bundle.writer import build_manifest, hash_artifact, write_bundle

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
