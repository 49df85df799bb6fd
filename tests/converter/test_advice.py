"""The converter's advice names only what was not already tried and failed the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from converter import calibration as cal
from converter.auto import Candidate
from converter.convert import ConvertOptions, _Data, _Pipeline
from converter.source import SourceModel
from edge_runtime.spec.tensors import TensorSpec

X = TensorSpec("x", "FP32", (-1, 4))
SOURCE = SourceModel(Path("m.onnx"), (X,), (TensorSpec("y", "FP32", (-1, 1)),), ("in_000",), ("out_000",))
DATA = _Data(None, cal.Dataset((np.zeros((8, 4), np.float32),), None, "rows.npy"))


def _pipeline(tmp_path: Path, keys: Any) -> _Pipeline:
    opts = ConvertOptions(tmp_path / "m.onnx", "m", 1, tmp_path / "m.bundle", [keys.key], quantize="fp16",
                          workdir_parent=tmp_path)
    return _Pipeline(opts, lambda _: None)


def _failed(mode: str) -> Candidate:
    return Candidate(mode, mode, failures=["correlation 0.26 < 0.99", "agreement 0.000 < 0.98"])


def test_fp32_is_not_advised_when_it_failed_the_same_way(tmp_path: Path, keys: Any) -> None:
    _, hints = _pipeline(tmp_path, keys).diagnose(_failed("fp16"), SOURCE, DATA, [_failed("fp32")])
    assert "--quantize fp32" not in hints and "--fallback-onnx" in hints


def test_an_untried_fp32_is_advised_and_a_passing_mode_named(tmp_path: Path, keys: Any) -> None:
    p = _pipeline(tmp_path, keys)
    assert "--quantize fp32" in p.diagnose(_failed("fp16"), SOURCE, DATA, [])[1]
    passing = Candidate("fp32", "float32", size_bytes=10)
    assert "--quantize fp32 passes on the same rows" in p.diagnose(_failed("fp16"), SOURCE, DATA, [passing])[1]
