"""Figures for the report: ROC curves, maps over a hillshade, zone bar charts.

Figures are built on bare :class:`matplotlib.figure.Figure` objects (Agg
rendering, no pyplot state), so nothing leaks between calls, nothing needs a
display, and a figure is freed as soon as it has been saved (atomically).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import shapely
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import (
    BoundaryNorm,
    Colormap,
    LinearSegmentedColormap,
    ListedColormap,
    Normalize,
)
from matplotlib.figure import Figure
from matplotlib.legend_handler import HandlerTuple
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FuncFormatter, MaxNLocator

from metalsm.atomic import atomic_path
from metalsm.raster import Grid
from metalsm.raster._styles import _ZONE_RAMP_RANGE, zone_colours, zone_legend_labels

__all__ = [
    "CURVE_COLOURS",
    "DPI",
    "FOLD_COLOURS",
    "RELIEF_STRENGTH",
    "ZONE_CMAP",
    "block_boundaries",
    "candle_table",
    "draw_inventory",
    "hillshade",
    "map_axes",
    "plot_block_map",
    "plot_candles",
    "plot_fold_maps",
    "plot_maps_side_by_side",
    "plot_point_blocks",
    "plot_raster_map",
    "plot_rate_curves",
    "plot_roc",
    "plot_roc_by_scheme",
    "plot_susceptibility_map",
    "plot_zone_bars",
    "read_decimated",
    "save_figure",
    "shaded_colours",
    "zone_colors",
    "plot_correlation",
    "plot_credibility",
    "plot_fr_tables",
]

DPI = 150
#: Low-to-high susceptibility colours: the zone ramp of the QGIS styles and colour tables
#: (pale yellow -> dark red, ordered by lightness; see :mod:`metalsm.raster._styles`).
ZONE_CMAP = LinearSegmentedColormap.from_list(
    "metalsm_zones", matplotlib.colormaps["YlOrRd"](np.linspace(*_ZONE_RAMP_RANGE, 256)))
#: How strongly the hillshade modulates map colours; flat ground shows the exact colour.
RELIEF_STRENGTH = 0.35


def hillshade(
    dem: np.ndarray, cell_size: float, azimuth: float = 315.0, altitude: float = 45.0
) -> np.ndarray:
    """Illumination in [0, 1] of a north-up DEM lit from ``azimuth`` (degrees from north).

    The cosine of the angle between the surface normal and the sun; a flat cell
    gets sin(altitude). NaN cells (and their gradient neighbours) are NaN. Used
    as a grey relief backdrop for maps.
    """
    dem = np.asarray(dem, dtype=np.float64)
    drow, dcol = np.gradient(dem, cell_size)
    dz_east, dz_north = dcol, -drow  # rows run southward
    az, alt = math.radians(azimuth), math.radians(altitude)
    sun = (math.sin(az) * math.cos(alt), math.cos(az) * math.cos(alt), math.sin(alt))
    shade = (-dz_east * sun[0] - dz_north * sun[1] + sun[2]) / np.sqrt(
        1.0 + dz_east**2 + dz_north**2
    )
    shade = np.clip(shade, 0.0, 1.0)
    shade[np.isnan(dem)] = np.nan
    return shade


def shaded_colours(rgba: np.ndarray, dem: np.ndarray, cell_size: float,
                   strength: float = RELIEF_STRENGTH, altitude: float = 45.0) -> np.ndarray:
    """Map colours modulated by relief: each colour times ``1 + strength * (shade /
    shade_flat - 1)``, so flat ground shows exactly the legend colour, slopes facing the
    light a little lighter, slopes facing away darker. Opaque (no transparency over a
    grey hillshade, which would change every colour away from the legend's)."""
    shade = hillshade(dem, cell_size, altitude=altitude)
    factor = 1.0 + strength * (np.nan_to_num(shade, nan=math.sin(math.radians(altitude)))
                               / math.sin(math.radians(altitude)) - 1.0)
    out = np.array(rgba, dtype=np.float64, copy=True)
    out[..., :3] = np.clip(out[..., :3] * factor[..., None], 0.0, 1.0)
    return out


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Render to PNG atomically; the figure is then unreferenced and freed."""
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png", bbox_inches="tight")
    fig.clear()
    return Path(path)


def plot_roc(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float], float]],
    path: str | Path,
    title: str = "ROC curves",
) -> Path:
    """One ROC line per model (AUC in the legend) against the chance diagonal."""
    if not curves:
        raise ValueError(f"plot_roc needs at least one curve (got none) for {path}")
    fig = Figure(figsize=(5.5, 5.2))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="chance (0.500)")
    for name, (fpr, tpr, auc) in sorted(curves.items(), key=lambda kv: -kv[1][2]):
        ax.plot(fpr, tpr, linewidth=1.8, label=f"{name} ({auc:.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False positive rate", ylabel="True positive rate")
    ax.set_title(title)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(title="model (AUC)", loc="lower right", frameon=True)
    return save_figure(fig, path)


#: Okabe-Ito colours (distinguishable with colour-vision deficiency) for curve figures.
CURVE_COLOURS = {"spatial": "#0072B2", "random": "#E69F00", "success": "#D55E00"}


def plot_roc_by_scheme(
    folds: Mapping[str, Sequence[tuple[Sequence[float], Sequence[float]]]],
    path: str | Path,
    title: str = "ROC per fold",
) -> Path:
    """One model's ROC under each fold scheme: every fold thin, the mean over folds bold
    (true positive rates averaged at fixed false positive rates) and a ±1 std band;
    the legend gives the AUC mean ± std over folds."""
    if not folds:
        raise ValueError(f"plot_roc_by_scheme needs at least one scheme for {path}")
    grid = np.linspace(0.0, 1.0, 201)
    fig = Figure(figsize=(5.5, 5.2))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="chance (0.500)")
    for scheme, curves in folds.items():
        colour = CURVE_COLOURS.get(scheme, "0.3")
        tprs = np.array([np.interp(grid, fpr, tpr) for fpr, tpr in curves])
        aucs = np.array([np.sum(np.diff(fpr) * (np.asarray(tpr)[1:] + np.asarray(tpr)[:-1]) / 2)
                         for fpr, tpr in curves])
        for tpr in tprs:
            ax.plot(grid, tpr, color=colour, linewidth=0.6, alpha=0.35)
        mean, std = tprs.mean(axis=0), tprs.std(axis=0)
        ax.fill_between(grid, np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1),
                        color=colour, alpha=0.18, linewidth=0)
        ax.plot(grid, mean, color=colour, linewidth=2,
                label=f"{scheme} folds ({aucs.mean():.3f} ± {aucs.std():.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False positive rate", ylabel="True positive rate")
    _finish_square(ax, title, "scheme (AUC mean ± std over folds)")
    return save_figure(fig, path)


def _finish_square(ax: Any, title: str, legend_title: str) -> None:
    """Title, equal axes, light grid and a small legend in the lower right (curve plots)."""
    ax.set_title(title)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(title=legend_title, loc="lower right", frameon=True, fontsize=8,
              title_fontsize=8)


def plot_rate_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float], float]],
    path: str | Path,
    title: str = "Success and prediction rates",
) -> Path:
    """Cumulative share of landslides against cumulative share of area, cells ranked from
    the most susceptible down, one line per curve (area under the curve in the legend);
    ``curves`` keys starting with ``success``/``spatial``/``random`` pick the colour."""
    if not curves:
        raise ValueError(f"plot_rate_curves needs at least one curve for {path}")
    fig = Figure(figsize=(5.5, 5.2))
    ax = fig.add_subplot()
    ax.plot([0, 100], [0, 100], color="0.6", linestyle="--", linewidth=1,
            label="random map (0.500)")
    for name, (area, slides, auc) in curves.items():
        colour = next((c for k, c in CURVE_COLOURS.items() if k in name), None)
        style = "-" if name.startswith(("success", "prediction rate, spatial")) else ":"
        ax.plot(np.asarray(area) * 100, np.asarray(slides) * 100, color=colour, linestyle=style,
                linewidth=2, label=f"{name} ({auc:.3f})")
    ax.set(xlim=(0, 100), ylim=(0, 101), xlabel="Cumulative share of area, most susceptible "
           "first (%)", ylabel="Cumulative share of landslides (%)")
    _finish_square(ax, title, "curve (area under the curve)")
    return save_figure(fig, path)


#: Okabe-Ito qualitative colours (colour-vision-deficiency safe) for fold maps.
FOLD_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00",
                "#F0E442", "#000000")


def plot_fold_maps(
    x: np.ndarray, y: np.ndarray, folds: Mapping[str, np.ndarray], grid: Grid,
    path: str | Path, *, dem: np.ndarray | None = None, labels: np.ndarray | None = None,
) -> Path:
    """Where each cross-validation fold lies: one panel per scheme, samples coloured by
    fold (landslides as triangles), so random folds show as a mix and spatial folds as
    regions."""
    if not folds:
        raise ValueError(f"plot_fold_maps needs at least one scheme for {path}")
    n = len(folds)
    aspect = grid.height / grid.width
    fig = Figure(figsize=(5.0 * n + 1.2, 5.0 * aspect + 1.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, n, squeeze=False)).ravel()
    slid = np.zeros(np.asarray(x).size, bool) if labels is None else np.asarray(labels) == 1
    for ax, (scheme, fold) in zip(axes, folds.items(), strict=True):
        map_axes(ax, grid, dem, title=f"{scheme} folds")
        ids = np.unique(fold)
        for k in ids:
            colour = FOLD_COLOURS[int(np.flatnonzero(ids == k)[0]) % len(FOLD_COLOURS)]
            for marker, pick in (("o", ~slid), ("^", slid)):
                sel = (fold == k) & pick
                ax.scatter(np.asarray(x)[sel], np.asarray(y)[sel], s=8, c=colour,
                           marker=marker, edgecolors="white", linewidths=0.25, zorder=4,
                           label=f"fold {k}" if marker == "o" else None)
        ax.title.set_fontsize(10)
    axes[-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, markerscale=3,
                    title="fold (● stable, ▲ landslide)", title_fontsize=8, frameon=False)
    return save_figure(fig, path)


def _figure_for_grid(grid: Grid, width_in: float = 8.0) -> tuple[Figure, Any]:
    """A figure whose map panel has the grid's aspect ratio (room kept for a legend)."""
    aspect = grid.height / grid.width
    fig = Figure(figsize=(width_in, max(3.0, min(14.0, width_in * aspect * 0.9 + 0.8))))
    return fig, fig.add_subplot()


def map_axes(ax: Any, grid: Grid, dem: np.ndarray | None = None, *, title: str | None = None):
    """Prepare ``ax`` as a map of ``grid``: grey hillshade, km ticks, scale bar, north arrow.

    Reused by every map figure (susceptibility, blocks, credibility ...).
    Returns the imshow extent ``(left, right, bottom, top)``.
    """
    left, bottom, right, top = grid.bounds
    extent = (left, right, bottom, top)
    if dem is not None:
        if dem.shape != grid.shape:
            raise ValueError(f"DEM shape {dem.shape} does not match the grid {grid.shape}")
        shade = np.ma.masked_invalid(hillshade(dem, grid.cell_size))
        ax.imshow(shade, cmap="gray", vmin=0, vmax=1, extent=extent, interpolation="bilinear")
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    ax.set_aspect("equal")
    projected = grid.crs is not None and grid.crs.is_projected
    if projected:
        km = FuncFormatter(lambda v, _pos: f"{v / 1000:.10g}")
        ax.xaxis.set_major_formatter(km)
        ax.yaxis.set_major_formatter(km)
        unit = "km"
        epsg = grid.crs.to_epsg()
        crs_name = f"EPSG:{epsg}" if epsg else "projected CRS"
        ax.set_xlabel(f"Easting ({unit}, {crs_name})")
        ax.set_ylabel(f"Northing ({unit})")
        _scale_bar(ax, left, right, bottom, top)
    else:
        ax.set_xlabel("Longitude")
        ax.set_ylabel("Latitude")
    ax.xaxis.set_major_locator(MaxNLocator(6))
    ax.yaxis.set_major_locator(MaxNLocator(7))
    ax.tick_params(labelsize=8)
    _north_arrow(ax)
    if title:
        ax.set_title(title)
    return extent


def _scale_bar(ax: Any, left: float, right: float, bottom: float, top: float) -> None:
    """A black-and-white bar of a round length (1, 2 or 5 x 10^k m) in the lower left."""
    target = (right - left) / 5
    magnitude = 10 ** math.floor(math.log10(target))
    length = max(m * magnitude for m in (1, 2, 5) if m * magnitude <= target)
    x0 = left + 0.04 * (right - left)
    y0 = bottom + 0.04 * (top - bottom)
    h = 0.012 * (top - bottom)
    for i, colour in enumerate(("black", "white")):
        ax.add_patch(
            Rectangle(
                (x0 + i * length / 2, y0), length / 2, h, facecolor=colour,
                edgecolor="black", linewidth=0.6, zorder=6,
            )
        )
    text = f"{length / 1000:g} km" if length >= 1000 else f"{length:g} m"
    ax.text(x0 + length / 2, y0 + 1.8 * h, text, ha="center", va="bottom", fontsize=8,
            zorder=6, bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 1})


def _north_arrow(ax: Any) -> None:
    ax.annotate(
        "N", xy=(0.95, 0.96), xytext=(0.95, 0.87), xycoords="axes fraction",
        ha="center", va="center", fontsize=10, fontweight="bold", zorder=7,
        arrowprops={"arrowstyle": "-|>", "facecolor": "black", "linewidth": 1.2},
        bbox={"boxstyle": "circle,pad=0.15", "facecolor": "white", "alpha": 0.7,
              "edgecolor": "none"},
    )


def draw_inventory(ax: Any, inventory: Any, *, color: str = "black", linewidth: float = 0.35):
    """Landslide outlines (polygons/lines) and points on ``ax`` (geometries in the grid CRS)."""
    if inventory is None or len(inventory) == 0:
        return
    geoms = np.asarray(getattr(inventory, "geometry", inventory))
    geoms = geoms[~shapely.is_missing(geoms) & ~shapely.is_empty(geoms)]
    kind = shapely.get_type_id(geoms)
    points = geoms[np.isin(kind, (0, 4))]  # Point, MultiPoint
    areal = geoms[np.isin(kind, (3, 6))]  # Polygon, MultiPolygon
    lines = geoms[np.isin(kind, (1, 2, 5))]  # LineString, LinearRing, MultiLineString
    outline = np.concatenate([shapely.boundary(areal), lines]) if areal.size else lines
    if outline.size:
        parts = shapely.get_parts(outline)
        coords, index = shapely.get_coordinates(parts, return_index=True)
        splits = np.flatnonzero(np.diff(index)) + 1
        segments = np.split(coords, splits)
        ax.add_collection(LineCollection(segments, colors=color, linewidths=linewidth, zorder=5))
    if points.size:
        xy = shapely.get_coordinates(points)
        ax.scatter(xy[:, 0], xy[:, 1], s=3, c=color, linewidths=0, zorder=5)


def plot_raster_map(
    array: np.ndarray,
    grid: Grid,
    path: str | Path,
    *,
    dem: np.ndarray | None = None,
    inventory: Any = None,
    cmap: str | Colormap = "viridis",
    norm: Normalize | None = None,
    title: str | None = None,
    colorbar_label: str | None = None,
    legend: Sequence[tuple[str, Any]] | None = None,
    legend_title: str | None = None,
    inventory_label: str = "landslide inventory",
) -> Path:
    """A raster over a hillshade with the inventory on top, in map coordinates.

    NaN cells are transparent (the hillshade shows through). Colours are opaque and
    shaded by :func:`shaded_colours`, so flat ground matches the legend exactly.
    ``legend`` (label, colour) pairs give a discrete legend; otherwise a colour bar
    labelled ``colorbar_label`` is drawn.
    """
    array = np.asarray(array)
    if array.shape != grid.shape:
        raise ValueError(f"array shape {array.shape} does not match the grid {grid.shape}")
    fig, ax = _figure_for_grid(grid)
    extent = map_axes(ax, grid, dem, title=title)
    image = _draw_colours(ax, array, cmap, norm, extent, dem, grid.cell_size)
    draw_inventory(ax, inventory)
    handles = [Patch(facecolor=c, edgecolor="0.3", label=lab) for lab, c in (legend or [])]
    if inventory is not None and len(inventory):
        handles.append(Patch(facecolor="none", edgecolor="black", label=inventory_label))
    if legend:
        ax.legend(handles=handles, title=legend_title, loc="upper left", fontsize=8,
                  title_fontsize=8, framealpha=0.85, bbox_to_anchor=(1.01, 1.0))
    else:
        bar = fig.colorbar(image, ax=ax, shrink=0.7, pad=0.02)
        if colorbar_label:
            bar.set_label(colorbar_label)
        if handles:
            ax.legend(handles=handles, loc="upper left", fontsize=8, framealpha=0.85)
    return save_figure(fig, path)


def _draw_colours(ax: Any, array: np.ndarray, cmap: str | Colormap, norm: Normalize | None,
                  extent: tuple, dem: np.ndarray | None, cell_size: float) -> ScalarMappable:
    """``array`` coloured by ``cmap``/``norm`` as opaque pixels (shaded by the DEM when
    given; NaN transparent); returns the mappable for a colour bar."""
    mappable = ScalarMappable(norm=norm, cmap=cmap)
    data = np.ma.masked_invalid(np.asarray(array, dtype=np.float64))
    if norm is None:
        mappable.set_array(data)
        mappable.autoscale()
    rgba = mappable.to_rgba(data)
    if dem is not None and dem.shape == array.shape:
        rgba = shaded_colours(rgba, dem, cell_size)
    rgba[..., 3] = np.where(np.ma.getmaskarray(data), 0.0, 1.0)
    ax.imshow(rgba, extent=extent, interpolation="nearest", zorder=2)
    return mappable


def zone_colors(levels: int) -> list[tuple[float, float, float, float]]:
    """``levels`` colours from pale yellow (lowest) to dark red (highest): the colour
    table of ``zones.tif`` and its QGIS style."""
    return [(r / 255, g / 255, b / 255, 1.0) for r, g, b in zone_colours(levels)]


def plot_susceptibility_map(
    zones_or_values: np.ndarray,
    grid: Grid,
    dem: np.ndarray | None,
    inventory: Any,
    path: str | Path,
    *,
    labels: Sequence[str] | None = None,
    title: str = "Landslide susceptibility",
    categorical: bool = True,
    edges: Sequence[float] | None = None,
) -> Path:
    """The susceptibility map: zones (1..levels, 0 = nodata) or probabilities in [0, 1].

    Categorical zones get a discrete legend with ``labels`` (and each zone's
    probability range when the class ``edges`` are given); continuous
    probabilities a colour bar.
    """
    array = np.asarray(zones_or_values)
    if categorical:
        zones = array.astype(np.int64, copy=False)
        levels = len(labels) if labels is not None else max(int(zones.max(initial=0)), 1)
        if labels is None:
            from metalsm.mapping import DEFAULT_LABELS

            labels = DEFAULT_LABELS.get(levels, [f"Zone {i}" for i in range(1, levels + 1)])
        colours = zone_colors(levels)
        data = np.where((zones >= 1) & (zones <= levels), zones, np.nan)
        legend_title = "susceptibility zone"
        if edges is not None:
            labels = zone_legend_labels(edges, labels)
            legend_title += "\n(landslide probability)"
        return plot_raster_map(
            data, grid, path, dem=dem, inventory=inventory, cmap=ListedColormap(colours),
            norm=BoundaryNorm(np.arange(0.5, levels + 1.5), levels), title=title,
            legend=list(zip(labels, colours, strict=True)), legend_title=legend_title,
        )
    return plot_raster_map(
        array, grid, path, dem=dem, inventory=inventory, cmap=ZONE_CMAP,
        norm=Normalize(0.0, 1.0), title=title, colorbar_label="landslide probability",
    )


def plot_zone_bars(
    zone_table: pd.DataFrame, path: str | Path, title: str = "Area and landslides per zone"
) -> Path:
    """Grouped bars: share of area vs share of landslides per zone, with the ratio on top.

    A good map puts a small share of the area but a large share of landslides in
    its highest zones.
    """
    required = {"label", "area_share", "landslide_share"}
    if missing := required - set(zone_table.columns):
        raise ValueError(f"zone table lacks columns {sorted(missing)} needed for {path}")
    n = len(zone_table)
    x = np.arange(n)
    width = 0.38
    fig = Figure(figsize=(max(5.0, 1.2 * n + 2.5), 4.2))
    ax = fig.add_subplot()
    area = zone_table["area_share"].to_numpy(dtype=float) * 100
    slides = zone_table["landslide_share"].to_numpy(dtype=float) * 100
    colours = zone_colors(n)
    ax.bar(x - width / 2, area, width, color="0.75", edgecolor="0.3", label="area")
    ax.bar(x + width / 2, slides, width, color=colours, edgecolor="0.3", label="landslides")
    if "ratio" in zone_table.columns:
        for xi, top, ratio in zip(x, np.fmax(area, slides), zone_table["ratio"], strict=True):
            if np.isfinite(ratio):
                ax.text(xi, top + 1, f"×{ratio:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [str(v) for v in zone_table["label"]])
    ax.set_xlabel("zone  (×n above the bars: landslide share ÷ area share, the frequency "
                  "ratio;\nabove 1, the zone holds more landslides than its area would)",
                  fontsize=8)
    ax.set_ylabel("share (%)")
    ax.set_ylim(0, max(np.nanmax(np.concatenate([area, slides, [0]])) * 1.15, 1))
    ax.set_title(title)
    ax.legend(
        [Patch(facecolor="0.75", edgecolor="0.3"),
         tuple(Patch(facecolor=c, edgecolor="0.3") for c in colours)],
        ["share of area", "share of landslides (zone colours)"],
        handler_map={tuple: HandlerTuple(ndivide=None, pad=0)},
        loc="upper left", fontsize=8, handlelength=max(2.0, 0.8 * n),
    )
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def block_boundaries(labels: np.ndarray) -> np.ndarray:
    """Cells on the edge of their block (a 4-neighbour has another label)."""
    edge = np.zeros(labels.shape, dtype=bool)
    vertical = labels[1:, :] != labels[:-1, :]
    horizontal = labels[:, 1:] != labels[:, :-1]
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return edge & (labels >= 0)


def plot_block_map(
    labels: np.ndarray,
    grid: Grid,
    path: str | Path,
    *,
    dem: np.ndarray | None = None,
    inventory: Any = None,
    title: str = "Blocks",
) -> Path:
    """Block outlines and ids over the hillshade, blocks lightly tinted, inventory on top."""
    labels = np.asarray(labels)
    if labels.shape != grid.shape:
        raise ValueError(f"block labels shape {labels.shape} does not match the grid {grid.shape}")
    n_blocks = int(labels.max(initial=-1)) + 1
    if n_blocks == 0:
        raise ValueError(f"no blocks to draw for {path}")
    fig, ax = _figure_for_grid(grid)
    extent = map_axes(ax, grid, dem, title=title)
    tint = matplotlib.colormaps["tab20"]
    ax.imshow(np.ma.masked_less(labels % 20, 0) if n_blocks else labels, cmap=tint,
              vmin=0, vmax=19, alpha=0.25, extent=extent, interpolation="nearest", zorder=2)
    ax.imshow(np.ma.masked_where(~block_boundaries(labels), labels), cmap="Greys", vmin=-1,
              vmax=0, extent=extent, interpolation="nearest", zorder=3)
    rows, cols = np.nonzero(labels >= 0)
    ids = labels[rows, cols]
    counts = np.bincount(ids, minlength=n_blocks)
    mean_row = np.bincount(ids, rows, minlength=n_blocks) / np.maximum(counts, 1)
    mean_col = np.bincount(ids, cols, minlength=n_blocks) / np.maximum(counts, 1)
    x, y = grid.xy(mean_row - 0.5, mean_col - 0.5)
    for block in np.flatnonzero(counts):
        ax.text(x[block], y[block], str(block), ha="center", va="center", fontsize=6,
                zorder=6, color="black",
                bbox={"facecolor": "white", "alpha": 0.6, "edgecolor": "none", "pad": 0.5})
    draw_inventory(ax, inventory, color="#b2182b", linewidth=0.3)
    if inventory is not None and len(inventory):
        ax.legend(handles=[Patch(facecolor="none", edgecolor="#b2182b",
                                 label="landslide inventory")],
                  loc="upper left", fontsize=8, framealpha=0.85)
    return save_figure(fig, path)


def plot_point_blocks(
    x: np.ndarray,
    y: np.ndarray,
    blocks: np.ndarray,
    path: str | Path,
    *,
    labels: np.ndarray | None = None,
    title: str = "Blocks of the sample table",
) -> Path:
    """Sample points coloured by block (landslides as filled dots), block ids at centroids."""
    x, y, blocks = np.asarray(x, float), np.asarray(y, float), np.asarray(blocks)
    if not (x.shape == y.shape == blocks.shape) or x.size == 0:
        raise ValueError(f"x, y and blocks must be equal-length non-empty arrays for {path}")
    span_x, span_y = np.ptp(x) or 1.0, np.ptp(y) or 1.0
    fig = Figure(figsize=(8.0, max(3.0, min(12.0, 8.0 * span_y / span_x))))
    ax = fig.add_subplot()
    tint = matplotlib.colormaps["tab20"]
    colours = tint((blocks % 20) / 19)
    stable = np.ones(x.size, bool) if labels is None else np.asarray(labels) == 0
    ax.scatter(x[stable], y[stable], s=3, c=colours[stable], marker="o", linewidths=0)
    if labels is not None:
        slid = ~stable
        ax.scatter(x[slid], y[slid], s=5, c=colours[slid], marker="^", linewidths=0)
    n = int(blocks.max()) + 1
    counts = np.bincount(blocks, minlength=n)
    cx = np.bincount(blocks, x, minlength=n) / np.maximum(counts, 1)
    cy = np.bincount(blocks, y, minlength=n) / np.maximum(counts, 1)
    for block in np.flatnonzero(counts):
        ax.text(cx[block], cy[block], str(block), fontsize=6, ha="center", va="center",
                bbox={"facecolor": "white", "alpha": 0.6, "edgecolor": "none", "pad": 0.5})
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_title(title)
    ax.tick_params(labelsize=8)
    return save_figure(fig, path)


def _read_map(source: Any, max_side: int) -> tuple[np.ndarray, Grid | None]:
    """An array as given, or a raster path read at most ``max_side`` cells a side."""
    if not isinstance(source, str | Path):
        return np.asarray(source, dtype=np.float64), None
    return read_decimated(source, max_side)


def read_decimated(path: str | Path, max_side: int, band: int = 1,
                   resampling: str = "average") -> tuple[np.ndarray, Grid]:
    """One band of a raster read at most ``max_side`` cells a side (a decimated read, so
    a figure's memory does not grow with the raster), NaN for no data, with its grid.
    ``resampling``: "average" for continuous values, "mode" for classes (zones)."""
    import rasterio
    from rasterio.enums import Resampling

    with rasterio.open(path) as src:
        scale = max(1.0, max(src.height, src.width) / max_side)
        shape = (max(1, round(src.height / scale)), max(1, round(src.width / scale)))
        data = src.read(band, out_shape=shape, masked=True,
                        resampling=Resampling[resampling])
        transform = src.transform @ src.transform.scale(src.width / shape[1],
                                                        src.height / shape[0])
        grid = Grid(src.crs, transform, shape[0], shape[1])
    return np.ma.filled(data.astype(np.float64), np.nan), grid


def plot_maps_side_by_side(
    maps: Sequence[Any],
    titles: Sequence[str],
    path: str | Path,
    *,
    grid: Grid | None = None,
    dem: np.ndarray | None = None,
    inventory: Any = None,
    cmap: str | Colormap = ZONE_CMAP,
    vmin: float = 0.0,
    vmax: float = 1.0,
    colorbar_label: str = "landslide probability",
    ncols: int | None = None,
    max_side: int = 1200,
    suptitle: str | None = None,
) -> Path:
    """Several susceptibility maps at one scale: same extent, one colour ramp, one colour bar.

    ``maps`` are arrays on ``grid`` or raster paths (read decimated to ``max_side``; all
    must cover the same extent). The DEM hillshade and the inventory (in the grid CRS)
    are drawn under/over every panel.
    """
    if len(maps) != len(titles) or not maps:
        raise ValueError(f"{len(maps)} maps and {len(titles)} titles for {path}")
    arrays, grids = zip(*(_read_map(m, max_side) for m in maps), strict=True)
    grids = [g or grid for g in grids]
    if any(g is None for g in grids):
        raise ValueError(f"arrays need a grid= for {path}")
    bounds = np.array([g.bounds for g in grids])
    if np.abs(bounds - bounds[0]).max() > grids[0].cell_size:
        raise ValueError(f"maps for {path} do not share one extent: {bounds.tolist()}")
    for a, g in zip(arrays, grids, strict=True):
        if a.shape != g.shape:
            raise ValueError(f"map shape {a.shape} does not match its grid {g.shape}")
    n = len(arrays)
    ncols = ncols or min(n, 4)
    nrows = math.ceil(n / ncols)
    ref = grids[0]
    panel_w = 4.2
    panel_h = panel_w * ref.height / ref.width
    fig = Figure(figsize=(panel_w * ncols + 1.0, panel_h * nrows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    norm = Normalize(vmin, vmax)
    shade_grid = grid if dem is not None and grid is not None else None
    image = None
    for ax, array, g, title in zip(axes, arrays, grids, titles, strict=False):
        map_axes(ax, shade_grid or g, dem if shade_grid is not None else None, title=title)
        left, bottom, right, top = g.bounds
        image = _draw_colours(ax, array, cmap, norm, (left, right, bottom, top),
                              dem if shade_grid is not None else None, g.cell_size)
        draw_inventory(ax, inventory, linewidth=0.3)
        ax.title.set_fontsize(10)
    for ax in axes[n:]:
        ax.set_visible(False)
    bar = fig.colorbar(image, ax=axes[:n].tolist(), shrink=0.8, pad=0.01)
    bar.set_label(colorbar_label)
    if inventory is not None and len(inventory):
        axes[0].legend(handles=[Patch(facecolor="none", edgecolor="black",
                                      label="landslide inventory")],
                       loc="upper left", fontsize=7, framealpha=0.85)
    if suptitle:
        fig.suptitle(suptitle)
    return save_figure(fig, path)


def candle_table(summary: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """The candles of :func:`plot_candles`: one row per method × K (in order of
    appearance) with ``mean``, ``std``, ``min``, ``max`` of ``metric``."""
    cols = {f"{metric}_{s}": s for s in ("mean", "std", "min", "max")}
    missing = [c for c in ("method", "k", *cols) if c not in summary.columns]
    if missing:
        raise ValueError(f"candle chart: summary lacks column(s) {missing}")
    out = summary[["method", "k", *cols]].rename(columns=cols).copy()
    out["k"] = out["k"].astype(str)
    return out.reset_index(drop=True)


def plot_candles(
    summary: pd.DataFrame, path: str | Path, *, metric: str = "accuracy",
    title: str | None = None,
) -> Path:
    """Candle chart of ``metric`` against K: per method and K a mean marker, a ±σ bar
    and min/max whiskers; methods side by side within each K (summary as
    :func:`metalsm.evaluation.summarize` gives it)."""
    candles = candle_table(summary, metric)
    ks = list(dict.fromkeys(candles["k"]))
    methods = list(dict.fromkeys(candles["method"]))
    width = 0.8 / max(len(methods), 1)
    colors = matplotlib.colormaps["tab10"]
    fig = Figure(figsize=(max(5.5, 1.2 + 0.45 * len(ks) * len(methods)), 4.2))
    ax = fig.add_subplot()
    for j, method in enumerate(methods):
        part = candles[candles["method"] == method]
        x = np.array([ks.index(k) for k in part["k"]]) + (j - (len(methods) - 1) / 2) * width
        color = colors(j % 10)
        ax.vlines(x, part["min"], part["max"], color=color, linewidth=1)
        ax.bar(x, 2 * part["std"], width * 0.6, bottom=part["mean"] - part["std"],
               color=color, alpha=0.35, edgecolor=color)
        ax.plot(x, part["mean"], linestyle="none", marker="o", color=color, label=method)
    lo = float(np.nanmin(np.r_[candles["min"], candles["mean"] - candles["std"]]))
    hi = float(np.nanmax(np.r_[candles["max"], candles["mean"] + candles["std"]]))
    if np.isfinite(lo) and np.isfinite(hi):
        pad = max(0.05 * (hi - lo), 0.005)
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xticks(range(len(ks)), [f"K = {k}" for k in ks])
    ax.set_ylabel(metric)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def plot_fr_tables(fr_tables: pd.DataFrame, path: str | Path) -> Path:
    """One bar panel per factor: FR per class, with the FR = 1 line."""
    factors = list(dict.fromkeys(fr_tables["factor"]))
    ncol = 3
    nrow = math.ceil(len(factors) / ncol)
    fig = Figure(figsize=(4.2 * ncol, 2.9 * nrow))
    for i, name in enumerate(factors):
        ax = fig.add_subplot(nrow, ncol, i + 1)
        t = fr_tables[fr_tables["factor"] == name]
        fr = t["fr"].to_numpy(float)
        ax.bar(np.arange(len(t)), fr, color=np.where(fr > 1, "#c0392b", "#7f8c8d"))
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        labels = [str(s)[:14] for s in t["label"]]
        ax.set_xticks(np.arange(len(t)), labels, rotation=60, ha="right", fontsize=6)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("FR", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle("Frequency ratio per class (landslide share / area share)")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_correlation(pearson: pd.DataFrame, spearman: pd.DataFrame, path: str | Path) -> Path:
    """Pearson and Spearman heatmaps side by side, values written in the cells."""
    n = len(pearson)
    size = max(4.5, 0.45 * n + 2)
    fig = Figure(figsize=(2 * size + 1, size))
    for i, (title, m) in enumerate((("Pearson", pearson), ("Spearman", spearman))):
        ax = fig.add_subplot(1, 2, i + 1)
        image = ax.imshow(m.to_numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_xticks(range(n), list(m.columns), rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(n), list(m.index), fontsize=7)
        for r in range(n):
            for c in range(n):
                v = m.iat[r, c]
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=5,
                        color="white" if abs(v) > 0.6 else "black")
        ax.set_title(f"{title} correlation")
        fig.colorbar(image, ax=ax, shrink=0.7)
    fig.tight_layout()
    return save_figure(fig, path)


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
    return plot_raster_map(
        credibility, grid, path, dem=dem, inventory=inventory, cmap="cividis",
        norm=Normalize(0.0, 1.0), title=title,
        colorbar_label="credibility (1 = surely stable ground)",
    )
