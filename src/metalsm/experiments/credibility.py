"""The credibility band sweep (models A–E of the Applied Sciences 2025, 15, 7646 paper).

For each credibility band (by default [0, 0.2), [0.2, 0.4), ... [0.8, 1.0]) the
training negatives are drawn from cells whose credibility lies in the band, and
each model (default FR–RF and SVM) is trained and tested. A reference row
``R (random)`` draws training negatives uniformly instead.

How bands are compared on equal terms (:func:`spatial_holdout`):

* **Spatial hold-out.** k-means (``credibility.test_regions`` clusters, seeded)
  on the landslide cell coordinates; every valid cell belongs to the region of
  its nearest cluster centre. The cluster holding the median number of
  landslides is the *test region*. Its landslides are the test positives; all
  other landslides are the training positives.
* **Credibility from training landslides only**: the map is fitted on the
  training positives (:func:`metalsm.samples.credibility_map`).
* **One fixed test set.** Test negatives are drawn once, uniformly at random
  from valid cells of the test region outside every landslide (and the buffer),
  as many as ``sampling.ratio`` times the test positives, and reused for every
  band and model. Training samples (positives and band negatives) come only
  from outside the test region.
* **Zones.** Each model also predicts a seeded uniform sample of at most
  ``credibility.max_area_cells`` valid cells of the test region (the same cells
  for every band; the area ``B``) and every landslide cell of the test region
  (``A``); five zones
  (very low ... very high) by ``credibility.zone_method`` breaks of the area
  sample (uniform over the region, landslide cells included); per zone: share
  of test landslide cells ``A``, share of area ``B`` and ``A / B``.

Outputs: ``band_metrics.csv``, ``band_zones.csv``, ``band_metrics.png``,
``band_zones.png``, ``credibility.tif``/``.png`` (the training-landslide map)
and ``experiment.json`` (split, counts, timings).
"""

from __future__ import annotations

import logging
import string
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.cluster import KMeans

from metalsm import mapping
from metalsm.atomic import write_csv, write_json
from metalsm.config import StudyAreaConfig
from metalsm.errors import MetalsmInputError
from metalsm.evaluation import classification_metrics
from metalsm.experiments.common import ExperimentResult, experiment_plan
from metalsm.inputs import landslide_mask, positive_cells, read_inventory
from metalsm.models.classic import make_model
from metalsm.raster import Grid
from metalsm.report.figures import plot_credibility
from metalsm.report.html import Section
from metalsm.samples import (
    CredibilityBandWarning,
    NegativeRequest,
    credibility_map,
    credibility_negatives,
    random_negatives,
    sample_table,
    write_credibility,
)
from metalsm.stack import FactorStack, build_factor_stack, open_stack

log = logging.getLogger(__name__)

ZONE_LABELS = ("Very low", "Low", "Moderate", "High", "Very high")
_FOREST_MODELS = ("rf", "fr-rf")

__all__ = ["SpatialHoldout", "run_credibility_experiment", "spatial_holdout"]


@dataclass(frozen=True)
class SpatialHoldout:
    """Training and test landslide cells and the test region (boolean grid)."""

    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    test_region: np.ndarray
    centres: np.ndarray
    test_cluster: int


def spatial_holdout(
    grid: Grid, valid: np.ndarray, positives: tuple[np.ndarray, np.ndarray],
    n_regions: int = 5, seed: int = 0,
) -> SpatialHoldout:
    """Split landslide cells into training and test by region (see the module docstring)."""
    rows, cols = (np.asarray(a) for a in positives)
    if rows.size < 2 * n_regions:
        raise MetalsmInputError(
            f"{rows.size} landslide cells are too few for {n_regions} hold-out regions"
        )
    x, y = grid.xy(rows, cols)
    xy = np.column_stack([x, y])
    km = KMeans(n_clusters=n_regions, n_init=10, random_state=seed).fit(xy)
    counts = np.bincount(km.labels_, minlength=n_regions)
    test_cluster = int(np.argsort(counts, kind="stable")[n_regions // 2])
    region = _nearest_centre(grid, km.cluster_centers_) == test_cluster
    region &= valid
    is_test = region[rows, cols]
    return SpatialHoldout(
        (rows[~is_test], cols[~is_test]), (rows[is_test], cols[is_test]), region,
        km.cluster_centers_, test_cluster,
    )


def _nearest_centre(grid: Grid, centres: np.ndarray) -> np.ndarray:
    out = np.empty(grid.shape, dtype=np.int16)
    cols = np.arange(grid.width)
    step = max(1, 1_000_000 // grid.width)
    for r0 in range(0, grid.height, step):
        rr, cc = np.meshgrid(np.arange(r0, min(grid.height, r0 + step)), cols, indexing="ij")
        x, y = grid.xy(rr.ravel(), cc.ravel())
        d = (x[:, None] - centres[None, :, 0]) ** 2 + (y[:, None] - centres[None, :, 1]) ** 2
        out[r0 : r0 + rr.shape[0]] = np.argmin(d, axis=1).reshape(rr.shape)
    return out


def _band_label(i: int, band: tuple[float, float]) -> str:
    closing = "]" if band[1] >= 1.0 else ")"
    return f"{string.ascii_uppercase[i]} [{band[0]:g}, {band[1]:g}{closing}"


def run_credibility_experiment(
    config: StudyAreaConfig,
    out_dir: str | Path,
    *,
    stack: FactorStack | None = None,
    inventory: Any = None,
) -> ExperimentResult:
    """Sweep ``config.credibility.bands`` × ``config.credibility.models``; write CSV +
    figures. Settings come from ``[credibility]`` alone (no repeats, no preset); the
    stack is built in memory, or on disk with ``[compute]`` (``--chunk-size``)."""
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if stack is not None:
        return _sweep(config, out, stack, inventory, started)
    with experiment_plan(config) as (compute, chunk):
        if chunk is None:
            return _sweep(config, out, build_factor_stack(config), inventory, started)
        with tempfile.TemporaryDirectory(prefix=".metalsm-stack-", dir=out) as tmp:
            stack = open_stack(config, Path(tmp) / "factors.tif", compute, chunked=True,
                               chunk_size=chunk, output=False)
            return _sweep(config, out, stack, inventory, started, compute, chunk)


def _sweep(config: StudyAreaConfig, out: Path, stack: Any, inventory: Any, started: float,
           compute: Any = None, chunk: int | None = None) -> ExperimentResult:
    settings = config.credibility
    timings: dict[str, float] = {}
    t = started
    if inventory is None:
        inventory = read_inventory(
            config.inventory.path, stack.grid, crs=config.inventory.crs,
            x_column=config.inventory.x_column, y_column=config.inventory.y_column,
        )
    timings["inputs"] = time.perf_counter() - t
    valid = stack.valid
    mask = landslide_mask(inventory, stack.grid)
    dem = stack.layer("elevation") if "elevation" in stack.names else None
    positives = positive_cells(
        inventory, stack.grid, valid, rule=config.inventory.rule, dem=dem,
        cells_per_polygon=config.inventory.cells_per_polygon, seed=config.sampling.seed,
    )
    split = spatial_holdout(stack.grid, valid, positives, settings.test_regions, settings.seed)
    n_train, n_test = split.train[0].size, split.test[0].size
    log.info("spatial hold-out: %d training and %d test landslide cells", n_train, n_test)

    t = time.perf_counter()
    cred, membership = credibility_map(stack, split.train, settings, config.factor_selection,
                                       compute=compute, chunk_size=chunk)
    timings["credibility_map"] = time.perf_counter() - t
    write_credibility(cred, stack.grid, out / "credibility.tif")
    plot_credibility(cred, stack.grid, out / "credibility.png", dem=dem, inventory=inventory,
                     title=f"Credibility from training landslides, {config.name}")

    ratio = config.sampling.ratio
    test_request = NegativeRequest(
        valid=split.test_region, landslide_mask=mask,
        n=max(1, int(round(n_test * ratio))), cell_size=stack.grid.cell_size,
        buffer_m=config.sampling.buffer_m,
    )
    test_neg = random_negatives(test_request, settings.seed + 1)
    test = sample_table(stack, split.test, test_neg)
    area_rows, area_cols, area_is_slide = _area_cells(split.test_region, mask,
                                                      settings.max_area_cells, settings.seed)
    area = stack.sample(area_rows, area_cols)

    train_valid = valid & ~split.test_region
    bands = [(_band_label(i, b), (float(b[0]), float(b[1])))
             for i, b in enumerate(settings.bands)]
    bands.append(("R (random)", None))
    metric_rows: list[dict[str, Any]] = []
    zone_rows: list[dict[str, Any]] = []
    names = list(stack.names)
    for label, band in bands:
        request = NegativeRequest(
            valid=train_valid, landslide_mask=mask, n=max(1, int(round(n_train * ratio))),
            cell_size=stack.grid.cell_size, buffer_m=config.sampling.buffer_m,
            credibility=cred, credibility_band=band or (0.0, 1.0),
            strict=config.sampling.strict,
        )
        n_candidates = int((request.candidates() & (
            np.ones_like(valid) if band is None else _band(cred, band))).sum())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CredibilityBandWarning)
            if band is None:
                neg = random_negatives(request, settings.seed)
            else:
                neg = credibility_negatives(request, settings.seed)
        note = "; ".join(str(w.message) for w in caught
                         if issubclass(w.category, CredibilityBandWarning))
        train = sample_table(stack, split.train, neg)
        for model_name in settings.models:
            params = {"n_estimators": settings.n_estimators} if model_name in _FOREST_MODELS \
                else {}
            model = make_model(model_name, stack.categorical, config.model.seed, **params)
            t = time.perf_counter()
            model.fit(train[names], train["label"].to_numpy())
            fit_s = time.perf_counter() - t
            proba = model.predict_proba(test[names])[:, 1]
            scores = classification_metrics(test["label"].to_numpy(), proba)
            metric_rows.append({
                "band": label, "lo": band[0] if band else np.nan,
                "hi": band[1] if band else np.nan, "model": model_name,
                "n_train_pos": n_train, "n_train_neg": int(neg[0].size),
                "n_candidates": n_candidates, "n_test_pos": n_test,
                "n_test_neg": int(test_neg[0].size), **scores,
                "mean_train_neg_credibility": float(np.nanmean(cred[neg])),
                "fit_seconds": round(fit_s, 3), "note": note,
            })
            p_area = model.predict_proba(area[names])[:, 1]
            zone_rows += _zone_rows(label, model_name, p_area, area_is_slide,
                                    settings.zone_method, settings.seed)
            log.info("band %s, %s: AUC %.3f", label, model_name, scores["auc"])
    metrics = pd.DataFrame(metric_rows)
    zones = pd.DataFrame(zone_rows)
    paths = {
        "metrics": write_csv(out / "band_metrics.csv", metrics.round(4)),
        "zones": write_csv(out / "band_zones.csv", zones.round(4)),
        "credibility": out / "credibility.tif",
        "credibility_png": out / "credibility.png",
    }
    paths["metrics_png"] = plot_band_metrics(metrics, out / "band_metrics.png")
    paths["zones_png"] = plot_band_zones(zones, out / "band_zones.png")
    summary = {
        "study_area": config.name,
        "split": {
            "method": f"k-means on landslide cells, {settings.test_regions} regions; test = "
                      "the region with the median landslide count",
            "train_landslide_cells": n_train, "test_landslide_cells": n_test,
            "test_negative_cells": int(test_neg[0].size),
            "test_region_cells": int(split.test_region.sum()),
            "area_sample_cells": int((~area_is_slide).sum()),
            "test_region_landslide_cells": int(area_is_slide.sum()),
        },
        "credibility": {
            "combine": settings.combine, "weighting": settings.weighting,
            "rescale": settings.rescale, "factors": list(membership.factors),
            "weights": dict(zip(membership.factors, membership.weights.round(4).tolist(),
                                strict=True)),
        },
        "models": list(settings.models),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }
    seconds = time.perf_counter() - started
    summary["timings_s"]["total"] = round(seconds, 3)
    paths["summary"] = write_json(out / "experiment.json", summary)
    section = Section(
        "Credibility bands of negative samples",
        text=(f"Training negatives drawn from each credibility band, each model trained "
              f"and scored on one spatial hold-out ({n_train} training and {n_test} test "
              "landslide cells; the same test negatives for every band). R draws the "
              "negatives at random."),
        tables=[("Band metrics", metrics.round(4))],
        images=[(name, paths[key]) for name, key in (
            ("Metrics by band", "metrics_png"), ("Zones by band", "zones_png"),
            ("Credibility (training landslides only)", "credibility_png"))])
    return ExperimentResult(paths, seconds, {"band_metrics": metrics, "band_zones": zones},
                            section)


def _band(cred: np.ndarray, band: tuple[float, float]) -> np.ndarray:
    from metalsm.samples import band_mask

    return band_mask(cred, band)


def _area_cells(
    region: np.ndarray, mask: np.ndarray, max_cells: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A seeded uniform sample of region cells (the area, B) followed by every landslide
    cell of the region (A); ``is_slide`` flags the second part."""
    flat = np.flatnonzero(region)
    rng = np.random.default_rng(seed + 2)
    if flat.size > max_cells:
        flat = np.sort(rng.choice(flat, max_cells, replace=False))
    slides = np.flatnonzero(region & mask)
    if slides.size == 0:
        raise MetalsmInputError("the test region holds no landslide cell")
    cells = np.r_[flat, slides]
    is_slide = np.r_[np.zeros(flat.size, bool), np.ones(slides.size, bool)]
    rows, cols = np.unravel_index(cells, region.shape)
    return rows, cols, is_slide


def _zone_rows(band: str, model: str, proba: np.ndarray, is_slide: np.ndarray,
               method: str, seed: int) -> list[dict[str, Any]]:
    """Five zones by breaks of the area sample; A from the landslide cells, B from the area."""
    edges = mapping.zone_breaks(proba[~is_slide], method=method, levels=5, seed=seed)
    zone = mapping.classify_values(proba, edges)
    area = np.bincount(zone[~is_slide], minlength=6)[1:6]
    slides = np.bincount(zone[is_slide], minlength=6)[1:6]
    a = slides / max(slides.sum(), 1)
    b = area / max(area.sum(), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(b > 0, a / b, np.nan)
    return [
        {"band": band, "model": model, "zone": i + 1, "label": ZONE_LABELS[i],
         "landslide_share": a[i], "area_share": b[i], "ratio": ratio[i],
         "n_area_cells": int(area[i]), "n_landslide_cells": int(slides[i])}
        for i in range(5)
    ]


def plot_band_metrics(metrics: pd.DataFrame, path: str | Path) -> Path:
    """Precision, recall, F1 and AUC per band, one line per model."""
    from metalsm.report.figures import save_figure

    bands = list(dict.fromkeys(metrics["band"]))
    fig = Figure(figsize=(11, 3.4))
    for i, metric in enumerate(("precision", "recall", "f1", "auc")):
        ax = fig.add_subplot(1, 4, i + 1)
        for model, part in metrics.groupby("model", sort=False):
            part = part.set_index("band").loc[bands]
            ax.plot(range(len(bands)), part[metric], marker="o", label=model)
        ax.set_xticks(range(len(bands)), [b.split(" ")[0] for b in bands])
        ax.set_title(metric.upper() if metric in ("f1", "auc") else metric)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=8)
    fig.suptitle("Held-out test (spatial) by credibility band of the training negatives")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_band_zones(zones: pd.DataFrame, path: str | Path) -> Path:
    """Per model: A/B (landslide share / area share) per zone, one bar per band."""
    from metalsm.report.figures import save_figure

    models = list(dict.fromkeys(zones["model"]))
    bands = list(dict.fromkeys(zones["band"]))
    fig = Figure(figsize=(6 * len(models), 3.8))
    width = 0.8 / len(bands)
    for i, model in enumerate(models):
        ax = fig.add_subplot(1, len(models), i + 1)
        for j, band in enumerate(bands):
            part = zones[(zones["model"] == model) & (zones["band"] == band)]
            ax.bar(np.arange(5) + (j - len(bands) / 2 + 0.5) * width, part["ratio"], width,
                   label=band.split(" ")[0])
        ax.set_xticks(range(5), ZONE_LABELS, fontsize=8)
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_ylabel("A / B (landslide share / area share)")
        ax.set_title(model)
        ax.legend(fontsize=7, ncol=2, title="band")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
