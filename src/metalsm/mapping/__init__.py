"""From fitted models to maps: windowed prediction, zones, zone tables, success
rates and the uncertainty of the map over bootstrap refits."""

from metalsm.mapping._predict import (
    GDAL_WRITE_THREADS,
    predict_blockwise_raster,
    predict_raster,
    predict_spread_raster,
)
from metalsm.mapping._uncertainty import (
    bootstrap_refits,
    spread_statistics,
)
from metalsm.mapping._zones import (
    DEFAULT_LABELS,
    ZONE_METHODS,
    classify_raster,
    classify_values,
    zone_breaks,
    zone_table,
)

__all__ = [
    "GDAL_WRITE_THREADS",
    "predict_blockwise_raster",
    "predict_raster",
    "predict_spread_raster",
    "DEFAULT_LABELS",
    "ZONE_METHODS",
    "classify_raster",
    "classify_values",
    "zone_breaks",
    "zone_table",
    "bootstrap_refits",
    "spread_statistics",
]
