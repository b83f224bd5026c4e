"""Terrain factors and distances window by window, for grids of any size.

The results equal :func:`metalsm.terrain.derive_terrain` cell for cell; only memory
differs. A whole-grid run is the same code with one window. Three kinds of work,
three strategies:

* **3x3 factors** (elevation, slope, aspect, curvatures) are local: each window
  is read with a one-cell halo (:func:`metalsm.raster.halo`, clipped at the grid edge,
  so the real edge keeps the in-memory edge handling), computed by the one factor
  table :func:`metalsm.terrain.window_factors` and cropped, band by band inside a
  window (:data:`BAND_CELLS`). Memory: ~25 MB of temporaries per window in flight and
  a bounded GDAL block cache; none of it grows with the grid. The windows run on a
  :class:`metalsm.scale.Compute` (serial, threads or a ``distributed`` cluster) and
  are written by the calling process only.
* **Flow routing** (fill, D8 or MFD, accumulation) is **global**: a halo cannot make it
  correct across chunk edges. It runs once over compact whole-grid arrays through
  :func:`metalsm.terrain.flow_routing_counts`, the function ``derive_terrain``
  uses too. Bytes per cell (float32 DEM): 4 (DEM) + 1 (closed flag) while
  filling, plus the flooding front on the heap (16 bytes per open cell) and a
  FIFO of raised cells; 4 + 1 (int8 D8 codes) while routing; 1 + 1 (uint8
  in-degree) + 4 (uint32 counts) = **6 bytes per cell at the peak**, then 4
  (the counts) kept while the factor windows are written. 400 M cells: ~2.4 GB.
  Multiple flow directions (``routing="mfd"``) keep the DEM for the proportions:
  4 + 1 (waiting count) + 4 (float32 totals) = 9 bytes per cell (400 M: ~3.6 GB).
  TWI, SPI, log accumulation read the counts and a windowed slope. Local threads
  slice the counts in memory; a cluster's workers map them from a scratch file
  beside the layers (not shipped with every task).
* **Euclidean distances** (to drainage, to vector features) are **global** too, by
  an exact separable squared-EDT written here: a 1-D pass down column strips (result,
  the distance in rows, kept on disk as uint32 in a temporary file next to the
  output) then the lower envelope of parabolas (Felzenszwalb & Huttenlocher,
  2012) along row strips of ``max(chunk_size**2, EDT_STRIP_CELLS)`` cells. Memory: one strip
  (~25 bytes per strip cell); disk: 4 bytes per cell (of the grid extended by
  the vector margin, for vector layers). Equal to scipy's
  ``distance_transform_edt`` times the cell size (same nearest feature, same
  integer squared distance, same ``sqrt``).

Outputs are single-band, tiled, deflate-compressed float32 GeoTIFFs with NaN as
nodata (as ``factors.tif``), one per factor, written atomically.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
from affine import Affine
from rasterio.windows import Window

from metalsm.errors import MetalsmInputError
from metalsm.progress import RunProgress
from metalsm.raster import (
    Grid,
    gdal_cache,
    halo,
    iter_windows,
    open_raster,
    read_aligned_window,
    windowed_geotiff,
)
from metalsm.scale import Compute
from metalsm.terrain import _distance, _factors, _hydrology
from metalsm.terrain._distance import _column_distances, _row_envelope
from metalsm.terrain._local import _check_cell_size

__all__ = [
    "vector_distance_raster",
    "write_terrain_factors",
]


def _check_chunk_size(chunk_size: int) -> int:
    if not isinstance(chunk_size, int | np.integer) or chunk_size < 3:
        raise MetalsmInputError(
            f"chunk_size must be an integer of at least 3 cells, got {chunk_size}"
        )
    return int(chunk_size)


@contextmanager
def _stage(progress: RunProgress | None, description: str, total: int):
    if progress is None:
        yield lambda n=1, note=None: None
    else:
        with progress.stage(description, total=total) as advance:
            yield advance


def _read_dem(dem_path: str | Path, grid: Grid, window: Window) -> np.ndarray:
    """The DEM on ``grid``'s ``window`` (bilinear when off the grid), NaN for no data."""
    return read_aligned_window(dem_path, grid, window, name="dem", categorical=False)


def _write_profile(compress: bool = True) -> dict:
    """Layer files: compressed (``WORK_COMPRESSION``) when they may not fit in memory, plain
    when a whole-grid (one-window) run reads them straight back."""
    if not compress:
        return {"compress": "none"}
    return {"predictor": 3, "num_threads": "ALL_CPUS"}


# ------------------------------------------------------------------------- terrain factors


def write_terrain_factors(
    dem_path: str | Path,
    grid: Grid,
    factors: Iterable[str],
    out_dir: str | Path,
    *,
    chunk_size: int = 1024,
    drainage_threshold_cells: float = 500,
    progress: RunProgress | None = None,
    compute: Compute | None = None,
    compress: bool = True,
    routing: str = "d8",
) -> dict[str, Path]:
    """Write the requested terrain factors of the DEM at ``dem_path`` as GeoTIFFs in ``out_dir``.

    Same factors, arguments and values as :func:`metalsm.terrain.derive_terrain`
    (float32, NaN where the DEM has no data), but the memory does not grow with the
    grid beyond the compact flow-routing arrays (see the module docstring), so that
    province-scale DEMs fit on a laptop. Returns ``{factor: out_dir / f"{factor}.tif"}``
    in request order.

    ``compute`` runs the windows (default: serially here; a ``distributed`` cluster's
    workers must be able to read ``dem_path``); this process writes them. Flow
    routing and the distance transform stay in this process (they are global).
    ``compress=False`` writes plain GeoTIFFs (for a whole-grid run).
    """
    requested = _factors.check_factor_names(factors)
    chunk_size = _check_chunk_size(chunk_size)
    _check_cell_size(grid.cell_size)
    _factors.check_drainage(requested, drainage_threshold_cells)
    _hydrology.check_routing(routing)
    open_raster(dem_path).close()  # a named error for a missing file before any work
    compute = compute or Compute()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / f"{name}.tif" for name in requested}
    windows = list(iter_windows(grid.shape, chunk_size))

    with gdal_cache():
        counts = None
        if any(n in _factors.FLOW_FACTORS for n in requested):

            def load_dem() -> np.ndarray:
                dem = np.empty(grid.shape, dtype=np.float32)
                for window in windows:
                    dem[window.toslices()] = _read_dem(dem_path, grid, window)
                return dem

            with _stage(progress, f"flow routing (fill, {routing.upper()}, accumulation)",
                        1) as advance:
                counts = _hydrology.flow_routing_counts(load_dem, routing=routing)
                advance()
            _factors.check_drainage(requested, drainage_threshold_cells, counts)
        window_names = [n for n in requested if n != "distance_to_drainage"]
        if window_names:
            dem_file = str(dem_path)

            with ExitStack() as stack, _stage(progress, "terrain factors", len(windows)) as adv:
                upstream = counts
                if counts is not None and compute.client is not None:
                    upstream = _CountsFile.spill(counts, stack.enter_context(
                        tempfile.TemporaryDirectory(prefix=".counts-", dir=out_dir)))

                def task(window: Window) -> dict[str, np.ndarray]:
                    return _factor_window(
                        dem_file, grid, window, window_names,
                        None if upstream is None else upstream[window.toslices()])

                writers = {name: stack.enter_context(windowed_geotiff(
                    paths[name], grid, descriptions=[name], cog=False,
                    lock=compute.lock(str(paths[name])), **_write_profile(compress)))
                    for name in window_names}
                for window, values in compute.map_windows(task, windows):
                    for name, value in values.items():
                        writers[name].write(value, window)
                    adv()
        if "distance_to_drainage" in requested:
            threshold = drainage_threshold_cells

            def channels(c0: int, c1: int) -> np.ndarray:
                return counts[:, c0:c1] >= threshold  # no-data cells count 0: never channels

            _distance_raster(
                channels, grid, paths["distance_to_drainage"], chunk_size,
                row_pad=0, col_pad=0, ext_shape=grid.shape, dem_path=dem_path,
                progress=progress, what="distance to drainage", compress=compress,
            )
    return {name: paths[name] for name in requested}


class _CountsFile:
    """Upstream counts as cluster workers read them: a scratch ``.npy`` each worker maps
    and slices (the workers read this folder, as they read the DEM), so the whole grid's
    counts (1.6 GB at 400 M cells) are not shipped to every worker inside the task."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    @classmethod
    def spill(cls, counts: np.ndarray, folder: str) -> _CountsFile:
        path = Path(folder) / "upstream_counts.npy"
        np.save(path, counts)
        return cls(path)

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        return np.asarray(np.load(self.path, mmap_mode="r")[key])


#: Cells per band inside a window: the 3x3 functions make ~25 float64 temporaries
#: per cell, so a band of 2**17 cells keeps them near 25 MB whatever the chunk size.
BAND_CELLS = 2**17


def _factor_window(
    dem_path: str, grid: Grid, window: Window, names: list[str], counts: np.ndarray | None
) -> dict[str, np.ndarray]:
    """The factors of one window, from its DEM with a one-cell halo and its upstream counts.

    Computed band by band (rows of :data:`BAND_CELLS` cells, each with its own halo):
    the values do not depend on the split, the temporaries stay small.
    """
    out = {name: np.empty((window.height, window.width), np.float32) for name in names}
    band = max(1, BAND_CELLS // window.width)
    for r in range(0, window.height, band):
        rows = slice(r, min(window.height, r + band))
        sub = Window(window.col_off, window.row_off + r, window.width, rows.stop - r)
        big, crop = halo(sub, grid.shape)
        values = _factors.window_factors(_read_dem(dem_path, grid, big), crop, names,
                                        None if counts is None else counts[rows],
                                        grid.cell_size)
        for name, value in values.items():
            out[name][rows] = value
    return out


# ------------------------------------------------------------------------------- the EDT


#: Least cells per strip of the distance transform (~25 bytes each while in the
#: row pass): larger strips mean fewer, larger reads of the scratch file.
EDT_STRIP_CELLS = 2**21


def _distance_raster(
    mask_columns: Callable[[int, int], np.ndarray],
    grid: Grid,
    path: Path,
    chunk_size: int,
    *,
    row_pad: int,
    col_pad: int,
    ext_shape: tuple[int, int],
    dem_path: str | Path | None = None,
    progress: RunProgress | None = None,
    what: str = "distance",
    compress: bool = True,
) -> bool:
    """Write the distance (m) from each cell of ``grid`` to the True cells of a mask.

    The mask lives on an extended grid of ``ext_shape`` whose cell (``row_pad``,
    ``col_pad``) is the grid's (0, 0); ``mask_columns(c0, c1)`` returns its columns
    ``c0 .. c1`` over the full extended height. Column strips -> uint32 1-D
    distances of the grid's rows in a temporary file beside ``path`` (one contiguous
    block per strip) -> row strips of the grid -> lower envelope -> GeoTIFF.
    Cells where the DEM at ``dem_path`` has no data come out NaN. Returns whether the mask
    had any True cell (nothing is written when it had none).
    """
    h, w = grid.shape
    h_ext, w_ext = ext_shape
    cell_size = grid.cell_size
    strip_cells = max(chunk_size * chunk_size, EDT_STRIP_CELLS)
    strip_w = max(1, min(w_ext, strip_cells // max(h_ext, 1)))
    strip_h = max(1, min(h, strip_cells // max(w_ext, 1)))
    col_strips = [(c, min(w_ext, c + strip_w)) for c in range(0, w_ext, strip_w)]
    row_strips = [(r, min(h, r + strip_h)) for r in range(0, h, strip_h)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".edt-", dir=path.parent) as tmp_dir:
        scratch = Path(tmp_dir) / "column_distances.u32"
        found = False
        offsets = []
        with _stage(progress, f"{what}: column pass", len(col_strips)) as advance:
            with open(scratch, "wb") as f:
                for c0, c1 in col_strips:
                    mask = np.ascontiguousarray(mask_columns(c0, c1), dtype=bool)
                    found = found or bool(mask.any())
                    offsets.append(f.tell())
                    _column_distances(mask, row_pad, h).tofile(f)
                    advance()
        if not found:
            return False
        with ExitStack() as stack, _stage(progress, f"{what}: row pass", len(row_strips)) as adv:
            out = stack.enter_context(windowed_geotiff(path, grid, descriptions=[path.stem],
                                                       cog=False, **_write_profile(compress)))
            f = stack.enter_context(open(scratch, "rb"))
            for r0, r1 in row_strips:
                g = np.empty((r1 - r0, w_ext), dtype=np.uint32)
                for (c0, c1), offset in zip(col_strips, offsets, strict=True):
                    width = c1 - c0
                    f.seek(offset + r0 * width * 4)
                    g[:, c0:c1] = np.fromfile(f, np.uint32, (r1 - r0) * width).reshape(
                        r1 - r0, width
                    )
                d2 = _row_envelope(g, col_pad, col_pad + w)
                distance = (np.sqrt(d2) * cell_size).astype(np.float32)
                window = Window(0, r0, w, r1 - r0)
                if dem_path is not None:
                    distance[np.isnan(_read_dem(dem_path, grid, window))] = np.nan
                out.write(distance, window)
                adv()
    return True


# ------------------------------------------------------------------------ vector distance


def vector_distance_raster(
    path_or_gdf,
    grid: Grid,
    out_path: str | Path,
    *,
    chunk_size: int = 1024,
    layer_name: str | None = None,
    dem_path: str | Path | None = None,
    progress: RunProgress | None = None,
    compress: bool = True,
) -> Path:
    """Write the distance (m) from each cell of ``grid`` to the nearest vector feature.

    Same values as :func:`metalsm.terrain.rasterize_vector_distance` (features
    burned with ``all_touched``, counted up to one grid diagonal outside the grid),
    but rasterized strip by strip and measured with the strip-wise EDT, so memory
    stays at a few strips. With ``dem_path``, cells where the DEM has no data are
    NaN (as in the factor stack). Raises :class:`MetalsmInputError` as the
    in-memory version does.
    """
    from rasterio.features import rasterize

    chunk_size = _check_chunk_size(chunk_size)
    geoms, source = _distance._read_vector_features(path_or_gdf, grid, layer_name)
    transform, ext_shape, pad_top, pad_left = _distance.extended_grid(geoms, grid, source)
    shapes = [(geom, 1) for geom in geoms]

    def burned(c0: int, c1: int) -> np.ndarray:
        return rasterize(
            shapes,
            out_shape=(ext_shape[0], c1 - c0),
            transform=transform @ Affine.translation(c0, 0),
            fill=0,
            all_touched=True,
            dtype="uint8",
        ).astype(bool)

    out_path = Path(out_path)
    with gdal_cache():
        found = _distance_raster(
            burned, grid, out_path, chunk_size, row_pad=pad_top, col_pad=pad_left,
            ext_shape=ext_shape, dem_path=dem_path, progress=progress,
            what=f"distance to {layer_name or out_path.stem}", compress=compress,
        )
    if not found:
        raise _distance.no_feature_error(geoms, grid, source)
    return out_path
