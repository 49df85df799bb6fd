"""Verify-only Ed25519 public keys, without importing ``cryptography`` where the system can verify.

Why: a device that only serves checks signatures (its trust root, each model's manifest) and
never makes one. Importing ``cryptography`` for that costs about 10 MB of resident memory
(its Rust/OpenSSL extension and its Python modules), a sixth of the daemon's budget on a Pi.
The OpenSSL library that Python's own ``ssl`` and ``hashlib`` modules already load has
verified Ed25519 since 1.1.1; it is called here through ``ctypes``. That is the same
OpenSSL code ``cryptography`` wraps (it bundles its own copy). When that library cannot be
found, lacks Ed25519, or fails the RFC 8032 self-test run once before first use, verification
falls back to ``cryptography``. Signing, key generation and PEM stay in :mod:`keys` (operator
tools, which import ``cryptography``).
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

NID_ED25519 = 1087  # EVP_PKEY_ED25519
KEY_BYTES = 32
SIGNATURE_BYTES = 64

# RFC 8032 section 7.1, TEST 1 (empty message): the self-test a backend must pass before use.
_TEST_KEY = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
_TEST_SIG = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


class _LibCrypto:
    """Ed25519 verification through the process's own libcrypto (OpenSSL >= 1.1.1)."""

    name = "libcrypto"

    def __init__(self, path: str) -> None:
        lib = ctypes.CDLL(path)
        p, sz, i = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
        lib.EVP_PKEY_new_raw_public_key.argtypes = [i, p, ctypes.c_char_p, sz]
        lib.EVP_PKEY_new_raw_public_key.restype = p
        lib.EVP_PKEY_free.argtypes = [p]
        lib.EVP_MD_CTX_new.restype = p
        lib.EVP_MD_CTX_free.argtypes = [p]
        lib.EVP_DigestVerifyInit.argtypes = [p, p, p, p, p]
        lib.EVP_DigestVerifyInit.restype = i
        lib.EVP_DigestVerify.argtypes = [p, ctypes.c_char_p, sz, ctypes.c_char_p, sz]
        lib.EVP_DigestVerify.restype = i
        lib.ERR_clear_error.restype = None
        self.lib = lib

    def verify(self, key: bytes, signature: bytes, data: bytes) -> bool:
        lib = self.lib
        pkey = lib.EVP_PKEY_new_raw_public_key(NID_ED25519, None, key, len(key))
        if not pkey:
            lib.ERR_clear_error()
            return False
        ctx = lib.EVP_MD_CTX_new()
        try:
            ok = (
                bool(ctx)
                and lib.EVP_DigestVerifyInit(ctx, None, None, None, pkey) == 1
                and lib.EVP_DigestVerify(ctx, signature, len(signature), data, len(data)) == 1
            )
        finally:
            if ctx:
                lib.EVP_MD_CTX_free(ctx)
            lib.EVP_PKEY_free(pkey)
        if not ok:
            lib.ERR_clear_error()  # leave nothing in OpenSSL's error queue for Python's ssl module to trip on
        return ok


class _Cryptography:
    """Ed25519 verification through ``cryptography``."""

    name = "cryptography"

    def verify(self, key: bytes, signature: bytes, data: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            Ed25519PublicKey.from_public_bytes(key).verify(signature, data)
        except (InvalidSignature, ValueError):
            return False
        return True


_backend: Any = None
_lock = threading.Lock()


def _loaded_libcrypto() -> str | None:
    """The path of the libcrypto this process has mapped (Python's ssl/hashlib load it)."""
    import _hashlib  # noqa: F401 - maps libcrypto when Python is built against OpenSSL

    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                path = line.rsplit(None, 1)[-1]
                if "/libcrypto.so" in path:
                    return path
    except OSError:
        pass
    return None


def _passes_self_test(backend: Any) -> bool:
    bad = bytes([_TEST_SIG[0] ^ 1]) + _TEST_SIG[1:]
    return bool(backend.verify(_TEST_KEY, _TEST_SIG, b"")) and not backend.verify(_TEST_KEY, bad, b"")


def backend() -> Any:
    """The verifier in use: the system libcrypto when it passes the self-test, else cryptography."""
    global _backend
    if _backend is None:
        with _lock:
            if _backend is None:
                chosen: Any = None
                try:
                    path = _loaded_libcrypto()
                    if path is not None:
                        candidate = _LibCrypto(path)
                        if _passes_self_test(candidate):
                            chosen = candidate
                except (OSError, AttributeError, ImportError):
                    chosen = None  # no such library or symbol: OpenSSL older than 1.1.1, or none
                _backend = chosen or _Cryptography()
    return _backend


class VerifyKey:
    """A verify-only Ed25519 public key (32 raw bytes)."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_BYTES:
            raise ValueError(f"an Ed25519 public key is {KEY_BYTES} bytes, found {len(raw)}")
        self.raw = bytes(raw)

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True when ``signature`` is this key's valid signature of ``data``."""
        if len(signature) != SIGNATURE_BYTES:
            return False
        return bool(backend().verify(self.raw, bytes(signature), bytes(data)))
