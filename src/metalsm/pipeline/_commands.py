"""The stand-alone analysis commands on a study area's factor stack: ``metalsm factors``
(frequency ratio, MIC, collinearity, selection) and ``metalsm credibility`` (the
credibility of every cell as a non-landslide sample)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from metalsm.analysis import FactorAnalysis, analyze_factors
from metalsm.atomic import staged_directory, write_csv
from metalsm.inputs import landslide_mask, positive_cells, read_inventory
from metalsm.pipeline._preflight import check_run
from metalsm.report.figures import plot_correlation, plot_credibility, plot_fr_tables
from metalsm.samples import credibility_map, write_credibility
from metalsm.scale import choose_plan
from metalsm.stack import open_stack

__all__ = [
    "run_credibility",
    "run_factor_analysis",
    "write_factor_outputs",
]


@contextmanager
def _stack_and_inventory(config, out_dir: str | Path, command: str, chunk_size: int | None,
                         scheduler: str | None) -> Iterator[tuple[Path, Any, Any, Any, int | None]]:
    """Checks, then (staging folder, factor stack, inventory, executor, chunk size) of
    ``config``: the stack in memory or on disk as :func:`metalsm.scale.choose_plan`
    decides, built into a hidden file that is gone before the folder is swapped in."""
    check_run(config, out_dir, needs_rasters=True, command=command)
    plan = choose_plan(config, chunk_size=chunk_size, scheduler=scheduler)
    chunk = plan.stage_chunk_size
    with staged_directory(out_dir) as out, plan.compute() as compute:  # replaced when complete
        stack = open_stack(config, out / ".factors.tif", compute, chunked=plan.chunked,
                           chunk_size=chunk, output=False)
        inventory = read_inventory(
            config.inventory.path, stack.grid, crs=config.inventory.crs,
            x_column=config.inventory.x_column, y_column=config.inventory.y_column,
        )
        yield out, stack, inventory, compute, chunk
        (out / ".factors.tif").unlink()


def write_factor_outputs(analysis: FactorAnalysis, out_dir: str | Path) -> dict[str, Path]:
    """``fr_tables.csv``, ``factor_selection.csv``, ``pearson.csv``, ``spearman.csv``,
    ``fr_tables.png`` (FR bars per factor) and ``correlation.png`` (heatmaps)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "fr_tables": write_csv(out / "fr_tables.csv", analysis.fr_tables.round(6)),
        "selection": write_csv(out / "factor_selection.csv",
                               analysis.summary.round(6).reset_index()),
        "pearson": write_csv(out / "pearson.csv", analysis.pearson.round(4), index=True),
        "spearman": write_csv(out / "spearman.csv", analysis.spearman.round(4), index=True),
    }
    paths["fr_plot"] = plot_fr_tables(analysis.fr_tables, out / "fr_tables.png")
    paths["correlation_plot"] = plot_correlation(
        analysis.pearson, analysis.spearman, out / "correlation.png"
    )
    return paths


def run_factor_analysis(config, out_dir: str | Path, *, chunk_size: int | None = None,
                        scheduler: str | None = None) -> tuple[FactorAnalysis, dict[str, Path]]:
    """``metalsm factors``: build the stack of ``config``, analyse it against the inventory
    mask (every cell touched by a landslide), write the tables and figures into ``out_dir``.
    The stack is held in memory or on disk (read a layer at a time) as
    :func:`metalsm.scale.choose_plan` decides (``chunk_size``, ``scheduler``)."""
    with _stack_and_inventory(config, out_dir, "factors", chunk_size, scheduler) as (
            out, stack, inventory, _compute, _chunk):
        analysis = analyze_factors(stack, landslide_mask(inventory, stack.grid),
                                   config.factor_selection)
        paths = write_factor_outputs(analysis, out)
    return analysis, {k: Path(out_dir) / p.relative_to(out) for k, p in paths.items()}


def run_credibility(config, out_dir: str | Path, *, chunk_size: int | None = None,
                    scheduler: str | None = None) -> tuple[dict[str, Path], float]:
    """``metalsm credibility``: the credibility map of ``config``'s study area.

    Fitted on every positive cell of the inventory (rule ``inventory.rule``);
    writes ``credibility.tif``, ``credibility.png`` and ``membership.csv`` (the
    per-class FR, membership and factor weight). The stack is held in memory or on
    disk as :func:`metalsm.scale.choose_plan` decides (``chunk_size``, ``scheduler``).
    Returns the paths and the seconds the map took (fit + map, stack building excluded).
    """
    with _stack_and_inventory(config, out_dir, "credibility", chunk_size, scheduler) as (
            out, stack, inventory, compute, chunk):
        dem = stack.layer("elevation") if "elevation" in stack.names else None
        positives = positive_cells(
            inventory, stack.grid, stack.valid, rule=config.inventory.rule, dem=dem,
            cells_per_polygon=config.inventory.cells_per_polygon, seed=config.sampling.seed,
        )
        start = time.perf_counter()
        cred, model = credibility_map(stack, positives, config.credibility,
                                      config.factor_selection, compute=compute, chunk_size=chunk)
        seconds = time.perf_counter() - start
        paths = {"credibility": write_credibility(cred, stack.grid, out / "credibility.tif")}
        paths["figure"] = plot_credibility(cred, stack.grid, out / "credibility.png", dem=dem,
                                           inventory=inventory,
                                           title=f"Credibility as a non-landslide sample, "
                                                 f"{config.name}")
        paths["membership"] = write_csv(out / "membership.csv", model.fr_tables.round(6))
    return {k: Path(out_dir) / p.name for k, p in paths.items()}, seconds
