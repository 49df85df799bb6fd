"""The install-time reading of a bundle's side artifacts: ``golden.npz`` and ``profile.json``.

Both are signed and hashed, but a signature says who made a file, not that reading it is
cheap: a 1 MB ``golden.npz`` can inflate to a gigabyte, and a ``profile.json`` can hold
numbers no float holds. So an install reads them exactly as the daemon will, within the
limits the readers enforce (:mod:`edge_runtime.bundle.npz`, the size and count checks of
:func:`edge_runtime.bundle.profile.parse_profile`), and refuses the bundle before
anything is written when they do not read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge_runtime.exceptions import BundleError, SelfTestError

if TYPE_CHECKING:
    from edge_runtime.bundle.reader import Bundle


def check_artifacts(bundle: Bundle) -> None:
    """Raise BundleError (golden.npz) or ManifestError (profile.json) unless both read within
    their limits and match the manifest's inputs and outputs."""
    from edge_runtime.bundle.profile import parse_profile
    from edge_runtime.inference.selftest import load_golden

    manifest = bundle.manifest
    if manifest.encryption is not None:
        # Ciphertext cannot be read before the device's key opens it: the same readers (and their
        # limits) run on the plaintext in memory when the version is loaded and self-tested.
        return
    if manifest.golden is not None and manifest.golden.file is not None:
        try:
            load_golden(manifest, bundle.read_artifact(manifest.golden.file))
        except SelfTestError as exc:
            raise BundleError(str(exc)) from exc
    if manifest.profile_file is not None:
        parse_profile(bundle.read_artifact(manifest.profile_file), manifest.inputs, manifest.outputs)


__all__ = ["check_artifacts"]
