"""Which Ed25519 public keys a trust root must not name.

A small-order point (order 1, 2, 4 or 8) as a public key lets anyone produce signatures
that verify under lenient verifiers for many messages at once; a non-canonical encoding
(y >= p) names the same point twice. Neither comes out of a key generator, so a root that
names one is refused. Pure arithmetic on the curve, no I/O: decode the point, double it
three times, and see whether the identity is reached.
"""

from __future__ import annotations

P = 2**255 - 19
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)


def _decode(raw: bytes) -> tuple[int, int] | None:
    """The affine point (x, y) of a 32-byte encoding; None when it is not a canonical point."""
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    sign = raw[31] >> 7
    if y >= P:
        return None
    u, v = (y * y - 1) % P, (D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P  # RFC 8032, 5.1.3
    if v * x * x % P == (-u) % P:
        x = x * SQRT_M1 % P
    elif v * x * x % P != u:
        return None
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = P - x
    return x, y


def _double(x: int, y: int) -> tuple[int, int]:
    # Twisted Edwards (a = -1) addition of the point to itself, affine coordinates.
    t = D * x * x * y * y % P
    return (2 * x * y * pow(1 + t, P - 2, P) % P, (y * y + x * x) * pow(1 - t, P - 2, P) % P)


def weak_public_key(raw: bytes) -> str | None:
    """Why the 32-byte Ed25519 public key ``raw`` is unusable, or None for a good key."""
    if len(raw) != 32:
        return f"{len(raw)} bytes, expected 32"
    point = _decode(raw)
    if point is None:
        return "not a canonically encoded point of Ed25519"
    x, y = point
    for _ in range(3):
        x, y = _double(x, y)
    if (x, y) == (0, 1):
        return "a point of small order (its multiples are few: signatures by it prove nothing)"
    return None


__all__ = ["weak_public_key"]
