"""The aligned factor stack: every factor on one grid with one valid mask.

The stack is also written to disk as a multi-band GeoTIFF (``factors.tif``)
whose band descriptions are the factor names, so that mapping can read it
window by window without holding the whole raster in memory.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from rasterio.crs import CRS
from rasterio.warp import calculate_default_transform, reproject
from rasterio.windows import Window

from metalsm import terrain
from metalsm.cog import atomic_cog
from metalsm.config import StudyAreaConfig
from metalsm.errors import MetalsmInputError
from metalsm.grid import Grid, open_raster, read_aligned

log = logging.getLogger(__name__)

_CATEGORICAL_TAG = "METALSM_CATEGORICAL"


@dataclass
class FactorStack:
    """Named factor layers ``values[i]`` (float32, NaN = no data) on ``grid``.

    ``class_names`` holds one entry per categorical factor (code -> name; the
    mapping is empty when the raster carries no attribute table).
    """

    grid: Grid
    names: tuple[str, ...]
    values: np.ndarray
    class_names: dict[str, dict[int, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.values.shape != (len(self.names), *self.grid.shape):
            raise ValueError(
                f"stack values have shape {self.values.shape}, expected "
                f"{(len(self.names), *self.grid.shape)}"
            )

    @property
    def categorical(self) -> tuple[str, ...]:
        return tuple(n for n in self.names if n in self.class_names)

    @property
    def valid(self) -> np.ndarray:
        """Cells where every factor has a value."""
        return np.isfinite(self.values).all(axis=0)

    def layer(self, name: str) -> np.ndarray:
        if name not in self.names:
            raise KeyError(f"no factor '{name}' in the stack; factors: {', '.join(self.names)}")
        return self.values[self.names.index(name)]

    def sample(self, rows: np.ndarray, cols: np.ndarray) -> pd.DataFrame:
        """Factor values at cells, one row per cell, one column per factor."""
        return pd.DataFrame(self.values[:, rows, cols].T, columns=list(self.names))

    def write(self, path: str | Path) -> Path:
        """Write as a multi-band float32 COG; band descriptions are factor names.

        Overviews are nearest-neighbour: categorical codes must not be averaged."""
        profile = self.grid.profile(count=len(self.names), dtype="float32", nodata=np.nan)
        profile.update(interleave="pixel", predictor=3)
        with atomic_cog(path, overview_resampling="nearest") as tmp:
            with rasterio.open(tmp, "w", **profile) as dst:
                dst.write(self.values.astype(np.float32, copy=False))
                for i, name in enumerate(self.names, start=1):
                    dst.set_band_description(i, name)
                dst.update_tags(**{_CATEGORICAL_TAG: json.dumps(self.class_names)})
        return Path(path)

    @classmethod
    def read(cls, path: str | Path, window: Window | None = None) -> FactorStack:
        with open_raster(path) as src:
            names, class_names = stack_metadata(src)
            values = src.read(window=window).astype(np.float32)
            grid = Grid(src.crs, src.transform, src.height, src.width)
        if window is not None:
            grid = grid.window(window)
        return cls(grid, names, values, class_names)


def stack_metadata(src: rasterio.DatasetReader) -> tuple[tuple[str, ...], dict[str, dict]]:
    """Factor names and categorical class names of an open ``factors.tif``."""
    names = tuple(d or f"band_{i}" for i, d in enumerate(src.descriptions, start=1))
    raw = json.loads(src.tags().get(_CATEGORICAL_TAG, "{}"))
    class_names = {k: {int(code): n for code, n in v.items()} for k, v in raw.items()}
    return names, class_names


def reference_grid(config: StudyAreaConfig) -> Grid:
    """The DEM's grid, reprojected and/or resampled when ``[grid]`` asks for it."""
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


def read_dem(path: str, grid: Grid) -> np.ndarray:
    """The DEM on ``grid`` (bilinear), NaN for no data."""
    with open_raster(path) as src:
        if grid.holds(src):
            dem = src.read(1, masked=True).astype(np.float32).filled(np.nan)
        else:
            dem = np.full(grid.shape, np.nan, dtype=np.float32)
            reproject(
                rasterio.band(src, 1),
                dem,
                src_nodata=src.nodata,
                dst_transform=grid.transform,
                dst_crs=grid.crs,
                dst_nodata=np.nan,
                resampling=rasterio.enums.Resampling.bilinear,
            )
    dem[~np.isfinite(dem) | (np.abs(dem) > 1e30)] = np.nan
    if np.isnan(dem).all():
        raise MetalsmInputError(f"DEM {path} has no valid cells")
    return dem


def build_factor_stack(
    config: StudyAreaConfig,
    progress: Callable[[str], None] | None = None,
) -> FactorStack:
    """Align every input of ``config`` onto the reference grid and derive terrain factors."""
    step = progress or (lambda _message: None)
    grid = reference_grid(config)
    step("reading DEM")
    dem = read_dem(config.dem, grid)
    threshold_cells = max(1, round(config.terrain.drainage_threshold_km2 * 1e6 / grid.cell_area))
    step("deriving terrain factors")
    layers: dict[str, np.ndarray] = terrain.derive_terrain(
        dem, grid, config.terrain.factors, drainage_threshold_cells=threshold_cells
    )
    class_names: dict[str, dict[int, str]] = {}
    for raster in config.rasters:
        step(f"aligning {raster.name}")
        layer = read_aligned(
            raster.path, grid, name=raster.name, categorical=raster.kind == "categorical"
        )
        layers[raster.name] = layer.values
        if layer.categorical:
            class_names[raster.name] = layer.class_names
    for vector in config.vectors:
        step(f"distance to {vector.name}")
        distance = terrain.rasterize_vector_distance(vector.path, grid, layer_name=vector.name)
        distance[np.isnan(dem)] = np.nan
        layers[vector.name] = distance
    names = tuple(layers)
    values = np.stack([layers[n].astype(np.float32, copy=False) for n in names])
    stack = FactorStack(grid, names, values, class_names)
    n_valid = int(stack.valid.sum())
    if n_valid == 0:
        per_layer = {n: int(np.isfinite(stack.layer(n)).sum()) for n in names}
        raise MetalsmInputError(
            f"no cell has a value in every factor; valid cells per factor: {per_layer}"
        )
    log.info("factor stack: %d factors, %d valid cells of %d", len(names), n_valid, dem.size)
    return stack
