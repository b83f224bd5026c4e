"""The raster grid every layer is aligned to.

A :class:`Grid` is the (CRS, transform, shape) triple; everything downstream
indexes cells by (row, col) on one grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioIOError
from rasterio.warp import calculate_default_transform
from rasterio.windows import Window

from metalsm.errors import MetalsmInputError

__all__ = [
    "SAME_GRID_TOLERANCE",
    "Grid",
    "open_raster",
    "reference_grid",
]


#: A raster lies on a grid when its cell corners are within this fraction of a cell of
#: the grid's: nearest-neighbour values cannot change, bilinear ones by at most this
#: fraction of a neighbour difference, and reading it as is skips a warp per window.
SAME_GRID_TOLERANCE = 1e-3


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
        """Whether an open raster already lies on this grid (same CRS and shape, every
        cell corner within :data:`SAME_GRID_TOLERANCE` of a cell), so it is read as is,
        window by window, without resampling. Rasters exported by different tools often
        differ in the last digits of their origin (Kaghan's geology: 4e-5 m)."""
        if src.crs != self.crs or (src.height, src.width) != self.shape:
            return False
        tolerance = SAME_GRID_TOLERANCE * min(abs(self.transform.a), abs(self.transform.e))
        corners = np.array([(0, 0), (self.width, 0), (0, self.height),
                            (self.width, self.height)], dtype=float).T
        ours = np.array(self.transform * (corners[0], corners[1]))
        theirs = np.array(src.transform * (corners[0], corners[1]))
        return bool(np.abs(ours - theirs).max() <= tolerance)

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
