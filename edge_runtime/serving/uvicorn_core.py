"""uvicorn's ``Config`` and ``Server`` without uvicorn's command line.

``uvicorn/__init__.py`` imports ``uvicorn.main``: the ``uvicorn`` command (click) and its
reload and worker supervisors (multiprocessing), about 2 MB of RSS that the daemon never uses
(docs/serving.md, memory). When nothing has imported uvicorn yet, :func:`server_classes`
registers the ``uvicorn`` package without running its ``__init__.py`` and gives the package
what that file would have bound: ``__version__``, ``Config`` and ``Server`` at once, ``main``
and ``run`` on first use (PEP 562), so later ``import uvicorn; uvicorn.run(...)`` in the same
process behaves as usual. ``tests/serving/test_uvicorn_contract.py`` fails if a new uvicorn's
``__init__.py`` binds anything else.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import Any

# What uvicorn/__init__.py binds, and the module each name comes from.
INIT_NAMES = {"__version__": "uvicorn._version", "Config": "uvicorn.config", "Server": "uvicorn.main",
              "main": "uvicorn.main", "run": "uvicorn.main"}
_LAZY = ("main", "run")


def _package_without_cli() -> ModuleType:
    spec = importlib.util.find_spec("uvicorn")
    if spec is None or spec.loader is None:
        raise ImportError("uvicorn is not installed")
    pkg = importlib.util.module_from_spec(spec)  # registered, __init__.py not run

    def __getattr__(name: str) -> Any:
        if name in _LAZY:  # the rest of uvicorn/__init__.py, on first use
            cli = importlib.import_module("uvicorn.main")

            for n in _LAZY:  # ``uvicorn.main`` is the function there, not the submodule
                setattr(pkg, n, getattr(cli, n))
            return getattr(pkg, name)
        raise AttributeError(f"module 'uvicorn' has no attribute {name!r}")

    pkg.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules["uvicorn"] = pkg
    try:
        from uvicorn._version import __version__
        from uvicorn.config import Config
        from uvicorn.server import Server
    except BaseException:
        sys.modules.pop("uvicorn", None)
        raise
    pkg.__version__ = __version__  # type: ignore[attr-defined]
    pkg.Config = Config  # type: ignore[attr-defined]
    pkg.Server = Server  # type: ignore[attr-defined]
    pkg.__all__ = ["main", "run", "Config", "Server"]  # type: ignore[attr-defined]
    return pkg


def server_classes() -> tuple[Any, Any]:
    """``(uvicorn.Config, uvicorn.Server)``; uvicorn's command line is not imported unless it already was."""
    pkg = sys.modules.get("uvicorn") or _package_without_cli()
    return pkg.Config, pkg.Server


__all__ = ["INIT_NAMES", "server_classes"]
