"""From fitted models to maps: windowed prediction, zones, zone tables, success
rates and the uncertainty of the map over bootstrap refits."""

from metalsm.mapping import _predict, _uncertainty, _zones
from metalsm.mapping._predict import *  # noqa: F403
from metalsm.mapping._uncertainty import *  # noqa: F403
from metalsm.mapping._zones import *  # noqa: F403

__all__ = [*_predict.__all__, *_zones.__all__, *_uncertainty.__all__]
