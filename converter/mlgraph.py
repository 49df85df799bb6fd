"""A small builder for the default-domain ONNX nodes that replace one ``ai.onnx.ml`` node.

The rewrites (converter/mlops.py, converter/mltrees.py) emit plain ONNX operators and constant
initializers; this keeps their names unique and their code short. Pure graph construction, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

ML_DOMAIN = "ai.onnx.ml"
TARGET_OPSET = 13  # the emitted nodes use opset-13 forms (ReduceSum axes as an input, Equal on floats)


class NotRewritable(Exception):
    """An ``ai.onnx.ml`` node this module cannot express exactly: the reason names the node and why."""


def _onnx() -> Any:
    from converter.source import _onnx as load

    return load()


def attrs(node: Any) -> dict[str, Any]:
    """The node's attributes as Python values (bytes decoded for strings)."""
    onnx = _onnx()
    out: dict[str, Any] = {}
    for a in node.attribute:
        value = onnx.helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode("utf-8", "replace") for v in value]
        elif a.type == onnx.AttributeProto.TENSOR:
            value = onnx.numpy_helper.to_array(value)
        out[a.name] = value
    return out


def floats(a: dict[str, Any], name: str) -> np.ndarray:
    """A float attribute given as a list or as ``NAME_as_tensor`` (ai.onnx.ml opset 3); empty if absent.
    A double-precision tensor is refused: the TFLite model computes in float32."""
    if name in a:
        return np.asarray(a[name], dtype=np.float32)
    tensor = a.get(f"{name}_as_tensor")
    if tensor is None:
        return np.zeros(0, np.float32)
    if np.asarray(tensor).dtype != np.float32:
        raise NotRewritable(f"attribute {name}_as_tensor is {np.asarray(tensor).dtype}, not float32")
    return np.asarray(tensor, dtype=np.float32).reshape(-1)


@dataclass
class Emitter:
    """Nodes and initializers replacing one node, named ``<prefix>/<hint>_<n>``."""

    prefix: str
    nodes: list[Any] = field(default_factory=list)
    initializers: list[Any] = field(default_factory=list)
    _n: int = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{self.prefix}/{hint}_{self._n}"

    def const(self, hint: str, value: np.ndarray) -> str:
        """A constant initializer; returns its name."""
        onnx = _onnx()
        name = self.name(hint)
        self.initializers.append(onnx.numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **kwargs: Any) -> str:
        """One default-domain node; returns its output name (``out`` when given: a graph tensor name)."""
        onnx = _onnx()
        output = out or self.name(op_type.lower())
        self.nodes.append(onnx.helper.make_node(op_type, inputs, [output], name=self.name(op_type), **kwargs))
        return output

    def split(self, tensor: str, sizes: list[int]) -> list[str]:
        """``tensor`` cut along axis 1 into pieces of ``sizes`` columns (opset 13: sizes as an input)."""
        onnx = _onnx()
        outs = [self.name("part") for _ in sizes]
        self.nodes.append(onnx.helper.make_node("Split", [tensor, self.const("sizes", np.asarray(sizes, np.int64))],
                                                outs, name=self.name("Split"), axis=1))
        return outs

    def as_float(self, tensor: str, elem_type: int | None) -> str:
        """``tensor`` as float32 (a Cast unless it is float32 already); double is refused, because
        onnxruntime's ml kernels compute double inputs in double."""
        onnx = _onnx()
        if elem_type in (None, onnx.TensorProto.FLOAT):
            return tensor
        if elem_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            return self.op("Cast", [tensor], to=onnx.TensorProto.FLOAT)
        raise NotRewritable(f"input {tensor!r} is {onnx.TensorProto.DataType.Name(elem_type)}; only float32 and "
                            "integer inputs are rewritten")

    def post_transform(self, scores: str, transform: str) -> str:
        """ONNX-ML's post_transform on ``[N, K]`` scores: NONE, LOGISTIC (each score) or SOFTMAX (per row)."""
        if transform == "NONE":
            return scores
        if transform == "LOGISTIC":
            return self.op("Sigmoid", [scores])
        if transform == "SOFTMAX":
            return self.op("Softmax", [scores], axis=1)
        raise NotRewritable(f"post_transform {transform} is not rewritten (NONE, LOGISTIC and SOFTMAX are)")

    def labels(self, scores: str, classes: list[int], out: str) -> str:
        """``classes[argmax(scores)]`` per row as int64 ``[N]`` (the first maximum wins, as in onnxruntime)."""
        index = self.op("ArgMax", [scores], axis=1, keepdims=0)
        if classes == list(range(len(classes))):
            return self.op("Identity", [index], out=out)
        return self.op("Gather", [self.const("classlabels", np.asarray(classes, np.int64)), index], out=out, axis=0)


__all__ = ["ML_DOMAIN", "TARGET_OPSET", "Emitter", "NotRewritable", "attrs", "floats"]
