"""Verify-only Ed25519 (trust/ed25519.py): the system libcrypto agrees with cryptography, or is not used."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_runtime.trust import ed25519
from edge_runtime.trust.ed25519 import VerifyKey

BACKENDS = [ed25519._Cryptography()]  # noqa: SLF001
if ed25519.backend().name == "libcrypto":
    BACKENDS.append(ed25519.backend())


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_valid_signatures_verify_and_any_change_fails(backend: object) -> None:
    for n in range(0, 300, 7):
        sk = Ed25519PrivateKey.generate()
        key, message = sk.public_key().public_bytes_raw(), os.urandom(n)
        sig = sk.sign(message)
        assert backend.verify(key, sig, message)  # type: ignore[attr-defined]
        assert not backend.verify(key, sig, message + b"\0")  # type: ignore[attr-defined]
        bad = bytearray(sig)
        bad[n % 64] ^= 1 << (n % 8)
        assert not backend.verify(key, bytes(bad), message)  # type: ignore[attr-defined]
        other = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
        assert not backend.verify(other, sig, message)  # type: ignore[attr-defined]


def test_malformed_keys_and_signatures_are_refused_not_raised() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        VerifyKey(b"\x01" * 31)
    key = VerifyKey(ed25519._TEST_KEY)  # noqa: SLF001
    assert key.verify(ed25519._TEST_SIG, b"")  # noqa: SLF001
    assert not key.verify(ed25519._TEST_SIG[:63], b"") and not key.verify(ed25519._TEST_SIG + b"\0", b"")  # noqa: SLF001
    not_a_point = VerifyKey(bytes.fromhex("02" + "ff" * 31))  # y >= p: no curve point has this encoding
    assert not not_a_point.verify(ed25519._TEST_SIG, b"")  # noqa: SLF001


def test_a_libcrypto_that_fails_the_self_test_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ed25519, "_backend", None)
    monkeypatch.setattr(ed25519._LibCrypto, "verify", lambda self, key, sig, data: True)  # noqa: SLF001 - accepts anything
    assert ed25519.backend().name == "cryptography"
    assert not VerifyKey(ed25519._TEST_KEY).verify(ed25519._TEST_SIG, b"x")  # noqa: SLF001


@pytest.mark.skipif(ed25519.backend().name != "libcrypto", reason="no usable system libcrypto: cryptography verifies")
def test_verifying_a_root_does_not_import_cryptography_where_libcrypto_verifies() -> None:
    code = (
        "import sys\n"
        "from edge_runtime.trust import ed25519\n"
        "from edge_runtime.trust.root import verify_signed\n"
        "from edge_runtime.store.store import ModelStore\n"
        "print(ed25519.backend().name, 'cryptography' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["libcrypto", "False"]
