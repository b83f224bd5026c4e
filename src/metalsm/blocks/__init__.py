"""Blocks and tasks: weighted SLIC segmentation (rasters, coarse grids, point
tables) and the tasks, splits and support/query draws built on the blocks."""

from metalsm.blocks._segmentation import (
    Blocks,
    CoarseBlocks,
    coarse_factor,
    initial_centres,
    normalize_factors,
    point_neighbour_edges,
    read_coarse_stack,
    segment_coarse,
    segment_on_coarse_grid,
    segment_points,
    segment_raster,
    slic_fast,
    slic_reference,
    weights_from_data,
    write_blocks,
)
from metalsm.blocks._tasks import (
    block_task_table,
    split_blocks,
    split_by_area,
)

__all__ = [
    "Blocks",
    "CoarseBlocks",
    "coarse_factor",
    "initial_centres",
    "normalize_factors",
    "point_neighbour_edges",
    "read_coarse_stack",
    "segment_coarse",
    "segment_on_coarse_grid",
    "segment_points",
    "segment_raster",
    "slic_fast",
    "slic_reference",
    "weights_from_data",
    "write_blocks",
    "block_task_table",
    "split_blocks",
    "split_by_area",
]
