"""Credibility of cells as non-landslide (negative) samples, by fuzzy membership.

After "Sampling method based on fuzzy membership for computing negative sample
credibility and its applications", Applied Sciences 2025, 15, 7646: instead of
asking *where* to draw negatives, every valid cell gets a credibility in [0, 1]
of being a stable, non-landslide sample, and negatives are drawn by credibility.

How it is computed here (:func:`fit_membership`, :func:`credibility_map`):

1. **Per-factor membership of the landslide-prone environment.** Each factor is
   cut into FR classes from the *area alone* (:func:`metalsm.analysis._factors.stack_classes`:
   quantile or natural-breaks bins, one class per category). The frequency ratio
   of each class is computed from the **training landslide cells only**
   (``FR = training-landslide share / area share``), and the membership of the
   class is ``mu_f = FR / max(FR)``: 1 for the class where training landslides are
   densest, 0 for a class holding none. This is the FR-profile variant of a fuzzy
   membership function (a data-driven, piecewise-constant membership curve).
2. **Combination across factors.** ``combine = "weighted_mean"``: ``mu = sum w_f
   mu_f`` with weights ``w_f`` proportional to each factor's differentiation
   (area-weighted spread of its training FR profile, see :mod:`metalsm.analysis._factors`)
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
held-out landslides cannot leak into negative sampling. Fit and map run window by
window over the stack (in memory: one window; on disk: windows of ``chunk_size`` on
a :class:`metalsm.scale.Compute`): the class histograms are sums over windows and
the rescaling extremes a min/max over windows, so the results do not depend on the
windows.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from metalsm.analysis._factors import (
    FactorClasses,
    differentiation,
    fr_table_from_counts,
    stack_classes,
)
from metalsm.config import CredibilityConfig, FactorSelectionConfig
from metalsm.errors import MetalsmInputError
from metalsm.raster import Grid, iter_windows, strips, windowed_geotiff, write_credibility_style
from metalsm.scale import Compute
from metalsm.stack import FactorStack, FileFactorStack

log = logging.getLogger(__name__)

#: Valid cells kept (all factors) to fit the FR class edges of a stack read in several
#: windows (a stack in memory, one window, uses all of them).
CLASS_SAMPLE_CELLS = 4_000_000

__all__ = [
    "MembershipModel",
    "credibility_map",
    "fit_membership",
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


def _windows(stack, chunk_size: int | None):
    return list(iter_windows(stack.grid.shape, chunk_size or max(stack.grid.shape)))


def fit_membership(
    stack: FactorStack | FileFactorStack,
    positives: tuple[np.ndarray, np.ndarray],
    settings: CredibilityConfig | None = None,
    classes_settings: FactorSelectionConfig | None = None,
    *,
    compute: Compute | None = None,
    chunk_size: int | None = None,
    class_sample: int | None = None,
) -> MembershipModel:
    """Fit the membership from the **training** landslide cells ``positives`` (rows, cols).

    Window by window (``chunk_size``; None: one window). The FR class edges come from
    the valid cells in row-major order: all of them in one window, else up to
    ``class_sample`` cells (default :data:`CLASS_SAMPLE_CELLS`: all cells of most
    study areas, so the result equals the one-window one; a seeded subsample beyond).
    """
    settings = settings or CredibilityConfig()
    classes_settings = classes_settings or FactorSelectionConfig()
    compute = compute or Compute()
    names = stack.names
    factors = tuple(settings.factors) or names
    unknown = [f for f in factors if f not in names]
    if unknown:
        raise MetalsmInputError(
            f"credibility.factors names {unknown} not in the factor stack; "
            f"factors: {', '.join(names)}"
        )
    rows, cols = (np.asarray(a, dtype=np.int64) for a in positives)
    if not np.isfinite(stack.sample(rows, cols).to_numpy()).all(axis=1).any():
        raise MetalsmInputError("no training landslide cell lies on a valid cell of the stack")
    limit = class_sample or (CLASS_SAMPLE_CELLS if chunk_size else None)
    classes = stack_classes(_valid_sample(stack, compute, chunk_size, limit,
                                          classes_settings.seed), classes_settings, factors)
    f_idx = [names.index(f) for f in factors]

    def histograms(win):
        values = stack.read_window(win)
        valid = np.isfinite(values).all(axis=0)
        slide = np.zeros(valid.shape, dtype=bool)
        r0, c0 = int(win.row_off), int(win.col_off)
        inside = ((rows >= r0) & (rows < r0 + win.height) & (cols >= c0)
                  & (cols < c0 + win.width))
        slide[rows[inside] - r0, cols[inside] - c0] = True
        slide &= valid
        out = []
        for name, i in zip(factors, f_idx, strict=True):
            cls = classes[name]
            idx = cls.index(values[i][valid])
            ok = idx >= 0
            out.append((np.bincount(idx[ok], minlength=cls.n_classes),
                        np.bincount(idx[ok & slide[valid]], minlength=cls.n_classes)))
        return out

    area = [0] * len(factors)
    slides = [0] * len(factors)
    for _, hist in compute.map_windows(histograms, _windows(stack, chunk_size)):
        for k, (a, s) in enumerate(hist):
            area[k] = area[k] + a
            slides[k] = slides[k] + s
    model = membership_from_fr_tables(
        [fr_table_from_counts(classes[name], area[k], slides[k])
         for k, name in enumerate(factors)],
        tuple(classes[f] for f in factors), settings)
    if not settings.rescale:
        return model

    def extremes(win):
        mu = model.raw_membership(stack.read_window(win)[f_idx])
        mu = mu[np.isfinite(mu)]
        return (float(mu.min()), float(mu.max())) if mu.size else (math.inf, -math.inf)

    lo, hi = math.inf, -math.inf
    for _, (a, b) in compute.map_windows(extremes, _windows(stack, chunk_size)):
        lo, hi = min(lo, a), max(hi, b)
    if not hi > lo:
        return model
    return MembershipModel(model.factors, model.classes, model.membership, model.weights,
                           model.combine, model.fr_tables, (lo, hi))


def _valid_sample(stack, compute: Compute, chunk_size: int | None, max_cells: int | None,
                  seed: int) -> FactorStack:
    """The valid cells in row-major order (a seeded subsample beyond ``max_cells``), as
    a one-row FactorStack: what :func:`metalsm.analysis._factors.stack_classes` needs for the FR
    class edges, in the same order as ``values[:, valid]`` of the whole stack."""
    grid = stack.grid
    rate = min(1.0, max_cells / (grid.height * grid.width)) if max_cells else 1.0

    def task(win):
        values = stack.read_window(win).reshape(len(stack.names), -1)
        keep = np.isfinite(values).all(axis=0)
        if rate < 1.0:
            rng = np.random.default_rng([seed, int(win.row_off), int(win.col_off)])
            keep &= rng.random(keep.size) < rate
        return values[:, keep]

    windows = strips(grid.shape, chunk_size * chunk_size) if chunk_size else _windows(stack, None)
    parts = [v for _, v in sorted(compute.map_windows(task, windows),
                                  key=lambda item: item[0].row_off)]
    values = np.concatenate(parts, axis=1)[:, None, :]
    sample_grid = Grid(grid.crs, grid.transform, 1, values.shape[2])
    return FactorStack(sample_grid, stack.names, values, stack.class_names)


def credibility_map(
    stack: FactorStack | FileFactorStack,
    positives: tuple[np.ndarray, np.ndarray],
    settings: CredibilityConfig | None = None,
    classes_settings: FactorSelectionConfig | None = None,
    *,
    model: MembershipModel | None = None,
    compute: Compute | None = None,
    chunk_size: int | None = None,
) -> tuple[np.ndarray, MembershipModel]:
    """Credibility of every cell (float32, NaN where the stack is invalid) and its model,
    window by window (``chunk_size``; None: one window).

    ``positives``: the training landslide cells; pass a fitted ``model`` to reuse it.
    """
    compute = compute or Compute()
    if model is None:
        model = fit_membership(stack, positives, settings, classes_settings,
                               compute=compute, chunk_size=chunk_size)
    index = [stack.names.index(f) for f in model.factors]

    def task(win):
        values = stack.read_window(win)
        cred = model.credibility_of(values[index])
        return np.where(np.isfinite(values).all(axis=0), cred, np.nan).astype(np.float32)

    out = np.full(stack.grid.shape, np.nan, dtype=np.float32)
    for win, cred in compute.map_windows(task, _windows(stack, chunk_size)):
        out[win.toslices()] = cred
    return out, model


def write_credibility(credibility: np.ndarray, grid: Grid, path: str | Path) -> Path:
    """``credibility.tif``: float32 COG, NaN nodata, same grid as the stack, written atomically."""
    with windowed_geotiff(path, grid, descriptions=["credibility as a non-landslide sample (0-1)"],
                          predictor=3) as out:
        out.write(credibility.astype(np.float32, copy=False))
    write_credibility_style(path)
    return Path(path)


