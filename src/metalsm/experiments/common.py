"""What every experiment shares: its result value, the small preset, the study-area data.

An experiment is a function ``(config, out_dir, *, repeats=None, preset=None) ->
ExperimentResult`` writing CSV tables, PNG figures and a report section into
``out_dir``. :func:`experiment_data` prepares the blocks (rasters: factor stack,
samples, segmentation; tables: the sample table) and encodes the samples once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from metalsm.config import BlocksConfig, MetaConfig, StudyAreaConfig, ValidationConfig
from metalsm.errors import MetalsmInputError
from metalsm.report.html import Section

PRESETS = ("small",)

__all__ = ["PRESETS", "ExperimentResult", "apply_preset", "experiment_data",
           "experiment_meta", "repeats_of"]


@dataclass
class ExperimentResult:
    """Paths written (name -> path), wall time, the tables, the report section."""

    paths: dict[str, Path]
    seconds: float
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    section: Section | None = None


def apply_preset(config: StudyAreaConfig, preset: str | None) -> StudyAreaConfig:
    """``preset="small"``: few blocks, few meta-iterations and epochs, 1 repeat, 3 folds
    (the test suite and quick looks; not for published numbers)."""
    if preset is None:
        return config
    if preset not in PRESETS:
        raise MetalsmInputError(f"unknown preset {preset!r}; available: {', '.join(PRESETS)}")
    blocks = replace(config.blocks or BlocksConfig(), n_blocks=12, iterations=3)
    meta = replace(config.meta or MetaConfig(), iterations=20, pretrain_epochs=2,
                   repeats=2, unlabelled_cells=0)
    exp = replace(config.experiments, repeats=1, meta_iterations=20,
                  ablation_blocks=(6, 12))
    return replace(config, blocks=blocks, meta=meta, experiments=exp,
                   validation=replace(config.validation or ValidationConfig(), n_folds=3))


def experiment_meta(config: StudyAreaConfig) -> MetaConfig:
    """``[meta]`` (defaults when absent) with ``[experiments] meta_iterations`` applied."""
    meta = config.meta or MetaConfig()
    its = config.experiments.meta_iterations
    return replace(meta, iterations=its) if its > 0 else meta


def repeats_of(config: StudyAreaConfig, repeats: int | None) -> int:
    r = config.experiments.repeats if repeats is None else int(repeats)
    if r < 1:
        raise MetalsmInputError(f"--repeats must be >= 1, got {r}")
    return r


@contextmanager
def experiment_plan(config: StudyAreaConfig) -> Iterator[tuple[Any, int | None]]:
    """(executor, window size) of the factor stack as ``metalsm run`` would choose it
    (``[compute]``, i.e. ``--chunk-size``/``--scheduler``); (None, None) in memory."""
    from metalsm.scale import choose_plan

    plan = choose_plan(config)
    if not plan.chunked:
        yield None, None
        return
    with plan.compute() as compute:
        yield compute, plan.stage_chunk_size


def experiment_data(config: StudyAreaConfig, out: Path, stack: Any = None,
                    samples: Any = None) -> tuple[Any, Any]:
    """(MetaData, BlockStage) of ``config``: blocks written to ``out`` (quietly).

    Rasters: with ``stack`` and ``samples`` (a previous stage's) only the segmentation
    is redone; the stage's factor stack is ``stage.stack`` for such reuse.
    """
    from metalsm.inputs import read_inventory
    from metalsm.pipeline import meta_data, prepare_blocks, segment_stack
    from metalsm.progress import RunProgress

    if config.blocks is None:
        config = replace(config, blocks=BlocksConfig())
    out.mkdir(parents=True, exist_ok=True)
    with experiment_plan(config) as (compute, chunk), RunProgress(enabled=False) as progress:
        if stack is not None and samples is not None and config.table is None:
            inventory = read_inventory(config.inventory.path, stack.grid,
                                       crs=config.inventory.crs,
                                       x_column=config.inventory.x_column,
                                       y_column=config.inventory.y_column)
            stage = segment_stack(config, stack, samples, inventory, out, progress,
                                  compute=compute, chunk_size=chunk)
        else:
            stage, stack = prepare_blocks(config, out, progress, compute=compute,
                                          chunk_size=chunk)
    stage.stack = stack
    return meta_data(stage), stage


def since(t: float) -> float:
    return round(time.perf_counter() - t, 3)
