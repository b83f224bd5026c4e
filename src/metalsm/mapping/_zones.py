"""Susceptibility zones: break values (quantile, natural breaks, equal interval), the
zone raster with its colour and attribute tables, and the table of area and landslide
share per zone."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from metalsm.errors import MetalsmInputError
from metalsm.raster import (
    Grid,
    gdal_cache,
    iter_windows,
    open_raster,
    read_window,
    windowed_geotiff,
)
from metalsm.raster import _styles as styles

__all__ = [
    "DEFAULT_LABELS",
    "ZONE_METHODS",
    "classify_raster",
    "classify_values",
    "zone_breaks",
    "zone_table",
]


ZoneMethod = Literal["quantile", "natural_breaks", "equal_interval"]


ZONE_METHODS: tuple[str, ...] = ("quantile", "natural_breaks", "equal_interval")


#: Default zone names by number of levels (low to high susceptibility).
DEFAULT_LABELS: dict[int, tuple[str, ...]] = {
    2: ("Low", "High"),
    3: ("Low", "Moderate", "High"),
    4: ("Low", "Moderate", "High", "Very high"),
    5: ("Very low", "Low", "Moderate", "High", "Very high"),
}


_ZONES_TAG = "METALSM_ZONE_EDGES"


_JENKS_MAX_SAMPLE = 3000


_BREAKS_MAX_SAMPLE = 1_000_000


@gdal_cache()
def _read_valid_sample(
    path: str | Path, seed: int, max_sample: int, window_size: int = 512
) -> tuple[np.ndarray, float, float]:
    """A seeded random subsample of the finite cells of band 1, plus their exact min and max.

    Each cell is kept with the same probability, so the sample is unbiased and
    at most about ``max_sample`` values are held at once.
    """
    rng = np.random.default_rng(seed)
    parts: list[np.ndarray] = []
    lo, hi = math.inf, -math.inf
    with open_raster(path) as src:
        rate = min(1.0, max_sample / (src.height * src.width))
        for win in iter_windows(src.shape, window_size):
            values = read_window(src, win, 1, np.float64).ravel()
            values = values[np.isfinite(values)]
            if not values.size:
                continue
            lo, hi = min(lo, float(values.min())), max(hi, float(values.max()))
            if rate < 1.0:
                values = values[rng.random(values.size) < rate]
            parts.append(values)
    if not math.isfinite(lo):
        raise MetalsmInputError(f"raster {path} has no valid cells to compute zone breaks from")
    return np.concatenate(parts), lo, hi


def zone_breaks(
    values: np.ndarray | str | Path,
    method: ZoneMethod = "quantile",
    levels: int = 4,
    seed: int = 0,
) -> np.ndarray:
    """``levels + 1`` non-decreasing class edges for a susceptibility map.

    ``values`` is an array (non-finite entries ignored) or a raster path, read
    window by window with a seeded subsample of at most ~1e6 cells. The first
    edge is the minimum and the last the maximum. ``quantile`` gives equal-count
    zones (edges are sample values, so with :func:`classify_values` counts differ
    by at most one), ``equal_interval`` equal-width zones, and ``natural_breaks`` the
    Fisher-Jenks optimal classes (computed on a seeded sample of at most 3,000
    values; breaks are placed midway between adjacent classes).
    """
    if method not in ZONE_METHODS:
        raise MetalsmInputError(
            f"unknown zone method '{method}'; expected one of {', '.join(ZONE_METHODS)}"
        )
    if int(levels) != levels or levels < 1:
        raise MetalsmInputError(f"zone levels must be a positive integer, got {levels}")
    levels = int(levels)
    if isinstance(values, str | Path):
        sample, lo, hi = _read_valid_sample(values, seed, _BREAKS_MAX_SAMPLE)
    else:
        sample = np.asarray(values, dtype=np.float64).ravel()
        sample = sample[np.isfinite(sample)]
        if not sample.size:
            raise MetalsmInputError("no finite values to compute zone breaks from")
        lo, hi = float(sample.min()), float(sample.max())
    if method == "equal_interval" or lo == hi:
        edges = np.linspace(lo, hi, levels + 1)
    elif method == "quantile":
        # rank-based, integer arithmetic: zone k holds sorted[ceil((k-1)n/L):ceil(kn/L)],
        # so zone counts differ by at most one (ties aside) without float round-off
        n = sample.size
        # (capped at the last value: with fewer values than zones the top ones are empty)
        ranks = np.minimum((np.arange(1, levels) * n + levels - 1) // levels, n - 1)
        edges = np.empty(levels + 1)
        edges[1:-1] = np.partition(sample, ranks)[ranks] if ranks.size else []
    else:
        rng = np.random.default_rng(seed)
        if sample.size > _JENKS_MAX_SAMPLE:
            sample = rng.choice(sample, _JENKS_MAX_SAMPLE, replace=False)
        edges = np.empty(levels + 1)
        edges[1:-1] = _jenks_inner_breaks(np.sort(sample), levels)
    edges[0], edges[-1] = lo, hi
    return np.maximum.accumulate(edges)


def _jenks_inner_breaks(x: np.ndarray, k: int) -> np.ndarray:
    """Fisher-Jenks: the ``k - 1`` breaks minimising the within-class sum of squares.

    Dynamic programme over the sorted values ``x``: ``D[c, j]`` is the least cost
    of splitting ``x[:j]`` into ``c`` classes. Each level is vectorised over
    (end, start) pairs in row chunks, so memory stays O(chunk * n).
    """
    n = x.size
    if k == 1:
        return np.empty(0)
    if np.unique(x).size <= k:
        # too few distinct values to optimise over: split between distinct values
        uniq = np.unique(x)
        mids = (uniq[:-1] + uniq[1:]) / 2
        return np.concatenate([mids, np.full(k - 1 - mids.size, uniq[-1])])[: k - 1]
    xc = x - x.mean()
    s1 = np.concatenate([[0.0], np.cumsum(xc)])
    s2 = np.concatenate([[0.0], np.cumsum(xc * xc)])
    starts = np.arange(n)  # a class x[i:j] starts at i

    def cost(ends: np.ndarray) -> np.ndarray:
        """Sum of squared deviations of x[i:j] for every end j in ``ends`` and start i."""
        count = ends[:, None] - starts[None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            ssd = (s2[ends, None] - s2[None, :-1]) - (s1[ends, None] - s1[None, :-1]) ** 2 / count
        ssd[count <= 0] = np.inf
        return np.maximum(ssd, 0.0)

    ends_all = np.arange(n + 1)
    prev = np.full(n + 1, np.inf)
    prev[1:] = np.maximum(s2[1:] - s1[1:] ** 2 / np.arange(1, n + 1), 0.0)  # one class
    prev[0] = np.inf
    back = np.zeros((k + 1, n + 1), dtype=np.int64)
    chunk = max(1, 2_000_000 // n)
    for c in range(2, k + 1):
        cur = np.full(n + 1, np.inf)
        ends = ends_all[c:] if c < k else np.array([n])
        for lo in range(0, ends.size, chunk):
            j = ends[lo : lo + chunk]
            total = prev[None, :n] + cost(j)
            best = np.argmin(total, axis=1)
            cur[j] = total[np.arange(j.size), best]
            back[c, j] = best
        prev = cur
    bounds = [n]
    for c in range(k, 1, -1):
        bounds.append(int(back[c, bounds[-1]]))
    starts_of_classes = np.array(bounds[::-1][:-1])  # start index of classes 2..k
    return (x[starts_of_classes - 1] + x[starts_of_classes]) / 2


def classify_values(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Zone 1..levels for each value (``edges[i-1] <= v < edges[i]``, top zone closed); 0 = NaN."""
    edges = np.asarray(edges, dtype=np.float64)
    values = np.asarray(values)
    zones = (np.digitize(values, edges[1:-1], right=False) + 1).astype(np.uint8)
    zones[~np.isfinite(values)] = 0
    return zones


@gdal_cache()
def classify_raster(
    susceptibility_path: str | Path,
    zones_path: str | Path,
    edges: Sequence[float] | np.ndarray,
    window_size: int = 512,
    *,
    overviews: Sequence[int] = (2, 4, 8, 16),
    labels: Sequence[str] | None = None,
) -> Path:
    """Write the zone raster (uint8, 1 = lowest zone, 0 = nodata) from class ``edges``.

    Windowed, atomic, a COG; overviews use the mode so zones stay whole classes.
    The edges are stored in a tag so :func:`zone_table` knows the number of levels.
    The raster carries the zone colour table; beside it go ``zones.qml``, an
    attribute table (``zones.tif.aux.xml``: label, break values, colour) and a
    ``.qml`` for the susceptibility raster classed by the same breaks.
    """
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) < 0):
        raise MetalsmInputError(f"zone edges must be a non-decreasing 1-D list of >= 2: {edges}")
    if edges.size - 1 > 255:
        raise MetalsmInputError(f"at most 255 zones fit a uint8 raster, got {edges.size - 1}")
    labels = _zone_labels(edges.size - 1, labels, zones_path)
    colours = styles.zone_colours(edges.size - 1)
    colormap = {0: (0, 0, 0, 0), **{level: (*rgb, 255)
                                    for level, rgb in enumerate(colours, start=1)}}
    with open_raster(susceptibility_path) as src, windowed_geotiff(
            zones_path, Grid.from_raster(src), dtype="uint8", nodata=0,
            descriptions=["susceptibility zone (1 = lowest)"],
            tags={_ZONES_TAG: json.dumps(edges.tolist())}, overview_resampling="mode",
            overviews=overviews, colormap=colormap) as dst:
        for win in iter_windows(src.shape, window_size):
            dst.write(classify_values(read_window(src, win, 1), edges), win)
    styles.write_zone_styles(zones_path, susceptibility_path, edges, labels)
    return Path(zones_path)


def _zone_labels(levels: int, labels: Sequence[str] | None, zones_path: str | Path) -> list[str]:
    """The given zone labels (checked against the number of zones), else the defaults."""
    if labels is None:
        labels = DEFAULT_LABELS.get(levels, tuple(f"Zone {i}" for i in range(1, levels + 1)))
    labels = list(labels)
    if len(labels) != levels:
        raise MetalsmInputError(
            f"{len(labels)} zone labels given for {levels} zones in {zones_path}: {labels}"
        )
    return labels


@gdal_cache()
def zone_table(
    zones_path: str | Path,
    landslide_mask: np.ndarray | None,
    labels: Sequence[str] | None = None,
    sample_points: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    window_size: int = 512,
) -> pd.DataFrame:
    """Area and landslide share per zone: how well the zones concentrate landslides.

    ``landslide_mask`` is a boolean grid of landslide cells (only cells inside a
    zone count). ``ratio`` is landslide share / area share (frequency ratio):
    above 1 the zone holds more landslides than its area would suggest, so a good
    map has ratios rising with the zone. ``cum_*`` columns accumulate from the
    highest zone down ("the top two zones cover X % of the area and Y % of the
    landslides"). ``sample_points`` (rows, cols), e.g. landslide points, adds
    per-zone point counts and shares. The break values of each zone
    (``susceptibility_min``/``_max``) come from the raster's tag when it has one.
    """
    with open_raster(zones_path) as src:
        grid = Grid.from_raster(src)
        tag = src.tags().get(_ZONES_TAG)
        edges = np.asarray(json.loads(tag), dtype=np.float64) if tag else None
        levels = edges.size - 1 if edges is not None else None
        if landslide_mask is not None:
            landslide_mask = np.asarray(landslide_mask, dtype=bool)
            if landslide_mask.shape != grid.shape:
                raise MetalsmInputError(
                    f"landslide mask has shape {landslide_mask.shape}, but {zones_path} "
                    f"is {grid.shape}"
                )
        if sample_points is not None:
            rows, cols = (np.asarray(a, dtype=np.int64) for a in sample_points)
            inside = grid.contains(rows, cols)
            rows, cols = rows[inside], cols[inside]
        n_bins = 256
        cells = np.zeros(n_bins, dtype=np.int64)
        slides = np.zeros(n_bins, dtype=np.int64)
        points = np.zeros(n_bins, dtype=np.int64)
        for win in iter_windows(grid.shape, window_size):
            zones = src.read(1, window=win).astype(np.int64)
            if src.nodata is not None and src.nodata != 0:
                zones[zones == src.nodata] = 0
            cells += np.bincount(zones.ravel(), minlength=n_bins)[:n_bins]
            if landslide_mask is not None:
                sub = landslide_mask[win.row_off : win.row_off + win.height,
                                     win.col_off : win.col_off + win.width]
                slides += np.bincount(zones[sub], minlength=n_bins)[:n_bins]
            if sample_points is not None:
                sel = (
                    (rows >= win.row_off) & (rows < win.row_off + win.height)
                    & (cols >= win.col_off) & (cols < win.col_off + win.width)
                )
                z = zones[rows[sel] - win.row_off, cols[sel] - win.col_off]
                points += np.bincount(z, minlength=n_bins)[:n_bins]
    if levels is None:
        nonzero = np.flatnonzero(cells[1:])
        levels = int(nonzero[-1]) + 1 if nonzero.size else 0
    if levels == 0:
        raise MetalsmInputError(f"zone raster {zones_path} has no zoned cells")
    labels = _zone_labels(levels, labels, zones_path)
    n = cells[1 : levels + 1]
    table = pd.DataFrame({"level": np.arange(1, levels + 1), "label": labels})
    if edges is not None:
        table["susceptibility_min"], table["susceptibility_max"] = edges[:-1], edges[1:]
    table["n_cells"] = n
    table["area_km2"] = n * grid.cell_area / 1e6
    table["area_share"] = _share(n)
    if landslide_mask is not None:
        ls = slides[1 : levels + 1]
        table["landslide_cells"] = ls
        table["landslide_share"] = _share(ls)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = table["landslide_share"].to_numpy() / table["area_share"].to_numpy()
        table["ratio"] = np.where(n > 0, ratio, np.nan)
    if sample_points is not None:
        pts = points[1 : levels + 1]
        table["points"] = pts
        table["point_share"] = _share(pts)
    top_down = slice(None, None, -1)
    table["cum_area_share"] = table["area_share"].to_numpy()[top_down].cumsum()[top_down]
    if landslide_mask is not None:
        share = table["landslide_share"].to_numpy()
        table["cum_landslide_share"] = share[top_down].cumsum()[top_down]
    return table


def _share(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    if total == 0:
        return np.full(counts.shape, np.nan)
    return counts / total
