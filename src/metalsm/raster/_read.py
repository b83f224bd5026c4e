"""Reading rasters onto a grid: the one aligned reader (reprojected, resampled and
cropped to a window), the one no-data cleanup, cells at given positions and the
class names of categorical rasters."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.warp import reproject, transform
from rasterio.windows import Window

from metalsm.errors import MetalsmInputError
from metalsm.raster._grid import Grid, open_raster

__all__ = [
    "Layer",
    "nodata_to_nan",
    "read_aligned",
    "read_aligned_window",
    "read_cells",
    "read_class_names",
    "read_window",
    "resampling_onto",
    "source_cell_size_on",
]


def source_cell_size_on(src: Any, grid: Grid) -> float:
    """Edge length, in ``grid``'s CRS units, of one cell of ``src`` at its centre.

    A source in another CRS (degrees against metres) is compared with the grid by
    its footprint on the grid: the centre cell's corners are transformed into the
    grid's CRS and the square root of the footprint's area is its edge.
    """
    if src.crs == grid.crs:
        return float(np.sqrt(abs(src.transform.a * src.transform.e - src.transform.b
                                 * src.transform.d)))
    row, col = src.height // 2, src.width // 2
    corners = [src.transform @ (col + dc, row + dr) for dc, dr in ((0, 0), (1, 0), (0, 1))]
    xs, ys = transform(src.crs, grid.crs, [c[0] for c in corners], [c[1] for c in corners])
    (x0, x1, x2), (y0, y1, y2) = xs, ys
    area = abs((x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0))  # parallelogram of two edges
    return float(np.sqrt(area))


def resampling_onto(src: Any, grid: Grid, categorical: bool) -> Resampling:
    """Bilinear for continuous layers; for categorical ones mode when the source cells are
    clearly finer than the grid's (several per grid cell), else nearest neighbour."""
    if not categorical:
        return Resampling.bilinear
    finer = source_cell_size_on(src, grid) < grid.cell_size * 0.75
    return Resampling.mode if finer else Resampling.nearest


@dataclass(frozen=True)
class Layer:
    """One raster aligned to a grid: float32 values with NaN where there are no data."""

    name: str
    values: np.ndarray
    categorical: bool
    class_names: dict[int, str]


def read_aligned(
    path: str | Path,
    grid: Grid,
    *,
    name: str,
    categorical: bool,
) -> Layer:
    """Band 1 of ``path`` onto the whole of ``grid``: :func:`read_aligned_window` with
    one window, plus the check that the layer has data and its class names."""
    values = read_aligned_window(path, grid, None, name=name, categorical=categorical)
    if np.isnan(values).all():
        raise MetalsmInputError(
            f"raster {path} (layer '{name}') has no valid cells on the study grid "
            "(all nodata, or it does not overlap the reference grid)"
        )
    names = read_class_names(path) if categorical else {}
    return Layer(name=name, values=values, categorical=categorical, class_names=names)


def nodata_to_nan(values: np.ndarray, nodata: float | None) -> np.ndarray:
    """NaN (in place) for the declared ``nodata``, non-finite values and undeclared
    float32-min style sentinels (``|v| > 1e30``); the one no-data cleanup of every reader."""
    if nodata is not None and not np.isnan(nodata):
        values[values == values.dtype.type(nodata)] = np.nan
    values[~np.isfinite(values) | (np.abs(values) > 1e30)] = np.nan
    return values


def read_window(src: Any, window: Window | None = None, indexes: Sequence[int] | int | None = None,
                dtype: Any = np.float32) -> np.ndarray:
    """Bands of an open raster (all, or ``indexes``) in ``window``, as ``dtype`` with NaN
    for no data (:func:`nodata_to_nan`)."""
    values = src.read(indexes, window=window, out_dtype=dtype)
    return nodata_to_nan(values, src.nodata)


def read_aligned_window(path: str | Path, grid: Grid, window: Window | None, *, name: str,
                        categorical: bool) -> np.ndarray:
    """Band 1 of ``path`` on ``grid``'s ``window`` (None: the whole grid), float32 with
    NaN for no data.

    A raster on the grid is read as is; any other is resampled onto the window's
    sub-grid: bilinear for continuous layers, nearest neighbour or mode (source cells
    clearly finer than the grid's) for categorical ones, which must hold integer codes.
    """
    sub = grid if window is None else grid.window(window)
    with open_raster(path) as src:
        if grid.holds(src):
            values = src.read(1, window=window, masked=True).astype(np.float32).filled(np.nan)
        else:
            values = np.full(sub.shape, np.nan, dtype=np.float32)
            reproject(
                source=rasterio.band(src, 1), destination=values, src_nodata=src.nodata,
                dst_transform=sub.transform, dst_crs=sub.crs, dst_nodata=np.nan,
                resampling=resampling_onto(src, grid, categorical),
            )
        nodata_to_nan(values, src.nodata)
    if categorical:
        finite = values[np.isfinite(values)]
        if finite.size and not np.all(np.equal(np.mod(finite, 1), 0)):
            raise MetalsmInputError(
                f"categorical raster {path} (layer '{name}') holds non-integer values; "
                "categorical layers need integer class codes")
    return values


def read_cells(path: str | Path, rows: np.ndarray, cols: np.ndarray, *,
               chunk_size: int = 1024, band_indexes: Sequence[int] | None = None
               ) -> np.ndarray:
    """Values of the bands of ``path`` at cells ``(rows, cols)``, ``(n, n_bands)`` float64,
    read window by window (one read per window holding at least one cell)."""
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    with open_raster(path) as src:
        indexes = list(band_indexes or range(1, src.count + 1))
        out = np.full((rows.size, len(indexes)), np.nan)
        key = (rows // chunk_size) * (src.width // chunk_size + 1) + cols // chunk_size
        order = np.argsort(key, kind="stable")
        uniq, starts = np.unique(key[order], return_index=True)
        bounds = np.append(starts, order.size)
        for k in range(uniq.size):
            sel = order[bounds[k]:bounds[k + 1]]
            r0, c0 = rows[sel].min(), cols[sel].min()
            win = Window(c0, r0, cols[sel].max() - c0 + 1, rows[sel].max() - r0 + 1)
            block = read_window(src, win, indexes, np.float64)
            out[sel] = block[:, rows[sel] - r0, cols[sel] - c0].T
    return out


def read_class_names(path: str | Path) -> dict[int, str]:
    """Class names from a GDAL raster attribute table in ``<raster>.aux.xml``, if any.

    The name column is the first string column whose name looks like a label
    (``name``, ``class``, ``formation``, ``description``...), else the first string column.
    """
    aux = Path(f"{path}.aux.xml")
    if not aux.exists():
        return {}
    root = ET.parse(aux).getroot()
    rat = root.find(".//GDALRasterAttributeTable")
    if rat is None:
        return {}
    fields = [
        (int(f.get("index")), (f.findtext("Name") or ""), int(f.findtext("Type") or 0),
         int(f.findtext("Usage") or 0))
        for f in rat.findall("FieldDefn")
    ]
    value_idx = next((i for i, n, _, _ in fields if n.lower() in ("value", "code")), None)
    if value_idx is None:
        value_idx = next((i for i, _, t, _ in fields if t in (0, 1)), None)
    string_fields = [(i, n) for i, n, t, _ in fields if t == 2]
    if value_idx is None or not string_fields:
        return {}
    preferred = ("name", "class", "class_name", "formation", "landcover", "label", "description")
    string_fields.sort(
        key=lambda f: preferred.index(f[1].lower()) if f[1].lower() in preferred else 99
    )
    name_idx = string_fields[0][0]
    names: dict[int, str] = {}
    for row in rat.findall("Row"):
        cells = [c.text or "" for c in row.findall("F")]
        try:
            names[int(float(cells[value_idx]))] = cells[name_idx].strip()
        except (IndexError, ValueError):
            continue
    return names
