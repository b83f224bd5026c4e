"""How a command runs: serially, on local threads or on a Dask cluster, in memory
or window by window (one executor, one choice of path and window size)."""

from metalsm.scale import _compute
from metalsm.scale._compute import *  # noqa: F403

__all__ = [*_compute.__all__]
