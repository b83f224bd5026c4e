"""Scene segmentation: split the study area into compact, homogeneous blocks (meta-learning tasks).

The block-wise few-shot method treats every block as one task, so blocks must be
spatially contiguous and homogeneous in factor space. We use SLIC superpixels on
the normalized factor stack.

Normalization (:func:`normalize_factors`)
    * continuous factors: robust min-max, ``(v - p1) / (p99 - p1)`` clipped to
      [0, 1], with p1/p99 the 1st/99th percentiles over the valid cells (a regular
      stride sample of at most 2,000,000 valid cells on large rasters); a constant
      factor becomes 0 everywhere;
    * categorical factors: the class code is replaced by its rank among the codes
      present (0 .. n_classes - 1). Only equality matters: the feature distance of a
      categorical factor is a 0/1 mismatch, never a difference of codes.

Distance between a cell/point ``j`` and a centre ``i`` (factors in stack order)::

    d_f^2 = sum_m w_m * (z_mj - z_mi)^2          (continuous m)
          + sum_m w_m * [z_mj != z_mi]           (categorical m)
    D^2   = d_f^2 + (d_s / S)^2 * M^2

with ``d_s`` the Euclidean distance in cells (raster) or map units (points),
``S`` the grid step and ``M`` the compactness. Centres carry the mean position and
mean continuous features of their cells, and the mode (lowest rank on ties) of each
categorical factor. Ties in assignment go to the lowest centre index (centres are
visited in index order and a cell moves only on a strictly smaller ``D^2``).

Raster blocks are **4-connected** (so one block is one polygon). Points are
neighbours when they share a Delaunay edge no longer than ``S`` (coincident points
are always neighbours); a point block is one connected component of that graph.

The fast path is numba (:func:`slic_fast`); :func:`slic_reference` is a plain NumPy
version of the same iterations used by the tests to check the fast one cell by cell.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from numba import njit, prange
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from metalsm.atomic import atomic_path
from metalsm.errors import MetalsmInputError
from metalsm.raster import (
    Grid,
    iter_windows,
    open_raster,
    read_window,
    strips,
    windowed_geotiff,
    write_blocks_style,
)
from metalsm.scale import Compute

if TYPE_CHECKING:
    import geopandas as gpd

    from metalsm.stack import FactorStack

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
]

_PERCENTILE_SAMPLE = 2_000_000
_ROWS_PER_CHUNK = 32


# ----------------------------------------------------------------------------- normalization


def _scale_continuous(values: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """Robust min-max of ``values`` to [0, 1] with p1/p99 of ``sample``."""
    lo, hi = np.percentile(sample.astype(np.float64), [1.0, 99.0])
    if not hi > lo:
        return np.zeros(values.shape, dtype=np.float32)
    return np.clip((values.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _rank_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Categorical codes -> dense ranks 0..n-1 (float32) and the sorted codes."""
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1_000_000 and np.array_equal(values, np.round(values)):
        # integer codes in a modest range: O(n) lookup instead of a sort
        offset = (values - lo).astype(np.int64)
        present = np.bincount(offset, minlength=int(hi - lo) + 1) > 0
        lookup = np.cumsum(present) - 1
        codes = (np.flatnonzero(present) + lo).astype(values.dtype)
        return lookup[offset].astype(np.float32), codes
    codes, ranks = np.unique(values, return_inverse=True)
    return ranks.astype(np.float32).reshape(values.shape), codes


def _normalize(stack: FactorStack) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Normalized values, categorical flags and, per factor, the sorted class codes."""
    valid = stack.valid
    flat_valid = np.flatnonzero(valid.ravel())
    if flat_valid.size == 0:
        raise MetalsmInputError(
            "the factor stack has no valid cell (every cell is nodata in at least one of "
            f"{', '.join(stack.names)}); nothing to segment"
        )
    step = max(1, math.ceil(flat_valid.size / _PERCENTILE_SAMPLE))
    sample_idx = flat_valid[::step]
    categorical = set(stack.categorical)
    out = np.full(stack.values.shape, np.nan, dtype=np.float32)
    is_cat = np.zeros(len(stack.names), dtype=bool)
    codes: list[np.ndarray] = []
    for i, name in enumerate(stack.names):
        layer = stack.values[i]
        if name in categorical:
            is_cat[i] = True
            lo, hi, integral = _range_kernel(layer, valid)
            if integral and hi - lo < 1_000_000:  # O(n) lookup instead of a sort
                present = _presence_kernel(layer, valid, lo, int(hi - lo) + 1)
                lookup = (np.cumsum(present) - 1).astype(np.float32)
                _lookup_kernel(layer, valid, lo, lookup, out[i])
                codes.append((np.flatnonzero(present) + lo).astype(layer.dtype))
            else:
                ranks, c = _rank_codes(layer[valid])
                out[i][valid] = ranks
                codes.append(c)
        else:
            lo, hi = np.percentile(layer.ravel()[sample_idx].astype(np.float64), [1.0, 99.0])
            _scale_kernel(layer, valid, lo, hi, out[i])
            codes.append(np.empty(0))
    return out, is_cat, codes


@njit(cache=True, parallel=True)
def _scale_kernel(layer, valid, lo, hi, out):  # pragma: no cover
    """out = clip((layer - lo) / (hi - lo), 0, 1) on valid cells (0 if hi <= lo), else NaN."""
    height, width = layer.shape
    span = hi - lo
    for r in prange(height):
        for c in range(width):
            if not valid[r, c]:
                out[r, c] = np.nan
            elif not span > 0:
                out[r, c] = 0.0
            else:
                v = (np.float64(layer[r, c]) - lo) / span
                out[r, c] = np.float32(min(1.0, max(0.0, v)))


@njit(cache=True)
def _range_kernel(layer, valid):  # pragma: no cover
    lo = np.inf
    hi = -np.inf
    integral = True
    height, width = layer.shape
    for r in range(height):
        for c in range(width):
            if valid[r, c]:
                v = np.float64(layer[r, c])
                lo = min(lo, v)
                hi = max(hi, v)
                if v != math.floor(v):
                    integral = False
    return lo, hi, integral


@njit(cache=True)
def _presence_kernel(layer, valid, lo, size):  # pragma: no cover
    present = np.zeros(size, dtype=np.int64)
    height, width = layer.shape
    for r in range(height):
        for c in range(width):
            if valid[r, c]:
                present[int(np.float64(layer[r, c]) - lo)] = 1
    return present


@njit(cache=True, parallel=True)
def _lookup_kernel(layer, valid, lo, lookup, out):  # pragma: no cover
    height, width = layer.shape
    for r in prange(height):
        for c in range(width):
            if valid[r, c]:
                out[r, c] = lookup[int(np.float64(layer[r, c]) - lo)]


def normalize_factors(stack: FactorStack) -> np.ndarray:
    """The stack on comparable scales, (n_factors, H, W) float32, NaN outside ``stack.valid``.

    Continuous factors: robust min-max to [0, 1] (1st/99th percentile, clipped), so one
    outlier cannot squash a factor. Categorical factors: the rank of the class code
    (0..n_classes-1); the segmentation compares them by 0/1 mismatch only.
    """
    return _normalize(stack)[0]


def _resolve_weights(
    names: Sequence[str], weights: Mapping[str, float] | None
) -> np.ndarray:
    """Per-factor weights in ``names`` order (default 1 each); unknown/missing names fail."""
    if weights is None:
        return np.ones(len(names), dtype=np.float64)
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise MetalsmInputError(
            f"segmentation weights name unknown factor(s) {unknown}; factors: {', '.join(names)}"
        )
    missing = [n for n in names if n not in weights]
    if missing:
        raise MetalsmInputError(
            f"segmentation weights are missing factor(s) {missing}; give a weight for every "
            "factor (0 to ignore one)"
        )
    w = np.array([float(weights[n]) for n in names], dtype=np.float64)
    bad = [n for n, v in zip(names, w, strict=True) if not np.isfinite(v) or v < 0]
    if bad:
        raise MetalsmInputError(
            f"segmentation weights must be finite and >= 0; bad weight for {bad}: "
            f"{[weights[n] for n in bad]}"
        )
    if not (w > 0).any():
        raise MetalsmInputError("segmentation weights are all 0; at least one must be > 0")
    return w


def _check_k_m(n_blocks: int, compactness: float, n_valid: int, what: str) -> None:
    if not isinstance(n_blocks, int | np.integer) or n_blocks < 1:
        raise MetalsmInputError(f"n_blocks must be an integer >= 1, got {n_blocks!r}")
    if n_blocks > n_valid:
        raise MetalsmInputError(
            f"n_blocks={n_blocks} is larger than the number of {what} ({n_valid})"
        )
    if not np.isfinite(compactness) or compactness <= 0:
        raise MetalsmInputError(f"compactness must be > 0, got {compactness!r}")


# ----------------------------------------------------------------------------- initial centres


def initial_centres(
    normalized: np.ndarray,
    valid: np.ndarray,
    is_cat: np.ndarray,
    weights: np.ndarray,
    n_blocks: int,
) -> tuple[np.ndarray, float]:
    """Seed centres (K', 2 + n) as (row, col, features) and the grid step S = sqrt(N/K).

    Seeds sit on a regular grid of step ~S over the bounding box of the valid cells
    (cell centres at half a step from the box edges). Each moves to the lowest-gradient
    valid cell of its 5x5 neighbourhood (first in row-major order on ties); a seed with no
    valid cell there is dropped, and seeds landing on the same cell are merged. The
    gradient is the feature-space gradient magnitude
    ``G = sum_m w_m (delta_row_m^2 + delta_col_m^2)`` with central differences
    ``z(r+1) - z(r-1)`` (categorical: 0/1 mismatch); a difference touching a nodata or
    off-grid cell counts 0.
    """
    n, height, width = normalized.shape
    n_valid = int(valid.sum())
    step = math.sqrt(n_valid / n_blocks)
    rows_any = np.flatnonzero(valid.any(axis=1))
    cols_any = np.flatnonzero(valid.any(axis=0))
    r_lo, r_hi = rows_any[0], rows_any[-1] + 1
    c_lo, c_hi = cols_any[0], cols_any[-1] + 1
    n_r = max(1, round((r_hi - r_lo) / step))
    n_c = max(1, round((c_hi - c_lo) / step))
    seed_r = (r_lo + (np.arange(n_r) + 0.5) * (r_hi - r_lo) / n_r).astype(np.int64)
    seed_c = (c_lo + (np.arange(n_c) + 0.5) * (c_hi - c_lo) / n_c).astype(np.int64)
    sr, sc = np.meshgrid(seed_r, seed_c, indexing="ij")
    off = np.arange(-2, 3)
    nr = sr.reshape(-1, 1, 1) + off.reshape(1, 5, 1)
    nc = sc.reshape(-1, 1, 1) + off.reshape(1, 1, 5)
    nr, nc = np.broadcast_arrays(nr, nc)
    nr = nr.reshape(nr.shape[0], 25)
    nc = nc.reshape(nc.shape[0], 25)
    inside = (nr >= 0) & (nr < height) & (nc >= 0) & (nc < width)
    rr = np.clip(nr, 0, height - 1)
    cc = np.clip(nc, 0, width - 1)
    ok = inside & valid[rr, cc]
    grad = _gradient_at(normalized, valid, is_cat, weights, rr, cc)
    grad = np.where(ok, grad, np.inf)
    best = np.argmin(grad, axis=1)
    keep = ok.any(axis=1)
    rows = rr[np.arange(rr.shape[0]), best][keep]
    cols = cc[np.arange(cc.shape[0]), best][keep]
    flat = rows * width + cols
    _, first = np.unique(flat, return_index=True)
    first = np.sort(first)
    rows, cols = rows[first], cols[first]
    centres = np.empty((rows.size, 2 + n), dtype=np.float64)
    centres[:, 0] = rows
    centres[:, 1] = cols
    centres[:, 2:] = normalized[:, rows, cols].T.astype(np.float64)
    return centres, step


def _gradient_at(
    normalized: np.ndarray,
    valid: np.ndarray,
    is_cat: np.ndarray,
    weights: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
) -> np.ndarray:
    height, width = valid.shape
    grad = np.zeros(rows.shape, dtype=np.float64)
    for (dr, dc) in ((1, 0), (0, 1)):
        ra, ca = rows + dr, cols + dc
        rb, cb = rows - dr, cols - dc
        ok = (ra < height) & (ca < width) & (rb >= 0) & (cb >= 0)
        ra, ca = np.clip(ra, 0, height - 1), np.clip(ca, 0, width - 1)
        rb, cb = np.clip(rb, 0, height - 1), np.clip(cb, 0, width - 1)
        ok &= valid[ra, ca] & valid[rb, cb]
        for m in range(normalized.shape[0]):
            a = normalized[m, ra, ca].astype(np.float64)
            b = normalized[m, rb, cb].astype(np.float64)
            diff = (a != b).astype(np.float64) if is_cat[m] else (a - b) ** 2
            grad += weights[m] * np.where(ok, diff, 0.0)
    return grad


# ----------------------------------------------------------------------------- numba kernels


@njit(cache=True, parallel=True)
def _assign_kernel(feat, is_cat, weights, valid, centres, step, m2s, labels, best):
    n, height, width = feat.shape
    n_centres = centres.shape[0]
    n_chunks = (height + _ROWS_PER_CHUNK - 1) // _ROWS_PER_CHUNK
    win = 2 * int(math.ceil(step)) + 3
    for ch in prange(n_chunks):
        r_start = ch * _ROWS_PER_CHUNK
        r_stop = min(height, r_start + _ROWS_PER_CHUNK)
        for r in range(r_start, r_stop):
            for c in range(width):
                labels[r, c] = -1
                best[r, c] = np.inf
        acc = np.empty(_ROWS_PER_CHUNK * win, dtype=np.float64)
        for k in range(n_centres):
            cr = centres[k, 0]
            cc = centres[k, 1]
            r0 = max(r_start, int(math.floor(cr - step)))
            r1 = min(r_stop, int(math.floor(cr + step)) + 1)
            if r0 >= r1:
                continue
            c0 = max(0, int(math.floor(cc - step)))
            c1 = min(width, int(math.floor(cc + step)) + 1)
            if c0 >= c1:
                continue
            ww = c1 - c0
            for i in range((r1 - r0) * ww):
                acc[i] = 0.0
            for m in range(n):
                w = weights[m]
                cm = centres[k, 2 + m]
                if is_cat[m]:
                    for r in range(r0, r1):
                        base = (r - r0) * ww - c0
                        for c in range(c0, c1):
                            if feat[m, r, c] != cm:
                                acc[base + c] += w
                else:
                    for r in range(r0, r1):
                        base = (r - r0) * ww - c0
                        for c in range(c0, c1):
                            d = np.float64(feat[m, r, c]) - cm
                            acc[base + c] += w * d * d
            for r in range(r0, r1):
                base = (r - r0) * ww - c0
                dr = r - cr
                for c in range(c0, c1):
                    if valid[r, c]:
                        dc = c - cc
                        dist = acc[base + c] + (dr * dr + dc * dc) * m2s
                        if dist < best[r, c]:
                            best[r, c] = dist
                            labels[r, c] = k


@njit(cache=True, parallel=True)
def _update_kernel(feat, is_cat, n_classes, labels, centres):  # pragma: no cover
    """Centres <- mean row/col/continuous features and categorical modes of their cells.

    Each (centre, channel) sum runs in raster order (as ``np.bincount`` does), so the
    result is bit-identical to the NumPy reference; channels run in parallel. Empty
    centres are left as they are.
    """
    n, height, width = feat.shape
    n_centres = centres.shape[0]
    count = np.zeros(n_centres, dtype=np.int64)
    for r in range(height):
        for c in range(width):
            k = labels[r, c]
            if k >= 0:
                count[k] += 1
    out = centres.copy()
    for ch in prange(n + 2):
        m = ch - 2
        if m >= 0 and is_cat[m]:
            hist = np.zeros((n_centres, max(1, n_classes[m])), dtype=np.int64)
            for r in range(height):
                for c in range(width):
                    k = labels[r, c]
                    if k >= 0:
                        hist[k, int(feat[m, r, c])] += 1
            for k in range(n_centres):
                if count[k] > 0:
                    top = 0
                    for j in range(1, hist.shape[1]):
                        if hist[k, j] > hist[k, top]:
                            top = j
                    out[k, ch] = top
        else:
            sums = np.zeros(n_centres, dtype=np.float64)
            for r in range(height):
                for c in range(width):
                    k = labels[r, c]
                    if k >= 0:
                        if ch == 0:
                            sums[k] += r
                        elif ch == 1:
                            sums[k] += c
                        else:
                            sums[k] += feat[m, r, c]
            for k in range(n_centres):
                if count[k] > 0:
                    out[k, ch] = sums[k] / count[k]
    centres[:, :] = out


@njit(cache=True)
def _components_kernel(labels, valid):  # pragma: no cover
    """4-connected components of equal label among valid cells (unassigned -1 included)."""
    height, width = labels.shape
    comp = np.full((height, width), -1, dtype=np.int32)
    stack = np.empty(height * width, dtype=np.int32)
    n_comp = 0
    for r0 in range(height):
        for c0 in range(width):
            if not valid[r0, c0] or comp[r0, c0] >= 0:
                continue
            lab = labels[r0, c0]
            comp[r0, c0] = n_comp
            top = 0
            stack[top] = r0 * width + c0
            top += 1
            while top > 0:
                top -= 1
                idx = stack[top]
                r = idx // width
                c = idx - r * width
                for q in range(4):
                    rr = r + (1 if q == 0 else (-1 if q == 1 else 0))
                    cc = c + (1 if q == 2 else (-1 if q == 3 else 0))
                    if 0 <= rr < height and 0 <= cc < width:
                        if valid[rr, cc] and comp[rr, cc] < 0 and labels[rr, cc] == lab:
                            comp[rr, cc] = n_comp
                            stack[top] = rr * width + cc
                            top += 1
            n_comp += 1
    return comp, n_comp


@njit(cache=True)
def _component_edges_kernel(comp):  # pragma: no cover
    """Pairs (a, b) of different 4-adjacent components (both >= 0), a < b, with repeats."""
    height, width = comp.shape
    n = 0
    for r in range(height):
        for c in range(width):
            a = comp[r, c]
            if a < 0:
                continue
            if c + 1 < width and comp[r, c + 1] >= 0 and comp[r, c + 1] != a:
                n += 1
            if r + 1 < height and comp[r + 1, c] >= 0 and comp[r + 1, c] != a:
                n += 1
    out = np.empty((n, 2), dtype=np.int64)
    i = 0
    for r in range(height):
        for c in range(width):
            a = comp[r, c]
            if a < 0:
                continue
            for q in range(2):
                rr = r + q
                cc = c + 1 - q
                if rr < height and cc < width:
                    b = comp[rr, cc]
                    if b >= 0 and b != a:
                        out[i, 0] = min(a, b)
                        out[i, 1] = max(a, b)
                        i += 1
    return out


# ----------------------------------------------------------------------------- SLIC iterations


def _n_classes(normalized: np.ndarray, is_cat: np.ndarray, valid: np.ndarray) -> np.ndarray:
    out = np.zeros(normalized.shape[0], dtype=np.int64)
    for m in np.flatnonzero(is_cat):
        out[m] = int(np.nanmax(np.where(valid, normalized[m], np.nan))) + 1
    return out


def slic_fast(
    normalized: np.ndarray,
    valid: np.ndarray,
    is_cat: np.ndarray,
    weights: np.ndarray,
    centres: np.ndarray,
    step: float,
    compactness: float,
    iterations: int = 5,
) -> tuple[np.ndarray, np.ndarray]:
    """SLIC iterations (assign, update) in numba; returns (labels, centres).

    ``labels`` is -1 on nodata and on valid cells no centre window reached.
    """
    feat = np.ascontiguousarray(normalized, dtype=np.float32)
    valid = np.ascontiguousarray(valid, dtype=np.bool_)
    is_cat = np.ascontiguousarray(is_cat, dtype=np.bool_)
    weights = np.ascontiguousarray(weights, dtype=np.float64)
    centres = np.array(centres, dtype=np.float64, order="C")
    n_classes = _n_classes(feat, is_cat, valid)
    m2s = (compactness / step) ** 2
    labels = np.empty(valid.shape, dtype=np.int32)
    best = np.empty(valid.shape, dtype=np.float64)
    for _ in range(iterations):
        _assign_kernel(feat, is_cat, weights, valid, centres, float(step), m2s, labels, best)
        _update_kernel(feat, is_cat, n_classes, labels, centres)
    return labels, centres


def slic_reference(
    normalized: np.ndarray,
    valid: np.ndarray,
    is_cat: np.ndarray,
    weights: np.ndarray,
    centres: np.ndarray,
    step: float,
    compactness: float,
    iterations: int = 5,
) -> tuple[np.ndarray, np.ndarray]:
    """The same iterations as :func:`slic_fast`, written directly in NumPy (slow; for tests).

    Per centre k (in index order), every valid cell of the window
    ``[floor(c - S), floor(c + S)]`` in rows and columns gets ``D^2`` from the module
    formula and takes label k when that is strictly below its best so far.
    """
    n, height, width = normalized.shape
    centres = np.array(centres, dtype=np.float64)
    n_classes = _n_classes(normalized, is_cat, valid)
    m2s = (compactness / step) ** 2
    labels = np.full((height, width), -1, dtype=np.int32)
    for _ in range(iterations):
        labels = np.full((height, width), -1, dtype=np.int32)
        best = np.full((height, width), np.inf)
        for k in range(centres.shape[0]):
            cr, cc = centres[k, 0], centres[k, 1]
            r0, r1 = max(0, math.floor(cr - step)), min(height, math.floor(cr + step) + 1)
            c0, c1 = max(0, math.floor(cc - step)), min(width, math.floor(cc + step) + 1)
            if r0 >= r1 or c0 >= c1:
                continue
            acc = np.zeros((r1 - r0, c1 - c0))
            for m in range(n):
                z = normalized[m, r0:r1, c0:c1].astype(np.float64)
                if is_cat[m]:
                    acc = acc + np.where(z != centres[k, 2 + m], weights[m], 0.0)
                else:
                    d = z - centres[k, 2 + m]
                    acc = acc + weights[m] * d * d
            dr = (np.arange(r0, r1) - cr)[:, None]
            dc = (np.arange(c0, c1) - cc)[None, :]
            dist = acc + (dr * dr + dc * dc) * m2s
            win_best = best[r0:r1, c0:c1]
            better = valid[r0:r1, c0:c1] & (dist < win_best)
            win_best[better] = dist[better]
            labels[r0:r1, c0:c1][better] = k
        centres = _update_reference(normalized, is_cat, n_classes, labels, centres)
    return labels, centres


def _update_reference(normalized, is_cat, n_classes, labels, centres) -> np.ndarray:
    n_centres = centres.shape[0]
    assigned = labels >= 0
    lab = labels[assigned]
    rows, cols = np.nonzero(assigned)
    count = np.bincount(lab, minlength=n_centres)
    has = count > 0
    out = centres.copy()
    out[has, 0] = np.bincount(lab, weights=rows.astype(np.float64), minlength=n_centres)[has]
    out[has, 1] = np.bincount(lab, weights=cols.astype(np.float64), minlength=n_centres)[has]
    out[has, 0] /= count[has]
    out[has, 1] /= count[has]
    for m in range(normalized.shape[0]):
        z = normalized[m][assigned]
        if is_cat[m]:
            hist = np.bincount(
                lab * n_classes[m] + z.astype(np.int64), minlength=n_centres * n_classes[m]
            ).reshape(n_centres, n_classes[m])
            out[has, 2 + m] = np.argmax(hist, axis=1)[has]
        else:
            sums = np.bincount(lab, weights=z.astype(np.float64), minlength=n_centres)
            out[has, 2 + m] = sums[has] / count[has]
    return out


# ----------------------------------------------------------------------------- fragments


def _feature_distance(
    a: np.ndarray, b: np.ndarray, is_cat: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """Row-wise d_f^2 between feature rows ``a`` and ``b`` (same shapes)."""
    diff = np.where(is_cat, (a != b).astype(np.float64), (a - b) ** 2)
    return diff @ weights


def _merge_fragments(
    comp_label: np.ndarray,
    comp_size: np.ndarray,
    comp_feat: np.ndarray,
    edges: np.ndarray,
    centre_feat: np.ndarray,
    is_cat: np.ndarray,
    weights: np.ndarray,
    min_size: int,
) -> np.ndarray:
    """Block id (0..n_blocks-1) per component.

    A label keeps its largest component (lowest index on ties) when it has at least
    ``min_size`` members; every other component is a fragment. In rounds, each fragment
    touching an owned component joins the touching block whose centre is nearest in
    feature space (to the fragment's mean/mode features; lowest block id on ties).
    Fragments that never touch a block (islands) become blocks of their own, one per
    connected group.
    """
    n_comp = comp_label.size
    owner = np.full(n_comp, -1, dtype=np.int64)
    labelled = np.flatnonzero(comp_label >= 0)
    if labelled.size:
        order = np.lexsort((labelled, -comp_size[labelled], comp_label[labelled]))
        ordered = labelled[order]
        first = np.r_[True, comp_label[ordered][1:] != comp_label[ordered][:-1]]
        largest = ordered[first]
        largest = largest[comp_size[largest] >= min_size]
        owner[largest] = comp_label[largest]
    both = np.concatenate([edges, edges[:, ::-1]]) if edges.size else edges.reshape(0, 2)
    while True:
        cand = both[(owner[both[:, 0]] < 0) & (owner[both[:, 1]] >= 0)]
        if cand.size == 0:
            break
        frag, block = cand[:, 0], owner[cand[:, 1]]
        dist = _feature_distance(comp_feat[frag], centre_feat[block], is_cat, weights)
        order = np.lexsort((block, dist, frag))
        frag, block = frag[order], block[order]
        first = np.r_[True, frag[1:] != frag[:-1]]
        owner[frag[first]] = block[first]
    left = np.flatnonzero(owner < 0)
    if left.size:
        is_left = owner < 0
        sub = both[is_left[both[:, 0]] & is_left[both[:, 1]]]
        pos = np.full(n_comp, -1, dtype=np.int64)
        pos[left] = np.arange(left.size)
        graph = coo_matrix(
            (np.ones(len(sub)), (pos[sub[:, 0]], pos[sub[:, 1]])), shape=(left.size, left.size)
        )
        _, group = connected_components(graph, directed=False)
        base = owner.max() + 1 if (owner >= 0).any() else 0
        owner[left] = base + group
    _, block_id = np.unique(owner, return_inverse=True)
    return block_id.astype(np.int32)


# ----------------------------------------------------------------------------- raster API


@dataclass
class Blocks:
    """A segmentation of ``grid`` into blocks (tasks).

    ``labels`` (H, W) int32 is the block id per cell, -1 outside the valid mask.
    ``centres`` (n_blocks, 2 + n_factors) holds mean row, mean col, then per factor the
    mean normalized value (continuous) or the most frequent class code (categorical).
    """

    labels: np.ndarray
    n_blocks: int
    centres: np.ndarray
    grid: Grid
    names: tuple[str, ...] = ()
    step: float = float("nan")
    compactness: float = float("nan")
    meta: dict = field(default_factory=dict)

    def block_of(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Block id of cells (-1 for nodata cells and cells off the grid)."""
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        inside = self.grid.contains(rows, cols)
        out = np.full(rows.shape, -1, dtype=np.int32)
        out[inside] = self.labels[rows[inside], cols[inside]]
        return out

    def sizes(self) -> np.ndarray:
        """Cells per block."""
        return np.bincount(self.labels[self.labels >= 0], minlength=self.n_blocks)


def segment_raster(
    stack: FactorStack,
    n_blocks: int,
    compactness: float,
    weights: Mapping[str, float] | None = None,
    iterations: int = 5,
    min_size_fraction: float = 0.25,
    seed: int = 0,
) -> Blocks:
    """Split the valid cells of ``stack`` into about ``n_blocks`` 4-connected SLIC blocks.

    ``compactness`` trades shape regularity (large) against factor homogeneity
    (small); ``weights`` (one per factor, default 1) scale each factor's share of the
    feature distance. Blocks smaller than ``min_size_fraction * S^2`` cells are merged
    into a neighbour unless they are isolated by nodata. The method is deterministic;
    ``seed`` is accepted for interface symmetry and recorded only.
    """
    if iterations < 1:
        raise MetalsmInputError(f"iterations must be >= 1, got {iterations}")
    w = _resolve_weights(stack.names, weights)
    normalized, is_cat, codes = _normalize(stack)
    valid = np.isfinite(normalized).all(axis=0)
    _check_k_m(n_blocks, compactness, int(valid.sum()), "valid cells")
    centres, step = initial_centres(normalized, valid, is_cat, w, n_blocks)
    labels, centres = slic_fast(normalized, valid, is_cat, w, centres, step, compactness,
                                iterations)
    min_size = max(1, int(min_size_fraction * step * step))
    labels = _enforce_raster_connectivity(
        normalized, valid, is_cat, w, labels, centres, min_size
    )
    n_out = int(labels.max()) + 1
    final = np.zeros((n_out, 2 + len(stack.names)), dtype=np.float64)
    _update_kernel(normalized, is_cat, _n_classes(normalized, is_cat, valid), labels, final)
    for m in np.flatnonzero(is_cat):
        final[:, 2 + m] = codes[m][final[:, 2 + m].astype(np.int64)]
    return Blocks(
        labels=labels,
        n_blocks=n_out,
        centres=final,
        grid=stack.grid,
        names=tuple(stack.names),
        step=step,
        compactness=float(compactness),
        meta={"seed": seed, "iterations": iterations, "min_size": min_size,
              "weights": dict(zip(stack.names, w.tolist(), strict=True))},
    )


def _enforce_raster_connectivity(normalized, valid, is_cat, weights, labels, centres, min_size):
    comp, n_comp = _components_kernel(labels, valid)
    comp_size = np.bincount(comp[comp >= 0], minlength=n_comp)
    comp_label = np.full(n_comp, -1, dtype=np.int64)
    comp_label[comp[valid]] = labels[valid]
    comp_feat = np.zeros((n_comp, 2 + normalized.shape[0]))
    _update_kernel(normalized, is_cat, _n_classes(normalized, is_cat, valid), comp, comp_feat)
    pairs = _component_edges_kernel(comp)
    keys = np.unique(pairs[:, 0] * n_comp + pairs[:, 1])
    edges = np.stack([keys // n_comp, keys % n_comp], axis=1)
    block_of_comp = _merge_fragments(
        comp_label, comp_size, comp_feat[:, 2:], edges, centres[:, 2:], is_cat, weights,
        min_size,
    )
    out = np.full(labels.shape, -1, dtype=np.int32)
    out[valid] = block_of_comp[comp[valid]]
    return out


# ----------------------------------------------------------------------------- points API


def _normalize_table(table: pd.DataFrame, columns: Sequence[str], categorical: set[str]):
    z = np.empty((len(table), len(columns)), dtype=np.float64)
    is_cat = np.zeros(len(columns), dtype=bool)
    for i, name in enumerate(columns):
        values = pd.to_numeric(table[name], errors="coerce").to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            raise MetalsmInputError(
                f"factor column '{name}' has {int((~np.isfinite(values)).sum())} missing or "
                "non-numeric value(s); fill or drop those rows before segmenting"
            )
        if name in categorical:
            is_cat[i] = True
            z[:, i] = _rank_codes(values)[0]
        else:
            z[:, i] = _scale_continuous(values, values)
    return z, is_cat


def point_neighbour_edges(xy: np.ndarray, max_length: float) -> np.ndarray:
    """Neighbour pairs (i, j), i < j: Delaunay edges no longer than ``max_length``.

    Coincident points are linked to the first point at their location; points that the
    triangulation leaves out (degenerate input) are linked to their nearest vertex.
    """
    from scipy.spatial import Delaunay, QhullError

    sites, first, inverse = np.unique(xy, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    pairs = [np.stack([np.arange(len(xy)), first[inverse]], axis=1)]
    if len(sites) == 2:
        pairs.append(np.array([[0, 1]]))
        site_pairs = np.array([[0, 1]])
    elif len(sites) > 2:
        try:
            tri = Delaunay(sites)
            simplices = tri.simplices
            site_pairs = np.concatenate(
                [simplices[:, [0, 1]], simplices[:, [1, 2]], simplices[:, [0, 2]]]
            )
            if len(tri.coplanar):
                site_pairs = np.concatenate([site_pairs, tri.coplanar[:, [0, 2]]])
        except QhullError:  # all sites collinear: chain them in order
            order = np.lexsort((sites[:, 1], sites[:, 0]))
            site_pairs = np.stack([order[:-1], order[1:]], axis=1)
    else:
        site_pairs = np.empty((0, 2), dtype=np.int64)
    if len(site_pairs):
        length = np.hypot(*(sites[site_pairs[:, 0]] - sites[site_pairs[:, 1]]).T)
        site_pairs = site_pairs[length <= max_length]
        pairs.append(first[site_pairs])
    edges = np.concatenate(pairs).astype(np.int64)
    edges = np.sort(edges, axis=1)
    edges = edges[edges[:, 0] != edges[:, 1]]
    return np.unique(edges, axis=0) if len(edges) else edges.reshape(0, 2)


def segment_points(
    table: pd.DataFrame,
    factor_columns: Sequence[str],
    x: str = "X",
    y: str = "Y",
    *,
    n_blocks: int,
    compactness: float,
    weights: Mapping[str, float] | None = None,
    iterations: int = 5,
    categorical: Sequence[str] = (),
    min_size_fraction: float = 0.25,
) -> np.ndarray:
    """Block id (0..n-1, int32) per row of a sample table, by the raster method on points.

    S = sqrt(area of the points' convex hull / K) in map units. Seeds: one per cell of a
    regular grid of step ~S over the points' bounding box that holds points (the point
    nearest the cell centre). Each point joins the nearest centre by D within the
    2S x 2S window (points outside every window: the spatially nearest centre).
    Contiguity: see the module docstring; fragments smaller than
    ``min_size_fraction * n_points / K`` points or not the largest piece of their block
    merge into the touching block with the nearest centre in feature space.
    """
    from scipy.spatial import ConvexHull, QhullError, cKDTree

    missing = [c for c in (x, y) if c not in table.columns]
    if missing:
        raise MetalsmInputError(
            f"sample table has no coordinate column(s) {missing}; columns: "
            f"{', '.join(map(str, table.columns))}"
        )
    absent = [c for c in factor_columns if c not in table.columns]
    if absent:
        raise MetalsmInputError(f"sample table has no factor column(s) {absent}")
    unknown_cat = sorted(set(categorical) - set(factor_columns))
    if unknown_cat:
        raise MetalsmInputError(f"categorical column(s) {unknown_cat} are not factor columns")
    if iterations < 1:
        raise MetalsmInputError(f"iterations must be >= 1, got {iterations}")
    names = list(factor_columns)
    w = _resolve_weights(names, weights)
    xy = table[[x, y]].to_numpy(dtype=np.float64)
    if not np.isfinite(xy).all():
        raise MetalsmInputError(f"coordinate columns '{x}'/'{y}' hold missing values")
    _check_k_m(n_blocks, compactness, len(table), "sample rows")
    z, is_cat = _normalize_table(table, names, set(categorical))
    n_pts, n = z.shape

    lo, hi = xy.min(axis=0), xy.max(axis=0)
    extent = np.maximum(hi - lo, 1e-9)
    try:
        area = ConvexHull(xy).volume
    except (QhullError, ValueError):
        area = float(np.prod(extent))
    area = area if area > 0 else float(extent.max() ** 2)
    step = math.sqrt(area / n_blocks)

    # seeds: nearest point to the centre of every occupied grid cell
    n_cells = np.maximum(1, np.round(extent / step)).astype(np.int64)
    cell_len = extent / n_cells
    cell = np.minimum(((xy - lo) / cell_len).astype(np.int64), n_cells - 1)
    cell_id = cell[:, 0] * n_cells[1] + cell[:, 1]
    node = lo + (cell + 0.5) * cell_len
    dnode = np.hypot(*(xy - node).T)
    order = np.lexsort((np.arange(n_pts), dnode, cell_id))
    firsts = order[np.r_[True, cell_id[order][1:] != cell_id[order][:-1]]]
    centres = np.concatenate([xy[firsts], z[firsts]], axis=1)
    n_classes = np.array([int(z[:, m].max()) + 1 if is_cat[m] else 0 for m in range(n)])

    m2s = (compactness / step) ** 2
    tree_p = cKDTree(xy)
    label = np.zeros(n_pts, dtype=np.int64)
    for _ in range(iterations):
        k_c = len(centres)
        tree_c = cKDTree(centres[:, :2])
        pairs = tree_p.sparse_distance_matrix(tree_c, step, p=np.inf, output_type="ndarray")
        i, k = pairs["i"].astype(np.int64), pairs["j"].astype(np.int64)
        d_s2 = ((xy[i] - centres[k, :2]) ** 2).sum(axis=1)
        dist = _feature_distance(z[i], centres[k, 2:], is_cat, w) + d_s2 * m2s
        order = np.lexsort((k, dist, i))
        i, k = i[order], k[order]
        first = np.r_[True, i[1:] != i[:-1]] if i.size else np.zeros(0, bool)
        label = tree_c.query(xy)[1].astype(np.int64)
        label[i[first]] = k[first]
        count = np.bincount(label, minlength=k_c)
        has = count > 0
        for j in range(2):
            centres[has, j] = np.bincount(label, weights=xy[:, j], minlength=k_c)[has] / count[has]
        for m in range(n):
            if is_cat[m]:
                hist = np.bincount(
                    label * n_classes[m] + z[:, m].astype(np.int64),
                    minlength=k_c * n_classes[m],
                ).reshape(k_c, n_classes[m])
                centres[has, 2 + m] = np.argmax(hist, axis=1)[has]
            else:
                sums = np.bincount(label, weights=z[:, m], minlength=k_c)
                centres[has, 2 + m] = sums[has] / count[has]

    # contiguity: components of the neighbour graph restricted to each label
    edges = point_neighbour_edges(xy, step)
    same = edges[label[edges[:, 0]] == label[edges[:, 1]]]
    graph = coo_matrix((np.ones(len(same)), (same[:, 0], same[:, 1])), shape=(n_pts, n_pts))
    n_comp, comp = connected_components(graph, directed=False)
    comp_size = np.bincount(comp, minlength=n_comp)
    comp_label = np.zeros(n_comp, dtype=np.int64)
    comp_label[comp] = label
    comp_feat = np.zeros((n_comp, n))
    for m in range(n):
        if is_cat[m]:
            hist = np.bincount(
                comp * n_classes[m] + z[:, m].astype(np.int64), minlength=n_comp * n_classes[m]
            ).reshape(n_comp, n_classes[m])
            comp_feat[:, m] = np.argmax(hist, axis=1)
        else:
            comp_feat[:, m] = np.bincount(comp, weights=z[:, m], minlength=n_comp) / comp_size
    cedges = np.sort(np.stack([comp[edges[:, 0]], comp[edges[:, 1]]], axis=1), axis=1)
    cedges = np.unique(cedges[cedges[:, 0] != cedges[:, 1]], axis=0)
    min_size = max(1, int(min_size_fraction * n_pts / n_blocks))
    block_of_comp = _merge_fragments(
        comp_label, comp_size, comp_feat, cedges, centres[:, 2:], is_cat, w, min_size
    )
    return block_of_comp[comp]


# ----------------------------------------------------------------------------- weights


def weights_from_data(
    stack: FactorStack | None,
    samples_X: pd.DataFrame,  # noqa: N803 - the scikit-learn name
    y: np.ndarray,
    method: Literal["fr_differentiation", "rf_importance"] = "fr_differentiation",
    *,
    categorical: Sequence[str] = (),
    n_bins: int = 10,
    seed: int = 0,
) -> dict[str, float]:
    """Per-factor segmentation weights learnt from samples, normalized to sum to n_factors.

    (Equal weights are then all 1, the default.) ``rf_importance``: impurity importances
    of a seeded 200-tree random forest. ``fr_differentiation``: the area-weighted standard
    deviation over a factor's classes (categorical) or quantile bins (continuous,
    ``n_bins``) of the frequency ratio ``FR = (positives in bin / positives) / (area share
    of bin)``; weighting by area share keeps a rare class with one landslide from
    dominating. The area share comes from the stack's valid cells, or from all samples
    without a stack.
    Factor names and categorical flags come from ``stack`` when given.
    """
    names = list(stack.names) if stack is not None else list(samples_X.columns)
    cats = set(stack.categorical) if stack is not None else set(categorical)
    absent = [n for n in names if n not in samples_X.columns]
    if absent:
        raise MetalsmInputError(f"samples have no column(s) {absent} for weights_from_data")
    y = np.asarray(y).astype(np.int64)
    if set(np.unique(y)) != {0, 1}:
        raise MetalsmInputError("weights_from_data needs labels with both classes 0 and 1")
    X = samples_X[names].to_numpy(dtype=np.float64)  # noqa: N806
    if method == "rf_importance":
        from sklearn.ensemble import RandomForestClassifier

        rf = RandomForestClassifier(n_estimators=200, random_state=seed, n_jobs=1)
        rf.fit(X, y)
        raw = rf.feature_importances_.astype(np.float64)
    elif method == "fr_differentiation":
        raw = np.zeros(len(names))
        if stack is not None:
            valid = stack.valid
            flat = np.flatnonzero(valid.ravel())
            flat = flat[:: max(1, math.ceil(flat.size / _PERCENTILE_SAMPLE))]
        for i, name in enumerate(names):
            area_vals = stack.layer(name).ravel()[flat] if stack is not None else X[:, i]
            if name in cats:
                edges = None
                bins_s = X[:, i]
                bins_a = area_vals
                classes = np.unique(np.concatenate([bins_s, bins_a]))
                b_s = np.searchsorted(classes, bins_s)
                b_a = np.searchsorted(classes, bins_a)
                nb = classes.size
            else:
                edges = np.unique(np.quantile(area_vals, np.linspace(0, 1, n_bins + 1))[1:-1])
                b_s = np.searchsorted(edges, X[:, i], side="right")
                b_a = np.searchsorted(edges, area_vals, side="right")
                nb = edges.size + 1
            pos = np.bincount(b_s[y == 1], minlength=nb) / max(1, (y == 1).sum())
            share = np.bincount(b_a, minlength=nb) / max(1, b_a.size)
            fr = np.divide(pos, share, out=np.zeros(nb), where=share > 0)
            mean = float(np.sum(share * fr))
            raw[i] = float(np.sqrt(np.sum(share * (fr - mean) ** 2)))
    else:
        raise MetalsmInputError(
            f"unknown weight method '{method}'; use 'fr_differentiation' or 'rf_importance'"
        )
    if not raw.sum() > 0:
        raise MetalsmInputError(f"weights_from_data ({method}) found no informative factor")
    raw = raw * len(names) / raw.sum()
    return dict(zip(names, raw.tolist(), strict=True))


# ---------------------------------------------------------------------- on a coarse grid


@dataclass(frozen=True)
class CoarseBlocks:
    """Blocks found on a coarse grid and carried back to the full grid (``blocks.tif``)."""

    blocks: Blocks  # on the coarse grid
    factor: int
    full_grid: Grid
    path: Path

    def block_of(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Block id of full-grid cells (the coarse cell containing them; -1 outside)."""
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        return self.blocks.block_of(rows // self.factor, cols // self.factor)


def coarse_factor(grid: Grid, *, resolution_m: float | None = None,
                  max_cells: int = 4_000_000) -> int:
    """Decimation factor: from a target resolution, else the least keeping <= ``max_cells``."""
    if resolution_m is not None:
        if resolution_m < grid.cell_size:
            raise MetalsmInputError(
                f"blocks.coarse_resolution_m = {resolution_m} is finer than the grid's "
                f"{grid.cell_size:g}")
        return max(1, int(round(resolution_m / grid.cell_size)))
    return max(1, math.ceil(math.sqrt(grid.height * grid.width / max_cells)))


def _block_reduce(values: np.ndarray, factor: int, categorical: np.ndarray) -> np.ndarray:
    """``(n, h, w)`` full cells (h, w multiples of ``factor``) to ``(n, h/f, w/f)``: the mean
    of the finite cells (continuous bands) or their most frequent code (categorical)."""
    n, h, w = values.shape
    blocks = values.reshape(n, h // factor, factor, w // factor, factor)
    finite = np.isfinite(blocks)
    count = finite.sum(axis=(2, 4))
    out = np.full((n, h // factor, w // factor), np.nan, dtype=np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(finite, blocks, 0).sum(axis=(2, 4), dtype=np.float64) / count
    cont = ~categorical
    out[cont] = np.where(count[cont] > 0, mean[cont], np.nan)
    for b in np.flatnonzero(categorical):  # a loop over class codes, not cells
        band = blocks[b]
        best = np.zeros(out.shape[1:], dtype=np.int64)
        for code in np.unique(band[np.isfinite(band)]):
            hits = (band == code).sum(axis=(1, 3))
            better = hits > best
            out[b][better] = code
            best[better] = hits[better]
    return out


def read_coarse_stack(factors_path: str | Path, factor: int, compute: Compute | None = None,
                      chunk_size: int = 1024) -> FactorStack:
    """``factors.tif`` decimated by ``factor``: per coarse cell the mean of its finite full
    cells, or their most frequent class for categorical bands.

    Coarse cell (i, j) covers full cells [i*f, (i+1)*f) x [j*f, (j+1)*f) (the last row
    and column of coarse cells may reach past the raster edge). Read in full-width
    strips of whole coarse rows, all bands at once (``factors.tif`` is pixel-interleaved).
    """
    from metalsm.stack import FactorStack, stack_metadata

    factors_path = Path(factors_path).absolute()  # workers may run elsewhere
    compute = compute or Compute()
    with open_raster(factors_path) as src:
        names, class_names = stack_metadata(src)
        full = Grid.from_raster(src)
    h, w = math.ceil(full.height / factor), math.ceil(full.width / factor)
    grid = Grid(full.crs, full.transform @ full.transform.scale(factor, factor), h, w)
    categorical = np.array([n in class_names for n in names])

    def task(win):
        with open_raster(factors_path) as src:
            values = read_window(src, win)
        padded = np.full((len(names), math.ceil(win.height / factor) * factor, w * factor),
                         np.nan, dtype=np.float32)
        padded[:, : values.shape[1], : values.shape[2]] = values
        return _block_reduce(padded, factor, categorical)

    values = np.full((len(names), h, w), np.nan, dtype=np.float32)
    for win, coarse in compute.map_windows(task, strips(full.shape, chunk_size * chunk_size,
                                                        factor)):
        r0 = int(win.row_off) // factor
        values[:, r0 : r0 + coarse.shape[1]] = coarse
    return FactorStack(grid, names, values, class_names)


def _blocks_writer(path: str | Path, grid: Grid, lock=None):
    """The writer of ``blocks.tif``: int32 block ids, -1 outside every block."""
    return windowed_geotiff(path, grid, dtype="int32", nodata=-1,
                            overview_resampling="nearest", lock=lock)


def segment_coarse(
    factors_path: str | Path,
    settings,
    out_path: str | Path,
    compute: Compute | None = None,
    *,
    factor: int,
    weights: dict[str, float] | None = None,
    chunk_size: int = 1024,
) -> CoarseBlocks:
    """Segment ``factors.tif`` on a grid ``factor`` times coarser and write ``blocks.tif``.

    SLIC is global: it runs once, in memory, on the coarse grid. ``settings`` is a
    ``BlocksConfig``. Each full cell takes the block of the coarse cell containing it
    (nearest), and -1 where any factor is missing at full resolution.
    """
    factors_path = Path(factors_path).absolute()  # workers may run elsewhere
    compute = compute or Compute()
    coarse = read_coarse_stack(factors_path, factor, compute, chunk_size)
    blocks = segment_raster(coarse, settings.n_blocks, settings.compactness, weights=weights,
                            iterations=settings.iterations,
                            min_size_fraction=settings.min_size_fraction, seed=settings.seed)
    labels = blocks.labels
    grid = Grid.from_raster(factors_path)

    def task(win):
        with open_raster(factors_path) as src:
            values = read_window(src, win)
        rows = np.arange(int(win.row_off), int(win.row_off + win.height)) // factor
        cols = np.arange(int(win.col_off), int(win.col_off + win.width)) // factor
        ids = labels[rows[:, None], cols[None, :]].astype(np.int32)
        ids[~np.isfinite(values).all(axis=0)] = -1
        return ids

    with _blocks_writer(out_path, grid, compute.lock(str(out_path))) as dst:
        for win, ids in compute.map_windows(task, iter_windows(grid.shape, chunk_size)):
            dst.write(ids, win)
    write_blocks_style(out_path, range(blocks.n_blocks))
    return CoarseBlocks(blocks, factor, grid, Path(out_path))


def segment_on_coarse_grid(factors_path: str | Path, settings, weights=None, *,
                           compute: Compute | None = None, chunk_size: int = 1024) -> Blocks:
    """``[blocks] coarse_resolution_m`` (or a stack on disk) in a run: :func:`segment_coarse`,
    then the block ids on the full grid as :class:`Blocks` (centres' row and column in
    full-grid cells), so the block outputs and tasks follow unchanged."""
    from dataclasses import replace

    factors_path = Path(factors_path)
    grid = Grid.from_raster(factors_path)
    factor = coarse_factor(grid, resolution_m=settings.coarse_resolution_m)
    result = segment_coarse(factors_path, settings, factors_path.parent / "blocks.tif",
                            compute, factor=factor, weights=weights, chunk_size=chunk_size)
    with open_raster(result.path) as src:
        labels = src.read(1)
    centres = result.blocks.centres.copy()
    centres[:, :2] = centres[:, :2] * factor + (factor - 1) / 2
    meta = {**result.blocks.meta, "coarse_factor": factor,
            "coarse_resolution_m": factor * grid.cell_size}
    return replace(result.blocks, labels=labels, centres=centres, grid=grid,
                   step=result.blocks.step * factor, meta=meta)


# ----------------------------------------------------------------------------- output


def write_blocks(
    blocks: Blocks,
    out_dir: str | Path,
    samples_table: pd.DataFrame | None = None,
    inventory: gpd.GeoDataFrame | None = None,
    split: Mapping[int, str] | None = None,
) -> dict[str, Path]:
    """Write ``blocks.tif`` (int32 block id, nodata -1) and ``blocks.gpkg`` (one polygon per
    block: id, cells, area_km2, n_pos, n_neg[, n_landslides][, split]).

    ``samples_table`` needs ``label`` and ``row``/``col`` (or ``x``/``y``) columns;
    ``inventory`` features are counted by their representative point; ``split`` (block
    id -> "meta-train" / "meta-test", as in ``tasks.csv``) becomes the ``split`` column.
    """
    import geopandas as gpd
    import shapely
    from rasterio.features import shapes

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tif = out_dir / "blocks.tif"
    with _blocks_writer(tif, blocks.grid) as dst:
        dst.write(blocks.labels.astype(np.int32))
    write_blocks_style(tif, range(blocks.n_blocks))

    geoms, ids = [], []
    for geom, value in shapes(
        blocks.labels, mask=blocks.labels >= 0, transform=blocks.grid.transform, connectivity=4
    ):
        geoms.append(shapely.geometry.shape(geom))
        ids.append(int(value))
    gdf = gpd.GeoDataFrame({"id": ids}, geometry=geoms, crs=blocks.grid.crs)
    gdf = gdf.dissolve(by="id", as_index=False).sort_values("id").reset_index(drop=True)
    sizes = blocks.sizes()
    gdf["cells"] = sizes[gdf["id"].to_numpy()]
    gdf["area_km2"] = gdf["cells"] * blocks.grid.cell_area / 1e6
    n_pos = np.zeros(blocks.n_blocks, dtype=np.int64)
    n_neg = np.zeros(blocks.n_blocks, dtype=np.int64)
    if samples_table is not None:
        if {"row", "col"} <= set(samples_table.columns):
            rows, cols = samples_table["row"].to_numpy(), samples_table["col"].to_numpy()
        elif {"x", "y"} <= set(samples_table.columns):
            rows, cols = blocks.grid.rowcol(samples_table["x"], samples_table["y"])
        else:
            raise MetalsmInputError("samples_table needs 'row'/'col' or 'x'/'y' columns")
        b = blocks.block_of(rows, cols)
        lab = samples_table["label"].to_numpy()
        inside = b >= 0
        n_pos = np.bincount(b[inside & (lab == 1)], minlength=blocks.n_blocks)
        n_neg = np.bincount(b[inside & (lab != 1)], minlength=blocks.n_blocks)
    gdf["n_pos"] = n_pos[gdf["id"].to_numpy()]
    gdf["n_neg"] = n_neg[gdf["id"].to_numpy()]
    if inventory is not None:
        pts = inventory.to_crs(blocks.grid.crs).geometry.representative_point()
        rows, cols = blocks.grid.rowcol(pts.x.to_numpy(), pts.y.to_numpy())
        b = blocks.block_of(rows, cols)
        n_ls = np.bincount(b[b >= 0], minlength=blocks.n_blocks)
        gdf["n_landslides"] = n_ls[gdf["id"].to_numpy()]
    if split is not None:
        gdf["split"] = [split.get(int(i), "") for i in gdf["id"]]
    gpkg = out_dir / "blocks.gpkg"
    with atomic_path(gpkg) as tmp:
        gdf.to_file(tmp, driver="GPKG", layer="blocks")
    return {"tif": tif, "gpkg": gpkg}
