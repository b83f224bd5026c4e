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

    A sample-table study area (``[table]``, no rasters) gets no map: its models are
    cross-validated and reported (:func:`_run_table_validation`), and with ``[meta]``
    the block-wise stage runs too (:func:`metalsm.meta_run.run_table_pipeline`).

    Every input header and ``out_dir`` are checked first (:func:`metalsm.preflight.check_run`,
    all problems at once); the run then writes into a staging folder that replaces
    ``out_dir`` only when complete, so a failed run leaves a previous run untouched.
    """
    with collect_warnings() as warned:
        check_run(config, out_dir)
        with staged_directory(out_dir) as stage:
            if config.table is not None and config.meta is not None:
                from metalsm.meta_run import run_table_pipeline

                result = run_table_pipeline(config, stage, show_progress=show_progress)
            elif config.table is not None:
                result = _run_table_validation(config, stage, warned,
                                               show_progress=show_progress)
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
        with progress.stage(validation.validation_stage_name(config),
                            total=validation.validation_tasks(config, names)) as advance:
            area = area_sample(stack, samples.factor_names, config.validation.seed)
            evaluation = validation.validate(config, names, samples, advance, area=area)
            write_csv(out / "validation.csv", evaluation.table)
            write_samples_vector(out / "samples.gpkg", samples, stack.grid.crs,
                                 _sample_columns(evaluation, config.model.map_model))
        t = timed("validation", t)

        meta_result = None
        predictor: dict[str, str] = {}  # map model -> "native", "packed" or "library"
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
                metrics["meta"]["map"] = mapping.block_map_statistics(
                    out / "susceptibility.tif", out / "blocks.tif", out / "zones.tif", mask,
                    block_stage.blocks.n_blocks,
                    block_stage.tasks.loc[block_stage.tasks["split"] == "meta-test", "block"])
            if uncertainty is not None:
                metrics["uncertainty"] = uncertainty
                _uncertainty_figure(out, config, stack, inventory, uncertainty)
            metrics["predictor"] = predictor
            metrics["compute"] = {"chunked": plan.chunked, "why": plan.why, "chunk_size": chunk,
                                  "scheduler": compute.scheduler if plan.chunked else None}
            metrics["warnings"] = list(warned)
            _figures(out, stack, inventory, evaluation, samples.y, zones, labels, config, rates,
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


def _run_table_validation(config: StudyAreaConfig, out: Path, warned: list[str], *,
                          show_progress: bool) -> RunResult:
    """A sample-table study area without ``[meta]``: cross-validation of every model,
    samples.gpkg, ROC and fold figures, blocks when ``[blocks]`` is given, metrics,
    manifest and a report that says why there is no map."""
    from metalsm.blocks_run import segment_table
    from metalsm.grid import Grid
    from metalsm.sample_table import read_sample_table

    started = time.perf_counter()
    timings: dict[str, float] = {}
    t = started
    with RunProgress(enabled=show_progress) as progress:
        if config.blocks is not None:
            samples = segment_table(config, config.blocks, out, progress).samples
            timings["blocks"] = round(time.perf_counter() - t, 3)
        else:
            with progress.stage("sample table"):
                samples = read_sample_table(config.table)
        write_csv(out / "samples.csv", samples.table)
        problems = fold_problems(config, samples.y, f"the sample table {config.table.path}")
        if problems:
            raise MetalsmInputError(problems[0])
        t = time.perf_counter()
        names = tuple(config.model.names)
        with progress.stage(validation.validation_stage_name(config),
                            total=validation.validation_tasks(config, names)) as advance:
            evaluation = validation.validate(config, names, samples, advance)
            write_csv(out / "validation.csv", evaluation.table)
            write_samples_vector(out / "samples.gpkg", samples, config.table.crs,
                                 _sample_columns(evaluation, config.model.map_model))
        timings["validation"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        with progress.stage("figures and report"):
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
                "validation": _by_scheme(evaluation.table),
                "map_model": None,
                "map": "none: a sample-table study area has no rasters to map",
                "warnings": list(warned),
            }
            write_json(out / "metrics.json", metrics)
            outputs = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
            manifest = build_manifest(
                config=config.to_dict(), inputs=[config.table.path],
                seeds={"validation": config.validation.seed,
                       **({"blocks": config.blocks.seed} if config.blocks else {})},
                metrics=metrics, timings_s=timings,
                outputs=outputs + ["manifest.json", "report.html"])
            write_json(out / "manifest.json", manifest)
            _table_report(out, config, metrics, evaluation, manifest)
        timings["report"] = round(time.perf_counter() - t, 3)
    spatial = metrics["validation"]["spatial"][config.model.map_model]
    headline = {
        "samples": f"{metrics['samples']['positives']} positives, "
        f"{metrics['samples']['negatives']} negatives (no map: sample table)",
        f"spatial AUC ({config.model.map_model})":
            f"{spatial['auc_mean']:.3f} ± {spatial['auc_std']:.3f}",
    }
    return RunResult(out, time.perf_counter() - started, metrics, headline)


def _table_report(out: Path, config: StudyAreaConfig, metrics: dict,
                  evaluation: validation.Evaluation, manifest: dict) -> None:
    samples = metrics["samples"]
    dropped = samples["dropped_incomplete_rows"]
    sections = [
        Section("No map", text=(
            f"`{config.name}` is a sample-table study area: {samples['positives']} landslide "
            f"and {samples['negatives']} non-landslide samples with their factor values "
            f"(`{Path(config.table.path).name}`"
            + (f", {dropped} rows with a missing value dropped" if dropped else "")
            + "), and no rasters. There is nothing to predict a map on, so this run has no "
            "susceptibility map, zones, success rate or prediction rate (both need the "
            "mapped area); it cross-validates the models, which is what the samples can "
            "honestly tell.")),
        validation_section(out, config, evaluation),
    ]
    if (out / "blocks.png").exists():
        sections.append(Section("Blocks", text=(
            "The samples segmented into blocks (`[blocks]`): `blocks.csv` gives each "
            "sample's block, `tasks.csv` each block's samples and its meta-train or "
            "meta-test split."), images=[("Blocks", out / "blocks.png")]))
    sections += [
        Section("Factors", tables=[("Factors", report_tables.factor_table(
            metrics["factors"], metrics["categorical_factors"]))]),
        Section("Warnings", text=(
            f"{len(metrics['warnings'])} warning(s) during the run (also in `metrics.json`)."
            if metrics["warnings"] else "No warnings."),
            preformatted=[("Warnings", metrics["warnings"])] if metrics["warnings"] else []),
        Section("Provenance",
                text="Inputs, seeds, timings and versions (in full in `manifest.json`).",
                tables=report_tables.provenance_tables(manifest)),
    ]
    write_report(out / "report.html",
                 title=f"Landslide models, validation only — {config.name}", sections=sections)


def _by_scheme(table: pd.DataFrame) -> dict[str, dict[str, dict]]:
    """``validation.csv`` rows as ``{scheme: {model: {column: value}}}``."""
    by_scheme: dict[str, dict[str, dict]] = {}
    for row in table.to_dict("records"):
        entry = {k: v for k, v in row.items() if k not in ("model", "scheme")}
        by_scheme.setdefault(row["scheme"], {})[row["model"]] = entry
    return by_scheme


def _sample_columns(evaluation: validation.Evaluation, map_model: str) -> dict:
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


def _rate_curves(out: Path, mask: np.ndarray, evaluation: validation.Evaluation,
                 map_model: str) -> dict[str, validation.RateCurve]:
    """Success rate of the map (the inventory it was trained from) and prediction rates
    of the map model's held-out landslides under each fold scheme."""
    rates = {"success_rate": mapping.success_rate(out / "susceptibility.tif", mask)}
    for scheme in ("spatial", "random"):
        shares = evaluation.area_shares(map_model, scheme)  # every repeat's ranks
        if shares is not None:
            rates[f"prediction_rate_{scheme}"] = validation.prediction_rate(shares)
    return rates


def _qgis_project(out: Path, grid, config: StudyAreaConfig) -> Path:
    """project.qgs: the run's vectors and rasters in one QGIS project, styled; zones and
    samples shown, the other layers listed."""
    from metalsm.qgis_project import ProjectLayer, write_qgis_project

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
    from metalsm import uncertainty as spread
    from metalsm.styles import write_uncertainty_style

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


def _uncertainty_figure(out: Path, config: StudyAreaConfig, stack, inventory,
                        uncertainty: dict) -> None:
    from matplotlib.colors import Normalize

    from metalsm.styles import uncertainty_colormap

    array, grid = figures.read_decimated(out / "uncertainty.tif", MAP_FIGURE_SIDE)
    dem = None
    if "elevation" in stack.names:
        dem, _ = figures.read_decimated(out / "factors.tif", MAP_FIGURE_SIDE,
                                        band=stack.names.index("elevation") + 1)
    figures.plot_raster_map(
        array, grid, out / "uncertainty.png", dem=dem, inventory=inventory,
        cmap=uncertainty_colormap(), norm=Normalize(0.0, max(uncertainty["p99_std"], 1e-6)),
        title=f"Uncertainty, {config.name}: spread of P(landslide) over "
              f"{uncertainty['refits']} refits of {uncertainty['model']}",
        colorbar_label="standard deviation of the probability")


def _uncertainty_section(out: Path, uncertainty: dict) -> Section:
    by_zone = pd.DataFrame(uncertainty["by_zone"])
    table = pd.DataFrame({
        "zone": by_zone["level"], "label": by_zone["label"],
        "mean std": by_zone["mean_std"].round(3), "max std": by_zone["max_std"].round(3)})
    text = (
        f"The map model `{uncertainty['model']}` refitted {uncertainty['refits']} times, each on "
        "a bootstrap resample of the samples (landslides and non-landslides each drawn with "
        "replacement to their own count; refit i with model seed + i), and every refit "
        "mapped: `uncertainty.tif` is the per-cell standard deviation of their "
        "probabilities (how much the susceptibility moves when other landslides happen to "
        f"be sampled). Over the map: mean {uncertainty['mean_std']:.3f}, 95th percentile "
        f"{uncertainty['p95_std']:.3f}, maximum {uncertainty['max_std']:.3f}. Where the "
        "spread is comparable to a zone's width of probability, a cell's zone is not "
        "settled. The figure's colours stop at the 99th percentile "
        f"({uncertainty['p99_std']:.3f}); `uncertainty.qml` uses the same range.")
    return Section("Uncertainty", text=text,
                   tables=[("Spread of the probability per zone", table)],
                   images=[("Standard deviation of the probability over bootstrap refits",
                            out / "uncertainty.png")])


def _rate_repeat_spread(evaluation: validation.Evaluation, map_model: str) -> dict:
    """Std over repeats of the map model's prediction-rate AUC per scheme (repeated
    cross-validations only)."""
    table = evaluation.table
    if "prediction_rate_auc_repeat_std" not in table.columns:
        return {}
    rows = table[table["model"] == map_model].set_index("scheme")
    return {"repeats": int(rows["repeats"].iloc[0]),
            **{f"prediction_rate_{scheme}_auc_repeat_std":
               float(rows.loc[scheme, "prediction_rate_auc_repeat_std"]) for scheme in rows.index}}


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
            f"{rates['prediction_rate_spatial_auc']:.3f}{_spread(rates, 'spatial')} with "
            "spatial folds (the honest estimate), "
            f"{rates.get('prediction_rate_random_auc', float('nan')):.3f}"
            f"{_spread(rates, 'random')} with random folds.")
        if "repeats" in rates:
            text += (f" Each landslide is ranked once per repeat ({rates['repeats']} repeats); "
                     "the curves pool those ranks, ± is the standard deviation over repeats.")
    return Section("Success and prediction rates", text=text,
                   images=[("Success- and prediction-rate curves", out / "rates.png")])


def _spread(rates: dict, scheme: str) -> str:
    value = rates.get(f"prediction_rate_{scheme}_auc_repeat_std")
    return "" if value is None else f" ± {value:.3f}"


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


#: Largest side, in cells, of the rasters drawn into the run's map figure.
MAP_FIGURE_SIDE = 3000


def _figures(out, stack, inventory, evaluation, y, zones, labels, config, rates,
             edges, coords) -> None:
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
    validation_figures(out, evaluation, y, config, coords, grid, dem)


def validation_figures(out: Path, evaluation: validation.Evaluation, y: np.ndarray,
                       config: StudyAreaConfig, coords: np.ndarray, grid, dem=None) -> None:
    """roc.png (every model, spatial folds), roc_folds.png (the map model per fold, random
    and spatial) and folds.png (where the first repeat's folds lie, over ``grid``)."""
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
    figures.plot_fold_maps(coords[:, 0], coords[:, 1], evaluation.folds, grid,
                           out / "folds.png", dem=dem, labels=y)


def validation_notes(config: StudyAreaConfig) -> str:
    """Report sentences on the buffer zone and the repeats of the cross-validation."""
    settings = config.validation
    text = ""
    if settings.buffer_m > 0:
        text += (f" Training samples within {settings.buffer_m:g} m of a fold's test samples "
                 "were left out of its training set (buffer zone).")
    if settings.repeats > 1:
        text += (f" The cross-validation was repeated {settings.repeats} times, the folds of "
                 f"both schemes re-drawn each time (seeds {settings.seed}–"
                 f"{settings.seed + settings.repeats - 1}); values are means over every fold "
                 "of every repeat, ± their spread over folds; the standard deviation over "
                 "repeats of each repeat's mean (in brackets in the summary, and in a table "
                 "of its own) is how much the estimate depends on where the folds fell.")
    return text


def repeat_caption(config: StudyAreaConfig) -> str:
    repeats = config.validation.repeats
    return f" (± std over {repeats} repeats)" if repeats > 1 else ""


def validation_section(out: Path, config: StudyAreaConfig,
                       evaluation: validation.Evaluation) -> Section:
    """The report's cross-validation section: summary and full tables, ROC and fold maps."""
    table = evaluation.table
    spatial = table[table.scheme == "spatial"].set_index("model")
    random = table[table.scheme == "random"].set_index("model")
    summary = pd.DataFrame(
        {
            "AUC spatial": report_tables.fold_spread(spatial, "auc"),
            "AUC random": report_tables.fold_spread(random, "auc"),
            "F1 spatial": spatial["f1_mean"].round(3),
            "kappa spatial": spatial["kappa_mean"].round(3),
            "accuracy spatial": spatial["accuracy_mean"].round(3),
        }
    )
    spread_caption = repeat_caption(config)
    return Section(
        "Validation",
        text=(
            f"{config.validation.n_folds}-fold cross-validation, once with random "
            "stratified folds and once with spatial folds "
            f"(`{config.validation.spatial_method}` on the sample coordinates). Random "
            "folds put neighbouring, near-identical samples on both sides of the split; "
            "the spatial score is the honest estimate for unseen ground."
            + validation_notes(config)
        ),
        tables=[(f"Mean ± std over folds{spread_caption}", summary.reset_index()),
                ("All metrics, mean ± std over folds (full precision in validation.csv)",
                 report_tables.validation_table(table))]
        + ([(f"Spread over {config.validation.repeats} repeats: standard deviation of "
             "each repeat's mean", spread)]
           if (spread := report_tables.repeat_spread_table(table)) is not None else []),
        images=[("Pooled out-of-fold ROC, spatial folds", out / "roc.png")]
        + ([(f"ROC of {config.model.map_model} per fold, random and spatial folds",
             out / "roc_folds.png")] if (out / "roc_folds.png").exists() else [])
        + [("Where the folds lie: samples coloured by fold", out / "folds.png")],
    )


def _report(out, config, metrics, evaluation, zones, manifest) -> None:
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
        validation_section(out, config, evaluation),
        _rates_section(out, metrics["rates"], config),
    ] + ([_uncertainty_section(out, metrics["uncertainty"])] if "uncertainty" in metrics
         else []) + [
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
