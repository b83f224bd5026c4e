"""Terrain factors from a DEM: local 3x3 factors window by window, flow routing and
distances over the whole grid (global steps), one GeoTIFF per factor."""

from metalsm.terrain import _distance, _factors, _hydrology, _local, _write
from metalsm.terrain._distance import *  # noqa: F403
from metalsm.terrain._factors import *  # noqa: F403
from metalsm.terrain._hydrology import *  # noqa: F403
from metalsm.terrain._local import *  # noqa: F403
from metalsm.terrain._write import *  # noqa: F403

__all__ = [
    *_local.__all__,
    *_hydrology.__all__,
    *_distance.__all__,
    *_factors.__all__,
    *_write.__all__,
]
