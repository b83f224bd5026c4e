"""The raster grid every layer is aligned to, and reading rasters onto it.

A :class:`Grid` is the (CRS, transform, shape) triple; everything downstream
indexes cells by (row, col) on one grid.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError
from rasterio.warp import calculate_default_transform, reproject, transform
from rasterio.windows import Window

from metalsm.errors import MetalsmInputError

__all__ = [
    "Grid",
    "Layer",
    "halo",
    "iter_windows",
    "nodata_to_nan",
    "open_raster",
    "read_aligned",
    "read_aligned_window",
    "read_cells",
    "read_class_names",
    "read_window",
    "reference_grid",
    "resampling_onto",
    "source_cell_size_on",
    "strips",
]


@dataclass(frozen=True)
class Grid:
    """A north-up raster grid: CRS, affine transform and (height, width)."""

    crs: CRS
    transform: Affine
    height: int
    width: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def cell_size(self) -> float:
        """Cell edge length in CRS units (square cells assumed for terrain work)."""
        return float(abs(self.transform.a))

    @property
    def cell_area(self) -> float:
        return float(abs(self.transform.a * self.transform.e))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        left, top = self.transform @ (0, 0)
        right, bottom = self.transform @ (self.width, self.height)
        return (min(left, right), min(top, bottom), max(left, right), max(top, bottom))

    def xy(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map coordinates of cell centres."""
        rows = np.asarray(rows, dtype=float) + 0.5
        cols = np.asarray(cols, dtype=float) + 0.5
        t = self.transform
        return t.a * cols + t.b * rows + t.c, t.d * cols + t.e * rows + t.f

    def rowcol(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Integer cell indices containing map coordinates (may fall outside the grid)."""
        inv = ~self.transform
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        cols = inv.a * x + inv.b * y + inv.c
        rows = inv.d * x + inv.e * y + inv.f
        return np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)

    def contains(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows)
        cols = np.asarray(cols)
        return (rows >= 0) & (rows < self.height) & (cols >= 0) & (cols < self.width)

    def window(self, window: Window) -> Grid:
        """The sub-grid covered by a rasterio window."""
        transform = rasterio.windows.transform(window, self.transform)
        return Grid(self.crs, transform, int(window.height), int(window.width))

    def profile(self, **overrides) -> dict:
        """A rasterio profile for a single-band tiled, compressed GeoTIFF on this grid."""
        profile = {
            "driver": "GTiff",
            "crs": self.crs,
            "transform": self.transform,
            "height": self.height,
            "width": self.width,
            "count": 1,
            "tiled": True,
            "blockxsize": 256,
            "blockysize": 256,
            "compress": "deflate",
        }
        if self.width < 256 or self.height < 256:
            profile.update(tiled=False)
            profile.pop("blockxsize")
            profile.pop("blockysize")
        profile.update(overrides)
        return profile

    def holds(self, src: Any) -> bool:
        """Whether an open raster already lies on this grid (same CRS, transform, shape),
        so it can be read as is, window by window, without resampling."""
        return (src.crs == self.crs and src.transform.almost_equals(self.transform)
                and (src.height, src.width) == self.shape)

    @classmethod
    def from_raster(cls, source: str | Path | Any) -> Grid:
        """The grid of a raster file, or of an open rasterio dataset."""
        if isinstance(source, str | Path):
            with open_raster(source) as src:
                return cls.from_raster(src)
        return cls(source.crs, source.transform, source.height, source.width)

    @classmethod
    def around(cls, coords: Any, crs: Any = None, side: int = 500) -> Grid:
        """A grid of square cells over points ``(n, 2)`` plus a 2 % margin, ``side``
        cells along its longer edge: the frame of map figures of a sample table."""
        xy = np.asarray(coords, dtype=float)
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        margin = 0.02 * max(float((hi - lo).max()), 1.0)
        lo, hi = lo - margin, hi + margin
        cell = float((hi - lo).max()) / side
        width, height = (int(np.ceil(v)) for v in (hi - lo) / cell)
        return cls(CRS.from_user_input(crs) if crs else None,
                   Affine(cell, 0, lo[0], 0, -cell, hi[1]), height, width)


def reference_grid(config: Any) -> Grid:
    """The DEM's grid of a study-area config, reprojected and/or resampled when ``[grid]``
    asks for it: the grid every layer is aligned to."""
    dem_grid = Grid.from_raster(config.dem)
    crs = CRS.from_user_input(config.grid.crs) if config.grid.crs else dem_grid.crs
    if config.grid.resolution is None and crs == dem_grid.crs:
        return dem_grid
    resolution = config.grid.resolution or None
    left, bottom, right, top = dem_grid.bounds
    kwargs = {"resolution": resolution} if resolution else {}
    transform, width, height = calculate_default_transform(
        dem_grid.crs, crs, dem_grid.width, dem_grid.height, left, bottom, right, top, **kwargs
    )
    return Grid(crs, transform, int(height), int(width))


def open_raster(path: str | Path):
    """Open a raster with an error that names the file; rasters must carry a CRS."""
    path = Path(path)
    if not path.exists():
        raise MetalsmInputError(f"raster file not found: {path}")
    try:
        src = rasterio.open(path)
    except RasterioIOError as exc:
        raise MetalsmInputError(f"cannot read raster {path}: {exc}") from exc
    if src.crs is None:
        src.close()
        raise MetalsmInputError(
            f"raster {path} has no CRS; assign one (e.g. gdal_edit.py -a_srs EPSG:XXXX) first"
        )
    return src


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


# ------------------------------------------------------------------------------ windows


def iter_windows(shape: tuple[int, int], size: int | tuple[int, int]) -> Iterator[Window]:
    """Row-major windows of ``size`` cells (or ``(rows, cols)``) covering a grid of
    ``shape``; the last row and column of windows are smaller. The one window iterator:
    a whole-grid computation is this with one window."""
    rows, cols = (size, size) if isinstance(size, int | np.integer) else size
    if rows < 1 or cols < 1:
        raise MetalsmInputError(f"window size must be a positive integer, got {size}")
    height, width = shape
    for row in range(0, height, rows):
        for col in range(0, width, cols):
            yield Window(col, row, min(cols, width - col), min(rows, height - row))


def strips(shape: tuple[int, int], cells: int, multiple: int = 1) -> list[Window]:
    """Full-width windows of about ``cells`` cells (whole multiples of ``multiple`` rows),
    in row-major order: what a stage needs that keeps the cells' row-major order."""
    rows = max(1, cells // max(shape[1], 1) // multiple) * multiple
    return list(iter_windows(shape, (rows, max(shape[1], 1))))


def halo(window: Window, shape: tuple[int, int], depth: int = 1) -> tuple[Window, tuple]:
    """``window`` grown by ``depth`` cells (clipped to the grid) and the slices that crop
    the grown window back to it: local (3x3) factors of a window need its neighbours."""
    h, w = shape
    r0 = max(0, window.row_off - depth)
    c0 = max(0, window.col_off - depth)
    r1 = min(h, window.row_off + window.height + depth)
    c1 = min(w, window.col_off + window.width + depth)
    crop = (slice(window.row_off - r0, window.row_off - r0 + window.height),
            slice(window.col_off - c0, window.col_off - c0 + window.width))
    return Window(c0, r0, c1 - c0, r1 - r0), crop


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
