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

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from metalsm.atomic import atomic_path

OverviewResampling = Literal["average", "mode", "nearest"]

#: Tile side of every COG output (GeoTIFF tiles of the windowed writers are 256 too).
COG_BLOCK_SIZE = 256


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
        with atomic_path(final) as tmp:
            rasterio.shutil.copy(
                work, tmp, driver="COG", COMPRESS="DEFLATE", PREDICTOR="YES",
                BLOCKSIZE=COG_BLOCK_SIZE, OVERVIEWS="AUTO",
                OVERVIEW_RESAMPLING=overview_resampling.upper(), NUM_THREADS="ALL_CPUS",
            )
    finally:
        for leftover in (work, work.with_name(work.name + ".aux.xml")):
            if leftover.exists():
                leftover.unlink()


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
