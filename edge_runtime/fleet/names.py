"""Names from a device become file names only through here.

A device (or anything that can publish on its topics) is hostile to the operator's tools:
a model name, a file name or a device id it sends is data. :func:`safe_component` is the one
check between such a string and a path component; :func:`contained_path` joins checked
components under a base directory and makes sure the resolved result is still inside it
(a symlink planted under ``--out`` cannot lead out either).
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

from edge_runtime.exceptions import BadDataError

MAX_COMPONENT_CHARS = 128
_FORBIDDEN = frozenset("/\\\x00")
# Control, format (bidi overrides, zero-width), surrogate, private-use, unassigned, line and
# paragraph separators: none belongs in a file name, and each can disguise one when printed.
_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


class UnsafeNameError(BadDataError):
    """A device-provided name that cannot be a single, plain path component."""


def safe_component(text: object, what: str = "name") -> str:
    """``text`` unchanged if it can be one path component, else :class:`UnsafeNameError`.

    Refused: a non-string, empty, longer than :data:`MAX_COMPONENT_CHARS`, ``.``/``..`` or any
    leading dot (hidden files, the pull's own ``.pull-*`` work directories), ``/``, ``\\``, NUL
    and any control or format character (C0, DEL, C1 rewrite the operator's terminal when
    echoed; bidi overrides and zero-width characters disguise a name).
    """
    if not isinstance(text, str):
        raise UnsafeNameError(f"{what}: expected a string, found {type(text).__name__}")
    shown = repr(text[:40]) + ("..." if len(text) > 40 else "")
    if not text:
        raise UnsafeNameError(f"{what}: expected a name, found an empty string")
    if len(text) > MAX_COMPONENT_CHARS:
        raise UnsafeNameError(f"{what}: expected at most {MAX_COMPONENT_CHARS} characters, found {len(text)} ({shown})")
    if text.startswith("."):
        raise UnsafeNameError(f"{what}: expected a name not starting with '.', found {shown}")
    bad = next((c for c in text if c in _FORBIDDEN or unicodedata.category(c) in _BAD_CATEGORIES), None)
    if bad is not None:
        raise UnsafeNameError(f"{what}: expected no path separator, NUL, control or format character, "
                              f"found {bad!r} in {shown}")
    return text


def contained_path(base: Path, *parts: str, what: str = "name") -> Path:
    """``base/part/...`` with every part checked by :func:`safe_component` and the resolved path
    inside the resolved ``base`` (else :class:`UnsafeNameError`)."""
    for part in parts:
        safe_component(part, what)
    root = Path(os.path.realpath(base))
    target = Path(os.path.realpath(root.joinpath(*parts)))
    if target != root and root not in target.parents:
        raise UnsafeNameError(f"{what}: {'/'.join(parts)!r} resolves outside {str(base)!r}")
    return target


__all__ = ["MAX_COMPONENT_CHARS", "UnsafeNameError", "contained_path", "safe_component"]
