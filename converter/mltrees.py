"""Tree ensembles (``TreeEnsembleClassifier``/``TreeEnsembleRegressor``) as matrix operators.

The GEMM strategy Hummingbird uses, with one change for exactness: every internal node's feature
is picked with a ``Gather`` (not a one-hot matrix product, where a NaN or infinity in any feature
would poison every node), and compared with its threshold in float32 exactly as onnxruntime does
(``<=`` for BRANCH_LEQ, ``<`` for BRANCH_LT, ...). Per tree, padded to the largest tree:

- ``C[t, i, l]`` is +1 when leaf ``l`` lies under the true branch of node ``i``, -1 under the
  false branch, 0 otherwise; ``D[t, l]`` counts the +1 entries of leaf ``l``'s column;
- a row reaches leaf ``l`` exactly when ``decisions[t] @ C[t, :, l] == D[t, l]`` (small integers:
  exact in float32 and in float16), one 2-D product per tree; the sum never exceeds ``D``, so
  ``relu(sum - D + 1)`` is the leaf one-hot (one FULLY_CONNECTED with its bias and ReLU in TFLite);
- the reached leaf's one-hot ``[N, L]`` times the tree's leaf weights ``[L, K]`` is the tree's
  contribution, added tree after tree in onnxruntime's order (the float sum is then bit-equal).

A missing value (NaN) goes the way ``nodes_missing_value_tracks_true`` says: the comparison and
its complement are both false for NaN, so ``cmp or (not complement and tracks)`` is onnxruntime's
rule. Thresholds are float32 constants: a float16 TFLite variant would round them and send rows
the other way, so a model holding rewritten trees is converted in float32 (converter/convert.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from converter.mlgraph import Emitter, NotRewritable, attrs, floats

# Node mode -> (ONNX comparison taking the true branch, its complement for NaN handling).
COMPARISONS = {
    "BRANCH_LEQ": ("LessOrEqual", "Greater"),
    "BRANCH_LT": ("Less", "GreaterOrEqual"),
    "BRANCH_GTE": ("GreaterOrEqual", "Less"),
    "BRANCH_GT": ("Greater", "LessOrEqual"),
}
DEFAULT_MAX_TREE_MATRIX_BYTES = 8 * 1024 * 1024


@dataclass
class _Tree:
    internal: list[int]  # node ids, in order
    leaves: list[int]
    feature: dict[int, int]
    threshold: dict[int, float]
    tracks_true: dict[int, bool]
    true_child: dict[int, int]
    false_child: dict[int, int]
    root: int


def _trees(a: dict[str, Any], what: str) -> tuple[list[int], dict[int, _Tree], str]:
    """The ensemble's trees by tree id, and the one comparison mode every internal node uses."""
    tree_ids = [int(v) for v in a.get("nodes_treeids", [])]
    node_ids = [int(v) for v in a.get("nodes_nodeids", [])]
    features = [int(v) for v in a.get("nodes_featureids", [])]
    values = floats(a, "nodes_values")
    modes = list(a.get("nodes_modes", []))
    trues = [int(v) for v in a.get("nodes_truenodeids", [])]
    falses = [int(v) for v in a.get("nodes_falsenodeids", [])]
    tracks = [int(v) for v in a.get("nodes_missing_value_tracks_true", [0] * len(tree_ids))] or [0] * len(tree_ids)
    n = len(tree_ids)
    if not n or any(len(x) != n for x in (node_ids, features, values, modes, trues, falses, tracks)):
        raise NotRewritable(f"{what}: the nodes_* attributes are missing or of different lengths")
    used = {m for m in modes if m != "LEAF"}
    if len(used) > 1 or not used <= set(COMPARISONS):
        raise NotRewritable(f"{what}: node modes {sorted(used)} (one of {', '.join(COMPARISONS)} per ensemble is rewritten)")
    mode = used.pop() if used else "BRANCH_LEQ"
    trees: dict[int, _Tree] = {}
    for k in range(n):
        t = trees.setdefault(tree_ids[k], _Tree([], [], {}, {}, {}, {}, {}, -1))
        nid = node_ids[k]
        if modes[k] == "LEAF":
            t.leaves.append(nid)
            continue
        t.internal.append(nid)
        t.feature[nid], t.threshold[nid], t.tracks_true[nid] = features[k], float(values[k]), bool(tracks[k])
        t.true_child[nid], t.false_child[nid] = trues[k], falses[k]
    for tid, t in trees.items():
        children = set(t.true_child.values()) | set(t.false_child.values())
        roots = [v for v in (*t.internal, *t.leaves) if v not in children]
        if len(roots) != 1:
            raise NotRewritable(f"{what}: tree {tid} has {len(roots)} roots")
        t.root = roots[0]
    return sorted(trees), trees, mode


def _paths(t: _Tree) -> dict[int, list[tuple[int, int]]]:
    """Each leaf's ancestors as (internal node id, +1 true branch / -1 false branch)."""
    out: dict[int, list[tuple[int, int]]] = {}
    stack: list[tuple[int, list[tuple[int, int]]]] = [(t.root, [])]
    leaves = set(t.leaves)
    while stack:
        node, path = stack.pop()
        if node in leaves:
            out[node] = path
            continue
        if node not in t.true_child or len(path) > len(t.internal):
            raise NotRewritable(f"node {node} is neither a leaf nor a branch, or the tree has a cycle")
        stack.append((t.true_child[node], [*path, (node, 1)]))
        stack.append((t.false_child[node], [*path, (node, -1)]))
    return out


def _leaf_weights(a: dict[str, Any], prefix: str, order: list[int], trees: dict[int, _Tree], width: int,
                  leaves_max: int, what: str) -> np.ndarray:
    """``W[t * L + leaf position, k]``: the summed weights each leaf adds to output column ``k``."""
    w = np.zeros((len(order) * leaves_max, width), np.float64)
    position = {tid: {leaf: i for i, leaf in enumerate(trees[tid].leaves)} for tid in order}
    slot = {tid: i for i, tid in enumerate(order)}
    for tid, nid, k, v in zip(a.get(f"{prefix}_treeids", []), a.get(f"{prefix}_nodeids", []),
                              a.get(f"{prefix}_ids", []), floats(a, f"{prefix}_weights")):
        leaf = position.get(int(tid), {}).get(int(nid))
        if leaf is None or not 0 <= int(k) < width:
            raise NotRewritable(f"{what}: a weight names tree {tid} node {nid} column {k}, not a leaf of the ensemble")
        w[slot[int(tid)] * leaves_max + leaf, int(k)] += float(v)
    return w.astype(np.float32)


def tree_scores(e: Emitter, x: str, a: dict[str, Any], prefix: str, width: int, what: str,
                max_bytes: int = DEFAULT_MAX_TREE_MATRIX_BYTES) -> str:
    """Emit the nodes computing the summed leaf weights ``[N, width]`` of the ensemble for float ``x``."""
    order, trees, mode = _trees(a, what)
    n_trees = len(order)
    inner = max(1, max(len(trees[t].internal) for t in order))
    leaves = max(len(trees[t].leaves) for t in order)
    size = 4 * (n_trees * inner * leaves + n_trees * leaves * width + 3 * n_trees * inner)
    if size > max_bytes:
        raise NotRewritable(f"{what}: {n_trees} trees of up to {leaves} leaves need {size / 2**20:.1f} MiB of "
                            f"matrices (the limit is {max_bytes / 2**20:.0f} MiB)")
    feature = np.zeros((n_trees, inner), np.int64)
    threshold = np.zeros((n_trees, inner), np.float32)
    tracks = np.zeros((n_trees, inner), bool)
    c = np.zeros((n_trees, inner, leaves), np.float32)
    d = np.full((n_trees, leaves), 2.0, np.float32)  # a padded leaf (sum 0) is never reached
    for ti, tid in enumerate(order):
        t = trees[tid]
        row = {nid: i for i, nid in enumerate(t.internal)}
        for nid, i in row.items():
            feature[ti, i], threshold[ti, i], tracks[ti, i] = t.feature[nid], t.threshold[nid], t.tracks_true[nid]
        column = {leaf: i for i, leaf in enumerate(t.leaves)}
        for leaf, path in _paths(t).items():
            li = column[leaf]
            for nid, sign in path:
                c[ti, row[nid], li] = sign
            d[ti, li] = sum(1 for _, sign in path if sign > 0)
    weights = _leaf_weights(a, "class" if prefix == "class" else "target", order, trees, width, leaves, what)
    picked = e.op("Gather", [x, e.const("features", feature.reshape(-1))], axis=1)  # [N, T * I]
    thresholds = e.const("thresholds", threshold.reshape(-1))
    cmp, complement = COMPARISONS[mode]
    decision = e.op(cmp, [picked, thresholds])
    if tracks.any():  # NaN: both comparisons are false; take the true branch where the node says so
        nan_true = e.op("And", [e.op("Not", [e.op(complement, [picked, thresholds])]),
                                e.const("missing_tracks_true", tracks.reshape(-1))])
        decision = e.op("Or", [decision, nan_true])
    dec = e.op("Cast", [decision], to=1)  # [N, T * I]
    # One [N, I] @ [I, L] product per tree, all 2-D: onnx2tf moves the axes of 3-D tensors (a batched
    # [T, N, I] product converted to TFLite wrong answers), so no tensor here has more than two.
    parts = [dec] if n_trees == 1 else e.split(dec, [inner] * n_trees)
    score = ""
    for ti, part in enumerate(parts):
        # sum <= D for every leaf, equal only for the reached one: relu(sum - D + 1) is its one-hot,
        # and MatMul + Add + Relu is one TFLite FULLY_CONNECTED (op count, not arithmetic, is the cost)
        reached = e.op("Relu", [e.op("Add", [e.op("MatMul", [part, e.const("paths", c[ti])]),
                                             e.const("bias", 1.0 - d[ti])])])
        table = weights[ti * leaves : (ti + 1) * leaves]  # [L, K]: one row is picked, exactly
        contribution = e.op("MatMul", [reached, e.const("leaf_weights", table)])
        # Tree after tree, as onnxruntime accumulates: float sums in another order differ in the last
        # bit, which flips a label where two classes tie (a forest's 0.5 vs 0.50000006).
        score = contribution if not score else e.op("Add", [score, contribution])
    return score


def _base(a: dict[str, Any], width: int, what: str) -> np.ndarray | None:
    base = floats(a, "base_values")
    if base.size == 0 or not base.any():
        return None
    if base.size != width:
        raise NotRewritable(f"{what}: {base.size} base_values for {width} output columns")
    return base


def classifier(e: Emitter, node: Any, x: str, what: str, max_bytes: int) -> None:
    """TreeEnsembleClassifier -> label int64 [N] and scores float [N, K], onnxruntime's conventions."""
    a = attrs(node)
    if "classlabels_int64s" not in a:
        raise NotRewritable(f"{what}: string class labels (classlabels_strings) have no tensor form here")
    classes = [int(v) for v in a["classlabels_int64s"]]
    ids = {int(v) for v in a.get("class_ids", [])}
    transform = a.get("post_transform", "NONE")
    label_out, score_out = node.output[0], node.output[1]
    if len(classes) == 2 and ids == {0}:  # binary, one score column: onnxruntime's binary case
        s = tree_scores(e, x, a, "class", 1, what, max_bytes)
        base = floats(a, "base_values")
        if base.size > 1:
            raise NotRewritable(f"{what}: binary with one weight column and {base.size} base_values")
        if base.size == 1 and base[0] != 0:
            s = e.op("Add", [s, e.const("base_values", base)])
        positive = all(float(w) >= 0 for w in floats(a, "class_weights"))
        cut = 0.5 if positive else 0.0
        up = e.op("Cast", [e.op("Greater", [s, e.const("cut", np.asarray([cut], np.float32))])], to=7)
        e.op("Gather", [e.const("classlabels", np.asarray(classes, np.int64)),
                        e.op("Reshape", [up, e.const("shape", np.asarray([-1], np.int64))])], out=label_out, axis=0)
        if positive and transform == "NONE":
            other = e.op("Sub", [e.const("one", np.asarray([1.0], np.float32)), s])
        elif not positive and transform == "LOGISTIC":
            other = e.op("Sigmoid", [e.op("Neg", [s])])
            s = e.op("Sigmoid", [s])
        elif not positive and transform == "NONE":
            other = e.op("Neg", [s])
        else:
            raise NotRewritable(f"{what}: binary single-column scores with post_transform {transform} and "
                                f"{'positive' if positive else 'mixed'} weights")
        e.op("Concat", [other, s], out=score_out, axis=1)
        return
    if ids != set(range(len(classes))):
        raise NotRewritable(f"{what}: weights cover classes {sorted(ids)} of {len(classes)}")
    if len(classes) == 2 and (transform != "NONE" or classes != [0, 1]):
        raise NotRewritable(f"{what}: binary two-column scores with post_transform {transform} or labels {classes}")
    s = tree_scores(e, x, a, "class", len(classes), what, max_bytes)
    extra = _base(a, len(classes), what)
    if extra is not None:
        if len(classes) == 2:
            raise NotRewritable(f"{what}: binary two-column scores with base_values")
        s = e.op("Add", [s, e.const("base_values", extra)])
    if len(classes) == 2:  # onnxruntime: class 1 when its score is above 0 (not an argmax)
        up = e.op("Cast", [e.op("Greater", [e.op("Gather", [s, e.const("one", np.asarray(1, np.int64))], axis=1),
                                            e.const("zero", np.asarray([0.0], np.float32))])], to=7)
        e.op("Gather", [e.const("classlabels", np.asarray(classes, np.int64)), up], out=label_out, axis=0)
    else:
        e.labels(s, classes, label_out)
    e.op("Identity", [e.post_transform(s, transform)], out=score_out)


def regressor(e: Emitter, node: Any, x: str, what: str, max_bytes: int) -> None:
    """TreeEnsembleRegressor -> float [N, n_targets]: SUM or AVERAGE of the trees, base_values, post_transform."""
    a = attrs(node)
    width = int(a.get("n_targets", 1))
    agg = a.get("aggregate_function", "SUM")
    if agg not in ("SUM", "AVERAGE"):
        raise NotRewritable(f"{what}: aggregate_function {agg} (SUM and AVERAGE are rewritten)")
    s = tree_scores(e, x, a, "target", width, what, max_bytes)
    if agg == "AVERAGE":
        n_trees = len(set(int(v) for v in a["nodes_treeids"]))
        s = e.op("Div", [s, e.const("trees", np.asarray([n_trees], np.float32))])
    base = floats(a, "base_values")
    if base.size and base.any():
        if base.size != width:  # onnxruntime ignores a single base value for several targets
            raise NotRewritable(f"{what}: {base.size} base_values for {width} targets")
        s = e.op("Add", [s, e.const("base_values", base)])
    e.op("Identity", [e.post_transform(s, a.get("post_transform", "NONE"))], out=node.output[0])


__all__ = ["COMPARISONS", "DEFAULT_MAX_TREE_MATRIX_BYTES", "classifier", "regressor", "tree_scores"]
