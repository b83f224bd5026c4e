"""Rasters on a grid: the reference grid, windows, aligned reading, the one atomic
windowed GeoTIFF/COG writer and the styles written beside every raster output."""

from metalsm.raster import _cog, _grid, _read, _styles, _windows
from metalsm.raster._cog import *  # noqa: F403
from metalsm.raster._grid import *  # noqa: F403
from metalsm.raster._read import *  # noqa: F403
from metalsm.raster._styles import *  # noqa: F403
from metalsm.raster._windows import *  # noqa: F403

__all__ = [*_grid.__all__, *_windows.__all__, *_read.__all__, *_cog.__all__, *_styles.__all__]
