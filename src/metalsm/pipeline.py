"""The end-to-end run, stage by stage: inputs → factor stack → samples → models → map → report.

Each stage is a plain function from its own module; this file only wires them
together, times them, and writes the run directory and its manifest.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from metalsm import mapping, validation
from metalsm.atomic import atomic_path, write_json
from metalsm.config import StudyAreaConfig
from metalsm.inventory import landslide_mask, positive_cells, read_inventory
from metalsm.manifest import build_manifest
from metalsm.models.classic import make_model
from metalsm.progress import RunProgress
from metalsm.report import figures
from metalsm.report.html import Section, write_report
from metalsm.sampling import NegativeRequest, draw_negatives, sample_table
from metalsm.stack import FactorStack, build_factor_stack

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    out_dir: Path
    seconds: float
    metrics: dict
    headline: dict[str, str] = field(default_factory=dict)


@dataclass
class Samples:
    """Positive and negative cells with their factor values (one row per cell)."""

    table: pd.DataFrame
    factor_names: tuple[str, ...]
    categorical: tuple[str, ...]

    @property
    def X(self) -> pd.DataFrame:  # noqa: N802 - the scikit-learn name
        return self.table[list(self.factor_names)]

    @property
    def y(self) -> np.ndarray:
        return self.table["label"].to_numpy()

    @property
    def coords(self) -> np.ndarray:
        return self.table[["x", "y"]].to_numpy()


def draw_samples(
    config: StudyAreaConfig, stack: FactorStack, inventory, mask: np.ndarray
) -> Samples:
    """Positives from the inventory by the configured rule; negatives by the configured sampler."""
    valid = stack.valid
    dem = stack.layer("elevation") if "elevation" in stack.names else None
    pos = positive_cells(
        inventory,
        stack.grid,
        valid,
        rule=config.inventory.rule,
        dem=dem,
        cells_per_polygon=config.inventory.cells_per_polygon,
        seed=config.sampling.seed,
    )
    request = NegativeRequest(
        valid=valid,
        landslide_mask=mask,
        n=int(round(pos[0].size * config.sampling.ratio)),
        cell_size=stack.grid.cell_size,
        buffer_m=config.sampling.buffer_m,
        slope=stack.layer("slope") if "slope" in stack.names else None,
        min_slope_deg=config.sampling.min_slope_deg,
    )
    neg = draw_negatives(config.sampling.method, request, config.sampling.seed)
    table = sample_table(stack, pos, neg)
    return Samples(table, stack.names, stack.categorical)


def run_pipeline(
    config: StudyAreaConfig, out_dir: str | Path, *, show_progress: bool = True
) -> RunResult:
    """Run every stage of ``config`` and write all outputs into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def timed(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 3)
        return now

    with RunProgress(enabled=show_progress) as progress:
        t = time.perf_counter()
        n_steps = 2 + len(config.rasters) + len(config.vectors)
        with progress.stage("factor stack", total=n_steps) as advance:
            stack = build_factor_stack(config, progress=lambda note: advance(1, note))
            stack.write(out / "factors.tif")
        t = timed("factor_stack", t)

        with progress.stage("samples") as advance:
            inventory = read_inventory(
                config.inventory.path,
                stack.grid,
                crs=config.inventory.crs,
                x_column=config.inventory.x_column,
                y_column=config.inventory.y_column,
            )
            mask = landslide_mask(inventory, stack.grid)
            samples = draw_samples(config, stack, inventory, mask)
            _write_csv(samples.table, out / "samples.csv")
        t = timed("samples", t)

        names = config.model.names
        n_tasks = 2 * len(names) * config.validation.n_folds
        with progress.stage("validation (random and spatial folds)", total=n_tasks) as advance:
            evaluation = validation.evaluate_models(
                names,
                samples.X,
                samples.y,
                samples.coords,
                categorical=samples.categorical,
                n_folds=config.validation.n_folds,
                seed=config.validation.seed,
                spatial_method=config.validation.spatial_method,
                model_seed=config.model.seed,
                progress=advance,
            )
            _write_csv(evaluation.table, out / "validation.csv", index=False)
        t = timed("validation", t)

        with progress.stage(f"fit {config.model.map_model} on all samples"):
            model = make_model(config.model.map_model, samples.categorical, config.model.seed)
            model.fit(samples.X, samples.y)
        t = timed("fit_map_model", t)

        n_valid = int(stack.valid.sum())
        with progress.stage("susceptibility map", total=n_valid) as advance:
            mapping.predict_raster(
                model,
                out / "factors.tif",
                out / "susceptibility.tif",
                feature_names=samples.factor_names,
                window_size=config.output.window_size,
                overviews=config.output.overviews,
                progress=lambda done, total: advance(done),
            )
        t = timed("predict_map", t)

        with progress.stage("zones"):
            edges = mapping.zone_breaks(
                out / "susceptibility.tif",
                method=config.zones.method,
                levels=config.zones.levels,
                seed=config.model.seed,
            )
            mapping.classify_raster(out / "susceptibility.tif", out / "zones.tif", edges)
            labels = list(config.zones.labels) or None
            zones = mapping.zone_table(out / "zones.tif", mask, labels=labels)
            _write_csv(zones, out / "zones.csv", index=False)
        t = timed("zones", t)

        with progress.stage("figures and report"):
            _figures(out, stack, inventory, evaluation, zones, labels, config)
            metrics = _metrics(evaluation, samples, zones, config, edges)
            write_json(out / "metrics.json", metrics)
            outputs = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
            manifest = build_manifest(
                config=config.to_dict(),
                inputs=_input_paths(config),
                seeds={
                    "sampling": config.sampling.seed,
                    "model": config.model.seed,
                    "validation": config.validation.seed,
                },
                metrics=metrics,
                timings_s=timings,
                outputs=outputs + ["manifest.json", "report.html"],
            )
            write_json(out / "manifest.json", manifest)
            _report(out, config, metrics, evaluation, zones, manifest)
        timed("report", t)

    seconds = time.perf_counter() - started
    spatial = metrics["validation"]["spatial"][config.model.map_model]
    headline = {
        "samples": f"{metrics['samples']['positives']} positives, "
        f"{metrics['samples']['negatives']} negatives",
        f"spatial AUC ({config.model.map_model})": f"{spatial['auc_mean']:.3f} "
        f"± {spatial['auc_std']:.3f}",
    }
    return RunResult(out, seconds, metrics, headline)


def _write_csv(frame: pd.DataFrame, path: Path, index: bool = False) -> Path:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=index)
    return path


def _input_paths(config: StudyAreaConfig) -> list[str]:
    paths = [config.dem, config.inventory.path]
    paths += [r.path for r in config.rasters] + [v.path for v in config.vectors]
    return paths
