"""paho-mqtt's client module, imported without the standard library's HTTP client.

``paho.mqtt.client`` imports ``urllib.request`` at its top for one use: reading an
``mqtt_proxy`` environment variable, which it does only when PySocks is installed
(``Client._get_proxy``). ``urllib.request`` brings in ``http.client`` and most of the
``email`` package, about 1.3 MB of the daemon's RSS that a device connected to its broker
never touches. :func:`defer_module` puts a stand-in for it in ``sys.modules`` before paho is
imported: ``import urllib.request`` still binds a module, and the first attribute read of it
imports the real one (then every later read goes to the real module). A device with PySocks
installed and a proxy set loads it on its first connection attempt, exactly what paho did at
import time before. docs/updates.md, "Memory: what the client loads", lists the rest.

The stand-in is not ``importlib.util.LazyLoader``: on Python 3.11 (Raspberry Pi OS
bookworm) its first load is not guarded by a lock, and two threads (the MQTT thread, any
other) could see a module half filled.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types
from typing import Any

_LOCK = threading.RLock()


class _Deferred(types.ModuleType):
    """Stands for a module not imported yet; any attribute read imports it and reads from it."""

    def __getattr__(self, attr: str) -> Any:  # only for what the stand-in does not hold itself
        return getattr(_load(self.__name__), attr)


def _load(name: str) -> types.ModuleType:
    with _LOCK:
        module = sys.modules.get(name)
        if isinstance(module, _Deferred):
            del sys.modules[name]
            module = importlib.import_module(name)  # sets the parent package's attribute to it too
        elif module is None:
            module = importlib.import_module(name)
        return module


def defer_module(name: str) -> None:
    """Make ``import name`` cheap until something reads from the module (no-op once imported).

    ``name`` must be a submodule (``package.module``) whose package is importable; the stand-in
    is also set as the package's attribute, as an import would.
    """
    with _LOCK:
        if name in sys.modules:
            return
        parent, _, child = name.rpartition(".")
        package = importlib.import_module(parent)
        spec = importlib.util.find_spec(name)  # finds the file, runs nothing
        if spec is None:
            return
        stand_in = _Deferred(name)
        # What the import system, importlib.util.find_spec and code that scans sys.modules for
        # files (inspect.getmodule) read without loading it.
        stand_in.__spec__, stand_in.__loader__, stand_in.__package__ = spec, spec.loader, parent
        if spec.has_location:
            vars(stand_in).update({"__file__": spec.origin, "__cached__": spec.cached})
        sys.modules[name] = stand_in
        setattr(package, child, stand_in)


def is_deferred(name: str) -> bool:
    """``name`` is still a stand-in (nothing has read from it yet)."""
    return isinstance(sys.modules.get(name), _Deferred)


defer_module("urllib.request")

import paho.mqtt.client as client  # noqa: E402  (after the stand-in is in place)

__all__ = ["client", "defer_module", "is_deferred"]
