"""Rasters on a grid: the reference grid, windows, aligned reading, the one atomic
windowed GeoTIFF/COG writer and the styles written beside every raster output."""

from metalsm.raster._cog import (
    COG_BLOCK_SIZE,
    GDAL_CACHE_MB,
    WindowWriter,
    atomic_cog,
    cog_problems,
    gdal_cache,
    windowed_geotiff,
)
from metalsm.raster._grid import (
    Grid,
    open_raster,
    reference_grid,
)
from metalsm.raster._read import (
    Layer,
    nodata_to_nan,
    read_aligned,
    read_aligned_window,
    read_cells,
    read_class_names,
    read_window,
    resampling_onto,
    source_cell_size_on,
)
from metalsm.raster._styles import (
    RGB,
    block_colours,
    hex_colour,
    paletted_qml,
    pseudocolor_qml,
    style_path,
    write_attribute_table,
    write_blocks_style,
    write_credibility_style,
    write_zone_styles,
    zone_colours,
    zone_legend_labels,
)
from metalsm.raster._windows import (
    halo,
    iter_windows,
    strips,
)

__all__ = [
    "Grid",
    "open_raster",
    "reference_grid",
    "halo",
    "iter_windows",
    "strips",
    "Layer",
    "nodata_to_nan",
    "read_aligned",
    "read_aligned_window",
    "read_cells",
    "read_class_names",
    "read_window",
    "resampling_onto",
    "source_cell_size_on",
    "COG_BLOCK_SIZE",
    "GDAL_CACHE_MB",
    "WindowWriter",
    "atomic_cog",
    "cog_problems",
    "gdal_cache",
    "windowed_geotiff",
    "RGB",
    "block_colours",
    "hex_colour",
    "paletted_qml",
    "pseudocolor_qml",
    "style_path",
    "write_attribute_table",
    "write_blocks_style",
    "write_credibility_style",
    "write_zone_styles",
    "zone_colours",
    "zone_legend_labels",
]
