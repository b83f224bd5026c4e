"""Raster outputs as Cloud-Optimized GeoTIFFs, and a check that a file is one.

Stages write their rasters window by window into an ordinary tiled GeoTIFF (the
COG driver cannot be written in place); :func:`atomic_cog` then copies that file
with GDAL's ``COG`` driver -- tiled, compressed, internal overviews stored before
the full-resolution data, the IFDs at the head of the file -- and renames the copy
onto the final name. Band descriptions, nodata, tags and colour tables travel with
the copy. :func:`cog_problems` applies the rules of GDAL's
``validate_cloud_optimized_geotiff.py`` so tests (and users) can check an output.
"""

from __future__ import annotations

import ctypes
import math
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from metalsm.atomic import atomic_path

if TYPE_CHECKING:
    from metalsm.raster._grid import Grid

__all__ = [
    "COG_BLOCK_SIZE",
    "COG_COPY_STRIPS",
    "WORK_COMPRESSION",
    "GDAL_CACHE_MB",
    "WindowWriter",
    "atomic_cog",
    "cog_copy_cache_mb",
    "cog_problems",
    "gdal_cache",
    "windowed_geotiff",
]

OverviewResampling = Literal["average", "mode", "nearest"]

#: GDAL block cache (MB) of every windowed reader and writer unless GDAL_CACHEMAX is set:
#: GDAL's default (5 % of RAM, 6 GB on a 128 GB node) lets memory grow with the raster.
GDAL_CACHE_MB = 256

#: Strips of tiles (the full width, one tile high, every band) the GDAL cache holds
#: while a COG is copied: GDAL builds the overviews strip by strip, and when a strip of
#: source tiles does not fit it decompresses them again for every band (a 20000-cell
#: wide 11-band stack: ~1,650 s with 256 MB, 426 s with 900 MB, 438 s with 1 GB;
#: docs/benchmarks.md).
COG_COPY_STRIPS = 5

#: Tile side of every COG output (GeoTIFF tiles of the windowed writers are 256 too).
COG_BLOCK_SIZE = 256

#: Compression of the files :func:`windowed_geotiff` writes before they become outputs
#: (the COG copy's source, intermediate layers): ZSTD level 1 writes a float32 DEM 3-5x
#: faster than deflate at the same size (docs/benchmarks.md); outputs stay deflate COGs.
WORK_COMPRESSION = {"compress": "zstd", "zstd_level": 1}

#: Classic TIFF ends at 4 GB of file; GDAL's default (``IF_NEEDED``) ignores compression
#: and stays classic, so a compressed province-scale stack (11 bands x 400 M cells) fails
#: when its directory is written. ``IF_SAFER`` switches to BigTIFF where the file might
#: pass 4 GB; small rasters stay classic TIFF.
BIGTIFF = "IF_SAFER"


@contextmanager
def atomic_cog(
    path: str | os.PathLike, *, overview_resampling: OverviewResampling = "average",
) -> Iterator[Path]:
    """Yield a temporary GeoTIFF path to write; on success it becomes ``path`` as a COG.

    Overviews already built in the temporary file are kept (so the run's
    ``[output] overviews`` factors hold); without them GDAL adds overviews down to
    one tile, resampled by ``overview_resampling`` (``mode``/``nearest`` for classes
    and ids). A failure leaves neither the temporary file nor a partial output.
    """
    import rasterio
    import rasterio.shutil

    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    work = final.with_name(f".{final.stem}.partial-tiles{final.suffix}")
    try:
        yield work
        with rasterio.open(work) as src:
            cache_mb = cog_copy_cache_mb(src.width, src.count, src.dtypes[0])
        with atomic_path(final) as tmp, gdal_cache(cache_mb):
            rasterio.shutil.copy(
                work, tmp, driver="COG", COMPRESS="DEFLATE", PREDICTOR="YES",
                BLOCKSIZE=COG_BLOCK_SIZE, OVERVIEWS="AUTO", BIGTIFF=BIGTIFF,
                OVERVIEW_RESAMPLING=overview_resampling.upper(), NUM_THREADS="ALL_CPUS",
            )
        if cache_mb > GDAL_CACHE_MB:
            _release_freed_heap()
    finally:
        for leftover in (work, work.with_name(work.name + ".aux.xml")):
            if leftover.exists():
                leftover.unlink()


def _release_freed_heap() -> None:
    """Hand the heap that a large copy cache freed back to the system: glibc keeps it,
    and every later stage of the 400 M-cell run started 0.9 GB higher (its RF map
    peaked at 4.2 GB)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def cog_copy_cache_mb(width: int, count: int, dtype: str) -> int:
    """GDAL cache (MB) for copying a ``width``-cell wide raster of ``count`` bands into a
    COG: :data:`COG_COPY_STRIPS` strips of tiles, at least :data:`GDAL_CACHE_MB`."""
    strip = width * COG_BLOCK_SIZE * count * np.dtype(dtype).itemsize
    return max(GDAL_CACHE_MB, math.ceil(COG_COPY_STRIPS * strip / 2**20))


#: Whether the GDAL cache setting in force is one :func:`gdal_cache` made (a nested
#: call may then change it) rather than the user's.
_CACHE_SET_HERE: ContextVar[bool] = ContextVar("metalsm_gdal_cache", default=False)


@contextmanager
def gdal_cache(megabytes: int = GDAL_CACHE_MB) -> Iterator[None]:
    """A bounded GDAL block cache of ``megabytes`` (:data:`GDAL_CACHE_MB`) unless the user
    set GDAL_CACHEMAX, so memory stays flat as rasters grow. Also a decorator."""
    import rasterio

    if _user_set_cache():
        yield
        return
    token = _CACHE_SET_HERE.set(True)
    try:
        # rasterio hands an integer GDAL_CACHEMAX to GDALSetCacheMax64: bytes, not MB (256
        # would be a 256-byte cache, and every tile read more than once decompressed again)
        with rasterio.Env(GDAL_CACHEMAX=int(megabytes) * 1024 * 1024):
            yield
    finally:
        _CACHE_SET_HERE.reset(token)


def _user_set_cache() -> bool:
    import rasterio
    from rasterio.errors import EnvError

    if "GDAL_CACHEMAX" in os.environ:
        return True
    if _CACHE_SET_HERE.get():
        return False
    try:
        return "GDAL_CACHEMAX" in rasterio.env.getenv()
    except EnvError:  # no rasterio environment active
        return False


class WindowWriter:
    """An open output raster that takes windows (or the whole array) in any order,
    one write at a time under ``lock`` (see :meth:`metalsm.scale.Compute.lock`)."""

    def __init__(self, dataset: Any, lock: Any = None) -> None:
        self.dataset = dataset
        self._lock = lock if lock is not None else threading.Lock()

    def write(self, values: np.ndarray, window: Any = None) -> None:
        with self._lock:
            if values.ndim == 2:
                self.dataset.write(values, 1, window=window)
            else:
                self.dataset.write(values, window=window)


@contextmanager
def windowed_geotiff(
    path: str | os.PathLike,
    grid: Grid,
    *,
    dtype: str = "float32",
    nodata: float | int | None = np.nan,
    count: int = 1,
    descriptions: Sequence[str] = (),
    tags: dict[str, str] | None = None,
    overview_resampling: OverviewResampling = "average",
    overviews: Sequence[int] = (),
    colormap: dict[int, tuple] | None = None,
    cog: bool = True,
    lock: Any = None,
    **creation: Any,
) -> Iterator[WindowWriter]:
    """The one atomic windowed GeoTIFF writer: yield a :class:`WindowWriter` on ``grid``.

    Tiled; the file written here is compressed by :data:`WORK_COMPRESSION` (``creation``
    adds or overrides profile keys). When the block succeeds, ``overviews`` (factors) are
    built by ``overview_resampling``, and the file is copied into a deflate COG
    (:func:`atomic_cog`) or, ``cog=False`` (intermediate layers this process reads
    back), renamed (:func:`metalsm.atomic.atomic_path`) onto ``path``. A failure leaves
    no output behind.
    """
    import rasterio
    from rasterio.enums import Resampling

    profile = grid.profile(count=count, dtype=dtype, nodata=nodata,
                           **{**WORK_COMPRESSION, "BIGTIFF": BIGTIFF, **creation})
    target = (atomic_cog(path, overview_resampling=overview_resampling) if cog
              else atomic_path(path))
    with gdal_cache(), target as tmp, rasterio.open(tmp, "w", **profile) as dst:
        for band, description in enumerate(descriptions, start=1):
            dst.set_band_description(band, description)
        if tags:
            dst.update_tags(**tags)
        yield WindowWriter(dst, lock)
        factors = sorted({int(f) for f in overviews if 1 < int(f) <= max(grid.shape)})
        if factors:
            dst.build_overviews(factors, Resampling[overview_resampling])
            dst.update_tags(ns="rio_overview", resampling=overview_resampling)
        if colormap is not None:
            dst.write_colormap(1, colormap)


def cog_problems(path: str | os.PathLike) -> list[str]:
    """Why ``path`` is not a valid Cloud-Optimized GeoTIFF (empty list: it is one).

    The checks of GDAL's ``validate_cloud_optimized_geotiff.py``: a tiled GeoTIFF,
    overviews when larger than a tile, the main IFD near the start of the file,
    overview IFDs after it, and the overviews' data before the full-resolution data
    (smallest overview first), each level's tiles in row-major order.
    """
    import rasterio

    problems: list[str] = []
    with rasterio.open(path) as src:
        if src.driver != "GTiff":
            return [f"{path}: driver {src.driver}, not GTiff"]
        block_w = src.block_shapes[0][1]
        if (src.width > 512 or src.height > 512) and (block_w == src.width and src.height > 1):
            problems.append("the full-resolution image is not tiled")
        overviews = src.overviews(1)
        if (src.width > 512 or src.height > 512) and not overviews:
            problems.append("no overviews although larger than 512 pixels")

        def item(name: str, ovr: int | None = None) -> int | None:
            value = src.get_tag_item(name, "TIFF", bidx=1, ovr=ovr)
            return int(value) if value not in (None, "") else None

        main_ifd = item("IFD_OFFSET")
        if main_ifd is None:
            return [*problems, "the TIFF metadata domain gives no IFD_OFFSET (GDAL too old?)"]
        if main_ifd not in (8, 16) and main_ifd >= 300:
            problems.append(f"the offset of the main IFD should be < 300; it is {main_ifd}")
        previous_ifd = main_ifd
        for i in range(len(overviews)):
            ifd = item("IFD_OFFSET", i)
            if ifd is None or ifd < previous_ifd:
                problems.append(f"the IFD of overview {i} (at {ifd}) comes before the one of "
                                f"the previous level (at {previous_ifd})")
            previous_ifd = ifd or previous_ifd
        # data: smallest overview first, the full resolution last
        levels = [*range(len(overviews) - 1, -1, -1), None]
        previous_data = 0
        for level in levels:
            first = item("BLOCK_OFFSET_0_0", level)
            name = "the full-resolution image" if level is None else f"overview {level}"
            if first is not None and first < previous_data:
                problems.append(f"the data of {name} (first tile at {first}) comes before the "
                                f"data of a smaller level (at {previous_data})")
            problems += _row_major_problems(src, level, item, name)
            previous_data = max(previous_data, first or 0)
    return problems


def _row_major_problems(src, level: int | None, item, name: str) -> list[str]:
    """Tiles of one level stored in row-major order (the first row of tiles checked)."""
    block_w = src.block_shapes[0][1]
    width = src.width if level is None else -(-src.width // src.overviews(1)[level])
    n_cols = -(-width // block_w)
    offsets = [item(f"BLOCK_OFFSET_{col}_0", level) for col in range(n_cols)]
    offsets = [o for o in offsets if o]  # sparse (empty) tiles have no data
    if any(b < a for a, b in zip(offsets, offsets[1:], strict=False)):
        return [f"the tiles of {name} are not in row-major order"]
    return []
