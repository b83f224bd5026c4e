"""Meta-learning tasks from blocks: task tables, block splits, support/query sampling.

Each block of the scene segmentation is one few-shot task. The paper meta-trains on a
random 60 % of the blocks and meta-tests on the rest; two-area experiments use the
schemes of :func:`split_by_area`. Within a task, the support set (the K shots the model
adapts on) and the query set (what the adapted model is scored on) are disjoint.

Stratification: within each block, samples of each class are put in a random order
and then interleaved class by class (class order random per task), and the support set
is the first ``k_support`` of that sequence. A balanced split is therefore taken when
both classes have enough samples, and the other class fills in when one runs short.
The query set is drawn the same way from the samples left over. All of it is
vectorized with ``np.lexsort`` over (task, class, random key); no loop over samples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from metalsm.errors import MetalsmInputError

if TYPE_CHECKING:
    from metalsm.segmentation import Blocks

__all__ = [
    "block_task_table",
    "sample_task_batch",
    "split_blocks",
    "split_by_area",
    "support_query",
]


def block_task_table(
    block_ids_of_samples: np.ndarray,
    labels: np.ndarray,
    blocks: Blocks | int | None = None,
) -> pd.DataFrame:
    """One row per block: block, cells, area_km2 (raster blocks), positives, negatives,
    samples, single_class, empty.

    ``blocks`` is a :class:`~metalsm.segmentation.Blocks` (adds cells and area), a block
    count, or None (count = largest id + 1). Blocks with no samples are kept and flagged
    ``empty``; ``single_class`` marks blocks whose samples are all of one class. Samples
    with block id -1 (outside every block) are ignored.
    """
    ids = np.asarray(block_ids_of_samples, dtype=np.int64)
    y = np.asarray(labels)
    if ids.shape != y.shape:
        raise MetalsmInputError(
            f"block ids ({ids.shape}) and labels ({y.shape}) differ in length"
        )
    if blocks is None:
        n_blocks = int(ids.max()) + 1 if ids.size else 0
    elif isinstance(blocks, int | np.integer):
        n_blocks = int(blocks)
    else:
        n_blocks = blocks.n_blocks
    if ids.size and ids.max() >= n_blocks:
        raise MetalsmInputError(f"sample block id {ids.max()} >= number of blocks {n_blocks}")
    inside = ids >= 0
    pos = np.bincount(ids[inside & (y == 1)], minlength=n_blocks)
    neg = np.bincount(ids[inside & (y != 1)], minlength=n_blocks)
    table = pd.DataFrame({"block": np.arange(n_blocks)})
    if blocks is not None and not isinstance(blocks, int | np.integer):
        cells = blocks.sizes()
        table["cells"] = cells
        table["area_km2"] = cells * blocks.grid.cell_area / 1e6
    table["positives"] = pos
    table["negatives"] = neg
    table["samples"] = pos + neg
    table["single_class"] = ((pos == 0) ^ (neg == 0)) & (pos + neg > 0)
    table["empty"] = pos + neg == 0
    return table


def _n_train(n: int, fraction: float, what: str) -> int:
    if not 0 < fraction < 1:
        raise MetalsmInputError(f"{what} must be between 0 and 1 (exclusive), got {fraction}")
    if n < 2:
        raise MetalsmInputError(f"cannot split {n} block(s) into meta-train and meta-test")
    return int(min(n - 1, max(1, round(fraction * n))))


def split_blocks(
    block_ids: Sequence[int] | np.ndarray, train_fraction: float = 0.6, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Random (meta_train, meta_test) blocks, ``round(fraction * n)`` of them for training
    (at least one block on each side); both sorted."""
    ids = np.unique(np.asarray(block_ids, dtype=np.int64))
    n_train = _n_train(ids.size, train_fraction, "train_fraction")
    perm = np.random.default_rng(seed).permutation(ids)
    return np.sort(perm[:n_train]), np.sort(perm[n_train:])


def split_by_area(
    area_of_block: Mapping[int, int] | Sequence[int] | np.ndarray,
    scheme: Literal["A", "B", "C", "D"],
    fraction: float = 0.6,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(meta_train, meta_test) blocks for two-area experiments.

    ``area_of_block`` maps block id -> area (1 or 2); a sequence is indexed by block id.
    ``fraction`` is the share of an area's blocks used for training where a scheme
    splits an area:

    * A: train on ``fraction`` of area 1, test on the rest of area 1 (area 2 unused);
    * B: train on all of area 1, test on all of area 2;
    * C: train on ``fraction`` of area 1 + ``fraction`` of area 2, test on the rest of area 1;
    * D: train on all of area 1 + ``fraction`` of area 2, test on the rest of area 2.
    """
    if isinstance(area_of_block, Mapping):
        ids = np.array(sorted(area_of_block), dtype=np.int64)
        area = np.array([area_of_block[i] for i in ids])
    else:
        area = np.asarray(area_of_block)
        ids = np.arange(area.size, dtype=np.int64)
    bad = sorted(set(np.unique(area).tolist()) - {1, 2})
    if bad:
        raise MetalsmInputError(f"area_of_block values must be 1 or 2, got {bad}")
    scheme = str(scheme).upper()
    if scheme not in ("A", "B", "C", "D"):
        raise MetalsmInputError(f"unknown split scheme '{scheme}'; use A, B, C or D")
    one, two = ids[area == 1], ids[area == 2]
    need = {"A": (one,), "B": (one, two), "C": (one, two), "D": (one, two)}[scheme]
    if any(part.size == 0 for part in need):
        raise MetalsmInputError(f"scheme {scheme} needs blocks in both areas" if len(need) == 2
                                else "scheme A needs blocks in area 1")
    if scheme == "A":
        return split_blocks(one, fraction, seed)
    if scheme == "B":
        return one, two
    if scheme == "C":
        train1, test1 = split_blocks(one, fraction, seed)
        train2, _ = split_blocks(two, fraction, seed + 1)
        return np.sort(np.concatenate([train1, train2])), test1
    train2, test2 = split_blocks(two, fraction, seed)
    return np.sort(np.concatenate([one, train2])), test2


def _interleaved_position(
    task: np.ndarray, cls: np.ndarray, key: np.ndarray, priority: np.ndarray, stratified: bool
) -> np.ndarray:
    """Position of each sample in its task's draw order (0 = drawn first)."""
    n = task.size
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if stratified:
        order = np.lexsort((key, cls, task))
        t, c = task[order], cls[order]
        start = np.r_[True, (t[1:] != t[:-1]) | (c[1:] != c[:-1])]
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n) - np.maximum.accumulate(np.where(start, np.arange(n), 0))
        order = np.lexsort((priority, rank, task))
    else:
        order = np.lexsort((key, task))
    t = task[order]
    start = np.r_[True, t[1:] != t[:-1]]
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n) - np.maximum.accumulate(np.where(start, np.arange(n), 0))
    return pos


def sample_task_batch(
    sample_block_ids: np.ndarray,
    labels: np.ndarray,
    blocks: Sequence[int] | np.ndarray,
    k_support: int,
    k_query: int,
    rng: np.random.Generator | int | None = None,
    stratified: bool = True,
) -> dict[str, np.ndarray]:
    """Support/query indices for many tasks at once, as padded arrays plus masks.

    Returns ``support_idx`` [T, k_support], ``support_mask``, ``query_idx`` [T, k_query],
    ``query_mask`` and ``blocks`` [T]. Indices point into the sample arrays; padded
    slots hold 0 with mask False (safe to gather, to be masked out). A task takes
    ``min(k_support, n)`` support samples and ``min(k_query, n - support)`` query samples
    of its ``n``; support and query never share a sample.
    """
    ids = np.asarray(sample_block_ids, dtype=np.int64)
    y = np.asarray(labels)
    blocks = np.asarray(blocks, dtype=np.int64).reshape(-1)
    if ids.shape != y.shape:
        raise MetalsmInputError(f"block ids ({ids.shape}) and labels ({y.shape}) differ")
    if k_support < 0 or k_query < 0:
        raise MetalsmInputError(f"k_support and k_query must be >= 0, got {k_support}, {k_query}")
    if np.unique(blocks).size != blocks.size:
        raise MetalsmInputError("blocks of a task batch must be distinct")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    n_tasks = blocks.size
    top = int(max(ids.max(initial=-1), blocks.max(initial=-1))) + 1
    task_of_block = np.full(top, -1, dtype=np.int64)
    task_of_block[blocks[blocks >= 0]] = np.flatnonzero(blocks >= 0)
    task_of_sample = np.where(ids >= 0, task_of_block[np.maximum(ids, 0)], -1)
    sel = np.flatnonzero(task_of_sample >= 0)
    task = task_of_sample[sel]
    classes, cls = np.unique(y[sel], return_inverse=True)
    cls = cls.ravel()
    key = rng.random(sel.size)
    priority = rng.random((n_tasks, max(1, classes.size)))[task, cls]

    pos = _interleaved_position(task, cls, key, priority, stratified)
    in_support = pos < k_support
    rest = ~in_support
    pos_q = np.full(sel.size, np.iinfo(np.int64).max)
    pos_q[rest] = _interleaved_position(task[rest], cls[rest], key[rest], priority[rest],
                                        stratified)
    in_query = pos_q < k_query

    out: dict[str, np.ndarray] = {"blocks": blocks}
    for name, chosen, p, k in (
        ("support", in_support, pos, k_support),
        ("query", in_query, pos_q, k_query),
    ):
        idx = np.zeros((n_tasks, k), dtype=np.int64)
        mask = np.zeros((n_tasks, k), dtype=bool)
        idx[task[chosen], p[chosen]] = sel[chosen]
        mask[task[chosen], p[chosen]] = True
        out[f"{name}_idx"] = idx
        out[f"{name}_mask"] = mask
    return out


def support_query(
    sample_block_ids: np.ndarray,
    labels: np.ndarray,
    block: int,
    k_support: int,
    k_query: int,
    seed: int = 0,
    stratified: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (support_idx, query_idx) sample indices for one block's task.

    Same draw as :func:`sample_task_batch` for a batch of that single block.
    """
    batch = sample_task_batch(
        sample_block_ids, labels, [block], k_support, k_query, np.random.default_rng(seed),
        stratified,
    )
    return (
        batch["support_idx"][0][batch["support_mask"][0]],
        batch["query_idx"][0][batch["query_mask"][0]],
    )
