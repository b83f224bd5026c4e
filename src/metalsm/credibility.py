"""Credibility of cells as non-landslide (negative) samples, by fuzzy membership.

After "Sampling method based on fuzzy membership for computing negative sample
credibility and its applications", Applied Sciences 2025, 15, 7646: instead of
asking *where* to draw negatives, every valid cell gets a credibility in [0, 1]
of being a stable, non-landslide sample, and negatives are drawn by credibility.

How it is computed here (:func:`fit_membership`, :func:`credibility_map`):

1. **Per-factor membership of the landslide-prone environment.** Each factor is
   cut into FR classes from the *area alone* (:func:`metalsm.factors.stack_classes`:
   quantile or natural-breaks bins, one class per category). The frequency ratio
   of each class is computed from the **training landslide cells only**
   (``FR = training-landslide share / area share``), and the membership of the
   class is ``mu_f = FR / max(FR)``: 1 for the class where training landslides are
   densest, 0 for a class holding none. This is the FR-profile variant of a fuzzy
   membership function (a data-driven, piecewise-constant membership curve).
2. **Combination across factors.** ``combine = "weighted_mean"``: ``mu = sum w_f
   mu_f`` with weights ``w_f`` proportional to each factor's differentiation
   (area-weighted spread of its training FR profile, see :mod:`metalsm.factors`)
   or equal (``weighting = "equal"``); ``combine = "min"``: the fuzzy
   intersection ``mu = min_f mu_f`` (a cell is landslide-prone only as far as its
   least landslide-like factor allows).
3. **Rescaling** (``rescale = true``): ``mu`` is stretched linearly so that over
   the valid area its minimum is 0 and maximum 1, making the credibility bands
   [0, 0.2) ... [0.8, 1.0] all populated. The extremes come from the area, not
   from labels.
4. **Credibility** ``= 1 - mu``.

Only the training landslide cells passed to :func:`fit_membership` influence
the result (the classes and the area shares come from unlabelled cells), so
held-out landslides cannot leak into negative sampling. The map is computed in
row chunks, so memory beyond the stack itself is bounded by the chunk size.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from matplotlib.colors import Normalize

from metalsm.atomic import write_csv
from metalsm.cog import atomic_cog
from metalsm.config import CredibilityConfig, FactorSelectionConfig
from metalsm.errors import MetalsmInputError
from metalsm.factors import FactorClasses, differentiation, fr_table, stack_classes
from metalsm.grid import Grid
from metalsm.stack import FactorStack
from metalsm.styles import write_credibility_style

log = logging.getLogger(__name__)

CHUNK_CELLS = 1 << 20  # cells per chunk while mapping (about 4 MB per float32 layer)

__all__ = [
    "MembershipModel",
    "credibility_map",
    "fit_membership",
    "plot_credibility",
    "write_credibility",
]


@dataclass(frozen=True)
class MembershipModel:
    """Fitted fuzzy membership: per factor a membership per class, weights, combination."""

    factors: tuple[str, ...]
    classes: tuple[FactorClasses, ...]
    membership: tuple[np.ndarray, ...]
    weights: np.ndarray
    combine: str
    fr_tables: pd.DataFrame
    scale: tuple[float, float] = (0.0, 1.0)

    def raw_membership(self, values: np.ndarray) -> np.ndarray:
        """Combined membership before rescaling; ``values`` is ``(n_factors, ...)``."""
        out = None
        for f, (cls, mu) in enumerate(zip(self.classes, self.membership, strict=True)):
            idx = cls.index(values[f])
            m = np.where(idx >= 0, mu[np.maximum(idx, 0)], np.nan)
            if out is None:
                out = m * self.weights[f] if self.combine == "weighted_mean" else m
            elif self.combine == "weighted_mean":
                out += m * self.weights[f]
            else:
                np.fmin(out, m, out=out)
                out[np.isnan(m)] = np.nan
        return out

    def membership_of(self, values: np.ndarray) -> np.ndarray:
        """Membership in [0, 1] of the landslide-prone environment (NaN where any factor is)."""
        lo, hi = self.scale
        mu = (self.raw_membership(values) - lo) / (hi - lo)
        return np.clip(mu, 0.0, 1.0)

    def credibility_of(self, values: np.ndarray) -> np.ndarray:
        """Credibility as a non-landslide sample: ``1 - membership``."""
        return 1.0 - self.membership_of(values)


def _chunks(shape: tuple[int, int]) -> Iterator[slice]:
    rows = max(1, CHUNK_CELLS // max(shape[1], 1))
    for r in range(0, shape[0], rows):
        yield slice(r, min(shape[0], r + rows))


def membership_from_fr_tables(tables: list[pd.DataFrame], classes: tuple,
                              settings: CredibilityConfig) -> MembershipModel:
    """The membership model (not yet rescaled) from one FR table per factor:
    membership = FR / max FR, factors weighted equally or by their differentiation."""
    factors = tuple(c.name for c in classes)
    memberships, spread = [], []
    for table in tables:
        fr = table["fr"].to_numpy(float)
        table["membership"] = fr / fr.max()
        memberships.append(table["membership"].to_numpy(float))
        spread.append(differentiation(table))
    spread = np.asarray(spread)
    if settings.weighting == "differentiation" and spread.sum() > 0:
        weights = spread / spread.sum()
    else:
        weights = np.full(len(factors), 1.0 / len(factors))
    fr_tables = pd.concat(tables, ignore_index=True)
    fr_tables["weight"] = fr_tables["factor"].map(dict(zip(factors, weights, strict=True)))
    return MembershipModel(factors, tuple(classes), tuple(memberships), weights,
                           settings.combine, fr_tables)


def fit_membership(
    stack: FactorStack,
    positives: tuple[np.ndarray, np.ndarray],
    settings: CredibilityConfig | None = None,
    classes_settings: FactorSelectionConfig | None = None,
) -> MembershipModel:
    """Fit the membership from the **training** landslide cells ``positives`` (rows, cols)."""
    settings = settings or CredibilityConfig()
    classes_settings = classes_settings or FactorSelectionConfig()
    factors = tuple(settings.factors) or stack.names
    unknown = [f for f in factors if f not in stack.names]
    if unknown:
        raise MetalsmInputError(
            f"credibility.factors names {unknown} not in the factor stack; "
            f"factors: {', '.join(stack.names)}"
        )
    rows, cols = (np.asarray(a, dtype=np.int64) for a in positives)
    valid = stack.valid
    slide = np.zeros(stack.grid.shape, dtype=bool)
    slide[rows, cols] = True
    slide &= valid
    if not slide.any():
        raise MetalsmInputError("no training landslide cell lies on a valid cell of the stack")
    classes = stack_classes(stack, classes_settings, factors)
    slide_valid = slide[valid]
    model = membership_from_fr_tables(
        [fr_table(classes[name], stack.layer(name)[valid], slide_valid) for name in factors],
        tuple(classes[f] for f in factors), settings)
    if settings.rescale:
        model = _rescaled(model, stack)
    return model


def _rescaled(model: MembershipModel, stack: FactorStack) -> MembershipModel:
    index = [stack.names.index(f) for f in model.factors]
    lo, hi = np.inf, -np.inf
    for rows in _chunks(stack.grid.shape):
        mu = model.raw_membership(stack.values[index, rows])
        if np.isfinite(mu).any():
            lo, hi = min(lo, float(np.nanmin(mu))), max(hi, float(np.nanmax(mu)))
    if not hi > lo:
        return model
    return MembershipModel(model.factors, model.classes, model.membership, model.weights,
                           model.combine, model.fr_tables, (lo, hi))


def credibility_map(
    stack: FactorStack,
    positives: tuple[np.ndarray, np.ndarray],
    settings: CredibilityConfig | None = None,
    classes_settings: FactorSelectionConfig | None = None,
    *,
    model: MembershipModel | None = None,
) -> tuple[np.ndarray, MembershipModel]:
    """Credibility of every cell (float32, NaN where the stack is invalid) and its model.

    ``positives``: the training landslide cells; pass a fitted ``model`` to reuse it.
    """
    if model is None:
        model = fit_membership(stack, positives, settings, classes_settings)
    index = [stack.names.index(f) for f in model.factors]
    valid = stack.valid
    out = np.full(stack.grid.shape, np.nan, dtype=np.float32)
    for rows in _chunks(stack.grid.shape):
        cred = model.credibility_of(stack.values[index, rows])
        out[rows] = np.where(valid[rows], cred, np.nan)
    return out, model


def write_credibility(credibility: np.ndarray, grid: Grid, path: str | Path) -> Path:
    """``credibility.tif``: float32 COG, NaN nodata, same grid as the stack, written atomically."""
    profile = grid.profile(dtype="float32", nodata=np.nan, predictor=3)
    with atomic_cog(path, overview_resampling="average") as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(credibility.astype(np.float32, copy=False), 1)
            dst.set_band_description(1, "credibility as a non-landslide sample (0-1)")
    write_credibility_style(path)
    return Path(path)


def plot_credibility(
    credibility: np.ndarray,
    grid: Grid,
    path: str | Path,
    *,
    dem: np.ndarray | None = None,
    inventory=None,
    title: str = "Credibility as a non-landslide sample",
) -> Path:
    """``credibility.png``: the map over a hillshade with the inventory (report.figures)."""
    from metalsm.report.figures import plot_raster_map

    return plot_raster_map(
        credibility, grid, path, dem=dem, inventory=inventory, cmap="cividis",
        norm=Normalize(0.0, 1.0), title=title,
        colorbar_label="credibility (1 = surely stable ground)",
    )


def run_credibility(config, out_dir: str | Path) -> tuple[dict[str, Path], float]:
    """``metalsm credibility``: the credibility map of ``config``'s study area.

    Fitted on every positive cell of the inventory (rule ``inventory.rule``);
    writes ``credibility.tif``, ``credibility.png`` and ``membership.csv`` (the
    per-class FR, membership and factor weight). Returns the paths and the
    seconds the map took (fit + map, stack building excluded).
    """
    import time

    from metalsm.atomic import staged_directory
    from metalsm.inventory import positive_cells, read_inventory
    from metalsm.preflight import check_run
    from metalsm.stack import build_factor_stack

    check_run(config, out_dir, needs_rasters=True, command="credibility")
    stack = build_factor_stack(config)
    inventory = read_inventory(
        config.inventory.path, stack.grid, crs=config.inventory.crs,
        x_column=config.inventory.x_column, y_column=config.inventory.y_column,
    )
    dem = stack.layer("elevation") if "elevation" in stack.names else None
    positives = positive_cells(
        inventory, stack.grid, stack.valid, rule=config.inventory.rule, dem=dem,
        cells_per_polygon=config.inventory.cells_per_polygon, seed=config.sampling.seed,
    )
    start = time.perf_counter()
    cred, model = credibility_map(stack, positives, config.credibility, config.factor_selection)
    seconds = time.perf_counter() - start
    with staged_directory(out_dir) as out:  # out_dir is replaced only when complete
        paths = {"credibility": write_credibility(cred, stack.grid, out / "credibility.tif")}
        paths["figure"] = plot_credibility(cred, stack.grid, out / "credibility.png", dem=dem,
                                           inventory=inventory,
                                           title=f"Credibility as a non-landslide sample, "
                                                 f"{config.name}")
        paths["membership"] = write_csv(out / "membership.csv", model.fr_tables.round(6))
    return {k: Path(out_dir) / p.name for k, p in paths.items()}, seconds
