"""Pure trust code: canonical JSON, Ed25519 keys and the trust root.

Bytes in, verified object or a precise error out. No file or network I/O here.
"""

from edge_runtime.trust.canonical import canonical_json, parse_json_object
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
