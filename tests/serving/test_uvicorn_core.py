"""serving/uvicorn_core.py: uvicorn's Config and Server without uvicorn's command line (click, the
reload supervisors: about 2 MB of RSS), and ``import uvicorn`` unchanged for everyone else."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

from edge_runtime.serving.uvicorn_core import INIT_NAMES, server_classes


def test_uvicorn_init_binds_only_what_the_shim_provides() -> None:
    """A uvicorn whose ``__init__.py`` binds (or runs) anything else must be looked at first."""
    spec = importlib.util.find_spec("uvicorn")
    assert spec is not None and spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    bound: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            bound.update({a.asname or a.name: node.module or "" for a in node.names})
        else:  # only __all__ besides the imports
            assert isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["__all__"]
    assert bound == INIT_NAMES


def test_the_daemon_gets_uvicorns_classes_without_its_command_line() -> None:
    """In a fresh interpreter (here uvicorn is imported already): the classes, no command line;
    then ``import uvicorn`` still has everything its ``__init__.py`` binds."""
    code = """
import sys
from importlib.metadata import version
from edge_runtime.serving.uvicorn_core import server_classes
config, server = server_classes()
assert (config, server) == (sys.modules["uvicorn.config"].Config, sys.modules["uvicorn.server"].Server)
assert {"uvicorn.main", "click", "multiprocessing"} & set(sys.modules) == set()
import uvicorn
assert uvicorn.Config is config and uvicorn.Server is server and uvicorn.__version__ == version("uvicorn")
assert uvicorn.run is sys.modules["uvicorn.main"].run and uvicorn.main is sys.modules["uvicorn.main"].main
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_imported_uvicorn_is_used_as_it_is() -> None:
    import uvicorn

    assert server_classes() == (uvicorn.Config, uvicorn.Server)
