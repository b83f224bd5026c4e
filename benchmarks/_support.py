"""Pieces shared by the benchmark scripts, which run as ``python benchmarks/NAME.py``
(so this folder is on ``sys.path``, for them and for the subprocesses they start)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import rasterio

from metalsm.raster import iter_windows


def status_mb(field: str) -> float:
    """A memory figure of this process in MiB from /proc (VmRSS now, VmHWM = peak since
    exec). ``ru_maxrss`` is not used: it keeps the parent's high-water mark across
    fork/exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _mirror(index: np.ndarray, n: int) -> np.ndarray:
    """Source index of tiled index ``index`` (odd tiles flipped)."""
    tile, within = np.divmod(index, n)
    return np.where(tile % 2 == 1, n - 1 - within, within)


def mirror_tile(source: Path, target: Path, height: int, width: int,
                chunk: int = 2048) -> Path:
    """``height`` x ``width`` tiling of band 1 of ``source`` as a tiled deflate GeoTIFF,
    every other tile flipped so values stay continuous across the seams (flow crosses
    them); written window by window, with ``source``'s ``.aux.xml`` copied alongside."""
    with rasterio.open(source) as src:
        data = src.read(1)
        profile = src.profile.copy()
    h, w = data.shape
    profile.update(height=height, width=width, tiled=True, blockxsize=256, blockysize=256,
                   compress="deflate", BIGTIFF="IF_SAFER")
    with rasterio.open(target, "w", **profile) as dst:
        for win in iter_windows((height, width), chunk):
            rows = _mirror(np.arange(win.row_off, win.row_off + win.height), h)
            cols = _mirror(np.arange(win.col_off, win.col_off + win.width), w)
            dst.write(data[np.ix_(rows, cols)], 1, window=win)
    aux = Path(f"{source}.aux.xml")
    if aux.exists():
        shutil.copyfile(aux, f"{target}.aux.xml")
    return target
