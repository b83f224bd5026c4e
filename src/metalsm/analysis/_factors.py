"""Factor analysis and selection: frequency ratio, information value, MIC, collinearity.

Everything here is computed over the *area* (the valid cells of a
:class:`~metalsm.stack.FactorStack`), not over a sample table:

* **Classes.** A continuous factor is cut into ``n_classes`` classes whose edges
  come from the area alone (``quantile``: equal-area classes; ``natural_breaks``:
  Fisher-Jenks on a seeded sample, via :func:`metalsm.mapping.zone_breaks`), so
  the classes never depend on where landslides are. A categorical factor has
  one class per code (named from its attribute table).
* **Frequency ratio.** ``FR(class) = landslide share / area share``, where the
  landslide share is the class's fraction of the landslide cells and the area
  share its fraction of the valid cells. ``FR > 1``: more landslides than the
  class's area suggests. The information value is ``IV = ln(FR)`` (undefined,
  NaN, where ``FR = 0``).
* **Differentiation** of a factor: the area-weighted standard deviation of FR
  around 1, ``D = sqrt(sum_i a_i (FR_i - 1)^2)``. The area-weighted mean of FR
  is exactly 1 (``sum a_i FR_i = sum l_i = 1``), so ``D`` is the spread of the
  FR profile; ``D^2`` equals the chi-square divergence between the landslide and
  the area distribution over the classes. ``D = 0``: landslides are spread like
  the area, the factor separates nothing.
* **MIC** (maximal information coefficient, Reshef et al. 2011, Science 334,
  1518) between a factor and the 0/1 landslide label, by our own
  implementation of the ``ApproxMaxMI`` heuristic (:func:`mic`), on a seeded
  balanced sample of ``mic_samples`` cells (half landslide, half not; balanced so
  a perfect separator scores 1). Categorical factors enter by the FR of their
  class, so that classes with similar landslide density are adjacent. At
  ``n = 2000`` an unrelated factor scores about 0.1 (finite-sample bias), hence
  the default ``mic_min = 0.15``.
* **Collinearity.** Pearson and Spearman matrices on a seeded sample of valid
  cells (categorical factors enter by the FR of their class, since their codes
  carry no order), and per factor the variance inflation factor
  ``VIF_j = (R^-1)_jj`` (``R`` the Pearson matrix) and tolerance ``1 / VIF_j``.
* **Selection** (:func:`select_factors`): a factor is *relevant* when its
  ``MIC >= mic_min`` or its ``differentiation >= differentiation_min``; among the
  relevant factors, the one with the highest VIF is dropped while any VIF
  exceeds ``vif_max`` (VIFs recomputed after each drop). The summary table says
  for every factor whether it was kept and why.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from metalsm.config import FactorSelectionConfig
from metalsm.errors import MetalsmInputError
from metalsm.stack import FactorStack

log = logging.getLogger(__name__)

_EDGE_SAMPLE = 1_000_000

__all__ = [
    "FactorAnalysis",
    "FactorClasses",
    "analyze_factors",
    "collinearity",
    "differentiation",
    "factor_classes",
    "fr_table",
    "mic",
    "select_factors",
    "vif",
]


# --------------------------------------------------------------------------- classes


@dataclass(frozen=True)
class FactorClasses:
    """How the values of one factor fall into FR classes.

    Continuous: ``edges`` (``k + 1`` increasing values; class ``i`` is
    ``[edges[i], edges[i+1])``, the end classes open to values beyond the range).
    Categorical: ``codes`` (sorted class codes; an unknown code has no class).
    """

    name: str
    categorical: bool
    labels: tuple[str, ...]
    edges: np.ndarray | None = None
    codes: np.ndarray | None = None

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    def index(self, values: np.ndarray) -> np.ndarray:
        """Class index (int64) of each value; -1 for NaN or an unknown category."""
        values = np.asarray(values)
        if self.categorical:
            codes = self.codes
            idx = np.clip(np.searchsorted(codes, values), 0, codes.size - 1)
            idx = np.where(codes[idx] == values, idx, -1)
        else:
            idx = np.searchsorted(self.edges[1:-1], values, side="right")
            idx = np.where(np.isfinite(values), idx, -1)
        return idx.astype(np.int64)


def factor_classes(
    name: str,
    values: np.ndarray,
    *,
    categorical: bool = False,
    class_names: dict[int, str] | None = None,
    n_classes: int = 10,
    binning: str = "quantile",
    max_categories: int = 50,
    seed: int = 0,
) -> FactorClasses:
    """FR classes of a factor from its values over the area (``values``: valid cells only)."""
    from metalsm.mapping import zone_breaks

    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise MetalsmInputError(f"factor '{name}' has no valid cells")
    lo, hi = float(values.min()), float(values.max())
    if lo == hi:
        raise MetalsmInputError(
            f"factor '{name}' has a single value ({lo:g}) over all valid cells; it cannot "
            "separate landslides from stable ground -- remove it from the config"
        )
    if categorical:
        codes = np.unique(values)
        if codes.size > max_categories:
            raise MetalsmInputError(
                f"categorical factor '{name}' has {codes.size} classes, more than "
                f"factor_selection.max_categories = {max_categories}; merge classes or "
                "declare it continuous"
            )
        names = class_names or {}
        labels = tuple(names.get(int(c), f"{int(c)}") for c in codes)
        return FactorClasses(name, True, labels, codes=codes)
    rng = np.random.default_rng(seed)
    sample = values if values.size <= _EDGE_SAMPLE else rng.choice(values, _EDGE_SAMPLE)
    if binning == "quantile":
        edges = np.quantile(sample, np.linspace(0.0, 1.0, n_classes + 1))
    elif binning == "natural_breaks":
        edges = zone_breaks(sample, method="natural_breaks", levels=n_classes, seed=seed)
    else:
        raise MetalsmInputError(f"unknown binning {binning!r}; use quantile or natural_breaks")
    edges[0], edges[-1] = lo, hi
    edges = np.unique(edges)  # ties (e.g. many zeros) merge classes
    labels = tuple(f"[{a:.4g}, {b:.4g})" for a, b in zip(edges[:-1], edges[1:], strict=True))
    labels = (*labels[:-1], labels[-1][:-1] + "]")
    return FactorClasses(name, False, labels, edges=edges)


def stack_classes(
    stack: FactorStack, settings: FactorSelectionConfig, factors: Sequence[str] | None = None
) -> dict[str, FactorClasses]:
    """FR classes of every (or the named) factor of ``stack``, from the area only."""
    valid = stack.valid
    out = {}
    for name in factors or stack.names:
        out[name] = factor_classes(
            name,
            stack.layer(name)[valid],
            categorical=name in stack.class_names,
            class_names=stack.class_names.get(name),
            n_classes=settings.n_classes,
            binning=settings.binning,
            max_categories=settings.max_categories,
            seed=settings.seed,
        )
    return out


# --------------------------------------------------------------------------- frequency ratio


def fr_table(classes: FactorClasses, values: np.ndarray, landslide: np.ndarray) -> pd.DataFrame:
    """Frequency ratio table of one factor.

    ``values``: the factor over the area (valid cells, any shape); ``landslide``:
    a boolean of the same shape, True on landslide cells. Columns: ``class``,
    ``label``, ``lower``/``upper`` (edges; the code for categories), ``n_cells``,
    ``n_landslide_cells``, ``area_share``, ``landslide_share``, ``fr``, ``iv``.
    """
    idx = classes.index(np.asarray(values).ravel())
    slide = np.asarray(landslide, dtype=bool).ravel()
    ok = idx >= 0
    k = classes.n_classes
    return fr_table_from_counts(classes, np.bincount(idx[ok], minlength=k),
                                np.bincount(idx[ok & slide], minlength=k))


def fr_table_from_counts(classes: FactorClasses, n_cells: np.ndarray,
                         n_slide: np.ndarray) -> pd.DataFrame:
    """:func:`fr_table` from per-class cell and landslide-cell counts, so the counts can
    be summed over windows of a raster too large for memory."""
    k = classes.n_classes
    if n_slide.sum() < k:
        raise MetalsmInputError(
            f"factor '{classes.name}': only {int(n_slide.sum())} landslide cell(s) for "
            f"{k} FR classes; FR needs at least one landslide per class on average -- "
            "lower factor_selection.n_classes or use a larger inventory"
        )
    area_share = n_cells / n_cells.sum()
    slide_share = n_slide / n_slide.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        fr = np.where(n_cells > 0, slide_share / area_share, 0.0)
        iv = np.where(fr > 0, np.log(fr), np.nan)
    if classes.categorical:
        lower = upper = classes.codes
    else:
        lower, upper = classes.edges[:-1], classes.edges[1:]
    return pd.DataFrame(
        {
            "factor": classes.name,
            "class": np.arange(k),
            "label": list(classes.labels),
            "lower": lower,
            "upper": upper,
            "n_cells": n_cells,
            "n_landslide_cells": n_slide,
            "area_share": area_share,
            "landslide_share": slide_share,
            "fr": fr,
            "iv": iv,
        }
    )


def differentiation(table: pd.DataFrame) -> float:
    """Area-weighted standard deviation of FR around 1: ``sqrt(sum a_i (FR_i - 1)^2)``."""
    a = table["area_share"].to_numpy(float)
    fr = table["fr"].to_numpy(float)
    return float(np.sqrt(np.sum(a * (fr - 1.0) ** 2)))


# --------------------------------------------------------------------------- MIC


def mic(x: np.ndarray, y: np.ndarray, alpha: float = 0.6, c: float = 15.0) -> float:
    """Maximal information coefficient of two variables (our ``ApproxMaxMI``).

    Reshef et al. (2011): MIC is the maximum, over grids of ``nx x ny`` cells
    with ``nx * ny < B(n) = n**alpha``, of the mutual information of the grid
    divided by ``log(min(nx, ny))``. Exact maximisation is intractable; like the
    paper's ApproxMaxMI heuristic we, for each ``ny``, cut one axis into ``ny``
    equal-frequency rows (ties kept together) and choose the best partition of
    the other axis into ``2 .. B/ny`` columns *exactly* by dynamic programming
    (mutual information is a sum of per-column terms once the rows are fixed),
    over "clumps" of consecutive points in the same row, merged into at most
    ``c * B/ny`` equal-frequency superclumps. Both orientations are tried and the
    larger score is returned. Values lie in [0, 1]: ~1 for noiseless functional
    relations (linear, parabola, sine), near 0 for independent variables (at
    ``n = 1000`` finite-sample bias leaves ~0.1).
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise MetalsmInputError(f"mic: x has {x.size} values, y has {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = x.size
    if n < 4:
        raise MetalsmInputError(f"mic needs at least 4 finite pairs, got {n}")
    if np.unique(x).size < 2 or np.unique(y).size < 2:
        return 0.0
    b = max(4, int(n**alpha))
    return max(_approx_max_mi(x, y, b, c), _approx_max_mi(y, x, b, c))


def _equipartition(v: np.ndarray, k: int) -> np.ndarray:
    """Row index 0..k-1 per value, equal-frequency, tied values in one row."""
    order = np.argsort(v, kind="stable")
    sv = v[order]
    first = np.r_[True, sv[1:] != sv[:-1]]
    rank_min = np.maximum.accumulate(np.where(first, np.arange(v.size), 0))
    rows = np.empty(v.size, dtype=np.int64)
    rows[order] = (rank_min * k) // v.size
    _, rows = np.unique(rows, return_inverse=True)  # drop empty rows
    return rows.ravel()


def _approx_max_mi(x: np.ndarray, y: np.ndarray, b: int, c: float) -> float:
    """Best normalised MI with equal-frequency rows on ``y``, DP-optimised columns on ``x``."""
    n = x.size
    order = np.argsort(x, kind="stable")
    xs = x[order]
    group_start = np.r_[True, xs[1:] != xs[:-1]]
    best = 0.0
    seen: set[bytes] = set()
    for ny in range(2, b // 2 + 1):
        rows = _equipartition(y, ny)
        n_rows = int(rows.max()) + 1
        key = rows.tobytes()
        if n_rows < 2 or key in seen:
            continue
        seen.add(key)
        max_cols = b // ny
        if max_cols < 2:
            break
        rs = rows[order]
        # a tie group of x is labelled by its row, or -1 when it holds several rows
        gid = np.cumsum(group_start) - 1
        g_min = np.full(gid[-1] + 1, n_rows, dtype=np.int64)
        g_max = np.full(gid[-1] + 1, -1, dtype=np.int64)
        np.minimum.at(g_min, gid, rs)
        np.maximum.at(g_max, gid, rs)
        g_label = np.where(g_min == g_max, g_min, -1)
        starts = np.flatnonzero(group_start)
        cut = (g_label[1:] != g_label[:-1]) | (g_label[1:] < 0)
        bounds = np.r_[0, starts[1:][cut], n]
        k_max = max(2, int(c * max_cols))
        if bounds.size - 1 > k_max:  # superclumps: snap equal-frequency targets to clumps
            targets = np.linspace(0, n, k_max + 1)[1:-1]
            inner = bounds[1:-1]
            pos = np.clip(np.searchsorted(inner, targets), 1, inner.size - 1)
            near = np.where(
                np.abs(inner[pos - 1] - targets) <= np.abs(inner[pos] - targets),
                inner[pos - 1],
                inner[pos],
            )
            bounds = np.unique(np.r_[0, near, n])
        best = max(best, _best_columns(rs, n_rows, bounds, max_cols))
    return best


def _best_columns(rs: np.ndarray, n_rows: int, bounds: np.ndarray, max_cols: int) -> float:
    """max over l in 2..max_cols of (best MI with l columns at ``bounds``) / log(min(l, rows))."""
    n = rs.size
    onehot_cum = np.zeros((n + 1, n_rows))
    np.add.at(onehot_cum, (np.arange(1, n + 1), rs), 1.0)
    onehot_cum = np.cumsum(onehot_cum, axis=0)
    cum = onehot_cum[bounds]  # (k + 1, rows)
    p_row = cum[-1] / n
    counts = (cum[None, :, :] - cum[:, None, :]) / n  # [s, t, q]: column (s, t]
    col = counts.sum(axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = counts * np.log(counts / (col[:, :, None] * p_row[None, None, :]))
    w = np.nansum(np.where(counts > 0, terms, 0.0), axis=2)
    k = bounds.size - 1
    w[np.tril_indices(k + 1)] = -np.inf  # columns need s < t
    f = w[0].copy()  # one column ending at t
    best = 0.0
    for cols in range(2, min(max_cols, k) + 1):
        f = np.max(f[:, None] + w, axis=0)
        score = f[k] / math.log(min(cols, n_rows))
        best = max(best, float(score))
    return min(best, 1.0)


# --------------------------------------------------------------------------- collinearity


def vif(corr: np.ndarray | pd.DataFrame) -> np.ndarray:
    """Variance inflation factor per variable: the diagonal of the inverse correlation matrix.

    ``VIF_j = 1 / (1 - R_j^2)`` where ``R_j^2`` is from regressing variable ``j``
    on all others; a singular matrix (exact collinearity) gives ``inf``.
    """
    r = np.asarray(corr, dtype=np.float64)
    if r.shape[0] == 1:
        return np.ones(1)
    try:
        if np.linalg.cond(r) > 1e12:
            raise np.linalg.LinAlgError
        out = np.diag(np.linalg.inv(r)).copy()
    except np.linalg.LinAlgError:
        out = np.full(r.shape[0], np.inf)
        # variables outside the degenerate subspace keep a finite VIF
        vals, vecs = np.linalg.eigh(r)
        null = vecs[:, vals < 1e-10 * max(vals.max(), 1.0)]
        free = np.abs(null).sum(axis=1) < 1e-8
        if free.any():
            sub = r[np.ix_(free, free)]
            out[free] = np.diag(np.linalg.inv(sub))
    return out


def collinearity(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pearson and Spearman correlation matrices of the columns of ``table``."""
    return table.corr(method="pearson"), table.corr(method="spearman")


# --------------------------------------------------------------------------- selection


def select_factors(
    summary: pd.DataFrame,
    corr: pd.DataFrame,
    *,
    mic_min: float,
    differentiation_min: float,
    vif_max: float,
) -> pd.DataFrame:
    """Apply the selection rule: ``summary`` plus ``vif``, ``tolerance``, ``kept``, ``reason``.

    ``summary`` is indexed by factor with ``mic`` and ``differentiation`` columns;
    ``corr`` is the Pearson matrix. Rule: relevant when MIC >= ``mic_min`` or
    differentiation >= ``differentiation_min``; then, among relevant factors,
    drop the highest-VIF factor while any VIF > ``vif_max``. The ``vif`` column
    is the factor's VIF among all factors; ``vif_selected`` among the kept ones.
    """
    out = summary.copy()
    names = list(out.index)
    v_all = vif(corr.loc[names, names].to_numpy())
    out["vif"] = v_all
    out["tolerance"] = 1.0 / v_all
    reasons: dict[str, str] = {}
    relevant = []
    for name in names:
        m, d = out.at[name, "mic"], out.at[name, "differentiation"]
        why = []
        if m >= mic_min:
            why.append(f"MIC {m:.3f} >= {mic_min:g}")
        if d >= differentiation_min:
            why.append(f"differentiation {d:.3f} >= {differentiation_min:g}")
        if why:
            relevant.append(name)
            reasons[name] = "kept: " + " and ".join(why)
        else:
            reasons[name] = (
                f"dropped: weak (MIC {m:.3f} < {mic_min:g} and "
                f"differentiation {d:.3f} < {differentiation_min:g})"
            )
    kept = list(relevant)
    out["vif_selected"] = np.nan
    while len(kept) > 1:
        v = vif(corr.loc[kept, kept].to_numpy())
        worst = int(np.argmax(v))
        if not v[worst] > vif_max:
            out.loc[kept, "vif_selected"] = v
            break
        name = kept.pop(worst)
        reasons[name] = f"dropped: collinear (VIF {v[worst]:.1f} > {vif_max:g} among relevant)"
    else:
        out.loc[kept, "vif_selected"] = 1.0
    out["kept"] = [n in kept for n in names]
    out["reason"] = [reasons[n] for n in names]
    return out


# --------------------------------------------------------------------------- the analysis


@dataclass
class FactorAnalysis:
    """Outcome of :func:`analyze_factors`."""

    classes: dict[str, FactorClasses]
    fr_tables: pd.DataFrame
    summary: pd.DataFrame
    pearson: pd.DataFrame
    spearman: pd.DataFrame
    n_landslide_cells: int
    settings: dict = field(default_factory=dict)

    @property
    def selected(self) -> list[str]:
        return [n for n, k in self.summary["kept"].items() if k]


def analyze_factors(
    stack: FactorStack, landslide: np.ndarray, settings: FactorSelectionConfig
) -> FactorAnalysis:
    """FR tables, differentiation, MIC, correlations, VIF and the selection for ``stack``.

    ``landslide``: boolean grid of landslide cells (e.g. the inventory mask);
    only valid cells count.
    """
    valid = stack.valid
    landslide = np.asarray(landslide, dtype=bool)
    if landslide.shape != stack.grid.shape:
        raise MetalsmInputError(
            f"landslide mask has shape {landslide.shape}, the stack grid {stack.grid.shape}"
        )
    slide = landslide[valid]
    n_slide = int(slide.sum())
    if n_slide == 0:
        raise MetalsmInputError("no landslide cell lies on a valid cell of the factor stack")
    classes = stack_classes(stack, settings)
    tables = {}
    for name, cls in classes.items():
        tables[name] = fr_table(cls, stack.layer(name)[valid], slide)

    rng = np.random.default_rng(settings.seed)
    # MIC on a balanced sample: landslide cells and as many random stable cells
    pos = np.flatnonzero(slide)
    neg = np.flatnonzero(~slide)
    half = max(2, min(settings.mic_samples // 2, pos.size, neg.size))
    pick = np.r_[rng.choice(pos, half, replace=False), rng.choice(neg, half, replace=False)]
    label = np.r_[np.ones(half), np.zeros(half)]
    # correlations on a sample of the area; categories by their FR
    n_corr = min(settings.correlation_samples, int(valid.sum()))
    corr_pick = np.sort(rng.choice(int(valid.sum()), n_corr, replace=False))
    columns = {}
    rows = []
    for name, cls in classes.items():
        values = stack.layer(name)[valid]
        table = tables[name]
        mic_values = values[pick].astype(np.float64)
        if cls.categorical:
            fr = table["fr"].to_numpy()
            encoded = fr[cls.index(values[corr_pick])]
            mic_values = fr[cls.index(mic_values)]  # ordered by FR: codes carry no order
        else:
            encoded = values[corr_pick].astype(np.float64)
        columns[name] = encoded
        rows.append(
            {
                "factor": name,
                "kind": "categorical" if cls.categorical else "continuous",
                "n_classes": cls.n_classes,
                "mic": mic(mic_values, label),
                "differentiation": differentiation(table),
                "fr_min": float(table["fr"].min()),
                "fr_max": float(table["fr"].max()),
            }
        )
    summary = pd.DataFrame(rows).set_index("factor")
    pearson, spearman = collinearity(pd.DataFrame(columns))
    summary = select_factors(
        summary,
        pearson,
        mic_min=settings.mic_min,
        differentiation_min=settings.differentiation_min,
        vif_max=settings.vif_max,
    )
    if not summary["kept"].any():
        raise MetalsmInputError(
            "no factor passes the selection thresholds (factor_selection.mic_min = "
            f"{settings.mic_min:g}, differentiation_min = {settings.differentiation_min:g}); "
            f"best MIC {summary['mic'].max():.3f}, best differentiation "
            f"{summary['differentiation'].max():.3f}"
        )
    fr_all = pd.concat(tables.values(), ignore_index=True)
    return FactorAnalysis(classes, fr_all, summary, pearson, spearman, n_slide,
                          settings=vars(settings).copy())


# --------------------------------------------------------------------------- outputs


