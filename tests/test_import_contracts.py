"""The layer rules of docs/architecture.md hold (the contracts in .importlinter, the same check
`make lint` runs), and every top-level module of edge_runtime has a place in the layers contract:
a module the list does not name would be checked by no layer rule."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def layers_contract() -> list[str]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / ".importlinter", encoding="utf-8")
    lines = parser["importlinter:contract:layers"]["layers"].split("\n")
    return [name.strip() for line in lines for name in line.split("|") if name.strip()]


def test_every_top_level_module_has_a_layer() -> None:
    named = set(layers_contract())
    package = ROOT / "edge_runtime"
    modules = {f"edge_runtime.{p.stem}" for p in package.glob("*.py") if p.name != "__init__.py"}
    packages = {f"edge_runtime.{p.name}" for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert not (modules | packages) - named, "give these a layer in .importlinter"
    assert named <= modules | packages, "the layers contract names modules that do not exist"


def test_the_import_contracts_are_kept() -> None:
    # In a subprocess: import-linter configures logging when it runs, which would disable the
    # loggers other tests of this session capture.
    tool = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(tool), "--config", str(ROOT / ".importlinter")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
