"""Models as tabular exporters write them by default: ZipMap outputs and ``ai.onnx.ml`` operators.

skl2onnx and onnxmltools end a classifier with a ``ZipMap``: the probabilities come out as a
sequence of maps (``seq(map(int64, tensor(float)))``), a type no tensor protocol carries and
onnxruntime's tensor API cannot describe. The ZipMap only re-labels the ``[N, K]`` probability
tensor it is given, so :func:`strip_zipmap` replaces it by an ``Identity`` of that tensor under
the same output name: the model then answers ``[N, K]`` probabilities (column ``k`` is class
``k`` of the exporter's class list, recorded in the note) beside its ``[N]`` labels.

Their scalers, linear models and tree ensembles are ``ai.onnx.ml`` operators, which onnx2tf
has no converter for. converter/mlops.py rewrites the ones it can express exactly into default-domain
operators (a second file: the conversion's input; the first stays the reference and the fallback).
When any is left, :func:`unconvertible_ops` names every such operator before onnx2tf runs, so the
converter can ship the ONNX model for onnxruntime at once (or refuse, naming them all) instead of
learning it from onnx2tf's first failure.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converter.exceptions import ConverterError
from converter.mlops import MlLimits, MlRewrite, NotRewritable, rewrite_ml_ops

# Operator domains onnx2tf converts: the default ONNX domain (written "" or "ai.onnx").
CONVERTIBLE_DOMAINS = frozenset({"", "ai.onnx"})
MAX_CLASS_NAMES_NOTED = 32


@dataclass(frozen=True)
class Rewrite:
    """What :func:`strip_zipmap` changed, for the warnings and the manifest."""

    output: str
    classes: tuple[Any, ...]

    def note(self) -> str:
        """One line for the conversion's warnings and the manifest."""
        shown = list(self.classes[:MAX_CLASS_NAMES_NOTED])
        more = f" (+{len(self.classes) - len(shown)} more)" if len(self.classes) > len(shown) else ""
        return (f"output '{self.output}': the exporter's ZipMap (a sequence of maps) was replaced by its "
                f"[N, {len(self.classes)}] probability tensor; column k is class k of {shown}{more}")


@dataclass
class TabularPlan:
    """What the source model needs before conversion: its rewrites and the operators onnx2tf lacks."""

    rewrites: list[Rewrite] = field(default_factory=list)
    unconvertible: dict[str, int] = field(default_factory=dict)  # "domain.Op" -> node count, left for onnxruntime
    ml: MlRewrite | None = None  # the ai.onnx.ml operators rewritten for onnx2tf
    converted: Path | None = None  # the rewritten model onnx2tf converts (None: the model itself)
    not_rewritten: str = ""  # why the ai.onnx.ml operators were kept

    def describe_unconvertible(self) -> str:
        """``ai.onnx.ml.Scaler (1), ai.onnx.ml.TreeEnsembleClassifier (1)``: every operator, counted,
        and why they were not rewritten."""
        ops = ", ".join(f"{op} ({n})" for op, n in sorted(self.unconvertible.items()))
        return f"{ops} (not rewritten: {self.not_rewritten})" if self.not_rewritten else ops

    def notes(self, converted: bool) -> list[str]:
        """The manifest's rewrite notes: the ml rewrite only when the converted model ships."""
        return [r.note() for r in self.rewrites] + ([self.ml.note()] if converted and self.ml else [])


def _onnx() -> Any:
    from converter.source import _onnx as load

    return load()


def _graphs(graph: Any) -> list[Any]:
    from converter.source import _graphs as walk

    return list(walk(graph))


def unconvertible_ops(model: Any) -> dict[str, int]:
    """Every operator of ``model`` (subgraphs included) outside the default ONNX domain, with counts."""
    counts: Counter[str] = Counter()
    for g in _graphs(model.graph):
        for node in g.node:
            if node.domain not in CONVERTIBLE_DOMAINS:
                counts[f"{node.domain}.{node.op_type}"] += 1
    return dict(counts)


def _classes(node: Any) -> tuple[Any, ...]:
    onnx = _onnx()
    for attr in node.attribute:
        if attr.name == "classlabels_int64s":
            return tuple(int(v) for v in onnx.helper.get_attribute_value(attr))
        if attr.name == "classlabels_strings":
            return tuple(v.decode("utf-8", "replace") for v in onnx.helper.get_attribute_value(attr))
    raise ConverterError(f"ZipMap node {node.name!r} has no class labels (classlabels_int64s or classlabels_strings)")


def strip_zipmap(model: Any) -> list[Rewrite]:
    """Replace each ``ZipMap`` that feeds a graph output by an ``Identity`` of its probability tensor
    (in place). Returns what was changed; a ZipMap whose output is used inside the graph is an error
    (no exporter writes one, and nothing downstream could take a tensor instead)."""
    onnx = _onnx()
    graph = model.graph
    outputs = {v.name: v for v in graph.output}
    rewrites: list[Rewrite] = []
    for node in graph.node:
        if node.op_type != "ZipMap" or node.domain != "ai.onnx.ml":
            continue
        out = node.output[0]
        if out not in outputs:
            raise ConverterError(f"ZipMap node {node.name!r} feeds other nodes, not a graph output; "
                                 "re-export the model with zipmap=False")
        classes = _classes(node)
        node.op_type, node.domain = "Identity", ""
        del node.attribute[:]
        declared = outputs[out]
        declared.type.CopyFrom(onnx.helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, [None, len(classes)]))
        rewrites.append(Rewrite(out, classes))
    if rewrites:
        # The Identity keeps the node in the ML domain's opset list harmlessly; the default domain must exist.
        if not any(op.domain in CONVERTIBLE_DOMAINS for op in model.opset_import):
            model.opset_import.append(onnx.helper.make_opsetid("", 13))
    return rewrites


def prepare_tabular(path: Path, out: Path, rewrite_ml: bool = True,
                    limits: MlLimits | None = None) -> tuple[Path, TabularPlan]:
    """Read ``path``; when it has a ZipMap, write the rewritten model to ``out`` and return ``out``
    (else ``path`` untouched): the reference and the fallback. With ``rewrite_ml``, its ``ai.onnx.ml``
    operators rewritten go to ``out``'s ``.mlrewrite.onnx`` sibling (``plan.converted``). The plan lists
    the rewrites and the operators onnx2tf cannot convert."""
    onnx = _onnx()
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, OSError, ValueError ...
        raise ConverterError(f"{path.name}: cannot read the ONNX file: {exc}") from exc
    plan = TabularPlan()
    plan.rewrites = strip_zipmap(model)
    plan.unconvertible = unconvertible_ops(model)
    if plan.unconvertible and rewrite_ml:
        try:
            rewritten, plan.ml = rewrite_ml_ops(model, limits)
        except NotRewritable as exc:
            plan.not_rewritten = str(exc)
        else:
            plan.converted = out.with_name(out.stem + ".mlrewrite.onnx")
            onnx.save(rewritten, str(plan.converted))
            plan.unconvertible = {}
    elif plan.unconvertible:
        plan.not_rewritten = "--keep-ml-ops"
    if not plan.rewrites:
        return path, plan
    onnx.save(model, str(out))
    return out, plan


__all__ = ["Rewrite", "TabularPlan", "prepare_tabular", "strip_zipmap", "unconvertible_ops"]
