"""The one way to cut a grid into windows: tiles, strips and a window with its halo."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from rasterio.windows import Window

from metalsm.errors import MetalsmInputError

__all__ = [
    "halo",
    "iter_windows",
    "strips",
]


def iter_windows(shape: tuple[int, int], size: int | tuple[int, int]) -> Iterator[Window]:
    """Row-major windows of ``size`` cells (or ``(rows, cols)``) covering a grid of
    ``shape``; the last row and column of windows are smaller. The one window iterator:
    a whole-grid computation is this with one window."""
    rows, cols = (size, size) if isinstance(size, int | np.integer) else size
    if rows < 1 or cols < 1:
        raise MetalsmInputError(f"window size must be a positive integer, got {size}")
    height, width = shape
    for row in range(0, height, rows):
        for col in range(0, width, cols):
            yield Window(col, row, min(cols, width - col), min(rows, height - row))


def strips(shape: tuple[int, int], cells: int, multiple: int = 1) -> list[Window]:
    """Full-width windows of about ``cells`` cells (whole multiples of ``multiple`` rows),
    in row-major order: what a stage needs that keeps the cells' row-major order."""
    rows = max(1, cells // max(shape[1], 1) // multiple) * multiple
    return list(iter_windows(shape, (rows, max(shape[1], 1))))


def halo(window: Window, shape: tuple[int, int], depth: int = 1) -> tuple[Window, tuple]:
    """``window`` grown by ``depth`` cells (clipped to the grid) and the slices that crop
    the grown window back to it: local (3x3) factors of a window need its neighbours."""
    h, w = shape
    r0 = max(0, window.row_off - depth)
    c0 = max(0, window.col_off - depth)
    r1 = min(h, window.row_off + window.height + depth)
    c1 = min(w, window.col_off + window.width + depth)
    crop = (slice(window.row_off - r0, window.row_off - r0 + window.height),
            slice(window.col_off - c0, window.col_off - c0 + window.width))
    return Window(c0, r0, c1 - c0, r1 - r0), crop
