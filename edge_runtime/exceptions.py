"""The project's error tree.

    EdgeRuntimeError
    ├── UsageError                 bad command line or config (exit code 2)
    │   └── ConfigError            unknown key, wrong type, bad value in a TOML config
    ├── BadDataError               the data itself is wrong: never retry the same bytes
    │   ├── CanonicalJSONError     not canonical / not JSON
    │   ├── TrustError             trust root or signature problems
    │   │   ├── SignatureError     bad, missing, unknown-key or below-threshold signatures
    │   │   ├── RootUpdateError    a trust root rotation that does not verify
    │   │   └── RootExpiredError   the newest trust root's ``expires`` has passed: no new updates
    │   ├── ManifestError          a manifest that does not parse or validate
    │   ├── BundleError            a bundle whose tar layout, sizes or hashes are wrong
    │   ├── RollbackError          a version at or below the anti-rollback floor
    │   ├── AcceleratorError       a bundle that needs a delegate (accelerator) this device lacks
    │   ├── DecryptionError        an encrypted bundle this device cannot open: not a recipient,
    │   │                          a wrapped key or ciphertext that does not authenticate
    │   ├── InputError             a tensor or file row that does not fit the model
    │   └── UpdateMessageError     an update message (or a window) that does not parse: the
    │                              rest of the update protocol's errors are in updates/exceptions.py
    ├── StoreError                 the device store cannot do what was asked
    │   └── NotFoundError          unknown model or version
    ├── InferenceError             a backend failed to load or run a model
    │   ├── SelfTestError          golden outputs did not match
    │   └── DelegateError          a LiteRT delegate is missing, is not one, or refused the model
    ├── UnavailableError           cannot take a request now (queue full, not ready, draining)
    └── TransportError             network/broker trouble: retry with backoff
        └── SubscriptionRefusedError  the broker refused a subscription (its ACL): reported at once

Messages say what was expected and what was found.
"""

from __future__ import annotations


class EdgeRuntimeError(Exception):
    """Base of every error this project raises on purpose."""


class UsageError(EdgeRuntimeError):
    """A command line or configuration that cannot be acted on."""


class ConfigError(UsageError):
    """A configuration file with an unknown key, a wrong type or a bad value."""


class BadDataError(EdgeRuntimeError):
    """The data is wrong; fetching the same bytes again will not help."""


class CanonicalJSONError(BadDataError):
    """Bytes that are not JSON, or not in canonical form where that is required."""


class TrustError(BadDataError):
    """A trust root or a signature check failed."""


class SignatureError(TrustError):
    """Signatures are bad, missing, from unknown keys or below the threshold."""


class RootUpdateError(TrustError):
    """A new trust root that does not chain from the current one."""


class RootExpiredError(TrustError):
    """The trust root in force has expired: nothing new is installed until a rotation renews it."""


class ManifestError(BadDataError):
    """A manifest that does not parse or does not validate."""


class BundleError(BadDataError):
    """A bundle with a bad layout, bad sizes or bad hashes."""


class RollbackError(BadDataError):
    """A version at or below the anti-rollback floor."""


class AcceleratorError(BadDataError):
    """A bundle that needs a delegate (e.g. an Edge-TPU-compiled model) this device cannot load."""


class DecryptionError(BadDataError):
    """An encrypted bundle this device cannot open (not a recipient, or bytes that do not authenticate)."""


class InputError(BadDataError):
    """Input tensors or rows that do not fit the model's interface."""


class UpdateMessageError(BadDataError):
    """An update message that is not what the protocol expects (here rather than in
    ``updates/exceptions.py`` because the window grammar in ``spec/window.py`` raises it)."""


class StoreError(EdgeRuntimeError):
    """The device store cannot carry out the request."""


class NotFoundError(StoreError):
    """An unknown model or version."""


class InferenceError(EdgeRuntimeError):
    """A backend failed to load or run a model."""


class SelfTestError(InferenceError):
    """A model's golden self-test did not reproduce the expected outputs."""


class DelegateError(InferenceError):
    """A LiteRT delegate that cannot run a model: ``kind`` says why, for metrics.

    ``missing`` (the library is not installed), ``not_a_delegate`` (no plugin entry points),
    ``refused`` (its create function or graph preparation said no), ``failed`` (loading,
    allocating or running the model with it failed), ``selftest`` (it computed wrong outputs).
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class UnavailableError(EdgeRuntimeError):
    """A model cannot take a request right now (queue full, not loaded yet, draining); retry later."""


class TransportError(EdgeRuntimeError):
    """Broker or network trouble; worth retrying with backoff."""


class SubscriptionRefusedError(TransportError):
    """The broker refused a subscription (a SUBACK reason code >= 0x80, e.g. its ACL)."""


__all__ = [
    "AcceleratorError",
    "BadDataError",
    "BundleError",
    "CanonicalJSONError",
    "ConfigError",
    "DecryptionError",
    "DelegateError",
    "EdgeRuntimeError",
    "InferenceError",
    "InputError",
    "ManifestError",
    "NotFoundError",
    "RollbackError",
    "RootUpdateError",
    "SelfTestError",
    "SignatureError",
    "StoreError",
    "SubscriptionRefusedError",
    "TransportError",
    "TrustError",
    "UnavailableError",
    "UpdateMessageError",
    "UsageError",
]
