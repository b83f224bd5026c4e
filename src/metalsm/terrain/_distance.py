"""Euclidean distances (global): to the cells of a mask, to vector features (rasterized
on a grid extended by their margin), and the exact separable squared EDT that
:mod:`metalsm.terrain._write` runs in strips."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from affine import Affine
from numba import njit
from scipy import ndimage

from metalsm.errors import MetalsmInputError
from metalsm.raster import Grid
from metalsm.terrain._local import _check_cell_size

log = logging.getLogger(__name__)

__all__ = [
    "distance_to_mask",
    "extended_grid",
    "no_feature_error",
    "rasterize_vector_distance",
    "squared_edt",
]


def distance_to_mask(
    mask: np.ndarray, cell_size: float, valid: np.ndarray | None = None
) -> np.ndarray:
    """Euclidean distance in metres from each cell centre to the nearest True cell.

    Exact Euclidean distance transform (scipy's ``distance_transform_edt``, Maurer et
    al., 2003); 0 on True cells. Cells where ``valid`` is False come out NaN.
    """
    cell_size = _check_cell_size(cell_size)
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise MetalsmInputError(f"mask must be a 2-D array, got shape {m.shape}")
    if not m.any():
        raise MetalsmInputError("mask has no True cells: distance to it is undefined")
    distance = ndimage.distance_transform_edt(~m) * cell_size
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != m.shape:
            raise MetalsmInputError(f"valid shape {valid.shape} does not match mask {m.shape}")
        distance[~valid] = np.nan
    return distance


def _read_vector_features(path_or_gdf, grid: Grid, layer_name: str | None):
    """Non-empty geometries in the grid CRS and a description of their source."""
    import geopandas as gpd

    if isinstance(path_or_gdf, gpd.GeoDataFrame | gpd.GeoSeries):
        gdf = path_or_gdf
        source = f"vector layer '{layer_name}'" if layer_name else "vector layer"
    else:
        path = Path(path_or_gdf)
        source = f"vector file {path}" + (f" (layer '{layer_name}')" if layer_name else "")
        if not path.exists():
            raise MetalsmInputError(f"{source} not found")
        try:
            gdf = gpd.read_file(path)
        except Exception as exc:  # pyogrio raises several error types
            raise MetalsmInputError(f"cannot read {source}: {exc}") from exc
    geoms = gdf.geometry if isinstance(gdf, gpd.GeoDataFrame) else gdf
    geoms = geoms[geoms.notna() & ~geoms.is_empty]
    if len(geoms) == 0:
        raise MetalsmInputError(f"{source} has no features (or only empty geometries)")
    if geoms.crs is None:
        raise MetalsmInputError(
            f"{source} has no CRS; add a .prj / set one (e.g. ogr2ogr -a_srs EPSG:XXXX)"
        )
    if geoms.crs != grid.crs:
        log.info("reprojecting %s from %s to the grid CRS %s", source, geoms.crs, grid.crs)
        geoms = geoms.to_crs(grid.crs)
    return geoms, source


def extended_grid(geoms, grid: Grid, source: str) -> tuple[Affine, tuple[int, int], int, int]:
    """The grid grown so that features up to one grid diagonal outside count: its
    transform, shape, and the rows and columns added above and left of ``grid``."""
    cs = grid.cell_size
    h, w = grid.shape
    left, bottom, right, top = grid.bounds
    fx0, fy0, fx1, fy1 = geoms.total_bounds
    reach = int(math.ceil(math.hypot(h, w)))

    def extend(distance: float) -> int:
        return int(min(reach, max(0, math.ceil(distance / cs))))

    pad_left, pad_right = extend(left - fx0), extend(fx1 - right)
    pad_top, pad_bottom = extend(fy1 - top), extend(bottom - fy0)
    t = grid.transform
    if t.b != 0 or t.d != 0:
        raise MetalsmInputError(f"grid must be north-up (no rotation) to rasterize {source}")
    transform = t @ Affine.translation(-pad_left, -pad_top)
    return transform, (h + pad_top + pad_bottom, w + pad_left + pad_right), pad_top, pad_left


def no_feature_error(geoms, grid: Grid, source: str) -> MetalsmInputError:
    fx0, fy0, fx1, fy1 = geoms.total_bounds
    return MetalsmInputError(
        f"no feature of {source} lies on or within one grid diagonal of the study grid "
        f"(features span {tuple(round(v) for v in (fx0, fy0, fx1, fy1))}, "
        f"grid spans {tuple(round(v) for v in grid.bounds)} in {grid.crs})"
    )


def rasterize_vector_distance(path_or_gdf, grid: Grid, layer_name: str | None = None) -> np.ndarray:
    """Distance in metres from each cell centre of ``grid`` to the nearest feature.

    The whole-array reference of :func:`metalsm.terrain.vector_distance_raster`
    (scipy's distance transform). Reads points, lines or polygons (geopandas /
    pyogrio), reprojects to the grid CRS when it differs, burns them with
    ``all_touched=True`` and measures with an exact Euclidean distance transform, so
    touched cells (and polygon interiors) are 0. Features just outside the grid count
    too: the raster is extended by up to one grid diagonal, as far as the features
    reach. Raises :class:`MetalsmInputError` naming the file when it is missing,
    unreadable, empty, has no CRS, or no feature lies on or near the grid.
    """
    from rasterio.features import rasterize

    geoms, source = _read_vector_features(path_or_gdf, grid, layer_name)
    transform, out_shape, pad_top, pad_left = extended_grid(geoms, grid, source)
    burned = rasterize(
        ((geom, 1) for geom in geoms),
        out_shape=out_shape,
        transform=transform,
        fill=0,
        all_touched=True,
        dtype="uint8",
    ).astype(bool)
    if not burned.any():
        raise no_feature_error(geoms, grid, source)
    distance = ndimage.distance_transform_edt(~burned) * grid.cell_size
    h, w = grid.shape
    return distance[pad_top : pad_top + h, pad_left : pad_left + w].copy()


@njit(cache=True)
def _column_distances(mask: np.ndarray, row0: int, nrows: int) -> np.ndarray:
    """Per column, rows to the nearest True cell, for rows ``row0 .. row0 + nrows``.

    A downward then an upward sweep over the rows (row-major, cache friendly),
    keeping the last True row of every column; columns without a True cell give
    0xFFFFFFFF (no feature).
    """
    h, w = mask.shape
    out = np.empty((nrows, w), dtype=np.uint32)
    far = np.int64(1) << 40
    seen = np.full(w, -far, dtype=np.int64)
    for r in range(h):
        inner = row0 <= r < row0 + nrows
        for c in range(w):
            if mask[r, c]:
                seen[c] = r
            if inner:
                d = r - seen[c]
                out[r - row0, c] = np.uint32(0xFFFFFFFF) if d >= far // 2 else np.uint32(d)
    seen[:] = far
    for r in range(h - 1, -1, -1):
        inner = row0 <= r < row0 + nrows
        for c in range(w):
            if mask[r, c]:
                seen[c] = r
            if inner:
                d = seen[c] - r
                if d < far // 2 and np.uint32(d) < out[r - row0, c]:
                    out[r - row0, c] = np.uint32(d)
    return out


@njit(cache=True)
def _row_envelope(g: np.ndarray, q0: int, q1: int) -> np.ndarray:
    """Squared distances for columns ``q0 .. q1`` of every row of the 1-D distances ``g``.

    Lower envelope of the parabolas ``(q - v)^2 + g[v]^2`` over the columns ``v``
    that see a feature (Felzenszwalb & Huttenlocher, 2012), evaluated at ``q``.
    Intersections are compared in float64, the distances are exact integers.
    """
    nr, n = g.shape
    out = np.empty((nr, q1 - q0), dtype=np.float64)
    v = np.empty(n, dtype=np.int64)
    z = np.empty(n + 1, dtype=np.float64)
    f = np.empty(n, dtype=np.float64)
    for r in range(nr):
        k = -1
        for q in range(n):
            if g[r, q] == np.uint32(0xFFFFFFFF):
                continue
            f[q] = np.float64(g[r, q]) * np.float64(g[r, q])
            if k < 0:
                k = 0
                v[0] = q
                z[0] = -np.inf
                z[1] = np.inf
                continue
            while True:
                p = v[k]
                s = ((f[q] + q * q) - (f[p] + p * p)) / (2.0 * (q - p))
                if s <= z[k]:
                    k -= 1
                    if k < 0:
                        break
                else:
                    break
            if k < 0:
                k = 0
                v[0] = q
                z[0] = -np.inf
            else:
                k += 1
                v[k] = q
                z[k] = s
            z[k + 1] = np.inf
        if k < 0:
            for q in range(q0, q1):
                out[r, q - q0] = np.inf
            continue
        j = 0
        for q in range(q0, q1):
            while z[j + 1] < q:
                j += 1
            d = q - v[j]
            out[r, q - q0] = np.float64(d * d) + f[v[j]]
    return out


def squared_edt(mask: np.ndarray) -> np.ndarray:
    """Exact squared Euclidean distance (in cells^2) of every cell to the nearest True cell.

    The in-memory form of the chunked transform (the same two numba kernels), for
    tests and small grids; ``inf`` everywhere when ``mask`` has no True cell.
    """
    m = np.ascontiguousarray(np.asarray(mask, dtype=bool))
    if m.ndim != 2:
        raise MetalsmInputError(f"mask must be a 2-D array, got shape {m.shape}")
    g = _column_distances(m, 0, m.shape[0])
    return _row_envelope(g, 0, m.shape[1])
