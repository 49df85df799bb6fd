"""``ai.onnx.ml`` operators rewritten into default-domain ONNX operators onnx2tf converts.

Default tabular exports (skl2onnx, onnxmltools) are made of a few ``ai.onnx.ml`` operators that
onnx2tf has no converter for. Each has an exact expression in plain ONNX operators, which
this module writes in place of the node, keeping the tensor names, shapes and dtypes:

- ``Scaler``: ``(x - offset) * scale`` (Sub, Mul: the very float operations onnxruntime does);
- ``Normalizer``: each row divided by its MAX, L1 or L2 norm (a zero norm leaves the row as is);
- ``LinearClassifier``/``LinearRegressor``: MatMul + Add, post_transform NONE/LOGISTIC/SOFTMAX,
  labels as ``classlabels[argmax]``; a one-column binary classifier answers two columns and labels
  ``score > 0`` as onnxruntime does;
- ``ArrayFeatureExtractor``: Gather on the last axis;
- ``OneHotEncoder`` with integer categories and ``zeros=1``: Equal against the categories, Cast;
- ``TreeEnsembleClassifier``/``TreeEnsembleRegressor``: converter/mltrees.py.

Anything else (string labels, other ml operators, ``zeros=0`` whose unknown category is an error
in onnxruntime, double inputs, oversized tree matrices) is refused with a reason that names the
node: the converter then ships the untouched model for onnxruntime, as before. The rewrite is
checked by the caller against onnxruntime on the original model, never trusted.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from converter import mltrees
from converter.mlgraph import ML_DOMAIN, TARGET_OPSET, Emitter, NotRewritable, attrs, floats


@dataclass(frozen=True)
class MlLimits:
    """Bounds on what a rewrite may add to the model."""

    max_tree_matrix_bytes: int = mltrees.DEFAULT_MAX_TREE_MATRIX_BYTES


@dataclass(frozen=True)
class MlRewrite:
    """What :func:`rewrite_ml_ops` replaced, for the warnings and the manifest."""

    ops: dict[str, int] = field(default_factory=dict)  # "ai.onnx.ml.Op" -> nodes rewritten

    @property
    def has_trees(self) -> bool:
        """Whether tree thresholds are in the model (they must stay float32)."""
        return any("TreeEnsemble" in op for op in self.ops)

    def note(self) -> str:
        """One line for the conversion's warnings and the manifest."""
        ops = ", ".join(f"{op} ({n})" for op, n in sorted(self.ops.items()))
        return (f"ai.onnx.ml operators rewritten into default-domain ONNX operators for onnx2tf: {ops}; the "
                "converted model was validated against onnxruntime on the original")


@dataclass
class _Types:
    """Element types and ranks of the graph's tensors (from shape inference, where it knows them)."""

    elem: dict[str, int] = field(default_factory=dict)
    rank: dict[str, int] = field(default_factory=dict)
    opset: int = TARGET_OPSET  # the default domain's, after raising it


def _types(model: Any) -> _Types:
    from converter.source import _onnx

    onnx = _onnx()
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - inference is a help; the types of inputs still come below
        inferred = model
    t = _Types(opset=max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")))
    g = inferred.graph
    for vi in (*g.input, *g.value_info, *g.output):
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type"):
            t.elem[vi.name] = tt.elem_type
            if tt.HasField("shape"):
                t.rank[vi.name] = len(tt.shape.dim)
    for init in g.initializer:
        t.elem[init.name] = init.data_type
        t.rank[init.name] = len(init.dims)
    return t


Handler = Callable[[Emitter, Any, _Types, str, MlLimits], None]


def _scaler(e: Emitter, node: Any, types: _Types, what: str, limits: MlLimits) -> None:
    a = attrs(node)
    x = e.as_float(node.input[0], types.elem.get(node.input[0]))
    offset, scale = floats(a, "offset"), floats(a, "scale")
    if offset.size == 0 or scale.size == 0:
        raise NotRewritable(f"{what}: offset or scale missing")
    e.op("Mul", [e.op("Sub", [x, e.const("offset", offset)]), e.const("scale", scale)], out=node.output[0])


def _normalizer(e: Emitter, node: Any, types: _Types, what: str, limits: MlLimits) -> None:
    norm = attrs(node).get("norm", "MAX")
    x = e.as_float(node.input[0], types.elem.get(node.input[0]))
    if types.rank.get(node.input[0]) != 2:
        raise NotRewritable(f"{what}: the input is not known to be [N, F]")
    axes = e.const("axes", np.asarray([1], np.int64))
    if norm == "MAX":
        # onnxruntime's running maximum skips NaN (a comparison with NaN is false): NaN -> -inf first.
        # ReduceMax takes its axes as an input from opset 18 on, as an attribute before.
        v = e.op("Where", [e.op("Equal", [x, x]), x, e.const("low", np.asarray([-np.inf], np.float32))])
        n = (e.op("ReduceMax", [v, axes], keepdims=1) if types.opset >= 18
             else e.op("ReduceMax", [v], axes=[1], keepdims=1))
    elif norm == "L1":
        n = e.op("ReduceSum", [e.op("Abs", [x]), axes], keepdims=1)
    elif norm == "L2":
        n = e.op("Sqrt", [e.op("ReduceSum", [e.op("Mul", [x, x]), axes], keepdims=1)])
    else:
        raise NotRewritable(f"{what}: norm {norm}")
    zero = e.op("Equal", [n, e.const("zero", np.asarray([0.0], np.float32))])
    safe = e.op("Where", [zero, e.const("one", np.asarray([1.0], np.float32)), n])
    e.op("Div", [x, safe], out=node.output[0])


def _linear(e: Emitter, node: Any, types: _Types, what: str) -> tuple[str, int]:
    """``x @ coefficients.T + intercepts`` as [N, K]; returns it and K."""
    a = attrs(node)
    x = e.as_float(node.input[0], types.elem.get(node.input[0]))
    if types.rank.get(node.input[0], 2) != 2:
        raise NotRewritable(f"{what}: the input is not [N, F]")
    coef = floats(a, "coefficients")
    intercepts = floats(a, "intercepts")
    k = intercepts.size or int(a.get("targets", 1))
    if k == 0 or coef.size % k:
        raise NotRewritable(f"{what}: {coef.size} coefficients for {k} outputs")
    scores = e.op("MatMul", [x, e.const("coefficients", coef.reshape(k, -1).T.copy())])
    if intercepts.size:
        scores = e.op("Add", [scores, e.const("intercepts", intercepts)])
    return scores, k


def _linear_classifier(e: Emitter, node: Any, types: _Types, what: str, limits: MlLimits) -> None:
    a = attrs(node)
    if "classlabels_ints" not in a:
        raise NotRewritable(f"{what}: string class labels (classlabels_strings) have no tensor form here")
    classes = [int(v) for v in a["classlabels_ints"]]
    transform = a.get("post_transform", "NONE")
    scores, k = _linear(e, node, types, what)
    label_out, score_out = node.output[0], node.output[1]
    if k > 1:
        if k != len(classes):
            raise NotRewritable(f"{what}: {k} score columns for {len(classes)} class labels")
        e.labels(scores, classes, label_out)
        e.op("Identity", [e.post_transform(scores, transform)], out=score_out)
        return
    if len(classes) != 2 or transform != "NONE":
        # onnxruntime 1.23 answers [1 - score, score] of the raw score even for LOGISTIC: not followed here
        raise NotRewritable(f"{what}: one score column with {len(classes)} labels and post_transform {transform}")
    up = e.op("Cast", [e.op("Greater", [scores, e.const("zero", np.asarray([0.0], np.float32))])], to=7)
    flat = e.op("Reshape", [up, e.const("shape", np.asarray([-1], np.int64))])
    e.op("Gather", [e.const("classlabels", np.asarray(classes, np.int64)), flat], out=label_out, axis=0)
    one = e.const("one", np.asarray([1.0], np.float32))
    e.op("Concat", [e.op("Sub", [one, scores]), scores], out=score_out, axis=1)


def _linear_regressor(e: Emitter, node: Any, types: _Types, what: str, limits: MlLimits) -> None:
    scores, _ = _linear(e, node, types, what)
    e.op("Identity", [e.post_transform(scores, attrs(node).get("post_transform", "NONE"))], out=node.output[0])


def _array_feature_extractor(e: Emitter, node: Any, types: _Types, what: str, limits: MlLimits) -> None:
    data, index = node.input[0], node.input[1]
    rank = types.rank.get(data)
    if rank is None:
        raise NotRewritable(f"{what}: the rank of {data!r} is unknown")
    flat = e.op("Reshape", [index, e.const("shape", np.asarray([-1], np.int64))])
    if rank == 1:  # onnxruntime answers [1, k] for a vector
        picked = e.op("Gather", [data, flat], axis=0)
        e.op("Unsqueeze", [picked, e.const("axes", np.asarray([0], np.int64))], out=node.output[0])
    else:
        e.op("Gather", [data, flat], out=node.output[0], axis=rank - 1)


def _one_hot_encoder(e: Emitter, node: Any, types: _Types, what: str, limits: MlLimits) -> None:
    from converter.source import _onnx

    onnx = _onnx()
    a = attrs(node)
    if "cats_int64s" not in a:
        raise NotRewritable(f"{what}: string categories (cats_strings)")
    if int(a.get("zeros", 1)) != 1:
        raise NotRewritable(f"{what}: zeros=0 (an unknown category is an error in onnxruntime)")
    x = node.input[0]
    elem = types.elem.get(x)
    if elem == onnx.TensorProto.INT32:
        x = e.op("Cast", [x], to=onnx.TensorProto.INT64)
    elif elem != onnx.TensorProto.INT64:
        raise NotRewritable(f"{what}: input {x!r} is not an integer tensor")
    cats = np.asarray([int(v) for v in a["cats_int64s"]], np.int64)
    expanded = e.op("Unsqueeze", [x, e.const("axes", np.asarray([-1], np.int64))])
    e.op("Cast", [e.op("Equal", [expanded, e.const("categories", cats)])], out=node.output[0], to=onnx.TensorProto.FLOAT)


def _tree(kind: str) -> Handler:
    def handle(e: Emitter, node: Any, types: _Types, what: str, limits: MlLimits) -> None:
        x = e.as_float(node.input[0], types.elem.get(node.input[0]))
        if types.rank.get(node.input[0], 2) != 2:
            raise NotRewritable(f"{what}: the input is not [N, F]")
        build = mltrees.classifier if kind == "classifier" else mltrees.regressor
        build(e, node, x, what, limits.max_tree_matrix_bytes)

    return handle


HANDLERS: dict[str, Handler] = {
    "Scaler": _scaler,
    "Normalizer": _normalizer,
    "LinearClassifier": _linear_classifier,
    "LinearRegressor": _linear_regressor,
    "ArrayFeatureExtractor": _array_feature_extractor,
    "OneHotEncoder": _one_hot_encoder,
    "TreeEnsembleClassifier": _tree("classifier"),
    "TreeEnsembleRegressor": _tree("regressor"),
}


def _describe(node: Any) -> str:
    return f"{node.domain}.{node.op_type} node {node.name or node.output[0]!r}"


def _at_target_opset(model: Any) -> Any:
    """``model`` with its default-domain opset raised to :data:`TARGET_OPSET` (the emitted nodes use
    that opset's forms); onnx's version converter adapts the existing nodes and leaves ml nodes be."""
    from converter.source import _onnx

    onnx = _onnx()
    default = next((op for op in model.opset_import if op.domain in ("", "ai.onnx")), None)
    if default is None:
        model.opset_import.append(onnx.helper.make_opsetid("", TARGET_OPSET))
        return model
    if default.version >= TARGET_OPSET:
        return model
    try:
        return onnx.version_converter.convert_version(model, TARGET_OPSET)
    except Exception as exc:  # noqa: BLE001 - the converter's own errors vary by adapter
        raise NotRewritable(f"the model's opset {default.version} could not be raised to {TARGET_OPSET}: "
                            f"{exc}") from exc


def rewrite_ml_ops(model: Any, limits: MlLimits | None = None) -> tuple[Any, MlRewrite]:
    """A copy of ``model`` with every ``ai.onnx.ml`` node replaced by default-domain nodes, at
    default opset >= 13. Raises :class:`NotRewritable` naming every node it cannot rewrite."""
    from converter.source import _graphs, _onnx

    onnx = _onnx()
    limits = limits or MlLimits()
    out = _at_target_opset(copy.deepcopy(model))
    graph = out.graph
    nested = [n for g in list(_graphs(graph))[1:] for n in g.node if n.domain not in ("", "ai.onnx")]
    if nested:
        raise NotRewritable(f"{_describe(nested[0])}: inside a subgraph")
    types = _types(out)
    nodes: list[Any] = []
    refused: list[str] = []
    done: Counter[str] = Counter()
    for i, node in enumerate(graph.node):
        if node.domain in ("", "ai.onnx"):
            nodes.append(node)
            continue
        what = _describe(node)
        handler = HANDLERS.get(node.op_type) if node.domain == ML_DOMAIN else None
        if handler is None:
            refused.append(f"{what}: no rewrite for this operator")
            continue
        e = Emitter(f"ml{i}_{node.op_type}")
        try:
            handler(e, node, types, what, limits)
        except NotRewritable as exc:
            refused.append(str(exc))
            continue
        nodes.extend(e.nodes)
        graph.initializer.extend(e.initializers)
        done[f"{node.domain}.{node.op_type}"] += 1
    if refused:
        raise NotRewritable("; ".join(refused))
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [op for op in out.opset_import if op.domain != ML_DOMAIN]
    del out.opset_import[:]
    out.opset_import.extend(kept)
    try:
        onnx.checker.check_model(out)
    except Exception as exc:  # noqa: BLE001 - checker errors name the node; a bug of ours if reached
        raise NotRewritable(f"the rewritten model does not pass onnx.checker: {exc}") from exc
    return out, MlRewrite(dict(done))


__all__ = ["HANDLERS", "MlLimits", "MlRewrite", "NotRewritable", "rewrite_ml_ops"]
