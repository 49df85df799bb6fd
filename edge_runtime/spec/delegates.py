"""Which LiteRT delegates a model asks for: the config's and the manifest's form, validated.

Pure code, imported by the manifest model: no interpreter, no ``ctypes``. Loading lives in
:mod:`edge_runtime.inference.delegates`.

A delegate is written as a string or a table::

    delegates = [{ library = "libedgetpu.so.1", options = { device = "usb" } }, "xnnpack"]

* ``"xnnpack"``: the CPU with LiteRT's default XNNPACK delegate (what every model ran on
  before delegates existed); ``"cpu"``: the CPU with LiteRT's reference kernels only.
* ``"edgetpu"``: shorthand for ``{ library = "libedgetpu.so.1" }``.
* any other string, or a table's ``library``: an external delegate (a shared library with
  ``tflite_plugin_create_delegate``/``tflite_plugin_destroy_delegate``), named in reports by
  the table's ``name`` or by the library's file name (``libedgetpu.so.1`` -> ``edgetpu``).

That is the device config's form. A bundle's ``runtime.delegates`` is signed by the model
publisher, not by whoever runs the device, so it only *asks for a delegate by name*
(``"edgetpu"``, ``{ name = "npu", options = {...} }``), never names a library: which file a
name loads is the device config's decision (``[inference]``: :func:`parse_requests` here,
the lookup in :func:`edge_runtime.inference.delegates.resolve`). Otherwise a signed bundle
could make ``models install`` dlopen any file, running its constructor as the installer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

BUILTINS = ("xnnpack", "cpu")
# Short names for delegates whose library name is well known.
KNOWN_LIBRARIES = {"edgetpu": "libedgetpu.so.1"}
# The custom operator the Edge TPU compiler puts in place of the subgraph it compiled: a model
# holding it cannot run without the Edge TPU delegate.
EDGETPU_CUSTOM_OP = b"edgetpu-custom-op"
MAX_DELEGATES = 8
MAX_OPTIONS = 32
MAX_TEXT = 256
MAX_THREADS = 64
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
# What a bundle may ask for: a plain name (no dots, so never a file name or a path).
REQUEST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")


@dataclass(frozen=True)
class DelegateSpec:
    """One entry of a delegate list: a built-in (``library`` None) or an external library."""

    name: str
    library: str | None = None
    options: tuple[tuple[str, str], ...] = ()
    # A bundle's request by name that the device config could not resolve to a library: why.
    unavailable: str = ""

    @property
    def builtin(self) -> bool:
        """True for ``xnnpack`` and ``cpu`` (no library to load)."""
        return self.library is None and self.name in BUILTINS

    @property
    def requested(self) -> bool:
        """True for a bundle's request by name not (yet) resolved to a library."""
        return self.library is None and self.name not in BUILTINS

    def to_json(self) -> str | dict[str, Any]:
        """The config/manifest form."""
        if self.library is None and not self.options:
            return self.name
        out: dict[str, Any] = {"name": self.name}
        if self.library is not None:
            out["library"] = self.library
        if self.options:
            out["options"] = dict(self.options)
        return out


@dataclass(frozen=True)
class Skipped:
    """A delegate that was tried and not used, with why (``kind`` as in DelegateError)."""

    delegate: str
    kind: str
    reason: str

    def to_json(self) -> dict[str, str]:
        """The form state.json, metadata and the fleet state carry."""
        return {"delegate": self.delegate, "kind": self.kind, "reason": self.reason}


@dataclass(frozen=True)
class RuntimeHints:
    """The manifest's optional ``runtime`` object: defaults the device config may override."""

    threads: int | None = None
    delegates: tuple[DelegateSpec, ...] = ()
    requires_delegate: str | None = None


def library_name(library: str) -> str:
    """The report name of a delegate library: ``/usr/lib/libedgetpu.so.1`` -> ``edgetpu``."""
    base = library.rsplit("/", 1)[-1]
    base = base.split(".so", 1)[0]
    if base.startswith("lib") and len(base) > 3:
        base = base[3:]
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", base)[:64]
    return cleaned if cleaned and cleaned[0].isalnum() else f"d{cleaned}"[:64]


def _text(value: Any, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{what}: expected a string or number, found {type(value).__name__}")
    text = str(value)
    if not text or len(text) > MAX_TEXT or "\x00" in text:
        raise ValueError(f"{what}: expected 1 to {MAX_TEXT} characters without NUL, found {len(text)}")
    return text


def parse_delegate(value: Any, where: str) -> DelegateSpec:
    """One delegate entry; ValueError naming ``where`` when it is not one."""
    if isinstance(value, str):
        if value in BUILTINS:
            return DelegateSpec(value)
        if value in KNOWN_LIBRARIES:
            return DelegateSpec(value, KNOWN_LIBRARIES[value])
        library = _text(value, where)
        return DelegateSpec(library_name(library), library)
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a string or a table {{library, options, name}}, found {type(value).__name__}")
    unknown = sorted(set(value) - {"library", "options", "name"})
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: library, name, options")
    if "library" not in value:
        raise ValueError(f"{where}: a delegate table needs 'library'")
    library = _text(value["library"], f"{where}.library")
    name = value.get("name", library_name(library))
    if not isinstance(name, str) or not NAME_RE.match(name) or name in BUILTINS:
        raise ValueError(f"{where}.name: expected a name matching {NAME_RE.pattern} other than {BUILTINS}, found {name!r}")
    options = value.get("options", {})
    return DelegateSpec(name, library, _options(options, where))


def _options(options: Any, where: str) -> tuple[tuple[str, str], ...]:
    """A delegate's ``options`` table as (key, value) text pairs; ValueError naming ``where``."""
    if not isinstance(options, dict) or len(options) > MAX_OPTIONS:
        raise ValueError(f"{where}.options: expected a table of at most {MAX_OPTIONS} entries")
    return tuple((_text(k, f"{where}.options key"), _text(v, f"{where}.options.{k}")) for k, v in options.items())


def _parse_list(value: Any, where: str, parse_one: Callable[[Any, str], DelegateSpec]) -> tuple[DelegateSpec, ...]:
    """An ordered list of at most MAX_DELEGATES entries, each read by ``parse_one``, names unique."""
    if not isinstance(value, list) or len(value) > MAX_DELEGATES:
        raise ValueError(f"{where}: expected a list of at most {MAX_DELEGATES} delegates")
    specs = tuple(parse_one(v, f"{where}[{i}]") for i, v in enumerate(value))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: delegate names must be unique, found {names}")
    return specs


def parse_delegates(value: Any, where: str) -> tuple[DelegateSpec, ...]:
    """An ordered delegate list; ValueError naming ``where`` when it is not one."""
    return _parse_list(value, where, parse_delegate)


def _request_name(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected a delegate name such as 'edgetpu', found {type(value).__name__}")
    if "/" in value or "\\" in value or ".." in value or "\x00" in value:
        raise ValueError(
            f"{where}: {value[:80]!r} is a library path; a bundle asks for a delegate by name (e.g. 'edgetpu') "
            "and the device's config ([inference] delegate_libraries, delegate_dirs) decides which library that loads"
        )
    if not REQUEST_RE.match(value):
        raise ValueError(f"{where}: expected a delegate name matching {REQUEST_RE.pattern}, found {value[:80]!r}")
    return value


def parse_request(value: Any, where: str) -> DelegateSpec:
    """One entry of a bundle's ``runtime.delegates``: a name, or ``{name, options}``; never a
    library (ValueError naming ``where`` otherwise). Not resolved: ``library`` stays None."""
    if isinstance(value, dict):
        if "library" in value:
            raise ValueError(
                f"{where}.library: a bundle asks for a delegate by name and cannot name its library (found "
                f"{str(value['library'])[:80]!r}); the device's config ([inference] delegate_libraries) maps names to libraries"
            )
        unknown = sorted(set(value) - {"name", "options"})
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known: name, options")
        if "name" not in value:
            raise ValueError(f"{where}: a delegate table needs 'name'")
        name = _request_name(value["name"], f"{where}.name")
        opts = _options(value.get("options", {}), where)
        if name in BUILTINS and opts:
            raise ValueError(f"{where}.options: the built-in '{name}' takes no options")
        return DelegateSpec(name, None, opts)
    return DelegateSpec(_request_name(value, where))


def parse_requests(value: Any, where: str) -> tuple[DelegateSpec, ...]:
    """A bundle's ordered ``runtime.delegates`` (names only, see the module docstring)."""
    return _parse_list(value, where, parse_request)


def check_library_map(value: dict[str, str], where: str) -> None:
    """The device config's ``delegate_libraries``: request names to library *file names*
    (looked up in ``delegate_dirs``); ValueError naming the entry otherwise."""
    for name, file in value.items():
        _request_name(name, f"{where} key")
        if name in BUILTINS:
            raise ValueError(f"{where}: {name!r} is built in; it maps to no library")
        if not file or "/" in file or file in (".", "..") or "\x00" in file or len(file) > MAX_TEXT:
            raise ValueError(f"{where}.{name}: expected a library file name (found in delegate_dirs), found {file[:80]!r}")


def parse_threads(value: Any, where: str) -> int:
    """A thread count in [1, MAX_THREADS]."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_THREADS:
        raise ValueError(f"{where}: expected an integer from 1 to {MAX_THREADS}, found {value!r}")
    return value


def parse_runtime(obj: Any) -> RuntimeHints:
    """The manifest's ``runtime`` object: ``threads``, ``delegates``, ``requires_delegate``."""
    if not isinstance(obj, dict):
        raise ValueError(f"'runtime' must be an object, found {type(obj).__name__}")
    unknown = sorted(set(obj) - {"threads", "delegates", "requires_delegate"})
    if unknown:
        raise ValueError(f"runtime: unknown field(s) {unknown}; known: delegates, requires_delegate, threads")
    threads = parse_threads(obj["threads"], "runtime.threads") if "threads" in obj else None
    delegates = parse_requests(obj["delegates"], "runtime.delegates") if "delegates" in obj else ()
    required = obj.get("requires_delegate")
    if required is not None and (not isinstance(required, str) or not NAME_RE.match(required) or required in BUILTINS):
        raise ValueError(f"runtime.requires_delegate: expected a delegate name such as 'edgetpu', found {required!r}")
    return RuntimeHints(threads, delegates, required)


class CustomOpScanner:
    """A file-like sink that notices the Edge TPU custom operator in a .tflite streamed through it.

    The compiler names the operator in the flatbuffer's operator codes; scanning the bytes
    (with an overlap between writes) finds it without holding the whole model in memory.
    """

    def __init__(self, needle: bytes = EDGETPU_CUSTOM_OP) -> None:
        self.needle = needle
        self.found = False
        self._tail = b""

    def write(self, data: bytes) -> int:
        """Scan one piece; returns its length like a file."""
        if not self.found:
            window = self._tail + bytes(data)
            self.found = self.needle in window
            self._tail = window[-(len(self.needle) - 1):]
        return len(data)

    def flush(self) -> None:
        """Nothing to flush (file protocol)."""
