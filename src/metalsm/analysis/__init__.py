"""Factor analysis: frequency ratio, differentiation, MIC, VIF and factor selection."""

from metalsm.analysis import _factors
from metalsm.analysis._factors import *  # noqa: F403

__all__ = [*_factors.__all__]
