"""Landslide inventories: reading points/polygons/tables and turning them into positive cells."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from rasterio.features import rasterize

from metalsm.errors import MetalsmInputError
from metalsm.raster import Grid

__all__ = [
    "MIN_POSITIVES",
    "RASTER_SUFFIXES",
    "landslide_mask",
    "positive_cells",
    "raster_patches",
    "read_inventory",
]

log = logging.getLogger(__name__)

MIN_POSITIVES = 10
PositiveRule = Literal["centroid", "scarp", "all", "random"]
#: Suffixes read as raster inventories (a landslide mask or labelled raster).
RASTER_SUFFIXES = (".tif", ".tiff", ".img", ".vrt", ".asc", ".nc")
#: Patch outlines run along cell edges; shrunk by this share of a cell so that
#: "touched" cells (``landslide_mask``) are the patch's own cells, not its neighbours.
_PATCH_INSET = 0.01


def read_inventory(
    path: str | Path,
    grid: Grid,
    *,
    crs: str | None = None,
    x_column: str = "x",
    y_column: str = "y",
) -> gpd.GeoDataFrame:
    """Read an inventory onto ``grid``'s CRS, dropping features outside the grid (logged).

    Vector files (SHP/GPKG/GeoJSON...) carry their own CRS; a CSV needs ``crs``
    and its coordinate columns; a raster (:data:`RASTER_SUFFIXES`) becomes one
    polygon per patch by :func:`raster_patches`.
    """
    path = Path(path)
    if not path.exists():
        raise MetalsmInputError(f"inventory file not found: {path}")
    if path.suffix.lower() in RASTER_SUFFIXES:
        gdf = raster_patches(path, grid)
        gdf.attrs["n_outside"] = 0
        return gdf
    if path.suffix.lower() in (".csv", ".txt"):
        gdf = _read_csv_points(path, crs, x_column, y_column)
    else:
        try:
            gdf = gpd.read_file(path)
        except Exception as exc:  # pyogrio raises several types for unreadable files
            raise MetalsmInputError(f"cannot read inventory {path}: {exc}") from exc
        if gdf.crs is None:
            raise MetalsmInputError(f"inventory {path} has no CRS (missing .prj?)")
    gdf = gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty]
    if gdf.empty:
        raise MetalsmInputError(f"inventory {path} holds no features")
    gdf = gdf.set_geometry(shapely.force_2d(gdf.geometry.values))
    gdf = _repair_invalid(gdf, path)
    if gdf.crs != grid.crs:
        log.info("reprojecting inventory %s from %s to %s", path, gdf.crs, grid.crs)
        gdf = gdf.to_crs(grid.crs)
    left, bottom, right, top = grid.bounds
    inside = gdf.intersects(shapely.box(left, bottom, right, top))
    n_outside = int((~inside).sum())
    if n_outside:
        log.warning("inventory %s: %d of %d features lie outside the grid and are dropped",
                    path, n_outside, len(gdf))
    n_repaired = gdf.attrs.get("n_repaired", 0)
    gdf = gdf[inside].reset_index(drop=True)
    if gdf.empty:
        raise MetalsmInputError(
            f"inventory {path}: none of its features lies inside the study grid {grid.bounds} "
            f"(CRS {grid.crs})"
        )
    gdf.attrs["n_outside"] = n_outside
    gdf.attrs["n_repaired"] = n_repaired
    return gdf


def _repair_invalid(gdf: gpd.GeoDataFrame, path: Path) -> gpd.GeoDataFrame:
    """Self-intersecting or otherwise invalid polygons repaired by ``make_valid`` (their
    area kept, collapsed parts dropped), with a warning that counts them; a polygon with
    nothing left is dropped."""
    geoms = gdf.geometry.values
    invalid = ~shapely.is_valid(geoms)
    if not invalid.any():
        gdf.attrs["n_repaired"] = 0
        return gdf
    geoms = np.array(geoms, dtype=object)
    geoms[invalid] = shapely.make_valid(geoms[invalid], method="structure",
                                        keep_collapsed=False)
    empty = shapely.is_empty(geoms)
    log.warning("inventory %s: %d invalid polygon(s) (e.g. self-intersecting) repaired with "
                "make_valid%s", path, int(invalid.sum()),
                f"; {int(empty.sum())} with no area left dropped" if empty.any() else "")
    gdf = gdf.set_geometry(gpd.GeoSeries(geoms, index=gdf.index, crs=gdf.crs))[~empty]
    gdf.attrs["n_repaired"] = int(invalid.sum())
    return gdf


def raster_patches(path: str | Path, grid: Grid) -> gpd.GeoDataFrame:
    """A mask or labelled landslide raster as one polygon per patch, in the grid's CRS.

    The raster is read onto ``grid`` (nearest, or mode when finer; see
    :func:`metalsm.raster.read_aligned`); cells with a value other than 0 and no data
    are landslide cells. A patch is a set of 8-connected cells of one value, so a
    mask gives one patch per connected landslide and a raster of landslide ids one
    per landslide even where two touch. Outlines follow the cell edges (inset by a
    hundredth of a cell), so every positive rule and :func:`landslide_mask` see
    exactly the raster's cells. Columns: ``patch`` (id), ``value``, ``cells``.
    """
    from rasterio.features import shapes

    from metalsm.raster import read_aligned

    layer = read_aligned(path, grid, name="inventory", categorical=True)
    codes = np.nan_to_num(layer.values, nan=0.0).astype(np.int64)
    if not (codes != 0).any():
        raise MetalsmInputError(
            f"inventory raster {path} has no landslide cells (values other than 0 and "
            "no data) on the study grid")
    patches = _patches_of_equal_value(codes)
    n_patches = int(patches.max())
    geoms, ids = [], []
    for geom, value in shapes(patches, mask=patches > 0, transform=grid.transform,
                              connectivity=4):
        geoms.append(shapely.geometry.shape(geom))
        ids.append(int(value))
    polygons = gpd.GeoDataFrame({"patch": ids}, geometry=geoms, crs=grid.crs)
    polygons = polygons.dissolve(by="patch", as_index=False)
    patch_ids = polygons["patch"].to_numpy()
    on = patches > 0
    value_of = np.zeros(n_patches + 1, dtype=np.int64)
    value_of[patches[on]] = codes[on]
    polygons["value"] = value_of[patch_ids]
    polygons["cells"] = np.bincount(patches[on], minlength=n_patches + 1)[patch_ids]
    polygons = polygons.set_geometry(polygons.geometry.buffer(
        -_PATCH_INSET * grid.cell_size, join_style="mitre"))
    log.info("inventory raster %s: %d landslide cells in %d patches", path,
             int(on.sum()), n_patches)
    return polygons.reset_index(drop=True)


def _patches_of_equal_value(codes: np.ndarray) -> np.ndarray:
    """1..n for each 8-connected group of cells sharing a non-zero value, 0 elsewhere."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    on = codes != 0
    index = np.full(codes.shape, -1, dtype=np.int64)
    index[on] = np.arange(int(on.sum()))
    height, width = codes.shape
    starts, ends = [], []
    for dr, dc in ((0, 1), (1, 0), (1, 1), (1, -1)):  # each neighbour pair once
        a = (slice(0, height - dr), slice(max(0, -dc), width - max(0, dc)))
        b = (slice(dr, height), slice(max(0, dc), width - max(0, -dc)))
        link = on[a] & on[b] & (codes[a] == codes[b])
        starts.append(index[a][link])
        ends.append(index[b][link])
    i, j = np.concatenate(starts), np.concatenate(ends)
    n = int(on.sum())
    graph = coo_matrix((np.ones(i.size, dtype=np.int8), (i, j)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    patches = np.zeros(codes.shape, dtype=np.int32)
    patches[on] = component + 1
    return patches


def _read_csv_points(path: Path, crs: str | None, x: str, y: str) -> gpd.GeoDataFrame:
    if crs is None:
        raise MetalsmInputError(f"inventory {path} is a table: set inventory.crs to its CRS")
    from metalsm.samples import read_table_frame

    table = read_table_frame(str(path))
    missing = [c for c in (x, y) if c not in table.columns]
    if missing:
        raise MetalsmInputError(
            f"inventory {path}: missing coordinate column(s) {missing}; "
            f"columns are {list(table.columns)}"
        )
    coords = table[[x, y]].apply(pd.to_numeric, errors="coerce")
    bad = coords.isna().any(axis=1)
    if bad.any():
        raise MetalsmInputError(
            f"inventory {path}: {int(bad.sum())} row(s) have non-numeric {x}/{y} "
            f"(first at row {int(np.flatnonzero(bad)[0]) + 2})"
        )
    return gpd.GeoDataFrame(
        table, geometry=gpd.points_from_xy(coords[x], coords[y]), crs=crs
    )


def landslide_mask(inventory: gpd.GeoDataFrame, grid: Grid) -> np.ndarray:
    """Cells touched by any landslide (polygons: all touched cells; points: their cell)."""
    return rasterize(
        ((g, 1) for g in inventory.geometry),
        out_shape=grid.shape,
        transform=grid.transform,
        fill=0,
        all_touched=True,
        dtype="uint8",
    ).astype(bool)


def positive_cells(
    inventory: gpd.GeoDataFrame,
    grid: Grid,
    valid: np.ndarray,
    *,
    rule: PositiveRule = "centroid",
    dem: np.ndarray | None = None,
    cells_per_polygon: int = 3,
    seed: int = 0,
    on_invalid: Callable[[np.ndarray, np.ndarray], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Positive sample cells (rows, cols), at most one per cell, all on valid cells.

    Points give their own cell. Polygons give, by ``rule``: ``centroid`` (moved to a
    point inside the polygon when the centroid falls outside), ``scarp`` (highest
    DEM cell), ``all`` (every cell whose centre is inside), ``random``
    (``cells_per_polygon`` cells drawn without replacement). Polygons smaller than a
    cell fall back to their centroid cell. ``on_invalid(rows, cols)`` is told the cells
    dropped for falling on no-data cells (to say which layers lack data there).
    """
    geoms = inventory.geometry.values
    is_polygon = np.isin(shapely.get_type_id(geoms), [3, 6])
    anchor = _inside_centroids(geoms)
    rows, cols = grid.rowcol(shapely.get_x(anchor), shapely.get_y(anchor))
    if rule != "centroid" and is_polygon.any():
        ids, cell_rows, cell_cols = _polygon_cells(geoms, is_polygon, grid)
        if rule == "scarp":
            if dem is None:
                raise MetalsmInputError("positive rule 'scarp' needs the DEM")
            keep = _first_per_group(ids, -dem[cell_rows, cell_cols])
        elif rule == "random":
            rng = np.random.default_rng(seed)
            keep = _rank_within_group(ids, rng.random(ids.size)) < cells_per_polygon
        else:
            keep = np.ones(ids.size, dtype=bool)
        covered = np.zeros(len(geoms), dtype=bool)
        covered[ids] = True
        fallback = ~(is_polygon & covered)
        rows = np.concatenate([rows[fallback], cell_rows[keep]])
        cols = np.concatenate([cols[fallback], cell_cols[keep]])
    inside = grid.contains(rows, cols)
    rows, cols = rows[inside], cols[inside]
    on_valid = valid[rows, cols]
    if (~on_valid).any():
        log.info("%d positive cell(s) fall on no-data cells and are dropped",
                 int((~on_valid).sum()))
        if on_invalid is not None:
            on_invalid(rows[~on_valid], cols[~on_valid])
    flat = np.unique(rows[on_valid] * grid.width + cols[on_valid])
    if flat.size < MIN_POSITIVES:
        raise MetalsmInputError(
            f"only {flat.size} usable landslide cell(s) inside the valid grid; "
            f"at least {MIN_POSITIVES} are needed"
        )
    return flat // grid.width, flat % grid.width


def _inside_centroids(geoms: np.ndarray) -> np.ndarray:
    centroids = shapely.centroid(geoms)
    outside = ~shapely.contains(geoms, centroids) & ~shapely.is_empty(centroids)
    is_point = shapely.get_type_id(geoms) == 0
    outside &= ~is_point
    centroids[outside] = shapely.point_on_surface(geoms[outside])
    return centroids


def _polygon_cells(
    geoms: np.ndarray, is_polygon: np.ndarray, grid: Grid
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(polygon index, row, col) of every cell whose centre lies in a polygon.

    Overlapping polygons: a cell goes to the last one drawn.
    """
    index = np.flatnonzero(is_polygon)
    burned = rasterize(
        ((geoms[i], int(i) + 1) for i in index),
        out_shape=grid.shape,
        transform=grid.transform,
        fill=0,
        dtype="int32",
    )
    rows, cols = np.nonzero(burned)
    return burned[rows, cols] - 1, rows, cols


def _rank_within_group(groups: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Rank (0-based) of each element by ``keys`` within its group."""
    order = np.lexsort((keys, groups))
    sorted_groups = groups[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_groups)) + 1]
    run_start = np.repeat(starts, np.diff(np.r_[starts, sorted_groups.size]))
    ranks = np.empty_like(order)
    ranks[order] = np.arange(order.size) - run_start
    return ranks


def _first_per_group(groups: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Mask of the element with the smallest key in each group."""
    return _rank_within_group(groups, keys) == 0
