"""The block stage of a study area: segmentation into blocks, tasks, and their outputs.

Raster study areas are segmented cell by cell (weighted SLIC on the factor stack);
table study areas (no rasters) by the same distance applied to the sample points.
Either way each block is one few-shot task, and a seeded share of blocks is set
aside for meta-testing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from metalsm.atomic import write_csv
from metalsm.blocks import (
    Blocks,
    block_task_table,
    segment_on_coarse_grid,
    segment_points,
    segment_raster,
    split_blocks,
    weights_from_data,
)
from metalsm.blocks import write_blocks as write_block_rasters
from metalsm.config import BlocksConfig, StudyAreaConfig
from metalsm.inputs import landslide_mask, read_inventory
from metalsm.progress import RunProgress
from metalsm.report import figures
from metalsm.samples import Samples, draw_samples, read_sample_table
from metalsm.stack import FactorStack, FileFactorStack, open_stack

__all__ = [
    "BlockStage",
    "block_statistics",
    "factor_weights",
    "prepare_blocks",
    "segment_stack",
    "segment_study_area",
    "segment_table",
    "task_table",
    "warn_sparse_blocks",
    "with_blocks",
]

log = logging.getLogger(__name__)


@dataclass
class BlockStage:
    """Block id per sample, the per-block task table, and (rasters) the block labels."""

    samples: Samples
    sample_blocks: np.ndarray
    tasks: pd.DataFrame
    blocks: Blocks | None
    weights: dict[str, float] | None


def factor_weights(
    blocks: BlocksConfig, samples: Samples, stack: FactorStack | None
) -> dict[str, float] | None:
    """The per-factor segmentation weights that ``[blocks] weighting`` asks for."""
    if blocks.weighting == "equal":
        return None
    if blocks.weighting == "given":
        # unlisted factors weigh 1; unknown names are left in so segmentation rejects them
        return {**dict.fromkeys(samples.factor_names, 1.0), **blocks.factor_weights}
    return weights_from_data(stack, samples.X, samples.y, blocks.weighting,
                             categorical=samples.categorical, seed=blocks.seed)


def task_table(sample_blocks: np.ndarray, samples: Samples, n_blocks: int | Blocks,
               blocks: BlocksConfig) -> pd.DataFrame:
    """Per-block counts with the meta-train / meta-test split of the blocks."""
    tasks = block_task_table(sample_blocks, samples.y, n_blocks)
    train, _ = split_blocks(tasks["block"], blocks.meta_train_fraction, blocks.seed)
    tasks["split"] = np.where(tasks["block"].isin(train), "meta-train", "meta-test")
    return tasks


def segment_study_area(
    config: StudyAreaConfig,
    out_dir: str | Path,
    *,
    show_progress: bool = True,
    chunk_size: int | None = None,
    scheduler: str | None = None,
) -> BlockStage:
    """Segment the study area of ``config`` (its ``[blocks]``) and write the block outputs.

    Rasters: ``factors.tif``, ``blocks.tif``, ``blocks.gpkg``, ``blocks.png``; tables:
    ``blocks.csv`` (block per sample) and ``blocks.png``; both: ``tasks.csv``. The
    stack is held in memory or on disk as :func:`metalsm.scale.choose_plan` decides.
    """
    from metalsm.scale import choose_plan

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = choose_plan(config, chunk_size=chunk_size, scheduler=scheduler)
    with plan.compute() as compute, RunProgress(enabled=show_progress) as progress:
        return prepare_blocks(config, out, progress, compute=compute,
                              chunk_size=plan.stage_chunk_size)[0]


def prepare_blocks(
    config: StudyAreaConfig, out: Path, progress: RunProgress, *, compute=None,
    chunk_size: int | None = None,
) -> tuple[BlockStage, FactorStack | FileFactorStack | None]:
    """Samples and blocks of a study area; rasters also give their factor stack.

    The stack is written to ``out/factors.tif`` so that maps can be made from it
    window by window later; with a ``chunk_size`` it stays on disk there.
    """
    if config.table is not None:
        return segment_table(config, config.blocks or BlocksConfig(), out, progress), None
    n_steps = 2 + len(config.rasters) + len(config.vectors)
    with progress.stage("factor stack", total=n_steps) as advance:
        stack = open_stack(config, out / "factors.tif", compute, chunked=chunk_size is not None,
                           chunk_size=chunk_size, progress=lambda note: advance(1, note))
    with progress.stage("samples"):
        inventory = read_inventory(config.inventory.path, stack.grid, crs=config.inventory.crs,
                                   x_column=config.inventory.x_column,
                                   y_column=config.inventory.y_column)
        samples = draw_samples(config, stack, inventory, landslide_mask(inventory, stack.grid),
                               compute=compute, chunk_size=chunk_size)
    return segment_stack(config, stack, samples, inventory, out, progress, compute=compute,
                         chunk_size=chunk_size), stack


def segment_stack(config: StudyAreaConfig, stack: FactorStack | FileFactorStack,
                  samples: Samples, inventory, out: Path, progress: RunProgress, *,
                  compute=None, chunk_size: int | None = None) -> BlockStage:
    """Segment a factor stack whose samples are already drawn; write the block outputs.

    SLIC is global: on the stack in memory, or, when ``[blocks] coarse_resolution_m``
    asks for it or the stack stays on disk (a ``chunk_size``), on a decimated
    ``factors.tif`` (:func:`metalsm.blocks.segment_on_coarse_grid`).
    """
    settings = config.blocks or BlocksConfig()
    with progress.stage(f"segmentation into ~{settings.n_blocks} blocks"):
        weights = factor_weights(settings, samples, stack)
        if settings.coarse_resolution_m is not None or chunk_size is not None:
            blocks = segment_on_coarse_grid(out / "factors.tif", settings, weights,
                                            compute=compute, chunk_size=chunk_size or 1024)
        else:
            blocks = segment_raster(stack, settings.n_blocks, settings.compactness,
                                    weights=weights, iterations=settings.iterations,
                                    min_size_fraction=settings.min_size_fraction,
                                    seed=settings.seed)
    with progress.stage("block outputs"):
        rows = samples.table["row"].to_numpy()
        cols = samples.table["col"].to_numpy()
        sample_blocks = blocks.block_of(rows, cols)
        tasks = task_table(sample_blocks, samples, blocks, settings)
        warn_sparse_blocks(tasks, settings, blocks.labels)
        write_block_rasters(blocks, out, samples_table=samples.table, inventory=inventory,
                            split=dict(zip(tasks["block"], tasks["split"], strict=True)))
        write_csv(out / "tasks.csv", tasks)
        dem = stack.layer("elevation") if "elevation" in stack.names else None
        figures.plot_block_map(
            blocks.labels, stack.grid, out / "blocks.png", dem=dem, inventory=inventory,
            title=f"{config.name}: {blocks.n_blocks} blocks (K={settings.n_blocks}, "
            f"M={settings.compactness:g})",
        )
    return BlockStage(samples, sample_blocks, tasks, blocks, weights)


def segment_table(config, settings: BlocksConfig, out: Path, progress) -> BlockStage:
    with progress.stage("sample table"):
        samples = read_sample_table(config.table)
    with progress.stage(f"segmentation into ~{settings.n_blocks} blocks"):
        weights = factor_weights(settings, samples, None)
        sample_blocks = segment_points(
            samples.table, list(samples.factor_names), x="x", y="y",
            n_blocks=settings.n_blocks, compactness=settings.compactness, weights=weights,
            iterations=settings.iterations, categorical=samples.categorical,
            min_size_fraction=settings.min_size_fraction,
        )
    with progress.stage("block outputs"):
        n_blocks = int(sample_blocks.max()) + 1
        tasks = task_table(sample_blocks, samples, n_blocks, settings)
        warn_sparse_blocks(tasks, settings)
        split = tasks.set_index("block")["split"]
        per_sample = samples.table[["x", "y", "label"]].assign(
            block=sample_blocks, split=split.reindex(sample_blocks).to_numpy())
        write_csv(out / "blocks.csv", per_sample)
        write_csv(out / "tasks.csv", tasks)
        figures.plot_point_blocks(
            per_sample["x"].to_numpy(), per_sample["y"].to_numpy(), sample_blocks,
            out / "blocks.png", labels=samples.y,
            title=f"{config.name}: {n_blocks} blocks (K={settings.n_blocks}, "
            f"M={settings.compactness:g})",
        )
    return BlockStage(samples, sample_blocks, tasks, None, weights)


def warn_sparse_blocks(tasks: pd.DataFrame, settings: BlocksConfig,
                       labels: np.ndarray | None = None) -> int:
    """Warn when blocks without samples, or with one class only, are many: their block
    models fall back to a neighbour's or the intermediate model. Says how many cells
    (rasters) lie in such blocks; returns the number of such blocks."""
    empty = int(tasks["empty"].sum())
    single = int(tasks["single_class"].sum())
    if not empty and single < len(tasks) / 2:
        return 0
    weak = tasks.loc[tasks["empty"] | tasks["single_class"], "block"].to_numpy()
    cells = ""
    if labels is not None:
        in_weak = int(np.isin(labels, weak).sum())
        cells = f"; {in_weak} of {int((labels >= 0).sum())} mapped cells lie in them"
    log.warning("%d of %d blocks hold no sample and %d only one class (blocks.n_blocks = %d "
                "for %d samples); their models fall back to a similar block's%s — fewer "
                "blocks give every block samples of both classes", empty, len(tasks), single,
                settings.n_blocks, int(tasks["samples"].sum()), cells)
    return empty + single


def with_blocks(config: StudyAreaConfig, n_blocks: int | None, compactness: float | None,
                iterations: int | None = None) -> StudyAreaConfig:
    """``config`` with command-line overrides of its ``[blocks]`` settings."""
    settings = config.blocks or BlocksConfig()
    overrides = {k: v for k, v in (("n_blocks", n_blocks), ("compactness", compactness),
                                   ("iterations", iterations)) if v is not None}
    return replace(config, blocks=replace(settings, **overrides))


def block_statistics(tasks: pd.DataFrame) -> dict[str, float]:
    """Blocks, samples per block (min/median/max), share of single-class and empty blocks."""
    samples = tasks["samples"]
    return {
        "blocks": int(len(tasks)),
        "samples_min": int(samples.min()),
        "samples_median": float(samples.median()),
        "samples_max": int(samples.max()),
        "single_class_share": float(tasks["single_class"].mean()),
        "empty_blocks": int(tasks["empty"].sum()),
    }


