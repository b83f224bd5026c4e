"""Fitted tree ensembles packed into flat arrays and traversed by one numba kernel.

Every tree of a fitted ensemble becomes a run of nodes in four arrays, laid out
depth first so that the left child of node ``i`` is ``i + 1``; a leaf points to
itself and compares against ``-inf``, so "the next node is this node" ends a walk.
One kernel walks blocks of rows tree by tree (a tree stays in cache while the rows
of a block pass through it) and sums the leaves; it releases the GIL, so row
ranges run on threads. Measured on Kaghan windows (``docs/benchmarks.md``):
LightGBM's own predict is 2-3 times slower per core than this walk, so LightGBM
models predict here; scikit-learn's forest walk is already compiled (Cython) and
this one reaches 0.7-1.0 of its speed, so forests keep it (their packed form,
:func:`compile_forest`, is what ``benchmarks/predict_speed.py`` compares it with).

The libraries' own semantics are kept exactly, so probabilities agree to rounding:

* scikit-learn casts ``X`` to float32 before traversal and compares that value
  with a float64 threshold (``x <= t`` goes left); a forest's probability is the
  mean over trees of each leaf's class fraction.
* LightGBM compares the float64 value with a float64 threshold (``<=`` goes
  left), reads values with ``|x| <= 1e-35`` as zero, sums the leaf values of all
  trees (the initial score sits in the first tree's leaves) and applies the
  sigmoid ``1 / (1 + exp(-s * raw))`` of its ``binary`` objective.

Cells reach the kernel finite (the models reject NaN before predicting), so
LightGBM's missing-value branches (``missing_type`` None or NaN) never apply;
a model the packing does not cover (categorical or zero-as-missing splits,
multiclass, linear trees, random-forest mode) is reported as ``None`` and keeps
the library's own predict.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit

#: Rows per block: a block walks every tree before the next block starts. 4k rows of
#: LightGBM's encoded factors (~1 MB) stay in cache across its 300 small trees; 64k-row
#: blocks measured half the speed (the rows no longer fit).
_BLOCK_ROWS = 4_096
#: Rows per threaded task (threads take tasks as they come free).
_TASK_ROWS = 16_384
#: Threads per prediction: the project's good-neighbour default (the forests' ``n_jobs``).
PREDICT_THREADS = 2
#: LightGBM reads inputs this close to zero as zero (its ``kZeroThreshold``).
_LIGHTGBM_ZERO = 1e-35


@njit(cache=True, nogil=True)
def _sum_leaves(X, roots, feature, threshold, right, value, out):
    """``out[i] += leaf value of row i`` over all trees, block by block (nogil: threads)."""
    n = X.shape[0]
    for lo in range(0, n, _BLOCK_ROWS):
        hi = min(n, lo + _BLOCK_ROWS)
        for t in range(roots.size):
            for i in range(lo, hi):
                node = roots[t]
                while True:
                    nxt = node + 1 if X[i, feature[node]] <= threshold[node] else right[node]
                    if nxt == node:
                        break
                    node = nxt
                out[i] += value[node]


@dataclass(frozen=True, eq=False)
class CompiledTrees:
    """A tree ensemble as flat node arrays (see the module docstring).

    ``combine`` is ``"mean"`` (forest: mean of leaf fractions) or ``"sigmoid"``
    (boosting: sigmoid of the summed leaf values times ``sigmoid_scale``).
    """

    roots: np.ndarray  # int64, first node of every tree
    feature: np.ndarray  # int32, feature compared at each node (0 at leaves)
    threshold: np.ndarray  # float64, -inf at leaves
    right: np.ndarray  # int32, right child (the node itself at leaves)
    value: np.ndarray  # float64, leaf output (0 at split nodes)
    n_features: int
    combine: str
    float32_inputs: bool
    sigmoid_scale: float = 1.0

    @property
    def n_trees(self) -> int:
        return int(self.roots.size)

    def positive_proba(self, X: np.ndarray, n_threads: int | None = None) -> np.ndarray:
        """P(class 1) for every row of the encoded feature matrix ``X`` (finite values),
        on ``n_threads`` threads (default :data:`PREDICT_THREADS`)."""
        rows = self.rows(X)
        total = np.zeros(rows.shape[0])
        args = (self.roots, self.feature, self.threshold, self.right, self.value)
        run_in_tasks(lambda lo, hi: _sum_leaves(rows[lo:hi], *args, total[lo:hi]),
                     rows.shape[0], n_threads)
        return self.combine_leaves(total)

    def rows(self, X: np.ndarray) -> np.ndarray:
        """``X`` as the traversal reads it: C-ordered float32 (forests) or float64 with
        LightGBM's near-zero values set to zero."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected an (n, {self.n_features}) array, got {X.shape}")
        if self.float32_inputs:  # compared as float32 -> float64 against float64 thresholds
            return np.ascontiguousarray(X, dtype=np.float32)
        X = np.asarray(X, dtype=np.float64)
        return np.ascontiguousarray(np.where(np.abs(X) <= _LIGHTGBM_ZERO, 0.0, X))

    def combine_leaves(self, total: np.ndarray) -> np.ndarray:
        """P(class 1) from the per-row sums of leaf values over all trees."""
        if self.combine == "mean":
            return total / self.n_trees
        return 1.0 / (1.0 + np.exp(-self.sigmoid_scale * total))


def run_in_tasks(walk: Callable[[int, int], None], n_rows: int, n_threads: int | None) -> None:
    """``walk(lo, hi)`` over row ranges of :data:`_TASK_ROWS`, on ``n_threads`` threads
    (default :data:`PREDICT_THREADS`); ``walk`` must release the GIL to gain from them."""
    n_threads = PREDICT_THREADS if n_threads is None else n_threads
    n_threads = max(1, min(int(n_threads), os.cpu_count() or 1))
    parts = [(lo, min(n_rows, lo + _TASK_ROWS)) for lo in range(0, n_rows, _TASK_ROWS)]
    if n_threads == 1 or len(parts) <= 1:
        walk(0, n_rows)
        return
    # many small tasks, so a thread that the OS holds back does not hold up the rest
    with ThreadPoolExecutor(min(n_threads, len(parts))) as pool:
        list(pool.map(lambda part: walk(*part), parts))


def _pack(trees: list[tuple[np.ndarray, ...]], n_features: int, **kind: Any) -> CompiledTrees:
    """Concatenate per-tree ``(feature, threshold, right, value)`` with node ids made global."""
    sizes = np.array([t[0].size for t in trees], dtype=np.int64)
    roots = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    feature, threshold, right, value = (np.concatenate([t[k] for t in trees]) for k in range(4))
    right = right.astype(np.int64) + np.repeat(roots, sizes)
    if right.max(initial=0) > np.iinfo(np.int32).max:
        raise OverflowError("too many tree nodes for 32-bit node ids")
    return CompiledTrees(roots, feature.astype(np.int32), threshold.astype(np.float64),
                         right.astype(np.int32), value.astype(np.float64), n_features, **kind)


# --------------------------------------------------------------------------- scikit-learn


def compile_forest(forest: Any) -> CompiledTrees | None:
    """Pack a fitted binary :class:`~sklearn.ensemble.RandomForestClassifier`, else ``None``."""
    from sklearn.ensemble import RandomForestClassifier

    if type(forest) is not RandomForestClassifier or getattr(forest, "n_outputs_", 0) != 1:
        return None
    if len(forest.classes_) != 2:
        return None
    trees = []
    for estimator in forest.estimators_:
        tree = estimator.tree_
        left, right = tree.children_left.copy(), tree.children_right.copy()
        leaf = left == -1
        nodes = np.arange(tree.node_count)
        if not np.array_equal(left[~leaf], nodes[~leaf] + 1):  # not depth-first: keep sklearn
            return None
        right[leaf] = nodes[leaf]
        feature = np.where(leaf, 0, tree.feature)
        threshold = np.where(leaf, -np.inf, tree.threshold)
        counts = tree.value[:, 0, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            fraction = counts[:, 1] / counts.sum(axis=1)  # sklearn normalises per tree
        value = np.where(leaf, np.nan_to_num(fraction), 0.0)
        trees.append((feature, threshold, right, value))
    return _pack(trees, int(forest.n_features_in_), combine="mean", float32_inputs=True)


# --------------------------------------------------------------------------- LightGBM


def compile_lightgbm(model: Any) -> CompiledTrees | None:
    """Pack a fitted binary ``LGBMClassifier`` (numerical ``<=`` splits only), else ``None``."""
    booster = getattr(model, "booster_", None)
    if booster is None or len(getattr(model, "classes_", ())) != 2:
        return None
    dump = booster.dump_model()
    objective = str(dump.get("objective", "")).split()
    if (not objective or objective[0] != "binary" or dump.get("num_tree_per_iteration") != 1
            or dump.get("average_output")):
        return None
    scale = 1.0
    for option in objective[1:]:
        if option.startswith("sigmoid:"):
            scale = float(option.split(":", 1)[1])
    trees = []
    for info in dump["tree_info"]:
        nodes = _flatten_lightgbm(info["tree_structure"])
        if nodes is None:
            return None
        trees.append(nodes)
    return _pack(trees, int(dump["max_feature_idx"]) + 1, combine="sigmoid",
                 float32_inputs=False, sigmoid_scale=scale)


def _flatten_lightgbm(root: dict) -> tuple[np.ndarray, ...] | None:
    """Depth-first arrays of one dumped tree, or ``None`` for a split the kernel lacks."""
    feature: list[int] = []
    threshold: list[float] = []
    right: list[int] = []
    value: list[float] = []
    stack: list[tuple[dict, int]] = [(root, -1)]  # (node, index of the parent awaiting it)
    while stack:
        node, parent = stack.pop()
        index = len(feature)
        if parent >= 0:
            right[parent] = index
        if "leaf_value" in node:
            if "leaf_coeff" in node:  # linear tree: the leaf is a model, not a value
                return None
            feature.append(0)
            threshold.append(-np.inf)
            right.append(index)
            value.append(float(node["leaf_value"]))
            continue
        if node.get("decision_type") != "<=" or node.get("missing_type") not in ("None", "NaN"):
            return None
        feature.append(int(node["split_feature"]))
        threshold.append(float(node["threshold"]))
        right.append(-1)
        value.append(0.0)
        stack.append((node["right_child"], index))  # visited after the whole left subtree
        stack.append((node["left_child"], -1))  # next: index + 1
    return (np.asarray(feature), np.asarray(threshold), np.asarray(right), np.asarray(value))
