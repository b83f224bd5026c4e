"""Province-scale block-wise map, out of core: derive -> stack -> block-wise map.

Usage:
    .venv/bin/python benchmarks/province_scale.py --size 4000 --out /tmp/prov   # smoke, minutes
    .venv/bin/python benchmarks/province_scale.py --size 20000 --out /big/disk/prov

A ``--size`` x ``--size`` study area is built by mirror-tiling the real Kaghan
rasters (AW3D30 DEM, geology, land cover; 987 x 826 cells at 28.6 m): every other
tile is flipped so values stay continuous across seams. Landslides are the Kaghan
inventory points replicated into every tile, mirrored like the rasters.

Stages (wall time, cells/s and peak RSS of this process and all its children,
i.e. LocalCluster workers, sampled every 0.1 s by a thread):

* ``derive``: 9 terrain factors by :func:`metalsm.terrain._write.write_terrain_factors`
  (once; it does not use Dask);
* per scheduler (``threads``: Dask's local threaded scheduler; ``localcluster``: a
  ``distributed.LocalCluster`` of 2 worker processes, addressed like a remote cluster):
  ``stack`` (11-band factors.tif, :func:`metalsm.stack.write_factor_stack`),
  ``segmentation`` (weighted SLIC on a coarse grid of <= ``--coarse-cells`` cells,
  block ids carried back to blocks.tif), ``samples`` (replicated landslide cells, at
  most ``--max-positives``, and as many random valid non-landslide cells, read window
  by window), ``train`` (weighted MAML on the meta-train blocks, no pretraining,
  ``--meta-iterations``; every block adapted with K = 5) and ``map`` (block-wise
  susceptibility.tif over Dask in windows of at most 256 x 256 cells: the one-hot
  float64 features of a window take ~0.5 kB per cell; zones.tif); with ``--rf-map``
  also ``rf fit`` and ``rf map`` (the README's default map model, 300 trees, fitted
  on the same samples and mapped over every cell with its trees compiled: rf.tif).

Results are printed and written to ``OUT/province_scale.json`` and ``.md``.
Intermediates are deleted as soon as they are no longer needed unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import rasterio
from _support import mirror_tile

from metalsm.raster import Grid

TERRAIN = ("elevation", "slope", "aspect_sin", "aspect_cos", "plan_curvature",
           "profile_curvature", "twi", "spi", "distance_to_drainage")
THEMATIC = {"geology": "Geology", "landcover": "Landcover"}


# --------------------------------------------------------------------------- measuring


class PeakMemory:
    """Peak RSS (bytes) of this process plus all its descendants, sampled by a thread."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def current(self) -> int:
        me = psutil.Process()
        total = me.memory_info().rss
        for child in me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            time.sleep(self.interval)

    def reset(self) -> None:
        self.peak = self.current()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def stage(results: list, memory: PeakMemory, scheduler: str, name: str, cells: int):
    memory.reset()
    start = time.perf_counter()
    print(f"[{scheduler}] {name} ...", file=sys.stderr, flush=True)
    yield
    wall = time.perf_counter() - start
    row = {"scheduler": scheduler, "stage": name, "wall_s": round(wall, 1),
           "cells_per_s": round(cells / wall) if wall > 0 else None,
           "peak_rss_mb": round(max(memory.peak, memory.current()) / 2**20)}
    results.append(row)
    print(f"[{scheduler}] {name}: {row}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- study area


def mirrored_landslides(kaghan: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Landslide cells (rows, cols) of the tiled area: each point replicated, mirrored."""
    import geopandas as gpd

    with rasterio.open(kaghan / "AW3D30.tif") as src:
        h, w, inv = src.height, src.width, ~src.transform
        crs = src.crs
    points = gpd.read_file(kaghan / "landslides.shp").to_crs(crs).geometry.representative_point()
    c, r = inv * (points.x.to_numpy(), points.y.to_numpy())
    inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
    r, c = r[inside], c[inside]
    ti = np.arange(-(-size // h))
    tj = np.arange(-(-size // w))
    rows = (ti[:, None] * h + np.where(ti[:, None] % 2 == 1, h - r[None, :], r[None, :]))
    cols = (tj[:, None] * w + np.where(tj[:, None] % 2 == 1, w - c[None, :], c[None, :]))
    rows = np.broadcast_to(rows[:, None, :], (ti.size, tj.size, r.size)).ravel()
    cols = np.broadcast_to(cols[None, :, :], (ti.size, tj.size, r.size)).ravel()
    rows, cols = np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)
    keep = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
    cells = np.unique(rows[keep] * size + cols[keep])
    return cells // size, cells % size


# --------------------------------------------------------------------------- one scheduler


def run_scheduler(name: str, compute, args, inputs: dict, grid: Grid, landslides,
                  work: Path, results: list, memory: PeakMemory) -> dict:
    from metalsm.blocks import _segmentation as segmentation
    from metalsm.config import BlocksConfig, MetaConfig, OutputConfig, StudyAreaConfig
    from metalsm.pipeline import (
        BlockStage,
        adapt_all_blocks,
        fit_intermediate,
        meta_data,
        task_table,
        write_blockwise_map,
    )
    from metalsm.raster import read_cells
    from metalsm.samples import Samples
    from metalsm.stack import LayerSource, write_factor_stack

    out = work / name
    out.mkdir(parents=True, exist_ok=True)
    cells = grid.height * grid.width
    chunk = args.chunk_size
    sources = [LayerSource(n, str(inputs[n])) for n in TERRAIN]
    sources += [LayerSource(n, str(inputs[n]), True) for n in THEMATIC]
    class_names = {n: {} for n in THEMATIC}
    names = tuple(s.name for s in sources)

    with stage(results, memory, name, "stack", cells):
        write_factor_stack(sources, grid, out / "factors.tif", compute,
                           chunk_size=chunk, class_names=class_names)
    settings = BlocksConfig(n_blocks=args.blocks, compactness=0.5, iterations=3, seed=7)
    with stage(results, memory, name, "segmentation", cells):
        factor = segmentation.coarse_factor(grid, max_cells=args.coarse_cells)
        coarse = segmentation.segment_coarse(out / "factors.tif", settings, out / "blocks.tif",
                                             compute, factor=factor, chunk_size=chunk)
    with stage(results, memory, name, "samples", cells):
        rng = np.random.default_rng(7)
        rows, cols = landslides
        if rows.size > args.max_positives:
            pick = np.sort(rng.choice(rows.size, args.max_positives, replace=False))
            rows, cols = rows[pick], cols[pick]
        flat = rng.choice(cells, size=3 * rows.size, replace=False)
        is_slide = np.isin(flat, landslides[0] * grid.width + landslides[1])
        nrows, ncols = np.divmod(flat[~is_slide], grid.width)
        all_rows, all_cols = np.r_[rows, nrows], np.r_[cols, ncols]
        label = np.r_[np.ones(rows.size, np.int8), np.zeros(nrows.size, np.int8)]
        values = read_cells(out / "factors.tif", all_rows, all_cols, chunk_size=chunk)
        blocks = coarse.block_of(all_rows, all_cols)
        ok = np.isfinite(values).all(axis=1) & (blocks >= 0)
        neg_ok = np.flatnonzero(ok & (label == 0))[: int((ok & (label == 1)).sum())]
        keep = np.sort(np.r_[np.flatnonzero(ok & (label == 1)), neg_ok])
        x, y = grid.xy(all_rows[keep], all_cols[keep])
        table = pd.DataFrame({"row": all_rows[keep], "col": all_cols[keep], "x": x, "y": y,
                              "label": label[keep]})
        table = pd.concat([table, pd.DataFrame(values[keep], columns=list(names))], axis=1)
        samples = Samples(table, names, tuple(THEMATIC))
        sample_blocks = blocks[keep]
        tasks = task_table(sample_blocks, samples, coarse.blocks.n_blocks, settings)
    meta = MetaConfig(pretrain=False, iterations=args.meta_iterations, k_shots=("5",),
                      map_k="5", repeats=1, seed=7)
    config = StudyAreaConfig(name="province", blocks=settings, meta=meta,
                             output=OutputConfig(window_size=min(chunk, 256),
                                                 overviews=(2, 4, 8, 16)))
    with stage(results, memory, name, "train", cells):
        block_stage = BlockStage(samples, sample_blocks, tasks, coarse.blocks, None)
        data = meta_data(block_stage)
        learner = fit_intermediate(config, data)
        block_models = adapt_all_blocks(learner, data, meta.map_k, meta.seed)
    with stage(results, memory, name, "map", cells):
        paths = write_blockwise_map(config, block_models, data.encoder, out, compute=compute)
    if args.rf_map:
        rf_path = rf_map(samples, names, out, compute, config.output.window_size, results,
                         memory, name, cells)
    with rasterio.open(paths["susceptibility"]) as src:
        overview = src.read(1, out_shape=(1, 256, 256))
    summary = {"scheduler": name, "blocks": int(coarse.blocks.n_blocks), "coarse_factor": factor,
               "positives": int((samples.y == 1).sum()), "negatives": int((samples.y == 0).sum()),
               "mean_probability_overview": float(np.nanmean(overview))}
    if args.rf_map:
        with rasterio.open(rf_path) as src:
            summary["rf_mean_probability_overview"] = float(np.nanmean(
                src.read(1, out_shape=(1, 256, 256))))
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return summary


def rf_map(samples, names, out: Path, compute, window_size: int, results: list,
           memory: PeakMemory, scheduler: str, cells: int) -> Path:
    """The README's default map model (``rf``, 300 trees) fitted on the stage's samples
    and mapped over every cell (its trees compiled for the map, as ``metalsm run`` does)."""
    from metalsm.mapping import predict_raster
    from metalsm.models.classic import make_model

    with stage(results, memory, scheduler, "rf fit", cells):
        model = make_model("rf", list(THEMATIC), 7)
        model.fit(samples.table[list(names)], samples.table["label"])
    with stage(results, memory, scheduler, "rf map", cells):
        path = predict_raster(model, out / "factors.tif", out / "rf.tif",
                              feature_names=list(names), window_size=window_size,
                              compute=compute)
    results[-1]["predictor"] = model.predictor_
    return path


# --------------------------------------------------------------------------- main


def markdown(results: list[dict], meta: dict) -> str:
    lines = [f"Study area {meta['size']} x {meta['size']} = {meta['cells']:,} cells, "
             f"{meta['factors']} factors, chunk {meta['chunk_size']}, "
             f"{meta['cpus']} CPUs", "",
             "| scheduler | stage | wall (s) | cells/s | peak RSS (MB) |",
             "|---|---|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['scheduler']} | {r['stage']} | {r['wall_s']} | "
                     f"{r['cells_per_s']:,} | {r['peak_rss_mb']:,} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=20000, help="cells per side")
    parser.add_argument("--out", type=Path, required=True, help="working/output folder")
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--schedulers", nargs="+", default=["threads", "localcluster"],
                        choices=["threads", "localcluster"])
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    parser.add_argument("--blocks", type=int, default=64)
    parser.add_argument("--coarse-cells", type=int, default=1_000_000,
                        help="at most this many cells on the segmentation grid")
    parser.add_argument("--max-positives", type=int, default=20_000)
    parser.add_argument("--meta-iterations", type=int, default=300)
    parser.add_argument("--rf-map", action="store_true",
                        help="also fit the rf model on the samples and map it (rf.tif)")
    parser.add_argument("--keep", action="store_true", help="keep intermediates and outputs")
    args = parser.parse_args(argv)

    from metalsm.datasets import study_area
    from metalsm.scale import compute_context
    from metalsm.terrain import write_terrain_factors

    kaghan = study_area("kaghan")
    work = args.out
    work.mkdir(parents=True, exist_ok=True)
    memory = PeakMemory()
    results: list[dict] = []
    cells = args.size * args.size

    inputs: dict[str, Path] = {}
    with stage(results, memory, "-", "build inputs (mirror tiling)", cells):
        dem = mirror_tile(kaghan / "AW3D30.tif", work / "dem.tif", args.size, args.size)
        for name, stem in THEMATIC.items():
            inputs[name] = mirror_tile(kaghan / f"{stem}.tif", work / f"{name}.tif", args.size,
                                         args.size)
        landslides = mirrored_landslides(kaghan, args.size)
    grid = Grid.from_raster(dem)
    with stage(results, memory, "-", "derive", cells):
        threshold = max(1, round(0.5e6 / grid.cell_area))
        with compute_context(None) as compute:
            inputs.update(write_terrain_factors(dem, grid, TERRAIN, work / "terrain",
                                                chunk_size=args.chunk_size,
                                                drainage_threshold_cells=threshold,
                                                compute=compute))
    summaries = []
    for name in args.schedulers:
        if name == "threads":
            with compute_context(None) as compute:
                summaries.append(run_scheduler(name, compute, args, inputs, grid, landslides,
                                               work, results, memory))
        else:
            from distributed import LocalCluster

            threads = max(1, (os.cpu_count() or 2) // args.workers)
            with LocalCluster(n_workers=args.workers, threads_per_worker=threads,
                              processes=True, dashboard_address=None,
                              memory_limit="1.5GB") as cluster:
                with compute_context(cluster.scheduler_address) as compute:
                    summaries.append(run_scheduler(name, compute, args, inputs, grid,
                                                   landslides, work, results, memory))
    memory.stop()
    if not args.keep:
        for path in [work / "terrain", dem, *(inputs[n] for n in THEMATIC)]:
            shutil.rmtree(path, ignore_errors=True) if Path(path).is_dir() else \
                Path(path).unlink(missing_ok=True)
            Path(f"{path}.aux.xml").unlink(missing_ok=True)
    meta = {"size": args.size, "cells": cells, "factors": len(TERRAIN) + len(THEMATIC),
            "chunk_size": args.chunk_size, "cpus": os.cpu_count(),
            "landslide_cells": int(landslides[0].size), "runs": summaries}
    report = {"meta": meta, "stages": results}
    (work / "province_scale.json").write_text(json.dumps(report, indent=2) + "\n")
    (work / "province_scale.md").write_text(markdown(results, meta))
    print(json.dumps(report, indent=2))
    print(markdown(results, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
