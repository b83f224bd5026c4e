"""Two areas from one study area, for the cross-area experiments (schemes A–D).

Every *block* goes to area 1 or area 2 (``[experiments] cross_area_split``):

* ``"west-east"`` (area 1 = west) / ``"north-south"`` (area 1 = north): each sample is on
  one side of the **median x (y) of the sample coordinates**, and a block goes to the
  side holding the majority of its samples (ties: area 1). The median of the samples
  (not of the block centres, not of the map extent) is used because the blocks are
  tasks made of samples: the median gives both areas about the same number of samples,
  hence comparable numbers of tasks and shots, whatever the shape of the study area or
  the density of the inventory. It is defined the same way for raster and table
  study areas.
* a polygon file (any format geopandas reads): reprojected to the study-area CRS,
  area 1 = the samples inside the polygon(s), area 2 = the rest; a block goes to the
  side of the majority of its samples.

Blocks without samples are no tasks and get area 0 (left out of every scheme).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from metalsm.errors import MetalsmInputError

SPLITS = ("west-east", "north-south")


def sample_sides(coords: np.ndarray, split: str, crs: Any = None) -> np.ndarray:
    """Area (1 or 2) of every sample point (``coords`` [n, 2] x/y in the study-area CRS)."""
    xy = np.asarray(coords, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2 or xy.shape[0] == 0:
        raise MetalsmInputError(f"sample coordinates must be a non-empty [n, 2] array, "
                                f"got shape {xy.shape}")
    if split in SPLITS:
        axis = 0 if split == "west-east" else 1
        median = float(np.median(xy[:, axis]))
        if split == "west-east":
            return np.where(xy[:, 0] <= median, 1, 2)
        return np.where(xy[:, 1] >= median, 1, 2)
    return np.where(_inside_polygon(xy, split, crs), 1, 2)


def _inside_polygon(xy: np.ndarray, path: str, crs: Any) -> np.ndarray:
    import geopandas as gpd
    import shapely

    file = Path(path)
    if not file.exists():
        raise MetalsmInputError(
            f"experiments.cross_area_split: '{path}' is neither one of {', '.join(SPLITS)} "
            "nor an existing polygon file")
    try:
        frame = gpd.read_file(file)
    except Exception as exc:  # noqa: BLE001 - any reader error is a bad input file
        raise MetalsmInputError(f"cannot read the area polygon file {file}: {exc}") from exc
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    kinds = set(frame.geom_type)
    if not len(frame) or not kinds <= {"Polygon", "MultiPolygon"}:
        raise MetalsmInputError(
            f"area polygon file {file} must hold polygons, found {sorted(kinds) or 'nothing'}")
    if crs is not None:
        if frame.crs is None:
            raise MetalsmInputError(f"area polygon file {file} has no CRS; the study area is "
                                    f"in {crs}")
        frame = frame.to_crs(crs)
    area = shapely.union_all(frame.geometry.to_numpy())
    inside = shapely.contains_xy(area, xy[:, 0], xy[:, 1])
    if not inside.any():
        xmin, ymin = xy.min(0)
        xmax, ymax = xy.max(0)
        raise MetalsmInputError(
            f"area polygon file {file} does not overlap the study area: none of its "
            f"{xy.shape[0]} samples (x {xmin:.0f}..{xmax:.0f}, y {ymin:.0f}..{ymax:.0f}) "
            f"lies inside the polygon(s) (bounds {np.round(area.bounds, 0).tolist()})")
    return inside


def area_of_blocks(coords: np.ndarray, sample_blocks: np.ndarray, n_blocks: int, split: str,
                   crs: Any = None) -> np.ndarray:
    """Area of every block (0 = no samples, 1, 2) by the majority of its samples' sides."""
    ids = np.asarray(sample_blocks, dtype=np.int64)
    side = sample_sides(coords, split, crs)
    if ids.shape != side.shape:
        raise MetalsmInputError(f"{ids.size} block ids for {side.size} sample coordinates")
    inside = ids >= 0
    n1 = np.bincount(ids[inside & (side == 1)], minlength=n_blocks)
    n2 = np.bincount(ids[inside & (side == 2)], minlength=n_blocks)
    return np.where(n1 + n2 == 0, 0, np.where(n1 >= n2, 1, 2)).astype(np.int64)


def check_areas(area: np.ndarray, split: str) -> None:
    """Both areas must hold at least two blocks (one to train on, one to test on)."""
    counts = {a: int((np.asarray(area) == a).sum()) for a in (1, 2)}
    short = [a for a, n in counts.items() if n < 2]
    if short:
        raise MetalsmInputError(
            f"cross_area_split = '{split}' leaves area {short[0]} with {counts[short[0]]} "
            f"block(s) with samples (area 1: {counts[1]}, area 2: {counts[2]}); the schemes "
            "need at least 2 in each area: move the split or use more blocks")
