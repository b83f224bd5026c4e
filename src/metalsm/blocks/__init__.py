"""Blocks and tasks: weighted SLIC segmentation (rasters, coarse grids, point
tables) and the tasks, splits and support/query draws built on the blocks."""

from metalsm.blocks import _segmentation, _tasks
from metalsm.blocks._segmentation import *  # noqa: F403
from metalsm.blocks._tasks import *  # noqa: F403

__all__ = [*_segmentation.__all__, *_tasks.__all__]
