"""All the report text and the pictures of a run: one function per section or figure,
from the run's metrics, tables and files (the run folder is written before the report)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from metalsm.config import StudyAreaConfig
from metalsm.evaluation import (
    KSHOT_METRICS,
    METHOD_LABELS,
    Evaluation,
    roc_points,
)
from metalsm.report import figures
from metalsm.report import tables as report_tables
from metalsm.report.html import Section, write_report

__all__ = [
    "MAP_FIGURE_SIDE",
    "headline_of",
    "kshot_display",
    "meta_section",
    "rates_section",
    "repeat_caption",
    "run_figures",
    "uncertainty_figure",
    "uncertainty_section",
    "validation_figures",
    "validation_notes",
    "validation_section",
    "write_run_report",
    "write_table_report",
]


def write_table_report(out: Path, config: StudyAreaConfig, metrics: dict,
                  evaluation: Evaluation | None, manifest: dict) -> None:
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
    ]
    if "meta" in metrics:
        sections.append(meta_section(metrics["meta"], out))
    if evaluation is not None:
        sections.append(validation_section(out, config, evaluation))
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
                 title=(f"Block-wise meta-learning — {config.name}" if "meta" in metrics
                        else f"Landslide models, validation only — {config.name}"),
                 sections=sections)


def uncertainty_figure(out: Path, config: StudyAreaConfig, stack, inventory,
                        uncertainty: dict) -> None:
    from matplotlib.colors import Normalize

    from metalsm.raster import uncertainty_colormap

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


def uncertainty_section(out: Path, uncertainty: dict) -> Section:
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


def rates_section(out: Path, rates: dict, config: StudyAreaConfig) -> Section:
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


#: Largest side, in cells, of the rasters drawn into the run's map figure.
MAP_FIGURE_SIDE = 3000


def run_figures(out, stack, inventory, evaluation, y, zones, labels, config, rates,
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


def validation_figures(out: Path, evaluation: Evaluation, y: np.ndarray,
                       config: StudyAreaConfig, coords: np.ndarray, grid, dem=None) -> None:
    """roc.png (every model, spatial folds), roc_folds.png (the map model per fold, random
    and spatial) and folds.png (where the first repeat's folds lie, over ``grid``)."""
    curves = {}
    for (name, scheme), proba in evaluation.oof.items():
        if scheme != "spatial":
            continue
        roc = roc_points(y, proba)
        curves[name] = (roc.fpr, roc.tpr, roc.auc)
    figures.plot_roc(curves, out / "roc.png", title="ROC, spatial folds (out-of-fold)")
    per_fold = {}
    for scheme, folds in evaluation.folds.items():
        proba = evaluation.oof.get((config.model.map_model, scheme))
        if proba is None:
            continue
        per_fold[scheme] = [roc_points(y[folds == k], proba[folds == k])[:2]
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
                       evaluation: Evaluation) -> Section:
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


def write_run_report(out, config, metrics, evaluation, zones, manifest) -> None:
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
        rates_section(out, metrics["rates"], config),
    ] + ([uncertainty_section(out, metrics["uncertainty"])] if "uncertainty" in metrics
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
        sections.insert(1, meta_section(metrics["meta"], out))
    write_report(out / "report.html", title=f"Landslide susceptibility — {config.name}",
                 sections=sections)


def _step_text(settings: dict) -> str:
    mode = settings.get("inner_lr_mode", "fixed")
    if mode == "fixed":
        return f"step size {settings['inner_lr']:g}"
    return f"Meta-SGD step sizes learned {mode} from {settings['inner_lr']:g}"


def kshot_display(kshot: pd.DataFrame) -> pd.DataFrame:
    """Method × K table with ``mean ± std`` strings (report, CLI)."""
    out = pd.DataFrame({
        "method": kshot["method"].map(lambda m: METHOD_LABELS.get(m, m)),
        "K": kshot["k"],
    })
    for metric in KSHOT_METRICS:
        if f"{metric}_mean" not in kshot:  # a run saved before the within-block columns
            continue
        out[metric] = (kshot[f"{metric}_mean"].map("{:.3f}".format) + " ± "
                       + kshot[f"{metric}_std"].map("{:.3f}".format))
    out["query samples"] = kshot["n_query"].round(0).astype(int)
    return out


def meta_section(metrics: dict, out: Path) -> Section:
    """The report section of the block-wise model."""
    settings, blocks = metrics["settings"], metrics["blocks"]
    kshot = kshot_display(pd.DataFrame(metrics["kshot"]))
    rules = ", ".join(f"{v} {k}" for k, v in metrics.get("block_rules", {}).items())
    text = (
        f"Intermediate model: network {len(metrics['features'])} → "
        f"{' → '.join(str(h) for h in settings['hidden'])} → 1, "
        f"{'RBM/RBM/DAE pretraining, ' if settings['pretrain'] else ''}"
        f"{settings['iterations']} meta-iterations of {settings['task_weighting']}-weighted "
        f"MAML on {blocks['meta_train']} meta-train blocks "
        f"({blocks['meta_train_samples']} samples). Each block's model: {settings['inner_steps']} "
        f"steps on K samples of the block ({_step_text(settings)}; support drawn "
        f"{settings.get('support_rule', 'stratified')})"
        + ("; a block keeps the zero-shot model unless adapting wins a cross-validation "
           "on its own shots" if settings.get("adapt_guard") else "") + ".\n\n"
        f"K-shot evaluation on {blocks['meta_test']} held-out meta-test blocks "
        f"({blocks['meta_test_samples']} samples): each block adapted from K of its samples, "
        f"scored on the rest (pooled over blocks), mean ± std over {settings['repeats']} "
        "shot draws. Nothing was chosen on the meta-test blocks.\n\n"
        f"Map: every block adapted with K = {metrics.get('map_k', settings['map_k'])}; "
        f"blocks: {rules or 'n/a'} (fallback for blocks without samples or with one class: "
        "the adapted model of the most similar block by centre features; see "
        "`block_models.csv`)."
    )
    return Section("Block-wise meta-learning", text=text,
                   tables=[("K-shot results on meta-test blocks", kshot)],
                   preformatted=[("Timings (s)", metrics["timings_s"])])


def headline_of(kshot: pd.DataFrame) -> dict[str, str]:
    """One line per method at the largest integer K evaluated (CLI summary)."""
    out = {}
    for row in kshot.to_dict("records"):
        out[f"K={row['k']} AUC ({row['method']})"] = (
            f"{row['auc_mean']:.3f} ± {row['auc_std']:.3f}")
    return out
