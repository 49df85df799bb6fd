"""edge-convert: ONNX -> quantized TFLite (onnx2tf) -> validated against onnxruntime -> signed bundle.

Runs on a build host with the ``converter`` extra; nothing under ``edge_runtime/`` imports it.
The command line is :mod:`converter.cli`; the pipeline :func:`convert`.
"""

from converter.convert import MODES, ConvertOptions, ConvertResult, convert
from converter.validate import Thresholds

__all__ = ["MODES", "ConvertOptions", "ConvertResult", "Thresholds", "convert"]
