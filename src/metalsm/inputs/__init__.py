"""The landslide inventory (points, polygons, tables, rasters) as positive cells."""

from metalsm.inputs._inventory import (
    MIN_POSITIVES,
    RASTER_SUFFIXES,
    landslide_mask,
    positive_cells,
    raster_patches,
    read_inventory,
)

__all__ = [
    "MIN_POSITIVES",
    "RASTER_SUFFIXES",
    "landslide_mask",
    "positive_cells",
    "raster_patches",
    "read_inventory",
]
