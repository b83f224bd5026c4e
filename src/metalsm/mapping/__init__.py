"""From fitted models to maps: windowed prediction, zones, zone tables, success
rates and the uncertainty of the map over bootstrap refits."""

from metalsm.mapping._mapping import (
    DEFAULT_LABELS,
    GDAL_WRITE_THREADS,
    SUCCESS_RATE_BINS,
    ZONE_METHODS,
    block_map_statistics,
    classify_raster,
    classify_values,
    predict_blockwise_raster,
    predict_raster,
    predict_spread_raster,
    success_rate,
    zone_breaks,
    zone_table,
)
from metalsm.mapping._uncertainty import (
    bootstrap_refits,
    spread_statistics,
)

__all__ = [
    "DEFAULT_LABELS",
    "GDAL_WRITE_THREADS",
    "SUCCESS_RATE_BINS",
    "ZONE_METHODS",
    "block_map_statistics",
    "classify_raster",
    "classify_values",
    "predict_blockwise_raster",
    "predict_raster",
    "predict_spread_raster",
    "success_rate",
    "zone_breaks",
    "zone_table",
    "bootstrap_refits",
    "spread_statistics",
]
