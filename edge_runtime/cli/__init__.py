"""The ``edge-runtime`` command. The only place that turns errors into exit codes.

Exit codes: 0 success, 2 usage error, 1 anything else, with a one-line reason on stderr
(no traceback unless ``--debug``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from edge_runtime import __version__
from edge_runtime.exceptions import EdgeRuntimeError, UsageError
from edge_runtime.logs import setup_logging

# Subcommand -> module under edge_runtime.cli. Only the module of the command being run is
# imported, so `serve` does not pay (in start-up time and RSS) for the converter-side
# packaging code, offline scoring or the fleet tools.
COMMANDS = ("keys", "bundle", "models", "score", "serve", "fleet")


def _command_modules(only: str | None = None) -> list[ModuleType]:
    names = [only] if only in COMMANDS else list(COMMANDS)
    return [importlib.import_module(f"edge_runtime.cli.{name}") for name in names]


def _requested_command(argv: Sequence[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser: every subcommand, or just ``only`` when it names one."""
    parser = _Parser(prog="edge-runtime", description="Inference runtime for Raspberry Pi and embedded Linux.")
    parser.add_argument("--version", action="version", version=f"edge-runtime {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for module in _command_modules(only):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``edge-runtime``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = build_parser(_requested_command(argv)).parse_args(argv)
        setup_logging(getattr(args, "log_format", "text"), "debug" if debug else getattr(args, "log_level", "info"))
        code: int = args.func(args)
        return code
    except UsageError as exc:
        if debug:
            raise
        print(f"edge-runtime: {exc}", file=sys.stderr)
        return 2
    except EdgeRuntimeError as exc:
        if debug:
            raise
        print(f"edge-runtime: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`... | head`): stop quietly, and keep Python's exit-time flush quiet too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print("edge-runtime: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        if debug:
            raise
        print(f"edge-runtime: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1


