"""Meta-learning tasks from blocks: task tables and block splits.

Each block of the scene segmentation is one few-shot task. The paper meta-trains on a
random 60 % of the blocks and meta-tests on the rest; two-area experiments use the
schemes of :func:`split_by_area`. The support/query draw inside a task is
:func:`metalsm.models.meta.support_query` (the one draw of meta-training, K-shot
evaluation and mapping).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from metalsm.errors import MetalsmInputError

if TYPE_CHECKING:
    from metalsm.blocks._segmentation import Blocks

__all__ = [
    "block_task_table",
    "split_blocks",
    "split_by_area",
]


def block_task_table(
    block_ids_of_samples: np.ndarray,
    labels: np.ndarray,
    blocks: Blocks | int | None = None,
) -> pd.DataFrame:
    """One row per block: block, cells, area_km2 (raster blocks), positives, negatives,
    samples, single_class, empty.

    ``blocks`` is a :class:`~metalsm.blocks.Blocks` (adds cells and area), a block
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
