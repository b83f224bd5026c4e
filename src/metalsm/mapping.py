"""From a fitted model to a susceptibility map, zones and a zone table.

Everything here works window by window over ``factors.tif`` so that memory
stays bounded by the window size, not by the size of the study area.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from rasterio.windows import Window

from metalsm import styles
from metalsm.cog import gdal_cache, windowed_geotiff
from metalsm.compute import Compute
from metalsm.errors import MetalsmInputError
from metalsm.grid import Grid, iter_windows, open_raster, read_window
from metalsm.stack import stack_metadata

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
#: Threads GDAL uses to deflate the probability raster's tiles (NUM_THREADS creation option).
GDAL_WRITE_THREADS = 2
_JENKS_MAX_SAMPLE = 3000
_BREAKS_MAX_SAMPLE = 1_000_000


def _band_indexes(src: Any, factors_path: str | Path, feature_names: Sequence[str],
                  user: str) -> list[int]:
    """1-based band numbers of ``feature_names`` in an open ``factors.tif``."""
    names, _ = stack_metadata(src)
    missing = [n for n in feature_names if n not in names]
    if missing:
        raise MetalsmInputError(
            f"factor '{missing[0]}' used by {user} is not a band of {factors_path} "
            f"(bands: {', '.join(names)})"
        )
    return [names.index(n) + 1 for n in feature_names]


def _write_probability_raster(
    path: str | Path,
    indexes: Sequence[int],
    out_path: str | Path,
    predict_window: Callable[[np.ndarray, Window], tuple[np.ndarray, np.ndarray]],
    *,
    description: str,
    window_size: int,
    overviews: Sequence[int],
    progress: Callable[[int, int], Any] | None,
    compute: Compute | None = None,
) -> Path:
    """Read the ``indexes`` bands of ``path`` window by window and write probabilities.

    ``predict_window(values, window)`` gets the window's bands (float64, NaN = no
    data) and returns the mask of cells it predicted and their probabilities.
    Output: float32 Cloud-Optimized GeoTIFF on the source grid, NaN nodata, average
    overviews, written atomically (a failure leaves no output behind).

    ``compute`` (a :class:`metalsm.compute.Compute`; default serial, here) runs the
    windows (each task opens ``path`` itself) and this process writes them.
    """
    compute = compute or Compute()
    path = os.path.abspath(path)  # the workers may run in another folder
    grid = Grid.from_raster(path)

    def task(win: Window) -> tuple[np.ndarray, int]:
        """One window: the float32 probabilities (NaN where not predicted) and their count."""
        with open_raster(path) as src:
            # float64: unscaled factors (elevation in m) lose digits in float32
            values = read_window(src, win, indexes, np.float64)
        valid, proba = predict_window(values, win)
        out = np.full(valid.shape, np.nan, dtype=np.float32)
        out[valid] = proba
        return out, int(valid.sum())

    done = 0
    # GDAL compresses the tiles on GDAL_WRITE_THREADS threads: same pixels, half the write time
    with windowed_geotiff(out_path, grid, descriptions=[description], overviews=overviews,
                          lock=compute.lock(str(out_path)), predictor=3,
                          num_threads=GDAL_WRITE_THREADS) as dst:
        for win, (out, n_new) in compute.map_windows(task, iter_windows(grid.shape,
                                                                         window_size)):
            dst.write(out, win)
            done += n_new
            if progress is not None:
                progress(n_new, done)
    return Path(out_path)


def _cell_proba(model: Any, cells: np.ndarray, feature_names: list[str]) -> np.ndarray:
    """P(landslide) of ``cells`` [n, factors]: ``predict_cells`` for the registry models
    (NumPy in, no DataFrame per window), else ``predict_proba`` on a float64 DataFrame
    with the training column names (any scikit-learn estimator or pipeline)."""
    predict_cells = getattr(model, "predict_cells", None)
    if predict_cells is not None:
        return predict_cells(cells, feature_names)
    n = cells.shape[0]
    proba = np.asarray(model.predict_proba(pd.DataFrame(cells, columns=feature_names)))
    if proba.ndim != 2 or proba.shape[0] != n or proba.shape[1] < 2:
        raise MetalsmInputError(
            f"model.predict_proba returned shape {proba.shape} for {n} cells; "
            f"expected ({n}, 2)"
        )
    return proba[:, 1]


def _prepare_prediction(model: Any, n_cells: int) -> None:
    """Let a registry model compile its trees for a map of ``n_cells`` cells once, before
    the windows (and before Dask ships it to workers: the compiled code travels with it)."""
    prepare = getattr(model, "prepare_prediction", None)
    if prepare is not None:
        prepare(n_cells)


@gdal_cache()
def predict_raster(
    model: Any,
    factors_path: str | Path,
    out_path: str | Path,
    *,
    feature_names: Sequence[str],
    window_size: int = 512,
    overviews: Sequence[int] = (2, 4, 8, 16),
    progress: Callable[[int, int], Any] | None = None,
    compute: Any = None,
) -> Path:
    """Write ``model``'s landslide probability for every valid cell of ``factors.tif``.

    The stack is read one window at a time so memory does not grow with the
    raster; only cells where every selected factor is finite are predicted, as a
    float64 DataFrame with the training column names (so any scikit-learn
    estimator or pipeline works), or as a NumPy array for a model with
    ``predict_cells(values, feature_names)`` (the registry models: same numbers,
    no DataFrame per window). Output as :func:`_write_probability_raster`.

    ``progress(n_new, n_done)`` is called after each window with the number of
    cells just predicted and the running total, both counting valid cells only
    (``n_new`` plugs straight into a rich progress ``advance``). ``compute``: run the
    windows on Dask (see :func:`_write_probability_raster`); the result is the same.
    """
    feature_names = list(feature_names)
    if not feature_names:
        raise MetalsmInputError("predict_raster needs at least one feature name")

    def predict_window(values: np.ndarray, _win: Window) -> tuple[np.ndarray, np.ndarray]:
        valid = np.isfinite(values).all(axis=0)
        if not valid.any():
            return valid, np.empty(0)
        return valid, _cell_proba(model, values[:, valid].T, feature_names)

    with open_raster(factors_path) as src:
        indexes = _band_indexes(src, factors_path, feature_names, "the model")
        _prepare_prediction(model, src.height * src.width)
    return _write_probability_raster(
        factors_path, indexes, out_path, predict_window,
        description="landslide susceptibility (probability)",
        window_size=window_size, overviews=overviews, progress=progress, compute=compute,
    )


@gdal_cache()
def predict_spread_raster(
    models: Sequence[Any],
    factors_path: str | Path,
    out_path: str | Path,
    *,
    feature_names: Sequence[str],
    window_size: int = 512,
    overviews: Sequence[int] = (2, 4, 8, 16),
    progress: Callable[[int, int], Any] | None = None,
    compute: Any = None,
    description: str = "standard deviation of the landslide susceptibility over models",
) -> Path:
    """Per valid cell of ``factors.tif``, the standard deviation (``ddof=1``) of the
    landslide probabilities of ``models`` (e.g. bootstrap refits of the map model):
    how much the susceptibility moves when the model is refitted.

    Window by window like :func:`predict_raster` (each window's factors read once and
    predicted by every model; ``len(models)`` probabilities per cell held at once),
    into a float32 Cloud-Optimized GeoTIFF with NaN nodata.
    """
    feature_names = list(feature_names)
    if len(models) < 2:
        raise MetalsmInputError(f"a spread needs at least 2 models, got {len(models)}")

    def spread_window(values: np.ndarray, _win: Window) -> tuple[np.ndarray, np.ndarray]:
        valid = np.isfinite(values).all(axis=0)
        if not valid.any():
            return valid, np.empty(0)
        cells = values[:, valid].T
        return valid, np.stack([_cell_proba(m, cells, feature_names)
                                for m in models]).std(axis=0, ddof=1)

    with open_raster(factors_path) as src:
        indexes = _band_indexes(src, factors_path, feature_names, "the models")
        for model in models:
            _prepare_prediction(model, src.height * src.width)
    return _write_probability_raster(
        factors_path, indexes, out_path, spread_window, description=description,
        window_size=window_size, overviews=overviews, progress=progress, compute=compute)


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


def block_map_statistics(
    susceptibility_path: str | Path,
    blocks_path: str | Path,
    zones_path: str | Path,
    landslide_mask: np.ndarray | None,
    n_blocks: int,
    held_out_blocks: Sequence[int],
    *,
    window_size: int = 512,
) -> dict[str, float]:
    """Is a block-wise map flat, and does its top zone hold the held-out landslides?

    ``within_block_std``: mean over blocks (2+ mapped cells) of the standard deviation
    of the mapped probability inside the block (all blocks, and the held-out ones);
    ``held_out_top_zone_landslide_share`` / ``..._area_share``: within the held-out
    (meta-test) blocks, the share of landslide cells and of area in the highest zone.
    Window by window (per-block sums), so it holds one window at a time.
    """
    with open_raster(susceptibility_path) as sus, open_raster(blocks_path) as blk, \
            open_raster(zones_path) as zon:
        n = int(n_blocks)
        held = np.zeros(n + 1, dtype=bool)
        held_ids = np.asarray(held_out_blocks, dtype=np.int64)
        held[held_ids[(held_ids >= 0) & (held_ids < n)]] = True
        count = np.zeros(n + 1)
        total = np.zeros(n + 1)
        squares = np.zeros(n + 1)
        top = len(json.loads(zon.tags()[_ZONES_TAG])) - 1
        area = np.zeros(2)  # held-out cells: all zoned, in the top zone
        slides = np.zeros(2)
        for win in iter_windows(sus.shape, window_size):
            p = sus.read(1, window=win, masked=True).filled(np.nan).astype(np.float64)
            ids = blk.read(1, window=win).astype(np.int64)
            zones = zon.read(1, window=win).astype(np.int64)
            ok = np.isfinite(p) & (ids >= 0) & (ids < n)
            ids = np.where(ok, ids, n)
            count += np.bincount(ids.ravel(), minlength=n + 1)
            total += np.bincount(ids.ravel(), weights=np.where(ok, p, 0).ravel(),
                                 minlength=n + 1)
            squares += np.bincount(ids.ravel(), weights=np.where(ok, p * p, 0).ravel(),
                                   minlength=n + 1)
            in_held = ok & held[ids] & (zones > 0)
            area += [in_held.sum(), (in_held & (zones == top)).sum()]
            if landslide_mask is not None:
                sub = landslide_mask[win.row_off:win.row_off + win.height,
                                     win.col_off:win.col_off + win.width] & in_held
                slides += [sub.sum(), (sub & (zones == top)).sum()]
    mean = total[:n] / np.maximum(count[:n], 1)
    std = np.sqrt(np.maximum(squares[:n] / np.maximum(count[:n], 1) - mean ** 2, 0))
    mapped = count[:n] >= 2

    def mean_of(sel: np.ndarray) -> float:
        return float(std[sel].mean()) if sel.any() else float("nan")

    return {
        "within_block_std": mean_of(mapped),
        "within_block_std_held_out": mean_of(mapped & held[:n]),
        "held_out_top_zone_area_share": float(area[1] / area[0]) if area[0] else float("nan"),
        "held_out_top_zone_landslide_share": (float(slides[1] / slides[0]) if slides[0]
                                              else float("nan")),
    }


#: Probability classes of :func:`success_rate` (the AUC is exact to about 1e-4).
SUCCESS_RATE_BINS = 10_000


@gdal_cache()
def success_rate(susceptibility_path: str | Path, landslide_mask: np.ndarray, *,
                 window_size: int = 512, bins: int = SUCCESS_RATE_BINS) -> Any:
    """The success-rate curve of a probability map: its cells ranked from the most
    susceptible down against the share of ``landslide_mask`` cells they hold.

    Window by window into ``bins`` equal probability classes, so memory does not grow
    with the raster. The landslides are those the map was trained from, so this
    measures fit; :func:`metalsm.validation.prediction_rate` measures prediction.
    """
    from metalsm.validation import rate_curve_from_counts

    area = np.zeros(bins, dtype=np.int64)
    slides = np.zeros(bins, dtype=np.int64)
    with open_raster(susceptibility_path) as src:
        landslide_mask = np.asarray(landslide_mask, dtype=bool)
        if landslide_mask.shape != src.shape:
            raise MetalsmInputError(f"landslide mask has shape {landslide_mask.shape}, but "
                                    f"{susceptibility_path} is {src.shape}")
        for win in iter_windows(src.shape, window_size):
            values = src.read(1, window=win)
            valid = np.isfinite(values)
            cls = np.clip((values[valid] * bins).astype(np.int64), 0, bins - 1)
            area += np.bincount(cls, minlength=bins)
            sub = landslide_mask[win.row_off : win.row_off + win.height,
                                 win.col_off : win.col_off + win.width][valid]
            slides += np.bincount(cls[sub], minlength=bins)
    return rate_curve_from_counts(area, slides)


def _share(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    if total == 0:
        return np.full(counts.shape, np.nan)
    return counts / total


@gdal_cache()
def predict_blockwise_raster(
    block_models: Any,
    encoder: Any,
    factors_path: str | Path,
    blocks_path: str | Path,
    out_path: str | Path,
    *,
    window_size: int = 512,
    overviews: Sequence[int] = (2, 4, 8, 16),
    progress: Callable[[int, int], Any] | None = None,
    compute: Any = None,
) -> Path:
    """Write the block-wise susceptibility: every cell predicted by its own block's model.

    ``factors.tif`` and ``blocks.tif`` (int32 block id, -1 outside) are read window by
    window together, so memory does not grow with the raster. ``encoder.factor_names``
    are the raw bands the models need and ``encoder.transform(cells)`` turns a
    ``[n, n_factors]`` array into the model's feature matrix (one-hot categories);
    ``block_models.predict_proba(features, block_ids)`` gives P(landslide). Cells
    with a missing factor or outside every block are NaN. Output as :func:`predict_raster`.
    """
    feature_names = list(encoder.factor_names)
    with open_raster(factors_path) as src, open_raster(blocks_path) as bsrc:
        indexes = _band_indexes(src, factors_path, feature_names, "the block models")
        if bsrc.shape != src.shape or not bsrc.transform.almost_equals(src.transform):
            raise MetalsmInputError(
                f"block raster {blocks_path} {bsrc.shape} is not on the grid of "
                f"{factors_path} {src.shape}"
            )
    blocks_file = os.path.abspath(blocks_path)

    def predict_window(values: np.ndarray, win: Window) -> tuple[np.ndarray, np.ndarray]:
        with open_raster(blocks_file) as own:  # a task: its own file handle
            ids = own.read(1, window=win).astype(np.int64)
        valid = np.isfinite(values).all(axis=0) & (ids >= 0)
        if not valid.any():
            return valid, np.empty(0)
        features = encoder.transform(values[:, valid].T)
        return valid, block_models.predict_proba(features, ids[valid])

    return _write_probability_raster(
        factors_path, indexes, out_path, predict_window,
        description="landslide susceptibility (probability, block-wise)",
        window_size=window_size, overviews=overviews, progress=progress, compute=compute,
    )
