"""Errors of the update protocol, placed in the project's tree.

    BadDataError (edge_runtime.exceptions)
    ├── UpdateMessageError        a desired state, manifest or root message that does not parse
    │                             (defined in edge_runtime/exceptions.py, below spec/window.py)
    ├── ReplayError               (RollbackError) a desired state whose seq is not newer
    ├── ExpiredError              a desired state past its expiry (only with a trusted clock)
    ├── IncompatibleError         a release built for another runtime major or CPU
    └── ChunkError                (BundleError) a chunk with a bad index, size or hash

:class:`ImpossibleEventError` (a ``RuntimeError``) is a bug in the driver, never data.

Signature problems stay :class:`~edge_runtime.exceptions.SignatureError`, rollbacks of
model versions stay :class:`~edge_runtime.exceptions.RollbackError` and root rotations
:class:`~edge_runtime.exceptions.RootUpdateError`. Broker trouble is
:class:`~edge_runtime.exceptions.TransportError`: retried with backoff; everything here is
bad data: never retried with the same bytes.
"""

from __future__ import annotations

from edge_runtime.exceptions import BadDataError, BundleError, RollbackError, UpdateMessageError


class ReplayError(RollbackError):
    """A desired state whose ``seq`` is not newer than the one already followed."""


class ExpiredError(BadDataError):
    """A desired state past its ``expires`` time (checked only when the clock is trusted)."""


class IncompatibleError(BadDataError):
    """A release for another runtime major version or CPU architecture."""


class ChunkError(BundleError):
    """A chunk that is dropped: unknown index, wrong size or wrong sha256."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class ImpossibleEventError(RuntimeError):
    """The update machine was handed an outcome for an effect it never asked for (a driver bug,
    not bad data: raised as python-tuf raises on an impossible update order)."""


__all__ = ["ChunkError", "ImpossibleEventError", "ExpiredError", "IncompatibleError", "ReplayError", "UpdateMessageError"]
