"""The aligned factor stack: every factor on one grid with one valid mask.

The stack is built window by window into a multi-band GeoTIFF (``factors.tif``)
whose band descriptions are the factor names (:func:`write_factors`); a run whose
stack fits in memory does the same with one window and reads the file back
(:class:`FactorStack`), a larger one keeps it on disk (:class:`FileFactorStack`).
Both offer the same reading interface, so later stages need not know which.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import rasterio
from rasterio.windows import Window

from metalsm.config import StudyAreaConfig
from metalsm.errors import MetalsmInputError
from metalsm.raster import (
    Grid,
    iter_windows,
    open_raster,
    read_aligned_window,
    read_cells,
    read_class_names,
    read_window,
    reference_grid,
    windowed_geotiff,
)
from metalsm.scale import Compute

__all__ = [
    "FactorStack",
    "FileFactorStack",
    "LayerSource",
    "build_factor_stack",
    "open_stack",
    "read_dem",
    "stack_metadata",
    "stack_writer",
    "write_factor_stack",
    "write_factors",
]

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

    def read_window(self, window: Window) -> np.ndarray:
        """All factors in ``window``, ``(n_factors, h, w)`` float32."""
        return self.values[(slice(None), *window.toslices())]

    def write(self, path: str | Path) -> Path:
        """Write as a multi-band float32 COG; band descriptions are factor names."""
        with stack_writer(path, self.grid, self.names, self.class_names) as out:
            out.write(self.values.astype(np.float32, copy=False))
        return Path(path)

    @classmethod
    def read(cls, path: str | Path, window: Window | None = None) -> FactorStack:
        with open_raster(path) as src:
            names, class_names = stack_metadata(src)
            values = read_window(src, window)
            grid = Grid.from_raster(src)
        if window is not None:
            grid = grid.window(window)
        return cls(grid, names, values, class_names)


class FileFactorStack:
    """``factors.tif`` with the reading interface of :class:`FactorStack` (``grid``,
    ``names``, ``categorical``, ``valid``, ``layer``, ``sample``, ``read_window``) for
    stacks larger than memory: the stack itself stays on disk. ``valid`` is one byte
    per cell, built window by window; ``layer`` reads one band (4 bytes per cell) when
    a stage needs a whole layer (the slope rule, the DEM for scarp positives);
    ``sample`` reads only the windows that hold the cells asked for.
    """

    def __init__(self, path: str | Path, chunk_size: int = 1024) -> None:
        self.path = Path(path).absolute()
        self.chunk_size = int(chunk_size)
        with open_raster(self.path) as src:
            self.names, self.class_names = stack_metadata(src)
            self.grid = Grid.from_raster(src)
        self._valid: np.ndarray | None = None

    @property
    def categorical(self) -> tuple[str, ...]:
        return tuple(n for n in self.names if n in self.class_names)

    @property
    def valid(self) -> np.ndarray:
        """Cells where every factor has a value (computed once, window by window)."""
        if self._valid is None:
            valid = np.zeros(self.grid.shape, dtype=bool)
            for win in iter_windows(self.grid.shape, self.chunk_size):
                valid[win.toslices()] = np.isfinite(self.read_window(win)).all(axis=0)
            self._valid = valid
        return self._valid

    def read_window(self, window: Window) -> np.ndarray:
        """All factors in ``window``, ``(n_factors, h, w)`` float32 (opens the file, so a
        task on another worker can call it)."""
        with open_raster(self.path) as src:
            return read_window(src, window)

    def layer(self, name: str) -> np.ndarray:
        if name not in self.names:
            raise KeyError(f"no factor '{name}' in {self.path}; factors: {', '.join(self.names)}")
        with open_raster(self.path) as src:
            return read_window(src, None, self.names.index(name) + 1)

    def sample(self, rows: np.ndarray, cols: np.ndarray) -> pd.DataFrame:
        """Factor values at cells, one row per cell, one column per factor."""
        values = read_cells(self.path, rows, cols, chunk_size=self.chunk_size)
        return pd.DataFrame(values.astype(np.float32), columns=list(self.names))


def stack_writer(path: str | Path, grid: Grid, names: Sequence[str],
                 class_names: dict[str, dict[int, str]], lock: Any = None, *, cog: bool = True,
                 compress: bool = True):
    """The windowed writer of ``factors.tif``: float32, pixel-interleaved, one band per
    factor named by its description, the categorical factors' class names in a tag;
    nearest-neighbour overviews (categorical codes must not be averaged). ``cog=False``:
    a plain tiled GeoTIFF, for a stack only this process reads back."""
    return windowed_geotiff(
        path, grid, count=len(names), descriptions=names,
        tags={_CATEGORICAL_TAG: json.dumps(class_names)}, overview_resampling="nearest",
        lock=lock, cog=cog, interleave="pixel",
        **({"predictor": 3, "NUM_THREADS": "ALL_CPUS"} if compress else {"compress": "none"}))


def stack_metadata(src: rasterio.DatasetReader) -> tuple[tuple[str, ...], dict[str, dict]]:
    """Factor names and categorical class names of an open ``factors.tif``."""
    names = tuple(d or f"band_{i}" for i, d in enumerate(src.descriptions, start=1))
    raw = json.loads(src.tags().get(_CATEGORICAL_TAG, "{}"))
    class_names = {k: {int(code): n for code, n in v.items()} for k, v in raw.items()}
    return names, class_names


def read_dem(path: str, grid: Grid) -> np.ndarray:
    """The whole DEM on ``grid`` (bilinear), NaN for no data: the reference input of
    :func:`metalsm.terrain.derive_terrain`."""
    dem = read_aligned_window(path, grid, None, name="dem", categorical=False)
    if np.isnan(dem).all():
        raise MetalsmInputError(f"DEM {path} has no valid cells")
    return dem


@dataclass(frozen=True)
class LayerSource:
    """One factor to align per window: a raster path with its resampling rule;
    ``origin`` names the input a derived layer came from (for error messages)."""

    name: str
    path: str
    categorical: bool = False
    origin: str | None = None


def write_factor_stack(
    sources: Sequence[LayerSource],
    grid: Grid,
    out_path: str | Path,
    compute: Compute | None = None,
    *,
    chunk_size: int | None = None,
    class_names: dict[str, dict[int, str]] | None = None,
    progress: Callable[[int], Any] | None = None,
    cog: bool = True,
    compress: bool = True,
) -> Path:
    """Align every layer window by window (``chunk_size``; None: one window) and write
    ``factors.tif`` atomically: a COG, or ``cog=False`` a plain GeoTIFF; the file
    written before the COG copy is deflate-compressed only when ``compress``.

    Raises :class:`MetalsmInputError` naming the layer when a layer has no valid
    cell, or when no cell has a value in every layer.
    """
    sources = [replace(s, path=str(Path(s.path).absolute())) for s in sources]
    names = tuple(s.name for s in sources)
    compute = compute or Compute()
    finite = np.zeros(len(sources), dtype=np.int64)
    n_valid = 0

    def task(win: Window) -> np.ndarray:
        out = np.empty((len(sources), int(win.height), int(win.width)), dtype=np.float32)
        for i, source in enumerate(sources):
            out[i] = read_aligned_window(source.path, grid, win, name=source.name,
                                         categorical=source.categorical)
        return out

    windows = iter_windows(grid.shape, chunk_size or max(grid.shape))
    with stack_writer(out_path, grid, names, class_names or {},
                      compute.lock(str(out_path)), cog=cog, compress=compress) as out:
        for win, values in compute.map_windows(task, windows):
            ok = np.isfinite(values)
            finite += ok.reshape(len(names), -1).sum(axis=1)
            n_valid += int(ok.all(axis=0).sum())
            out.write(values, win)
            if progress is not None:
                progress(int(win.width * win.height))
        empty = [n for n, c in zip(names, finite, strict=True) if c == 0]
        if empty:
            source = sources[names.index(empty[0])]
            raise MetalsmInputError(
                f"raster {source.origin or source.path} (layer '{empty[0]}') has no valid "
                "cells on the study grid (all nodata, or it does not overlap the reference grid)")
        if n_valid == 0:
            raise MetalsmInputError(
                "no cell has a value in every factor; valid cells per factor: "
                f"{dict(zip(names, finite.tolist(), strict=True))}")
    log.info("factor stack: %d factors, %d valid cells of %d", len(names), n_valid,
             grid.height * grid.width)
    return Path(out_path)


def write_factors(
    config: StudyAreaConfig,
    out_path: str | Path,
    compute: Compute | None = None,
    *,
    chunk_size: int | None = None,
    progress: Callable[[str], None] | None = None,
    cog: bool = True,
) -> Path:
    """``factors.tif`` of ``config``, window by window (``chunk_size``; None: one window);
    ``cog=False`` for a stack that is not an output (a plain GeoTIFF, no overviews).

    Terrain factors and vector distances are written one GeoTIFF per layer by
    :mod:`metalsm.terrain._write` into a ``.layers`` folder beside the output
    (removed afterwards); thematic rasters are aligned window by window. Band
    order: terrain factors (config order), thematic rasters, vector distances.
    """
    from metalsm.terrain import vector_distance_raster, write_terrain_factors

    step = progress or (lambda _m: None)
    out_path = Path(out_path)
    grid = reference_grid(config)
    chunk = chunk_size or max(grid.shape)
    dem = str(Path(config.dem).absolute())
    _check_dem_has_data(dem, grid, chunk)
    work = out_path.parent / f".{out_path.stem}.layers"
    work.mkdir(parents=True, exist_ok=True)
    try:
        threshold = max(1, round(config.terrain.drainage_threshold_km2 * 1e6 / grid.cell_area))
        factors = tuple(dict.fromkeys(config.terrain.factors))
        step("deriving terrain factors")
        compress = chunk_size is not None  # one window: the layers are read straight back
        paths = write_terrain_factors(dem, grid, factors, work, chunk_size=max(3, chunk),
                                      drainage_threshold_cells=threshold, compute=compute,
                                      compress=compress, routing=config.terrain.routing)
        sources = [LayerSource(n, str(paths[n]), origin=str(config.dem)) for n in factors]
        class_names: dict[str, dict[int, str]] = {}
        for raster in config.rasters:
            categorical = raster.kind == "categorical"
            step(f"aligning {raster.name}")
            open_raster(raster.path).close()  # named error for a missing/unreadable file now
            sources.append(LayerSource(raster.name, str(raster.path), categorical))
            if categorical:
                class_names[raster.name] = read_class_names(raster.path)
        for vector in config.vectors:
            step(f"distance to {vector.name}")
            path = vector_distance_raster(vector.path, grid, work / f"distance_{vector.name}.tif",
                                          chunk_size=max(3, chunk), layer_name=vector.name,
                                          dem_path=dem, compress=compress)
            sources.append(LayerSource(vector.name, str(path), origin=str(vector.path)))
        step("writing factors.tif")
        return write_factor_stack(sources, grid, out_path, compute, chunk_size=chunk,
                                  class_names=class_names, cog=cog, compress=compress)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _check_dem_has_data(dem: str, grid: Grid, chunk: int) -> None:
    """Stop before any work when the DEM has no valid cell on the grid (reads windows
    until one holds data: usually the first)."""
    for win in iter_windows(grid.shape, chunk):
        if np.isfinite(read_aligned_window(dem, grid, win, name="dem",
                                           categorical=False)).any():
            return
    raise MetalsmInputError(f"DEM {dem} has no valid cells")


def open_stack(config: StudyAreaConfig, out_path: str | Path, compute: Compute | None = None,
               *, chunked: bool = False, chunk_size: int | None = None,
               progress: Callable[[str], None] | None = None,
               output: bool = True) -> FactorStack | FileFactorStack:
    """Write ``factors.tif`` of ``config`` at ``out_path`` and open it: on disk when
    ``chunked`` (windows of ``chunk_size``), else in memory (one window). ``output``:
    the file is a run output (a COG) rather than a scratch file the caller removes."""
    if not chunked:
        compute, chunk_size = None, None
    write_factors(config, out_path, compute, chunk_size=chunk_size, progress=progress,
                  cog=output)
    if chunked:
        return FileFactorStack(out_path, chunk_size or 1024)
    return FactorStack.read(out_path)


def build_factor_stack(
    config: StudyAreaConfig,
    progress: Callable[[str], None] | None = None,
) -> FactorStack:
    """The factor stack of ``config`` in memory: :func:`write_factors` with one window
    into a temporary folder, read back."""
    with tempfile.TemporaryDirectory(prefix=".metalsm-stack-") as tmp:
        return open_stack(config, Path(tmp) / "factors.tif", progress=progress, output=False)
