"""The landslide inventory (points, polygons, tables, rasters) as positive cells."""

from metalsm.inputs import _inventory
from metalsm.inputs._inventory import *  # noqa: F403

__all__ = [*_inventory.__all__]
