"""The end-to-end run, stage by stage: inputs → factor stack → samples → models → map → report.

Each stage is a plain function from its own module; this file only wires them
together, times them, and writes the run directory and its manifest.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from metalsm import mapping
from metalsm.atomic import staged_directory, write_csv, write_json
from metalsm.config import StudyAreaConfig
from metalsm.errors import MetalsmInputError
from metalsm.evaluation import (
    Evaluation,
    RateCurve,
    block_map_statistics,
    prediction_rate,
    success_rate,
    validate,
    validation_stage_name,
    validation_tasks,
)
from metalsm.inputs import landslide_mask, read_inventory
from metalsm.models.classic import make_model
from metalsm.pipeline._manifest import RunResult, build_manifest, collect_warnings
from metalsm.pipeline._preflight import check_run, fold_problems
from metalsm.progress import RunProgress
from metalsm.report.sections import (
    headline_of,
    run_figures,
    uncertainty_figure,
    validation_figures,
    write_run_report,
    write_table_report,
)
from metalsm.samples import Samples, draw_samples, write_samples_vector
from metalsm.stack import open_stack

__all__ = [
    "AREA_SAMPLE_CELLS",
    "area_sample",
    "run_pipeline",
]

log = logging.getLogger(__name__)


def run_pipeline(
    config: StudyAreaConfig, out_dir: str | Path, *, show_progress: bool = True,
    chunk_size: int | None = None, scheduler: str | None = None,
) -> RunResult:
    """Run every stage of ``config`` and write all outputs into ``out_dir``.

    ``chunk_size``/``scheduler`` (or ``[compute]``) keep the factor stack on disk:
    ``factors.tif`` aligned and written in windows of ``chunk_size`` and every
    windowed stage run over Dask (local threads, or the cluster at ``scheduler``);
    without them the path is chosen by the estimated stack size and free memory
    (:func:`metalsm.scale.choose_plan`).

    A sample-table study area (``[table]``, no rasters) gets no map: its models are
    cross-validated and reported, and with ``[meta]`` the block-wise stage runs too
    (:func:`_run_table`).

    Every input header and ``out_dir`` are checked first (:func:`metalsm.pipeline.check_run`,
    all problems at once); the run then writes into a staging folder that replaces
    ``out_dir`` only when complete, so a failed run leaves a previous run untouched.
    """
    with collect_warnings() as warned:
        check_run(config, out_dir)
        with staged_directory(out_dir) as stage:
            if config.table is not None:
                result = _run_table(config, stage, warned, show_progress=show_progress)
            else:
                result = _run_raster_pipeline(config, stage, warned,
                                              show_progress=show_progress,
                                              chunk_size=chunk_size, scheduler=scheduler)
    result.out_dir = Path(out_dir)
    return result


def _run_raster_pipeline(
    config: StudyAreaConfig, out: Path, warned: list[str], *, show_progress: bool,
    chunk_size: int | None, scheduler: str | None,
) -> RunResult:
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def timed(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 3)
        return now

    from metalsm.scale import choose_plan

    plan = choose_plan(config, chunk_size=chunk_size, scheduler=scheduler)
    chunk = plan.stage_chunk_size
    window_size = plan.window_size(config.output.window_size)
    with plan.compute() as compute, RunProgress(enabled=show_progress) as progress:
        if plan.chunked:
            log.info("chunked processing (%s), windows of %d cells", plan.why, chunk)
        t = time.perf_counter()
        n_steps = 2 + len(config.rasters) + len(config.vectors)
        with progress.stage("factor stack", total=n_steps) as advance:
            stack = open_stack(config, out / "factors.tif", compute, chunked=plan.chunked,
                               chunk_size=chunk, progress=lambda note: advance(1, note))
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
            samples = draw_samples(config, stack, inventory, mask, compute=compute,
                                   chunk_size=chunk, credibility_path=(
                                       out / "credibility.tif" if plan.chunked else None))
            write_csv(out / "samples.csv", samples.table)
        problems = fold_problems(config, samples.y, "the samples drawn from the inventory")
        if problems:
            raise MetalsmInputError(problems[0])
        t = timed("samples", t)

        if config.blocks is not None:
            from metalsm.pipeline._blocks import segment_stack

            block_stage = segment_stack(config, stack, samples, inventory, out, progress,
                                        compute=compute, chunk_size=chunk)
            t = timed("blocks", t)

        names = tuple(n for n in config.model.names if n != "meta-blockwise")
        with progress.stage(validation_stage_name(config),
                            total=validation_tasks(config, names)) as advance:
            area = area_sample(stack, samples.factor_names, config.validation.seed)
            evaluation = validate(config, names, samples, advance, area=area)
            write_csv(out / "validation.csv", evaluation.table)
            write_samples_vector(out / "samples.gpkg", samples, stack.grid.crs,
                                 _sample_columns(evaluation, config.model.map_model))
        t = timed("validation", t)

        meta_result = None
        predictor: dict[str, str] = {}  # map model -> "native", "packed" or "library"
        if config.model.map_model == "meta-blockwise":  # block-wise models (meta_run.py)
            from metalsm.pipeline._meta import run_meta_stage

            meta_result = run_meta_stage(config, block_stage, out, progress, stack=stack,
                                         factors_path=out / "factors.tif", compute=compute,
                                         window_size=window_size)
            timings.update({f"meta_{k}": v for k, v in meta_result.timings.items()})
            t = time.perf_counter()
        else:
            with progress.stage(f"fit {config.model.map_model} on all samples"):
                model = make_model(config.model.map_model, samples.categorical,
                                   config.model.seed)
                model.fit(samples.X, samples.y)
            t = timed("fit_map_model", t)

            n_valid = int(stack.valid.sum())
            with progress.stage("susceptibility map", total=n_valid) as advance:
                mapping.predict_raster(
                    model,
                    out / "factors.tif",
                    out / "susceptibility.tif",
                    feature_names=samples.factor_names,
                    window_size=window_size,
                    overviews=config.output.overviews,
                    progress=lambda new, _done: advance(new),
                    compute=compute,
                )
            t = timed("predict_map", t)
            predictor = {config.model.map_model: getattr(model, "predictor_", "library")}

        with progress.stage("zones"):
            edges = mapping.zone_breaks(
                out / "susceptibility.tif",
                method=config.zones.method,
                levels=config.zones.levels,
                seed=config.model.seed,
            )
            labels = list(config.zones.labels) or None
            mapping.classify_raster(out / "susceptibility.tif", out / "zones.tif", edges,
                                    labels=labels)
            zones = mapping.zone_table(out / "zones.tif", mask, labels=labels)
            write_csv(out / "zones.csv", zones)
            rates = _rate_curves(out, mask, evaluation, config.model.map_model)
        t = timed("zones", t)

        uncertainty = None
        if config.uncertainty is not None:
            uncertainty = _uncertainty_map(config, stack, samples, out, progress,
                                           list(zones["label"]), window_size=window_size,
                                           compute=compute)
            t = timed("uncertainty", t)

        with progress.stage("figures and report"):
            metrics = _metrics(evaluation, samples, zones, config, edges, inventory)
            metrics["rates"] = {
                **{f"{name}_auc": curve.auc for name, curve in rates.items()},
                **_rate_repeat_spread(evaluation, config.model.map_model),
                "prediction_rate_model": config.model.map_model,
                "area_sample_cells": len(area),
            }
            if meta_result is not None:
                metrics["meta"] = meta_result.metrics
                metrics["meta"]["map"] = block_map_statistics(
                    out / "susceptibility.tif", out / "blocks.tif", out / "zones.tif", mask,
                    block_stage.blocks.n_blocks,
                    block_stage.tasks.loc[block_stage.tasks["split"] == "meta-test", "block"])
            if uncertainty is not None:
                metrics["uncertainty"] = uncertainty
                uncertainty_figure(out, config, stack, inventory, uncertainty)
            metrics["predictor"] = predictor
            metrics["compute"] = {"chunked": plan.chunked, "why": plan.why, "chunk_size": chunk,
                                  "scheduler": compute.scheduler if plan.chunked else None}
            metrics["warnings"] = list(warned)
            run_figures(out, stack, inventory, evaluation, samples.y, zones, labels, config, rates,
                     edges, samples.coords)
            write_json(out / "metrics.json", metrics)
            _qgis_project(out, stack.grid, config)
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
            write_run_report(out, config, metrics, evaluation, zones, manifest)
        timed("report", t)

    seconds = time.perf_counter() - started
    headline = {
        "samples": f"{metrics['samples']['positives']} positives, "
        f"{metrics['samples']['negatives']} negatives",
    }
    if meta_result is not None:
        headline.update(headline_of(meta_result.kshot))
    else:
        spatial = metrics["validation"]["spatial"][config.model.map_model]
        headline[f"spatial AUC ({config.model.map_model})"] = (
            f"{spatial['auc_mean']:.3f} ± {spatial['auc_std']:.3f}")
    return RunResult(out, seconds, metrics, headline)


def _run_table(config: StudyAreaConfig, out: Path, warned: list[str], *,
               show_progress: bool) -> RunResult:
    """A sample-table study area (no map): cross-validation of the classic models,
    samples.gpkg, ROC and fold figures, blocks with ``[blocks]`` or ``[meta]``, the
    block-wise stage with ``[meta]`` (K-shot table, block models), metrics, manifest
    and a report that says why there is no map."""
    from metalsm.config import BlocksConfig
    from metalsm.pipeline._blocks import segment_table
    from metalsm.raster import Grid
    from metalsm.samples import read_sample_table

    started = time.perf_counter()
    timings: dict[str, float] = {}
    t = started
    with RunProgress(enabled=show_progress) as progress:
        block_stage = None
        blocks_settings = config.blocks or BlocksConfig()  # [meta] needs blocks: defaults
        if config.blocks is not None or config.meta is not None:
            block_stage = segment_table(config, blocks_settings, out, progress)
            samples = block_stage.samples
            timings["blocks"] = round(time.perf_counter() - t, 3)
        else:
            with progress.stage("sample table"):
                samples = read_sample_table(config.table)
        write_csv(out / "samples.csv", samples.table)
        names = tuple(n for n in config.model.names if n != "meta-blockwise")
        evaluation = None
        if names:
            problems = fold_problems(config, samples.y, f"the sample table {config.table.path}")
            if problems:
                raise MetalsmInputError(problems[0])
            t = time.perf_counter()
            with progress.stage(validation_stage_name(config),
                                total=validation_tasks(config, names)) as advance:
                evaluation = validate(config, names, samples, advance)
                write_csv(out / "validation.csv", evaluation.table)
                write_samples_vector(out / "samples.gpkg", samples, config.table.crs,
                                     _sample_columns(evaluation, config.model.map_model))
            timings["validation"] = round(time.perf_counter() - t, 3)
        meta_result = None
        if config.meta is not None:
            from metalsm.pipeline._meta import run_meta_stage

            meta_result = run_meta_stage(config, block_stage, out, progress)
            timings.update({f"meta_{k}": v for k, v in meta_result.timings.items()})
        t = time.perf_counter()
        with progress.stage("figures and report"):
            if evaluation is not None:
                validation_figures(out, evaluation, samples.y, config, samples.coords,
                                   Grid.around(samples.coords, config.table.crs))
            metrics = {
                "study_area": config.name,
                "samples": {"positives": int((samples.y == 1).sum()),
                            "negatives": int((samples.y == 0).sum()),
                            "table": config.table.path,
                            "dropped_incomplete_rows":
                                int(samples.table.attrs.get("dropped_incomplete_rows", 0))},
                "factors": list(samples.factor_names),
                "categorical_factors": list(samples.categorical),
                "validation": {} if evaluation is None else _by_scheme(evaluation.table),
                "map_model": None,
                "map": "none: a sample-table study area has no rasters to map",
                "warnings": list(warned),
            }
            if meta_result is not None:
                metrics["meta"] = meta_result.metrics
            write_json(out / "metrics.json", metrics)
            outputs = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
            seeds = {"validation": config.validation.seed}
            if block_stage is not None:
                seeds["blocks"] = blocks_settings.seed
            if config.meta is not None:
                seeds["meta"] = config.meta.seed
            manifest = build_manifest(
                config=config.to_dict(), inputs=[config.table.path], seeds=seeds,
                metrics=metrics, timings_s=timings,
                outputs=outputs + ["manifest.json", "report.html"])
            write_json(out / "manifest.json", manifest)
            write_table_report(out, config, metrics, evaluation, manifest)
        timings["report"] = round(time.perf_counter() - t, 3)
    headline = {
        "samples": f"{metrics['samples']['positives']} positives, "
        f"{metrics['samples']['negatives']} negatives (no map: sample table)",
    }
    if meta_result is not None:
        headline.update(headline_of(meta_result.kshot))
    elif evaluation is not None:
        spatial = metrics["validation"]["spatial"][config.model.map_model]
        headline[f"spatial AUC ({config.model.map_model})"] = (
            f"{spatial['auc_mean']:.3f} ± {spatial['auc_std']:.3f}")
    return RunResult(out, time.perf_counter() - started, metrics, headline)


def _by_scheme(table: pd.DataFrame) -> dict[str, dict[str, dict]]:
    """``validation.csv`` rows as ``{scheme: {model: {column: value}}}``."""
    by_scheme: dict[str, dict[str, dict]] = {}
    for row in table.to_dict("records"):
        entry = {k: v for k, v in row.items() if k not in ("model", "scheme")}
        by_scheme.setdefault(row["scheme"], {})[row["model"]] = entry
    return by_scheme


def _sample_columns(evaluation: Evaluation, map_model: str) -> dict:
    """Per sample: its fold under each scheme and repeat (``fold_<scheme>`` the first,
    ``fold_<scheme>_r<r>`` repeat ``r``, drawn with seed + r) and, for the map model,
    the out-of-fold probability of the first repeat (from the fold model that did not
    see it)."""
    columns = {f"fold_{scheme}": folds for scheme, folds in evaluation.folds.items()}
    for scheme, draws in evaluation.repeat_folds.items():
        columns.update({f"fold_{scheme}_r{r}": draws[r] for r in range(1, len(draws))})
    for scheme in evaluation.folds:
        if (map_model, scheme) in evaluation.oof:
            columns[f"oof_{map_model}_{scheme}"] = evaluation.oof[(map_model, scheme)]
    return columns


#: Mapped cells each cross-validation model scores to rank its held-out landslides.
AREA_SAMPLE_CELLS = 5000


def area_sample(stack, factor_names, seed: int, n: int = AREA_SAMPLE_CELLS) -> pd.DataFrame:
    """Factors at a seeded random sample of the valid cells: the area a prediction-rate
    curve ranks held-out landslides in."""
    rows, cols = np.nonzero(stack.valid)
    pick = np.sort(np.random.default_rng(seed).choice(rows.size, min(n, rows.size),
                                                      replace=False))
    return stack.sample(rows[pick], cols[pick])[list(factor_names)].reset_index(drop=True)


def _rate_curves(out: Path, mask: np.ndarray, evaluation: Evaluation,
                 map_model: str) -> dict[str, RateCurve]:
    """Success rate of the map (the inventory it was trained from) and prediction rates
    of the map model's held-out landslides under each fold scheme."""
    rates = {"success_rate": success_rate(out / "susceptibility.tif", mask)}
    for scheme in ("spatial", "random"):
        shares = evaluation.area_shares(map_model, scheme)  # every repeat's ranks
        if shares is not None:
            rates[f"prediction_rate_{scheme}"] = prediction_rate(shares)
    return rates


def _qgis_project(out: Path, grid, config: StudyAreaConfig) -> Path:
    """project.qgs: the run's vectors and rasters in one QGIS project, styled; zones and
    samples shown, the other layers listed."""
    from metalsm.report._qgis import ProjectLayer, write_qgis_project

    candidates = [
        ProjectLayer("samples.gpkg", "samples (label)", layer="samples"),
        ProjectLayer("blocks.gpkg", "block outlines", visible=False, layer="blocks"),
        ProjectLayer("zones.tif", "susceptibility zones"),
        ProjectLayer("susceptibility.tif", "susceptibility (probability)", visible=False),
        ProjectLayer("uncertainty.tif", "uncertainty (std over refits)", visible=False),
        ProjectLayer("credibility.tif", "credibility of non-landslide cells", visible=False),
        ProjectLayer("blocks.tif", "blocks", visible=False),
        ProjectLayer("factors.tif", "factors", visible=False),
    ]
    return write_qgis_project(out, [c for c in candidates if (out / c.file).exists()],
                              grid.crs, grid.bounds, f"metalsm: {config.name}")


def _uncertainty_map(config: StudyAreaConfig, stack, samples: Samples, out: Path, progress,
                     zone_labels: list[str], *, window_size: int, compute) -> dict:
    """uncertainty.tif (+ .qml): the spread of the map model's probability over bootstrap
    refits, predicted window by window like the map; returns its statistics."""
    from metalsm import mapping as spread
    from metalsm.raster import write_uncertainty_style

    settings, name = config.uncertainty, config.model.map_model
    with progress.stage(f"uncertainty ({settings.refits} bootstrap refits of {name})",
                        total=int(stack.valid.sum())) as advance:
        models = spread.bootstrap_refits(name, samples, settings.refits, settings.seed,
                                         config.model.seed)
        path = mapping.predict_spread_raster(
            models, out / "factors.tif", out / "uncertainty.tif",
            feature_names=samples.factor_names, window_size=window_size,
            overviews=config.output.overviews, progress=lambda new, _done: advance(new),
            compute=compute,
            description=f"standard deviation of the landslide susceptibility over "
                        f"{settings.refits} bootstrap refits of {name}")
        stats = spread.spread_statistics(path, out / "zones.tif", zone_labels)
        write_uncertainty_style(path, stats.get("p99_std", 0.0))
    return {"method": "bootstrap refits of the map model", "model": name,
            "refits": settings.refits, "seed": settings.seed, **stats}


def _rate_repeat_spread(evaluation: Evaluation, map_model: str) -> dict:
    """Std over repeats of the map model's prediction-rate AUC per scheme (repeated
    cross-validations only)."""
    table = evaluation.table
    if "prediction_rate_auc_repeat_std" not in table.columns:
        return {}
    rows = table[table["model"] == map_model].set_index("scheme")
    return {"repeats": int(rows["repeats"].iloc[0]),
            **{f"prediction_rate_{scheme}_auc_repeat_std":
               float(rows.loc[scheme, "prediction_rate_auc_repeat_std"]) for scheme in rows.index}}


def _input_paths(config: StudyAreaConfig) -> list[str]:
    paths = [config.dem, config.inventory.path]
    paths += [r.path for r in config.rasters] + [v.path for v in config.vectors]
    return paths


def _metrics(
    evaluation: Evaluation,
    samples: Samples,
    zones: pd.DataFrame,
    config: StudyAreaConfig,
    edges: np.ndarray,
    inventory,
) -> dict:
    """Everything a reader of ``metrics.json`` needs to judge the run."""
    by_scheme = _by_scheme(evaluation.table)
    return {
        "study_area": config.name,
        "samples": {
            "positives": int((samples.y == 1).sum()),
            "negatives": int((samples.y == 0).sum()),
            "positive_rule": config.inventory.rule,
            "negative_method": config.sampling.method,
            "buffer_m": config.sampling.buffer_m,
            "inventory_features": len(inventory),
            "inventory_features_outside_grid": int(inventory.attrs.get("n_outside", 0)),
        },
        "factors": list(samples.factor_names),
        "categorical_factors": list(samples.categorical),
        "validation": by_scheme,
        "map_model": config.model.map_model,
        "zones": {
            "method": config.zones.method,
            "edges": [float(e) for e in edges],
            "table": zones.to_dict("records"),
        },
    }


