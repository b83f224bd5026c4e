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

from metalsm import mapping, validation
from metalsm.atomic import staged_directory, write_csv, write_json
from metalsm.config import StudyAreaConfig
from metalsm.errors import MetalsmInputError
from metalsm.inventory import landslide_mask, read_inventory
from metalsm.manifest import RunResult, build_manifest, collect_warnings
from metalsm.models.classic import make_model
from metalsm.preflight import check_run, fold_problems
from metalsm.progress import RunProgress
from metalsm.report import figures
from metalsm.report import tables as report_tables
from metalsm.report.html import Section, write_report
from metalsm.sample_table import Samples, write_samples_vector
from metalsm.sampling import draw_samples
from metalsm.stack import open_stack

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
    (:func:`metalsm.compute.choose_plan`).

    Every input header and ``out_dir`` are checked first (:func:`metalsm.preflight.check_run`,
    all problems at once); the run then writes into a staging folder that replaces
    ``out_dir`` only when complete, so a failed run leaves a previous run untouched.
    """
    if config.table is not None and config.meta is None:
        raise MetalsmInputError(
            f"{config.source}: '{config.name}' is a sample-table study area (no rasters to map); "
            "use `metalsm segment` for its blocks"
        )
    with collect_warnings() as warned:
        check_run(config, out_dir)
        with staged_directory(out_dir) as stage:
            if config.table is not None:
                from metalsm.meta_run import run_table_pipeline

                result = run_table_pipeline(config, stage, show_progress=show_progress)
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

    from metalsm.compute import choose_plan

    plan = choose_plan(config, chunk_size=chunk_size, scheduler=scheduler)
    chunk = plan.chunk_size if plan.chunked else None
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
            from metalsm.blocks_run import segment_stack

            block_stage = segment_stack(config, stack, samples, inventory, out, progress,
                                        compute=compute, chunk_size=chunk)
            t = timed("blocks", t)

        names = tuple(n for n in config.model.names if n != "meta-blockwise")
        n_tasks = 2 * len(names) * config.validation.n_folds
        with progress.stage("validation (random and spatial folds)", total=n_tasks) as advance:
            area = area_sample(stack, samples.factor_names, config.validation.seed)
            evaluation = validation.evaluate_models(
                names,
                samples.X,
                samples.y,
                samples.coords,
                categorical=samples.categorical,
                n_folds=config.validation.n_folds,
                seed=config.validation.seed,
                spatial_method=config.validation.spatial_method,
                progress=advance,
                area=area,
                buffer_m=config.validation.buffer_m,
            )
            write_csv(out / "validation.csv", evaluation.table)
            write_samples_vector(out / "samples.gpkg", samples, stack.grid.crs,
                                 _sample_columns(evaluation, config.model.map_model))
        t = timed("validation", t)

        meta_result = None
        predictor: dict[str, str] = {}  # map model -> "compiled" (packed trees) or "library"
        if config.model.map_model == "meta-blockwise":  # block-wise models (meta_run.py)
            from metalsm.meta_run import run_meta_stage

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

        with progress.stage("figures and report"):
            metrics = _metrics(evaluation, samples, zones, config, edges, inventory)
            metrics["rates"] = {
                **{f"{name}_auc": curve.auc for name, curve in rates.items()},
                "prediction_rate_model": config.model.map_model,
                "area_sample_cells": len(area),
            }
            if meta_result is not None:
                metrics["meta"] = meta_result.metrics
                metrics["meta"]["map"] = mapping.block_map_statistics(
                    out / "susceptibility.tif", out / "blocks.tif", out / "zones.tif", mask,
                    block_stage.blocks.n_blocks,
                    block_stage.tasks.loc[block_stage.tasks["split"] == "meta-test", "block"])
            metrics["predictor"] = predictor
            metrics["compute"] = {"chunked": plan.chunked, "why": plan.why, "chunk_size": chunk,
                                  "scheduler": compute.scheduler if plan.chunked else None}
            metrics["warnings"] = list(warned)
            _figures(out, stack, inventory, evaluation, samples.y, zones, labels, config, rates,
                     edges, samples.coords)
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
    headline = {
        "samples": f"{metrics['samples']['positives']} positives, "
        f"{metrics['samples']['negatives']} negatives",
    }
    if meta_result is not None:
        from metalsm.meta_run import headline_of

        headline.update(headline_of(meta_result.kshot))
    else:
        spatial = metrics["validation"]["spatial"][config.model.map_model]
        headline[f"spatial AUC ({config.model.map_model})"] = (
            f"{spatial['auc_mean']:.3f} ± {spatial['auc_std']:.3f}")
    return RunResult(out, seconds, metrics, headline)


def _sample_columns(evaluation: validation.Evaluation, map_model: str) -> dict:
    """Per sample: its fold under each scheme and, for the map model, the out-of-fold
    probability (from the fold model that did not see it)."""
    columns = {f"fold_{scheme}": folds for scheme, folds in evaluation.folds.items()}
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


def _rate_curves(out: Path, mask: np.ndarray, evaluation: validation.Evaluation,
                 map_model: str) -> dict[str, validation.RateCurve]:
    """Success rate of the map (the inventory it was trained from) and prediction rates
    of the map model's held-out landslides under each fold scheme."""
    rates = {"success_rate": mapping.success_rate(out / "susceptibility.tif", mask)}
    for scheme in ("spatial", "random"):
        result = evaluation.results.get((map_model, scheme))
        if result is not None and result.area_share_above is not None:
            rates[f"prediction_rate_{scheme}"] = validation.prediction_rate(
                result.area_share_above)
    return rates


def _rates_section(out: Path, rates: dict, config: StudyAreaConfig) -> Section:
    text = (
        "Cells ranked from the most susceptible down: the share of landslides found within "
        "each share of the area (0.5 = a random map, 1 = every landslide in the most "
        f"susceptible cells). The **success rate** ({rates['success_rate_auc']:.3f}) ranks the "
        "inventory's landslide cells on the map, which was trained from them: it measures fit.")
    if "prediction_rate_spatial_auc" in rates:
        text += (
            f" The **prediction rate** ranks each landslide sample on the map of the "
            f"`{config.model.map_model}` cross-validation model that did not see it, among "
            f"{rates['area_sample_cells']:,} random mapped cells: "
            f"{rates['prediction_rate_spatial_auc']:.3f} with spatial folds (the honest "
            f"estimate), {rates.get('prediction_rate_random_auc', float('nan')):.3f} with "
            "random folds.")
    return Section("Success and prediction rates", text=text,
                   images=[("Success- and prediction-rate curves", out / "rates.png")])


def _input_paths(config: StudyAreaConfig) -> list[str]:
    paths = [config.dem, config.inventory.path]
    paths += [r.path for r in config.rasters] + [v.path for v in config.vectors]
    return paths


def _metrics(
    evaluation: validation.Evaluation,
    samples: Samples,
    zones: pd.DataFrame,
    config: StudyAreaConfig,
    edges: np.ndarray,
    inventory,
) -> dict:
    """Everything a reader of ``metrics.json`` needs to judge the run."""
    by_scheme: dict[str, dict[str, dict[str, float]]] = {}
    for row in evaluation.table.to_dict("records"):
        entry = {k: v for k, v in row.items() if k not in ("model", "scheme")}
        by_scheme.setdefault(row["scheme"], {})[row["model"]] = entry
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


#: Largest side, in cells, of the rasters drawn into the run's map figure.
MAP_FIGURE_SIDE = 3000


def _figures(out, stack, inventory, evaluation, y, zones, labels, config, rates,
             edges, coords) -> None:
    curves = {}
    for (name, scheme), proba in evaluation.oof.items():
        if scheme != "spatial":
            continue
        roc = validation.roc_points(y, proba)
        curves[name] = (roc.fpr, roc.tpr, roc.auc)
    figures.plot_roc(curves, out / "roc.png", title="ROC, spatial folds (out-of-fold)")
    per_fold = {}
    for scheme, folds in evaluation.folds.items():
        proba = evaluation.oof.get((config.model.map_model, scheme))
        if proba is None:
            continue
        per_fold[scheme] = [validation.roc_points(y[folds == k], proba[folds == k])[:2]
                            for k in np.unique(folds) if np.unique(y[folds == k]).size == 2]
    if per_fold:
        figures.plot_roc_by_scheme(per_fold, out / "roc_folds.png",
                                   title=f"ROC of {config.model.map_model}, random and spatial "
                                   "folds")
    names = {"success_rate": "success rate (training landslides)",
             "prediction_rate_spatial": "prediction rate, spatial folds",
             "prediction_rate_random": "prediction rate, random folds"}
    figures.plot_rate_curves({names[k]: (c.area_share, c.landslide_share, c.auc)
                              for k, c in rates.items()}, out / "rates.png")
    # decimated reads: a province-scale map is drawn from at most MAP_FIGURE_SIDE cells a side
    zone_array, grid = figures.read_decimated(out / "zones.tif", MAP_FIGURE_SIDE,
                                              resampling="mode")
    zone_array = np.nan_to_num(zone_array, nan=0).astype(np.uint8)  # 0 = no data
    dem = None
    if "elevation" in stack.names:
        dem, _ = figures.read_decimated(out / "factors.tif", MAP_FIGURE_SIDE,
                                        band=stack.names.index("elevation") + 1)
    figures.plot_susceptibility_map(
        zone_array, grid, dem, inventory, out / "map.png", labels=labels, edges=edges,
        title=f"Landslide susceptibility, {config.name} ({config.model.map_model})",
    )
    figures.plot_zone_bars(zones, out / "zones.png")
    figures.plot_fold_maps(coords[:, 0], coords[:, 1], evaluation.folds, grid,
                           out / "folds.png", dem=dem, labels=y)


def _report(out, config, metrics, evaluation, zones, manifest) -> None:
    table = evaluation.table
    spatial = table[table.scheme == "spatial"].set_index("model")
    random = table[table.scheme == "random"].set_index("model")
    summary = pd.DataFrame(
        {
            "AUC spatial": spatial["auc_mean"].round(3).astype(str)
            + " ± " + spatial["auc_std"].round(3).astype(str),
            "AUC random": random["auc_mean"].round(3).astype(str)
            + " ± " + random["auc_std"].round(3).astype(str),
            "F1 spatial": spatial["f1_mean"].round(3),
            "kappa spatial": spatial["kappa_mean"].round(3),
            "accuracy spatial": spatial["accuracy_mean"].round(3),
        }
    )
    samples = metrics["samples"]
    sections = [
        Section(
            "Susceptibility map",
            text=(
                f"Model **{config.model.map_model}** fitted on all {samples['positives']} "
                f"landslide and {samples['negatives']} non-landslide cells, mapped over every "
                f"valid cell and classified into {config.zones.levels} zones by "
                f"`{config.zones.method}` breaks (legend: each zone's probability range). "
                "Outlines: the landslide inventory. Zone colours are shaded by the relief: "
                "flat ground shows exactly the legend colour, slopes facing the light are a "
                "little lighter and those facing away darker. `zones.tif` and "
                "`susceptibility.tif` open in QGIS with the same colours (`.qml` styles)."
            ),
            images=[("Zones over hillshade", out / "map.png")],
        ),
        Section(
            "Validation",
            text=(
                f"{config.validation.n_folds}-fold cross-validation, once with random "
                "stratified folds and once with spatial folds "
                f"(`{config.validation.spatial_method}` on the sample coordinates). Random "
                "folds put neighbouring, near-identical cells on both sides of the split; "
                "the spatial score is the honest estimate for unseen ground."
                + (f" Training samples within {config.validation.buffer_m:g} m of a fold's "
                   "test samples were left out of its training set (buffer zone)."
                   if config.validation.buffer_m > 0 else "")
            ),
            tables=[("Mean ± std over folds", summary.reset_index()),
                    ("All metrics, mean ± std over folds (full precision in validation.csv)",
                     report_tables.validation_table(table))],
            images=[("Pooled out-of-fold ROC, spatial folds", out / "roc.png")]
            + ([(f"ROC of {config.model.map_model} per fold, random and spatial folds",
                 out / "roc_folds.png")] if (out / "roc_folds.png").exists() else [])
            + [("Where the folds lie: samples coloured by fold", out / "folds.png")],
        ),
        _rates_section(out, metrics["rates"], config),
        Section(
            "Zones",
            text=(
                "Share of area against share of landslide cells per zone. The ratio "
                "(the ×n above the bars) is the landslide share divided by the area share, "
                "the frequency ratio: 1 means as many landslides as the zone's area would "
                "hold, ×3 three times as many. The landslide cells include those the "
                "mapped model was trained on, so these shares are optimistic; the spatial "
                "validation and the prediction rate are the honest estimates."
            ),
            tables=[("Zones (zones.csv)", report_tables.zone_report_table(zones))],
            images=[("Area and landslides per zone", out / "zones.png")],
        ),
        Section(
            "Samples and factors",
            text=(
                f"Positives: inventory rule `{samples['positive_rule']}` "
                f"({samples['inventory_features']} features in the grid, "
                f"{samples['inventory_features_outside_grid']} outside and dropped). "
                f"Negatives: `{samples['negative_method']}` valid cells farther than "
                f"{samples['buffer_m']:g} m from any landslide, ratio {config.sampling.ratio:g}."
            ),
            tables=[("Factors", report_tables.factor_table(
                metrics["factors"], metrics["categorical_factors"]))],
        ),
        Section(
            "Warnings",
            text=(f"{len(metrics['warnings'])} warning(s) during the run (also in "
                  "`metrics.json`)." if metrics["warnings"] else "No warnings."),
            preformatted=[("Warnings", metrics["warnings"])] if metrics["warnings"] else [],
        ),
        Section(
            "Provenance",
            text="Inputs, seeds, timings and versions (in full in `manifest.json`).",
            tables=report_tables.provenance_tables(manifest),
        ),
    ]
    if "meta" in metrics:
        from metalsm.meta_run import report_section

        sections.insert(1, report_section(metrics["meta"], out))
    write_report(out / "report.html", title=f"Landslide susceptibility — {config.name}",
                 sections=sections)
