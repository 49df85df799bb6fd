"""The ONNX side: the model's interface, and the sanitised copy handed to onnx2tf.

onnx2tf rewrites its input file in place and turns ONNX names into TensorFlow scope
names, which must match ``^[A-Za-z0-9.][A-Za-z0-9_.\\-/]*$`` (names with ``@`` or a leading
``_`` have broken real conversions). So the converter never gives it the user's file:
it writes a copy whose graph inputs and outputs are renamed ``in_000``, ``in_001`` ... and
``out_000`` ... (zero-padded, so TensorFlow's alphabetical signature order is the ONNX
order) and whose other node and tensor names are made scope-safe. The original names are
kept in :class:`SourceModel` for the manifest and for error messages.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converter.exceptions import ConverterError
from edge_runtime.exceptions import UsageError
from edge_runtime.spec.tensors import TensorSpec

SCOPE_NAME_RE = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\-/]*$")
_BAD_CHARS_RE = re.compile(r"[^A-Za-z0-9_.\-/]")


@dataclass(frozen=True)
class SourceModel:
    """The user's ONNX model: its path, its interface and the names onnx2tf will see."""

    path: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    onnx2tf_inputs: tuple[str, ...]
    onnx2tf_outputs: tuple[str, ...]
    renamed: dict[str, str] = field(default_factory=dict)
    op_nodes: dict[str, list[str]] = field(default_factory=dict)

    @property
    def layout_inputs(self) -> tuple[str, ...]:
        """onnx2tf names of the inputs whose layout onnx2tf would transpose (rank 3 to 5)."""
        return tuple(n for n, s in zip(self.onnx2tf_inputs, self.inputs) if 3 <= len(s.shape) <= 5)

    def original_name(self, name: str) -> str:
        """The user's name for a node or tensor of the onnx2tf copy."""
        return self.renamed.get(name, name)


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - the converter extra pins it
        raise UsageError("edge-convert needs the converter extra: pip install '.[converter]' in an edge-runtime checkout") from exc
    return onnx


def describe_source(path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The model's inputs and outputs as onnxruntime sees them (dynamic dimensions are -1)."""
    from edge_runtime.exceptions import InferenceError
    from edge_runtime.inference.onnx import describe_onnx

    try:
        ins, outs = describe_onnx(path)
    except InferenceError as exc:
        raise ConverterError(f"{path.name}: {exc}") from exc
    return tuple(ins), tuple(outs)


def _graphs(graph: Any) -> Iterator[Any]:
    """``graph`` and every subgraph (If/Loop/Scan bodies) inside it."""
    onnx = _onnx()
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graphs(g)


class _Namer:
    """Scope-safe, unique replacements for names, remembering the originals."""

    def __init__(self, taken: set[str]) -> None:
        self.taken = set(taken)
        self.new_to_old: dict[str, str] = {}

    def fixed(self, name: str, new: str) -> str:
        """Rename ``name`` to ``new`` (reserved by the caller)."""
        self.new_to_old[new] = name
        return new

    def fresh(self, name: str) -> str:
        """A new unique scope-safe name derived from ``name``."""
        base = _BAD_CHARS_RE.sub("_", name)
        if not base or not re.match(r"[A-Za-z0-9.]", base[0]):
            base = "n" + base
        candidate, i = base, 1
        while candidate in self.taken:
            candidate = f"{base}_{i}"
            i += 1
        self.taken.add(candidate)
        self.new_to_old[candidate] = name
        return candidate

    def safe(self, name: str) -> str:
        """``name`` itself when it is already scope-safe, else a fresh name."""
        return name if SCOPE_NAME_RE.match(name) else self.fresh(name)


def _all_names(model: Any) -> set[str]:
    names: set[str] = set()
    for g in _graphs(model.graph):
        names.update(n.name for n in g.node)
        for n in g.node:
            names.update(n.input)
            names.update(n.output)
        names.update(t.name for t in g.initializer)
        names.update(v.name for v in g.input)
        names.update(v.name for v in g.output)
    return names


def _pin(value_info: Any, shape: tuple[int, ...]) -> None:
    """Set the fixed dimensions of ``shape`` on a graph input (``-1`` leaves a dimension as it is)."""
    dims = value_info.type.tensor_type.shape.dim
    for dim, want in zip(dims, shape):
        if want != -1:
            dim.dim_value = want  # clears dim_param (a oneof)


def prepare_copy(path: Path, out: Path, pins: Mapping[str, tuple[int, ...]] | None = None) -> SourceModel:
    """Write the onnx2tf copy of ``path`` to ``out``; returns the model's interface and names.

    ``pins`` fixes dimensions of inputs in the copy (see :mod:`converter.shapes`); the returned
    interface carries the pinned shapes.
    """
    onnx = _onnx()
    inputs, outputs = describe_source(path)
    pins = dict(pins or {})
    inputs = tuple(TensorSpec(s.name, s.datatype, pins.get(s.name, s.shape), s.quantization) for s in inputs)
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, OSError, ValueError ...
        raise ConverterError(f"{path.name}: cannot read the ONNX file: {exc}") from exc
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    real_inputs = [v.name for v in graph.input if v.name not in initializers]
    real_outputs = [v.name for v in graph.output]
    if real_inputs != [s.name for s in inputs] or real_outputs != [s.name for s in outputs]:
        raise ConverterError(
            f"{path.name}: graph inputs/outputs {real_inputs}/{real_outputs} differ from what onnxruntime "
            f"reports ({[s.name for s in inputs]}/{[s.name for s in outputs]})"
        )
    clash = set(real_inputs) & set(real_outputs)
    if clash:
        raise UsageError(f"{path.name}: {sorted(clash)} is both a graph input and a graph output; nothing to convert")

    op_nodes: dict[str, list[str]] = {}
    for g in _graphs(graph):
        for n in g.node:
            op_nodes.setdefault(n.op_type, []).append(n.name)
    reserved = {f"in_{i:03d}" for i in range(len(real_inputs))} | {f"out_{i:03d}" for i in range(len(real_outputs))}
    namer = _Namer(_all_names(model) | reserved)
    tensor_map: dict[str, str] = {}
    for i, name in enumerate(real_inputs):
        tensor_map[name] = namer.fixed(name, f"in_{i:03d}")
    for v in graph.input:
        if v.name in pins:
            _pin(v, pins[v.name])
    for i, name in enumerate(real_outputs):
        tensor_map[name] = namer.fixed(name, f"out_{i:03d}")

    def rename_tensor(t: str) -> None:
        if t and t not in tensor_map:
            tensor_map[t] = namer.fresh(t) if t in reserved else namer.safe(t)

    for g in _graphs(graph):
        for n in g.node:
            for t in [*n.input, *n.output]:
                rename_tensor(t)
        for init in g.initializer:
            rename_tensor(init.name)
    node_names: set[str] = set()
    for g in _graphs(graph):
        for n in g.node:
            if n.name:  # empty names are filled in by onnx2tf itself
                new = namer.safe(n.name)
                if new in node_names:  # duplicate node names break TensorFlow scopes too
                    new = namer.fresh(n.name)
                node_names.add(new)
                n.name = new
            n.input[:] = [tensor_map.get(t, t) for t in n.input]
            n.output[:] = [tensor_map.get(t, t) for t in n.output]
        for collection in (g.input, g.output, g.value_info):
            for v in collection:
                v.name = tensor_map.get(v.name, v.name)
        for init in g.initializer:
            init.name = tensor_map.get(init.name, init.name)
    onnx.save(model, str(out))
    renamed = {new: old for new, old in namer.new_to_old.items() if new != old}
    return SourceModel(
        path=Path(path),
        inputs=inputs,
        outputs=outputs,
        onnx2tf_inputs=tuple(f"in_{i:03d}" for i in range(len(real_inputs))),
        onnx2tf_outputs=tuple(f"out_{i:03d}" for i in range(len(real_outputs))),
        renamed=renamed,
        op_nodes=op_nodes,
    )
