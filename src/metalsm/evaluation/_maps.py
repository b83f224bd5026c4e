"""Scoring a map against the inventory: success- and prediction-rate curves, and how
the block-wise map ranks landslide cells inside each block."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metalsm.errors import MetalsmInputError
from metalsm.evaluation._validation import rate_curve_from_counts
from metalsm.mapping._zones import _ZONES_TAG
from metalsm.raster import (
    gdal_cache,
    iter_windows,
    open_raster,
)

__all__ = [
    "SUCCESS_RATE_BINS",
    "block_map_statistics",
    "success_rate",
]


def block_map_statistics(
    susceptibility_path: str | Path,
    blocks_path: str | Path,
    zones_path: str | Path,
    landslide_mask: np.ndarray | None,
    n_blocks: int,
    held_out_blocks: Sequence[int],
    *,
    window_size: int = 512,
) -> dict[str, float]:
    """Is a block-wise map flat, and does its top zone hold the held-out landslides?

    ``within_block_std``: mean over blocks (2+ mapped cells) of the standard deviation
    of the mapped probability inside the block (all blocks, and the held-out ones);
    ``held_out_top_zone_landslide_share`` / ``..._area_share``: within the held-out
    (meta-test) blocks, the share of landslide cells and of area in the highest zone.
    Window by window (per-block sums), so it holds one window at a time.
    """
    with open_raster(susceptibility_path) as sus, open_raster(blocks_path) as blk, \
            open_raster(zones_path) as zon:
        n = int(n_blocks)
        held = np.zeros(n + 1, dtype=bool)
        held_ids = np.asarray(held_out_blocks, dtype=np.int64)
        held[held_ids[(held_ids >= 0) & (held_ids < n)]] = True
        count = np.zeros(n + 1)
        total = np.zeros(n + 1)
        squares = np.zeros(n + 1)
        top = len(json.loads(zon.tags()[_ZONES_TAG])) - 1
        area = np.zeros(2)  # held-out cells: all zoned, in the top zone
        slides = np.zeros(2)
        for win in iter_windows(sus.shape, window_size):
            p = sus.read(1, window=win, masked=True).filled(np.nan).astype(np.float64)
            ids = blk.read(1, window=win).astype(np.int64)
            zones = zon.read(1, window=win).astype(np.int64)
            ok = np.isfinite(p) & (ids >= 0) & (ids < n)
            ids = np.where(ok, ids, n)
            count += np.bincount(ids.ravel(), minlength=n + 1)
            total += np.bincount(ids.ravel(), weights=np.where(ok, p, 0).ravel(),
                                 minlength=n + 1)
            squares += np.bincount(ids.ravel(), weights=np.where(ok, p * p, 0).ravel(),
                                   minlength=n + 1)
            in_held = ok & held[ids] & (zones > 0)
            area += [in_held.sum(), (in_held & (zones == top)).sum()]
            if landslide_mask is not None:
                sub = landslide_mask[win.row_off:win.row_off + win.height,
                                     win.col_off:win.col_off + win.width] & in_held
                slides += [sub.sum(), (sub & (zones == top)).sum()]
    mean = total[:n] / np.maximum(count[:n], 1)
    std = np.sqrt(np.maximum(squares[:n] / np.maximum(count[:n], 1) - mean ** 2, 0))
    mapped = count[:n] >= 2

    def mean_of(sel: np.ndarray) -> float:
        return float(std[sel].mean()) if sel.any() else float("nan")

    return {
        "within_block_std": mean_of(mapped),
        "within_block_std_held_out": mean_of(mapped & held[:n]),
        "held_out_top_zone_area_share": float(area[1] / area[0]) if area[0] else float("nan"),
        "held_out_top_zone_landslide_share": (float(slides[1] / slides[0]) if slides[0]
                                              else float("nan")),
    }


#: Probability classes of :func:`success_rate` (the AUC is exact to about 1e-4).
SUCCESS_RATE_BINS = 10_000


@gdal_cache()
def success_rate(susceptibility_path: str | Path, landslide_mask: np.ndarray, *,
                 window_size: int = 512, bins: int = SUCCESS_RATE_BINS) -> Any:
    """The success-rate curve of a probability map: its cells ranked from the most
    susceptible down against the share of ``landslide_mask`` cells they hold.

    Window by window into ``bins`` equal probability classes, so memory does not grow
    with the raster. The landslides are those the map was trained from, so this
    measures fit; :func:`metalsm.evaluation.prediction_rate` measures prediction.
    """
    area = np.zeros(bins, dtype=np.int64)
    slides = np.zeros(bins, dtype=np.int64)
    with open_raster(susceptibility_path) as src:
        landslide_mask = np.asarray(landslide_mask, dtype=bool)
        if landslide_mask.shape != src.shape:
            raise MetalsmInputError(f"landslide mask has shape {landslide_mask.shape}, but "
                                    f"{susceptibility_path} is {src.shape}")
        for win in iter_windows(src.shape, window_size):
            values = src.read(1, window=win)
            valid = np.isfinite(values)
            cls = np.clip((values[valid] * bins).astype(np.int64), 0, bins - 1)
            area += np.bincount(cls, minlength=bins)
            sub = landslide_mask[win.row_off : win.row_off + win.height,
                                 win.col_off : win.col_off + win.width][valid]
            slides += np.bincount(cls[sub], minlength=bins)
    return rate_curve_from_counts(area, slides)


