"""Pure trust code: canonical JSON, Ed25519 keys and the trust root.

Bytes in, verified object or a precise error out. No file or network I/O here.
"""

import importlib
from typing import TYPE_CHECKING, Any

from edge_runtime.trust.canonical import canonical_json, parse_json_object

if TYPE_CHECKING:
    from edge_runtime.trust.keys import (
        PrivateKey,
        generate_private_key,
        key_id,
        load_private_key_pem,
        load_public_key,
        private_key_pem,
        public_key_hex,
        sign,
    )
    from edge_runtime.trust.root import (
        TrustRoot,
        check_root_expiry,
        format_time,
        load_unverified,
        make_root,
        parse_signatures,
        sign_root,
        update_root,
        verify_root,
        verify_signed,
    )

# keys (signing, PEM) needs ``cryptography``; root verifies without it where the system's
# libcrypto can (trust/ed25519.py). Both load on first use, so a device that only serves
# never imports ``cryptography`` through this package.
_LAZY = {
    "PrivateKey": "keys",
    "generate_private_key": "keys",
    "key_id": "keys",
    "load_private_key_pem": "keys",
    "load_public_key": "keys",
    "private_key_pem": "keys",
    "public_key_hex": "keys",
    "sign": "keys",
    "TrustRoot": "root",
    "check_root_expiry": "root",
    "format_time": "root",
    "load_unverified": "root",
    "make_root": "root",
    "parse_signatures": "root",
    "sign_root": "root",
    "update_root": "root",
    "verify_root": "root",
    "verify_signed": "root",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "PrivateKey",
    "TrustRoot",
    "canonical_json",
    "check_root_expiry",
    "format_time",
    "generate_private_key",
    "key_id",
    "load_private_key_pem",
    "load_public_key",
    "load_unverified",
    "make_root",
    "parse_json_object",
    "parse_signatures",
    "private_key_pem",
    "public_key_hex",
    "sign",
    "sign_root",
    "update_root",
    "verify_root",
    "verify_signed",
]
