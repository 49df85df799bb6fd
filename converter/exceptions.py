"""The converter's errors, under the project's error tree.

    EdgeRuntimeError                       (edge_runtime.exceptions)
    ├── UsageError                         bad command line or data file (exit code 2)
    └── ConverterError                     the model could not be turned into a bundle (exit 1)
        ├── ConversionError                onnx2tf failed; ``log_path`` holds its output
        │   ├── UnsupportedOperatorError   an operator onnx2tf has no converter for
        │   ├── NetworkAccessError         onnx2tf tried to reach the network
        │   ├── Onnx2tfTimeout             onnx2tf did not finish within --timeout-s
        │   └── Onnx2tfCrash               onnx2tf died from a signal (segfault, abort, kill)
        ├── InterfaceError                 the TFLite inputs/outputs do not match the ONNX ones
        └── AccuracyError                  a variant failed the validation thresholds

Messages say what was expected, what was found and, where there is one, what to try.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_runtime.exceptions import EdgeRuntimeError, UsageError


class ConverterError(EdgeRuntimeError):
    """A model that could not be converted, validated or packed."""


class ConversionError(ConverterError):
    """onnx2tf failed or produced nothing usable; ``reason`` is the message without the advice."""

    def __init__(self, message: str, log_path: Path | None = None, advice: str | None = None) -> None:
        super().__init__(message + (f"; {advice}" if advice else "") + (f" (log: {log_path})" if log_path else ""))
        self.reason = message
        self.log_path = log_path


class UnsupportedOperatorError(ConversionError):
    """onnx2tf has no converter for an operator of the model."""

    def __init__(self, message: str, op_type: str, node: str | None, log_path: Path | None = None,
                 advice: str | None = None) -> None:
        super().__init__(message, log_path, advice)
        self.op_type = op_type
        self.node = node


class NetworkAccessError(ConversionError):
    """onnx2tf tried to download something; the converter never lets it."""


class Onnx2tfTimeout(ConversionError):
    """onnx2tf ran past ``--timeout-s`` and was stopped."""


class Onnx2tfCrash(ConversionError):
    """onnx2tf died from a signal; ``signal_name`` says which (SIGSEGV, SIGABRT, SIGKILL ...)."""

    def __init__(self, message: str, signal_name: str, log_path: Path | None = None, advice: str | None = None) -> None:
        super().__init__(message, log_path, advice)
        self.signal_name = signal_name


class InterfaceError(ConverterError):
    """The converted model's inputs or outputs cannot be matched to the ONNX model's."""


class AccuracyError(ConverterError):
    """A converted variant disagrees with onnxruntime beyond the thresholds."""

    def __init__(self, message: str, report: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.report = report or {}


__all__ = [
    "AccuracyError",
    "ConversionError",
    "ConverterError",
    "InterfaceError",
    "NetworkAccessError",
    "Onnx2tfCrash",
    "Onnx2tfTimeout",
    "UnsupportedOperatorError",
    "UsageError",
]
