"""Canonical JSON: UTF-8, sorted keys, no insignificant white space.

Signatures are always computed over these bytes. Manifests and update messages carry their
signed payload as bytes and are verified over exactly the bytes received. A trust root is
different: root.json holds its ``signed`` part as a JSON object, so its signatures are
verified over ``canonical_json`` of the parsed object, a re-serialisation. That is sound
because the serialisation is deterministic (sorted keys, no white space, finite numbers
only), so it reproduces the bytes the signers signed; it is why this module must never
change its output for a value it already accepts.
"""

from __future__ import annotations

import json
import math
from typing import Any

from edge_runtime.exceptions import CanonicalJSONError


def _check_finite(obj: Any) -> None:
    if isinstance(obj, float) and not math.isfinite(obj):
        raise CanonicalJSONError(f"canonical JSON cannot hold the number {obj!r}")
    if isinstance(obj, dict):
        for value in obj.values():
            _check_finite(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _check_finite(value)


def canonical_json(obj: Any) -> bytes:
    """Serialise ``obj`` to canonical JSON bytes."""
    _check_finite(obj)
    try:
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CanonicalJSONError(f"cannot serialise to JSON: {exc}") from exc
    return text.encode("utf-8")


def _reject_constant(name: str) -> Any:
    raise CanonicalJSONError(f"JSON holds the non-standard number {name}")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        # Two readers could take different values of the key: a signature over one would vouch for the other.
        raise CanonicalJSONError(f"JSON object has the key {dup[:40]!r} twice")
    return obj


def parse_json_object(data: bytes, what: str, *, require_canonical: bool = False) -> dict[str, Any]:
    """Parse bytes that must hold one JSON object; ``what`` names it in errors. A key given
    twice in any object is refused."""
    if not isinstance(data, (bytes, bytearray)):
        raise CanonicalJSONError(f"{what}: expected bytes, found {type(data).__name__}")
    try:
        obj = json.loads(bytes(data).decode("utf-8"), parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except UnicodeDecodeError as exc:
        raise CanonicalJSONError(f"{what}: not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise CanonicalJSONError(f"{what}: malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from exc
    except RecursionError as exc:
        raise CanonicalJSONError(f"{what}: JSON nested too deeply") from exc
    except CanonicalJSONError as exc:
        raise CanonicalJSONError(f"{what}: {exc}") from exc
    except ValueError as exc:  # e.g. an integer over sys.get_int_max_str_digits() digits
        raise CanonicalJSONError(f"{what}: JSON holds a number Python refuses to read ({str(exc)[:80]})") from exc
    if not isinstance(obj, dict):
        raise CanonicalJSONError(f"{what}: expected a JSON object, found {type(obj).__name__}")
    if require_canonical and canonical_json(obj) != bytes(data):
        raise CanonicalJSONError(f"{what}: not canonical JSON (sorted keys, no white space)")
    return obj
