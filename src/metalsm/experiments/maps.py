"""The susceptibility maps of several methods side by side (raster study areas only).

Four maps of the same study area, at one scale and one colour ramp (0–1):

* global **RF** and global **MLP** (:func:`metalsm.models.classic.make_model`), trained
  on all samples, predicted cell by cell (:func:`metalsm.mapping.predict_raster`);
* block-wise **proposed** (pretraining + weighted tasks) and block-wise **plain MAML**:
  meta-trained on the meta-train blocks, every block then adapted with ``[meta] map_k``
  of its samples (:func:`metalsm.pipeline.adapt_all_blocks`) and each cell predicted by
  its block's model (:func:`metalsm.mapping.predict_blockwise_raster`).

Writes ``maps/<method>.tif`` (probability rasters), ``maps.png`` (side by side, the
inventory on top), ``maps.csv`` (per map: mean probability, share of cells >= 0.5,
mean probability of the inventory's landslide cells) and a report section. A table
study area (no rasters) is skipped with a message, not an error.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio

from metalsm import mapping
from metalsm.atomic import write_csv
from metalsm.config import BlocksConfig, StudyAreaConfig
from metalsm.experiments.common import (
    ExperimentResult,
    apply_preset,
    experiment_meta,
    experiment_plan,
    since,
)
from metalsm.report.html import Section

log = logging.getLogger(__name__)

GLOBAL_MAPS = ("rf", "mlp")
BLOCKWISE_MAPS = ("proposed", "maml")
TITLES = {"rf": "Global RF", "mlp": "Global MLP", "proposed": "Block-wise proposed",
          "maml": "Block-wise plain MAML"}


def run_maps_experiment(config: StudyAreaConfig, out_dir: str | Path, *,
                        repeats: int | None = None, preset: str | None = None
                        ) -> ExperimentResult:
    """Map RF, MLP, proposed and plain MAML over the study area; one side-by-side figure."""
    from dataclasses import replace

    from metalsm.experiments.methods import fit_maml, fit_proposed
    from metalsm.inputs import landslide_mask, read_inventory
    from metalsm.models.classic import make_model
    from metalsm.pipeline._blocks import prepare_blocks
    from metalsm.pipeline._meta import adapt_all_blocks, meta_data
    from metalsm.progress import RunProgress
    from metalsm.report.figures import plot_maps_side_by_side

    del repeats
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config.table is not None:
        message = (f"skipped: {config.name} is a sample-table study area (no rasters), so "
                   "there is no map to draw; the maps experiment needs a raster study area")
        log.warning(message)
        return ExperimentResult({}, time.perf_counter() - started, {},
                                Section("Susceptibility maps side by side", text=message))
    config = apply_preset(config, preset)
    if config.blocks is None:
        config = replace(config, blocks=BlocksConfig())
    meta = experiment_meta(config)
    seed = config.experiments.seed
    timings: dict[str, float] = {}
    t = time.perf_counter()
    stage_dir = out / "blocks"
    stage_dir.mkdir(parents=True, exist_ok=True)
    with experiment_plan(config) as (compute, chunk), RunProgress(enabled=False) as progress:
        stage, stack = prepare_blocks(config, stage_dir, progress, compute=compute,
                                      chunk_size=chunk)
    data = meta_data(stage)
    factors, blocks_tif = stage_dir / "factors.tif", stage_dir / "blocks.tif"
    maps_dir = out / "maps"
    maps_dir.mkdir(exist_ok=True)
    timings["blocks"] = since(t)
    window = config.output.window_size
    paths: dict[str, Path] = {}
    for name in GLOBAL_MAPS:
        t = time.perf_counter()
        model = make_model(name, list(data.categorical), seed)
        model.fit(data.table, data.y)
        paths[name] = mapping.predict_raster(
            model, factors, maps_dir / f"{name}.tif", feature_names=list(data.table.columns),
            window_size=window, overviews=())
        timings[name] = since(t)
    for name, fit in (("proposed", fit_proposed), ("maml", fit_maml)):
        t = time.perf_counter()
        learner = fit(data, meta, seed).learner
        block_models = adapt_all_blocks(learner, data, meta.map_k, seed)
        paths[name] = mapping.predict_blockwise_raster(
            block_models, data.encoder, factors, blocks_tif, maps_dir / f"{name}.tif",
            window_size=window, overviews=())
        timings[name] = since(t)
    t = time.perf_counter()
    inventory = read_inventory(config.inventory.path, stack.grid, crs=config.inventory.crs,
                               x_column=config.inventory.x_column,
                               y_column=config.inventory.y_column)
    dem = stack.layer("elevation") if "elevation" in stack.names else None
    order = [*GLOBAL_MAPS, *BLOCKWISE_MAPS]
    figure = plot_maps_side_by_side(
        [paths[n] for n in order], [TITLES[n] for n in order], out / "maps.png",
        grid=stack.grid, dem=dem, inventory=inventory, ncols=2,
        suptitle=f"{config.name}: landslide probability (K = {meta.map_k} for block-wise)")
    slides = landslide_mask(inventory, stack.grid)
    rows = []
    for name in order:
        with rasterio.open(paths[name]) as src:
            p = src.read(1, masked=True).filled(np.nan).astype(np.float64)
        ok = np.isfinite(p)
        rows.append({"method": name, "map": TITLES[name], "cells": int(ok.sum()),
                     "mean_probability": float(np.nanmean(p)),
                     "share_ge_0.5": float((p[ok] >= 0.5).mean()),
                     "mean_probability_landslide_cells": float(np.nanmean(p[slides & ok]))
                     if (slides & ok).any() else np.nan})
    table = pd.DataFrame(rows)
    csv = write_csv(out / "maps.csv", table.round(4))
    timings["figure"] = since(t)
    seconds = time.perf_counter() - started
    timings["total"] = round(seconds, 3)
    section = Section(
        "Susceptibility maps side by side",
        text=("Global RF and MLP trained on all samples; block-wise proposed and plain "
              f"MAML meta-trained on the meta-train blocks ({meta.iterations} "
              f"meta-iterations), then every block adapted with K = {meta.map_k} of its "
              f"samples (seed {seed}). Same extent, one colour ramp 0–1; landslide "
              "inventory in black. The landslide cells include training samples, so the "
              "table's last column is a description of each map, not a validation."),
        images=[("Landslide probability", figure)],
        tables=[("Per map", table.round(3))], preformatted=[("Timings (s)", timings)])
    all_paths = {**{f"map_{k}": v for k, v in paths.items()}, "figure": figure, "table": csv}
    return ExperimentResult(all_paths, seconds, {"maps": table}, section)
