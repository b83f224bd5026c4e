"""Samples: the sample-table value every model stage takes, negative sampling and
the credibility of every cell as a non-landslide sample."""

from metalsm.samples import _credibility, _negatives, _table
from metalsm.samples._credibility import *  # noqa: F403
from metalsm.samples._negatives import *  # noqa: F403
from metalsm.samples._table import *  # noqa: F403

__all__ = [*_table.__all__, *_negatives.__all__, *_credibility.__all__]
