"""Terrain factors derived from a DEM, as plain functions over numpy arrays.

Conventions shared by every function here:

* DEMs are 2-D float arrays, row 0 at the north edge (north-up grids), NaN = no data;
  ``cell_size`` is the (square) cell edge in metres. Results are float64 unless noted;
  :func:`derive_terrain` casts its outputs to float32.
* 3x3 neighbourhoods name their cells ``a b c / d e f / g h i`` (``e`` the centre,
  ``b`` north, ``f`` east). A neighbour that lies outside the grid or is NaN is
  replaced by the centre mirrored through its opposite neighbour (``2e - opposite``);
  when the opposite is missing too, an orthogonal neighbour takes the centre value
  and a diagonal one completes the plane through the centre and its two orthogonal
  neighbours. This is exact for planes (slope and aspect are exact on the edges and
  corners of a tilted plane) and only cells that are NaN themselves come out NaN.
* Aspect is the compass direction of steepest *descent*, clockwise from north
  (0 = north-facing, 90 = east-facing); it is returned as (sin, cos) so that it is
  continuous across north. Flat cells give (0, 0).
* Curvatures follow Zevenbergen & Thorne (1987) in 1/m (not ArcGIS' 1/100 m), with
  **positive = convex for both**: profile curvature > 0 where the slope line is
  convex-up (slope steepens downhill, flow accelerates), plan curvature > 0 where
  contours are convex (ridges, divergent flow); negative values mark hollows and
  valleys. On flat cells, where the slope direction is undefined, both equal the mean
  directional curvature ``-(D + E)``.
* D8 flow directions are int8 codes, clockwise from east:
  ``0 E, 1 SE, 2 S, 3 SW, 4 W, 5 NW, 6 N, 7 NE`` (ESRI's 1, 2, 4, ..., 128 as
  0..7); ``-1`` marks outlets (no lower neighbour) and no-data cells.
* Flow accumulation counts upstream cells *including the cell itself*: whole cells
  along D8 receivers, or fractions of cells along Freeman's (1991) multiple flow
  directions (``routing="mfd"``).
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from affine import Affine
from numba import njit
from scipy import ndimage

from metalsm.errors import MetalsmInputError
from metalsm.raster._grid import Grid

__all__ = [
    "D8_COL_OFFSETS",
    "D8_NODATA",
    "D8_ROW_OFFSETS",
    "FLOW_FACTORS",
    "FLOW_ROUTINGS",
    "MFD_EXPONENT",
    "MIN_TWI_SLOPE_DEG",
    "TERRAIN_FACTORS",
    "aspect",
    "aspect_from_gradient",
    "check_drainage",
    "check_factor_names",
    "check_routing",
    "curvatures",
    "d8_flow_directions",
    "derive_terrain",
    "distance_to_mask",
    "drainage_network",
    "extended_grid",
    "fill_depressions",
    "flow_accumulation",
    "flow_accumulation_counts",
    "flow_routing_counts",
    "horn_gradient",
    "log_spi",
    "mfd_flow_accumulation",
    "no_feature_error",
    "rasterize_vector_distance",
    "slope_degrees",
    "slope_from_gradient",
    "spi",
    "twi",
    "window_factors",
]

log = logging.getLogger(__name__)

TERRAIN_FACTORS: tuple[str, ...] = (
    "elevation",
    "slope",
    "aspect_sin",
    "aspect_cos",
    "plan_curvature",
    "profile_curvature",
    "flow_accumulation",
    "log_flow_accumulation",
    "twi",
    "spi",
    "distance_to_drainage",
)
"""Names :func:`derive_terrain` understands."""

#: Row / column offsets of the D8 codes 0..7 (E, SE, S, SW, W, NW, N, NE).
D8_ROW_OFFSETS = np.array([0, 1, 1, 1, 0, -1, -1, -1], dtype=np.int64)
D8_COL_OFFSETS = np.array([1, 1, 0, -1, -1, -1, 0, 1], dtype=np.int64)
_D8_DISTANCE = np.array([1.0, math.sqrt(2.0)] * 4)

#: Minimum slope used by :func:`twi` so that flat cells do not divide by zero.
MIN_TWI_SLOPE_DEG = 0.1

_FLAT_GRADIENT = 1e-10  # |grad z| below this counts as flat (no aspect, directionless curvature)

_OFFSETS_3X3 = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)]


# --------------------------------------------------------------------------- input checks


def _as_dem(dem: np.ndarray, what: str = "DEM") -> np.ndarray:
    arr = np.asarray(dem, dtype=np.float64)
    if arr.ndim != 2:
        raise MetalsmInputError(f"{what} must be a 2-D array, got shape {arr.shape}")
    return arr


def _check_cell_size(cell_size: float) -> float:
    cell_size = float(cell_size)
    if not (np.isfinite(cell_size) and cell_size > 0):
        raise MetalsmInputError(f"cell_size must be a positive number of metres, got {cell_size}")
    return cell_size


# ----------------------------------------------------------------- local derivatives (3x3)


def _neighbourhood(dem: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    """The 3x3 neighbours of every cell, missing ones mirrored through the centre."""
    z = _as_dem(dem)
    h, w = z.shape
    padded = np.pad(z, 1, mode="constant", constant_values=np.nan)
    raw = {(dr, dc): padded[1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w] for dr, dc in _OFFSETS_3X3}
    centre = raw[(0, 0)]
    out = {(0, 0): centre}
    # orthogonal neighbours first: the diagonal fallback below is built from them
    for dr, dc in sorted(_OFFSETS_3X3, key=lambda o: abs(o[0]) + abs(o[1])):
        if (dr, dc) == (0, 0):
            continue
        value = raw[(dr, dc)]
        opposite = raw[(-dr, -dc)]
        if dr == 0 or dc == 0:
            fallback = centre
        else:  # complete the plane through the centre and its two orthogonal neighbours
            fallback = out[(dr, 0)] + out[(0, dc)] - centre
        substitute = np.where(np.isnan(opposite), fallback, 2.0 * centre - opposite)
        out[(dr, dc)] = np.where(np.isnan(value), substitute, value)
    return out


def horn_gradient(dem: np.ndarray, cell_size: float) -> tuple[np.ndarray, np.ndarray]:
    """dz/dx (towards east) and dz/dy (towards north) by Horn's (1981) weighted differences."""
    cell_size = _check_cell_size(cell_size)
    n = _neighbourhood(dem)
    a, b, c = n[(-1, -1)], n[(-1, 0)], n[(-1, 1)]
    d, f = n[(0, -1)], n[(0, 1)]
    g, h, i = n[(1, -1)], n[(1, 0)], n[(1, 1)]
    dzdx = ((c + 2.0 * f + i) - (a + 2.0 * d + g)) / (8.0 * cell_size)
    dzdy = ((a + 2.0 * b + c) - (g + 2.0 * h + i)) / (8.0 * cell_size)
    nodata = np.isnan(n[(0, 0)])  # Horn ignores the centre; keep no-data cells NaN
    dzdx[nodata] = np.nan
    dzdy[nodata] = np.nan
    return dzdx, dzdy


def slope_degrees(dem: np.ndarray, cell_size: float) -> np.ndarray:
    """Slope angle in degrees, ``atan(|grad z|)`` with Horn's (1981) 3x3 gradient.

    Horn's weighted finite differences are the GDAL/ArcGIS default and are robust
    to noise on rough terrain; only NaN cells of ``dem`` are NaN in the result.
    """
    return slope_from_gradient(*horn_gradient(dem, cell_size))


def slope_from_gradient(dzdx: np.ndarray, dzdy: np.ndarray) -> np.ndarray:
    """Slope in degrees from a gradient (shared so slope and aspect read one gradient)."""
    return np.degrees(np.arctan(np.hypot(dzdx, dzdy)))


def aspect(dem: np.ndarray, cell_size: float) -> tuple[np.ndarray, np.ndarray]:
    """(sin, cos) of the aspect: direction of steepest descent, clockwise from north.

    Uses Horn's (1981) gradient. Returned as sine/cosine because aspect is circular
    (359 and 1 degree are neighbours). Flat cells give (0, 0).
    """
    return aspect_from_gradient(*horn_gradient(dem, cell_size))


def aspect_from_gradient(dzdx: np.ndarray, dzdy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sin, cos) of the aspect from a gradient; see :func:`aspect`."""
    magnitude = np.hypot(dzdx, dzdy)
    flat = magnitude < _FLAT_GRADIENT
    safe = np.where(flat, 1.0, magnitude)
    # descent vector is -grad z = (-dzdx east, -dzdy north); azimuth = atan2(east, north)
    sin_aspect = np.where(flat, 0.0, -dzdx / safe)
    cos_aspect = np.where(flat, 0.0, -dzdy / safe)
    return sin_aspect, cos_aspect


def curvatures(dem: np.ndarray, cell_size: float) -> tuple[np.ndarray, np.ndarray]:
    """(plan, profile) curvature in 1/m from Zevenbergen & Thorne's (1987) quadratic fit.

    With ``z = D x^2 + E y^2 + F xy + G x + H y + I`` fitted to the 3x3 window
    (x east, y north, L = cell size)::

        D = ((d + f) / 2 - e) / L^2        E = ((b + h) / 2 - e) / L^2
        F = (c + g - a - i) / (4 L^2)      G = (f - d) / (2 L)    H = (b - h) / (2 L)
        profile = -2 (D G^2 + E H^2 + F G H) / (G^2 + H^2)
        plan    = -2 (D H^2 + E G^2 - F G H) / (G^2 + H^2)

    i.e. minus the second derivative along the slope line (profile) and along the
    contour (plan), so **positive = convex** for both (ridges, spurs, convex-up
    slopes) and negative = concave (valleys, hollows). Where the surface is flat both
    are ``-(D + E)``, the mean of the directional curvatures.
    """
    cell_size = _check_cell_size(cell_size)
    n = _neighbourhood(dem)
    a, b, c = n[(-1, -1)], n[(-1, 0)], n[(-1, 1)]
    d, e, f = n[(0, -1)], n[(0, 0)], n[(0, 1)]
    g, h, i = n[(1, -1)], n[(1, 0)], n[(1, 1)]
    l2 = cell_size * cell_size
    dd = ((d + f) / 2.0 - e) / l2
    ee = ((b + h) / 2.0 - e) / l2
    ff = (c + g - a - i) / (4.0 * l2)
    gg = (f - d) / (2.0 * cell_size)
    hh = (b - h) / (2.0 * cell_size)
    g2h2 = gg * gg + hh * hh
    flat = np.sqrt(g2h2) < _FLAT_GRADIENT
    safe = np.where(flat, 1.0, g2h2)
    mean = -(dd + ee)
    profile = np.where(flat, mean, -2.0 * (dd * gg * gg + ee * hh * hh + ff * gg * hh) / safe)
    plan = np.where(flat, mean, -2.0 * (dd * hh * hh + ee * gg * gg - ff * gg * hh) / safe)
    return plan, profile


# ------------------------------------------------------------------------ hydrology (numba)


@njit(cache=True)
def _priority_flood_eps(z: np.ndarray) -> None:
    """Barnes, Lehman & Mulla (2014) Priority-Flood+epsilon, in place on ``z``.

    Works in ``z``'s own precision (float32 or float64): the epsilon is one ulp of
    that type. Memory: ``z`` plus a 1-byte ``closed`` flag per cell, plus the heap
    (16 bytes per open cell, the flooding front) and a growable FIFO of raised cells
    (8 bytes per cell queued at once) -- no array of N indices.
    """
    nr, nc = z.shape
    n = nr * nc
    flat = z.ravel()
    closed = np.zeros(n, dtype=np.bool_)
    # growable ring buffer of raised cells (FIFO)
    pit = np.empty(1024, dtype=np.int64)
    pit_head = 0
    pit_size = 0
    heap = [(np.float64(0.0), np.int64(0))]
    heap.pop()
    dr = np.array([0, 1, 1, 1, 0, -1, -1, -1])
    dc = np.array([1, 1, 0, -1, -1, -1, 0, 1])
    inf = flat.dtype.type(np.inf)
    # seeds: valid cells on the grid edge or next to a no-data cell drain out of the DEM
    for r in range(nr):
        for c in range(nc):
            k = r * nc + c
            if np.isnan(flat[k]):
                continue
            seed = r == 0 or c == 0 or r == nr - 1 or c == nc - 1
            if not seed:
                for j in range(8):
                    if np.isnan(flat[(r + dr[j]) * nc + c + dc[j]]):
                        seed = True
                        break
            if seed:
                closed[k] = True
                heapq.heappush(heap, (np.float64(flat[k]), np.int64(k)))
    while len(heap) > 0 or pit_size > 0:
        if pit_size > 0:
            k = pit[pit_head]
            pit_head += 1
            if pit_head == pit.size:
                pit_head = 0
            pit_size -= 1
        else:
            k = heapq.heappop(heap)[1]
        r = k // nc
        c = k - r * nc
        limit = np.nextafter(flat[k], inf)
        for j in range(8):
            rr = r + dr[j]
            cc = c + dc[j]
            if rr < 0 or rr >= nr or cc < 0 or cc >= nc:
                continue
            m = rr * nc + cc
            if closed[m] or np.isnan(flat[m]):
                continue
            closed[m] = True
            if flat[m] <= limit:
                flat[m] = limit
                if pit_size == pit.size:  # grow: unroll the ring into a twice larger buffer
                    bigger = np.empty(2 * pit.size, dtype=np.int64)
                    for i in range(pit_size):
                        j2 = pit_head + i
                        if j2 >= pit.size:
                            j2 -= pit.size
                        bigger[i] = pit[j2]
                    pit = bigger
                    pit_head = 0
                tail = pit_head + pit_size
                if tail >= pit.size:
                    tail -= pit.size
                pit[tail] = m
                pit_size += 1
            else:
                heapq.heappush(heap, (np.float64(flat[m]), np.int64(m)))


def fill_depressions(dem: np.ndarray) -> np.ndarray:
    """Depression-filled DEM by Priority-Flood+epsilon (Barnes et al., 2014).

    Grid edges and cells next to no data are outlets. Every pit and flat is raised
    so that each valid cell has a strictly lower neighbour on a path to an outlet;
    the "epsilon" is one ulp per step (``np.nextafter``) of the DEM's own precision:
    a float32 DEM is filled in float32 (half the memory; ~2.4e-4 m per step at
    3000 m), anything else in float64 (~1e-12 m per step). Keep the result in the
    precision it was filled in: casting float64 output to float32 would erase the
    gradients.
    """
    arr = np.asarray(dem)
    dtype = np.float32 if arr.dtype == np.float32 else np.float64
    z = np.array(_as_dem(arr) if dtype == np.float64 else arr, dtype=dtype, copy=True)
    if z.ndim != 2:
        raise MetalsmInputError(f"DEM must be a 2-D array, got shape {z.shape}")
    _priority_flood_eps(z)
    return z


@njit(cache=True)
def _d8_codes(z: np.ndarray, nodata_code: int) -> np.ndarray:
    """D8 receiver codes of ``z`` (any float type); NaN cells get ``nodata_code``."""
    nr, nc = z.shape
    codes = np.full((nr, nc), -1, dtype=np.int8)
    dr = np.array([0, 1, 1, 1, 0, -1, -1, -1])
    dc = np.array([1, 1, 0, -1, -1, -1, 0, 1])
    dist = np.array([1.0, math.sqrt(2.0)] * 4)
    for r in range(nr):
        for c in range(nc):
            zc = np.float64(z[r, c])
            if np.isnan(zc):
                codes[r, c] = nodata_code
                continue
            best = 0.0
            for j in range(8):
                rr = r + dr[j]
                cc = c + dc[j]
                if rr < 0 or rr >= nr or cc < 0 or cc >= nc:
                    continue
                gradient = (zc - np.float64(z[rr, cc])) / dist[j]
                if gradient > best:  # False for a NaN neighbour
                    best = gradient
                    codes[r, c] = j
    return codes


def d8_flow_directions(filled: np.ndarray) -> np.ndarray:
    """D8 (O'Callaghan & Mark, 1984) receiver of every cell as an int8 code.

    The receiver is the neighbour with the largest drop / distance (diagonals at
    sqrt(2) cell sizes; ties go to the lowest code). Codes 0..7 are E, SE, S, SW, W,
    NW, N, NE (see :data:`D8_ROW_OFFSETS`); -1 marks cells without a lower valid
    neighbour (outlets, unfilled pits) and no-data cells. Run it on
    :func:`fill_depressions` output to have -1 only at the grid edge or next to no data.
    One byte per cell and no temporaries; float32 input is compared in float64.
    """
    arr = np.asarray(filled)
    if arr.dtype != np.float32:
        arr = _as_dem(arr, "filled DEM")
    elif arr.ndim != 2:
        raise MetalsmInputError(f"filled DEM must be a 2-D array, got shape {arr.shape}")
    return _d8_codes(arr, -1)


@njit(cache=True)
def _accumulate(directions: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, int]:
    """Topological (in-degree / queue) accumulation, O(N); returns (acc, cells processed)."""
    nr, nc = directions.shape
    n = nr * nc
    d = directions.ravel()
    wt = weights.ravel()
    dr = np.array([0, 1, 1, 1, 0, -1, -1, -1])
    dc = np.array([1, 1, 0, -1, -1, -1, 0, 1])
    receiver = np.full(n, -1, dtype=np.int64)
    indegree = np.zeros(n, dtype=np.int32)
    acc = wt.copy()
    n_valid = 0
    for k in range(n):
        if np.isnan(wt[k]):
            continue
        n_valid += 1
        code = d[k]
        if code < 0 or code > 7:
            continue
        r = k // nc + dr[code]
        c = k % nc + dc[code]
        if r < 0 or r >= nr or c < 0 or c >= nc:
            continue
        m = r * nc + c
        if np.isnan(wt[m]):
            continue
        receiver[k] = m
        indegree[m] += 1
    queue = np.empty(n, dtype=np.int64)
    head = 0
    tail = 0
    for k in range(n):
        if indegree[k] == 0 and not np.isnan(wt[k]):
            queue[tail] = k
            tail += 1
    while head < tail:
        k = queue[head]
        head += 1
        m = receiver[k]
        if m >= 0:
            acc[m] += acc[k]
            indegree[m] -= 1
            if indegree[m] == 0:
                queue[tail] = m
                tail += 1
    return acc.reshape(nr, nc), tail - n_valid


def flow_accumulation(directions: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Upstream cells (or summed ``weights``) draining through each cell, itself included.

    A lone peak has 1. Computed in one O(N) topological pass (in-degree counting and
    a queue, as in Barnes' RichDEM). Cells whose weight is NaN are excluded: they
    contribute nothing and come out NaN, so pass ``np.where(np.isnan(dem), np.nan, 1)``
    to mask no data (codes alone cannot tell an outlet from a no-data cell).
    This general (weighted, float64) version needs ~30 bytes per cell; unweighted
    counts for large grids come from :func:`flow_accumulation_counts`.
    """
    d = np.asarray(directions)
    if d.ndim != 2 or not np.issubdtype(d.dtype, np.integer):
        raise MetalsmInputError(
            f"flow directions must be a 2-D integer array, got {d.dtype} {d.shape}"
        )
    if weights is None:
        w = np.ones(d.shape)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != d.shape:
            raise MetalsmInputError(
                f"weights shape {w.shape} does not match flow directions {d.shape}"
            )
    acc, missing = _accumulate(d.astype(np.int8, copy=False), np.ascontiguousarray(w))
    if missing != 0:
        raise MetalsmInputError(
            f"flow directions contain cycles ({-missing} cells never drain); "
            "derive them with d8_flow_directions on a depression-filled DEM"
        )
    return acc


#: D8 code the lean flow routing gives no-data cells (they accumulate 0, not 1).
D8_NODATA = -2


@njit(cache=True)
def _accumulate_counts(directions: np.ndarray) -> tuple[np.ndarray, int]:
    """Upstream cell counts (uint32) by following downstream chains from sources.

    Cells with in-degree 0 start a walk that adds its count to the receiver and
    continues while the receiver's in-degree drops to 0; in-degree 255 marks a cell
    as done. Needs 1 byte (uint8 in-degree) + 4 bytes (counts) per cell beside the
    codes, and no queue. Returns (counts, cells never reached: > 0 means a cycle).
    """
    nr, nc = directions.shape
    n = nr * nc
    d = directions.ravel()
    dr = np.array([0, 1, 1, 1, 0, -1, -1, -1])
    dc = np.array([1, 1, 0, -1, -1, -1, 0, 1])
    indegree = np.zeros(n, dtype=np.uint8)
    acc = np.ones(n, dtype=np.uint32)
    for k in range(n):
        code = d[k]
        if code < 0:
            if code == D8_NODATA:
                acc[k] = 0
            continue
        r = k // nc + dr[code]
        c = k % nc + dc[code]
        if 0 <= r < nr and 0 <= c < nc:
            indegree[r * nc + c] += 1
    done = 0
    for start in range(n):
        if indegree[start] != 0:
            continue
        k = start
        while True:
            indegree[k] = 255
            done += 1
            code = d[k]
            if code < 0:
                break
            r = k // nc + dr[code]
            c = k % nc + dc[code]
            if r < 0 or r >= nr or c < 0 or c >= nc:
                break
            m = r * nc + c
            acc[m] += acc[k]
            indegree[m] -= 1
            if indegree[m] != 0:
                break
            k = m
    return acc.reshape(nr, nc), n - done


def flow_accumulation_counts(directions: np.ndarray) -> np.ndarray:
    """Upstream cell counts (uint32, itself included) from D8 codes, 5 bytes per cell.

    Codes as :func:`d8_flow_directions`; cells coded :data:`D8_NODATA` count 0
    (nothing drains into them since D8 never points at no data). Exact up to
    2**32 - 1 cells, unlike float32 counts that stop being exact at 2**24.
    """
    d = np.asarray(directions)
    if d.ndim != 2 or d.dtype != np.int8:
        raise MetalsmInputError(
            f"flow directions must be a 2-D int8 array, got {d.dtype} {d.shape}"
        )
    acc, missing = _accumulate_counts(d)
    if missing != 0:
        raise MetalsmInputError(
            f"flow directions contain cycles ({missing} cells never drain); "
            "derive them with d8_flow_directions on a depression-filled DEM"
        )
    return acc


#: Flow-partition exponent of the multiple-flow-direction routing: Freeman's (1991)
#: 1.1, SAGA's default convergence. 1 splits in proportion to the drop gradient;
#: larger values concentrate flow toward the steepest neighbour (D8 in the limit).
MFD_EXPONENT = 1.1

#: Flow routings of the flow factors: single (D8) or multiple (Freeman MFD) receivers.
FLOW_ROUTINGS = ("d8", "mfd")


@njit(cache=True)
def _mfd_accumulate(z: np.ndarray, exponent: float) -> np.ndarray:
    """Freeman (1991) multiple-flow-direction accumulation over a filled DEM ``z``.

    Every valid cell starts with 1 and passes its total to all strictly lower valid
    neighbours, in proportion to ``(drop / distance) ** exponent``. Cells are
    processed once all their higher neighbours have drained into them (a count of
    waiting higher neighbours, a growable stack of ready cells), so the order is
    topological and the pass O(N); flow only goes down, so there is no cycle to
    detect. Bytes per cell beside ``z``: 4 (float32 totals) + 1 (uint8 waiting count).
    """
    nr, nc = z.shape
    n = nr * nc
    flat = z.ravel()
    dr = np.array([0, 1, 1, 1, 0, -1, -1, -1])
    dc = np.array([1, 1, 0, -1, -1, -1, 0, 1])
    dist = np.array([1.0, math.sqrt(2.0)] * 4)
    acc = np.zeros(n, dtype=np.float32)
    waiting = np.zeros(n, dtype=np.uint8)
    queued = np.uint8(255)
    for r in range(nr):
        for c in range(nc):
            k = r * nc + c
            if np.isnan(flat[k]):
                continue
            acc[k] = 1.0
            for j in range(8):
                rr = r + dr[j]
                cc = c + dc[j]
                if 0 <= rr < nr and 0 <= cc < nc and flat[rr * nc + cc] > flat[k]:
                    waiting[k] += 1
    stack = np.empty(1024, dtype=np.int64)
    share = np.zeros(8)
    lower = np.zeros(8, dtype=np.bool_)
    for start in range(n):
        if waiting[start] != 0 or np.isnan(flat[start]):
            continue
        waiting[start] = queued
        stack[0] = start
        top = 1
        while top > 0:
            top -= 1
            k = stack[top]
            r = k // nc
            c = k - r * nc
            zk = np.float64(flat[k])
            total = 0.0
            for j in range(8):
                share[j] = 0.0
                lower[j] = False
                rr = r + dr[j]
                cc = c + dc[j]
                if rr < 0 or rr >= nr or cc < 0 or cc >= nc:
                    continue
                zm = np.float64(flat[rr * nc + cc])
                if zm < zk:  # False for a NaN neighbour
                    lower[j] = True
                    share[j] = ((zk - zm) / dist[j]) ** exponent
                    total += share[j]
            outflow = np.float64(acc[k]) / total if total > 0 else 0.0
            for j in range(8):
                if not lower[j]:
                    continue
                m = (r + dr[j]) * nc + c + dc[j]
                acc[m] += outflow * share[j]
                waiting[m] -= 1
                if waiting[m] == 0:
                    waiting[m] = queued
                    if top == stack.size:
                        bigger = np.empty(2 * stack.size, dtype=np.int64)
                        bigger[:top] = stack
                        stack = bigger
                    stack[top] = m
                    top += 1
    return acc.reshape(nr, nc)


def mfd_flow_accumulation(filled: np.ndarray, exponent: float = MFD_EXPONENT) -> np.ndarray:
    """Upstream area in cells (float32, itself included) by multiple flow directions.

    Freeman's (1991) FD8: each cell's total is split among all its lower neighbours
    in proportion to ``max(0, tan beta_j) ** exponent`` (diagonal drops over sqrt(2)
    cell sizes), so flow disperses on hillslopes and converges in hollows, as the
    MFD routings of SAGA and pysheds do. Run it on :func:`fill_depressions` output
    (every valid cell then drains to an outlet; on a raw DEM pits keep what reaches
    them). No-data cells come out 0. What leaves the grid adds up to the number of
    valid cells.
    """
    arr = np.asarray(filled)
    if arr.dtype != np.float32:
        arr = _as_dem(arr, "filled DEM")
    elif arr.ndim != 2:
        raise MetalsmInputError(f"filled DEM must be a 2-D array, got shape {arr.shape}")
    if not (isinstance(exponent, int | float) and exponent > 0):
        raise MetalsmInputError(f"MFD exponent must be a positive number, got {exponent!r}")
    return _mfd_accumulate(arr, float(exponent))


def flow_routing_counts(
    load_dem: Callable[[], np.ndarray],
    progress: Callable[[str], None] | None = None,
    routing: str = "d8",
) -> np.ndarray:
    """Fill and route the DEM that ``load_dem()`` returns (filled in place): upstream cells.

    The one flow-routing path of both :func:`derive_terrain` and the chunked
    derivation (:mod:`metalsm.terrain._write`), so their results are identical.
    ``load_dem`` hands over a fresh 2-D float array that nobody else references:
    it is filled in place (in float32 when it is float32). Peak bytes per cell for a
    float32 DEM: 4 (DEM) + 1 (closed flag) during the fill, then

    * ``routing="d8"``: 4 + 1 (codes) during D8; the DEM is released, and 1 (codes) +
      1 (in-degree) + 4 (uint32 counts) = 6 during accumulation. Returns uint32
      counts, exact up to 2**32 - 1.
    * ``routing="mfd"`` (:func:`mfd_flow_accumulation`): the DEM is kept for the
      proportions, 4 + 1 (waiting count) + 4 (float32 totals) = 9. Returns float32
      fractional upstream cells.

    Both are 0 on no data.
    """
    check_routing(routing)
    step = progress or (lambda _message: None)
    dem = load_dem()
    if dem.ndim != 2 or dem.dtype not in (np.float32, np.float64):
        raise MetalsmInputError(f"DEM must be a 2-D float array, got {dem.dtype} {dem.shape}")
    step("filling depressions")
    _priority_flood_eps(dem)
    if routing == "mfd":
        step("MFD flow accumulation")
        return _mfd_accumulate(dem, MFD_EXPONENT)
    step("D8 flow directions")
    codes = _d8_codes(dem, D8_NODATA)
    del dem
    step("flow accumulation")
    return flow_accumulation_counts(codes)


# ------------------------------------------------------------------------ compound indices


def _specific_catchment_area(accumulation: np.ndarray, cell_size: float) -> np.ndarray:
    # upslope area (acc * L^2) per unit contour width (L)
    return np.asarray(accumulation, dtype=np.float64) * _check_cell_size(cell_size)


def twi(accumulation: np.ndarray, slope_deg: np.ndarray, cell_size: float) -> np.ndarray:
    """Topographic wetness index ``ln(a / tan(beta))`` (Beven & Kirkby, 1979).

    ``a`` is the specific catchment area (accumulated cells x cell size, m^2/m);
    ``beta`` is clipped below at :data:`MIN_TWI_SLOPE_DEG` so flats stay finite.
    """
    a = _specific_catchment_area(accumulation, cell_size)
    beta = np.radians(np.maximum(np.asarray(slope_deg, dtype=np.float64), MIN_TWI_SLOPE_DEG))
    return np.log(a / np.tan(beta))


def spi(accumulation: np.ndarray, slope_deg: np.ndarray, cell_size: float) -> np.ndarray:
    """Raw stream power index ``a * tan(beta)`` (Moore, Grayson & Ladson, 1991), in m."""
    a = _specific_catchment_area(accumulation, cell_size)
    return a * np.tan(np.radians(np.asarray(slope_deg, dtype=np.float64)))


def log_spi(accumulation: np.ndarray, slope_deg: np.ndarray, cell_size: float) -> np.ndarray:
    """``ln(1 + SPI)``: the stream power index on a log scale.

    Raw SPI spans many orders of magnitude (channels vs. hillslopes), which swamps
    distance-based models; the log keeps its ranking and is 0 on flats.
    This is what :func:`derive_terrain` returns as ``"spi"``.
    """
    return np.log1p(spi(accumulation, slope_deg, cell_size))


def drainage_network(accumulation: np.ndarray, threshold_cells: float) -> np.ndarray:
    """Channel cells: accumulation of at least ``threshold_cells`` (NaN -> False)."""
    if not threshold_cells > 0:
        raise MetalsmInputError(
            f"drainage threshold must be a positive number of cells, got {threshold_cells}"
        )
    acc = np.asarray(accumulation, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(acc, nan=-np.inf) >= threshold_cells


def distance_to_mask(
    mask: np.ndarray, cell_size: float, valid: np.ndarray | None = None
) -> np.ndarray:
    """Euclidean distance in metres from each cell centre to the nearest True cell.

    Exact Euclidean distance transform (scipy's ``distance_transform_edt``, Maurer et
    al., 2003); 0 on True cells. Cells where ``valid`` is False come out NaN.
    """
    cell_size = _check_cell_size(cell_size)
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise MetalsmInputError(f"mask must be a 2-D array, got shape {m.shape}")
    if not m.any():
        raise MetalsmInputError("mask has no True cells: distance to it is undefined")
    distance = ndimage.distance_transform_edt(~m) * cell_size
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != m.shape:
            raise MetalsmInputError(f"valid shape {valid.shape} does not match mask {m.shape}")
        distance[~valid] = np.nan
    return distance


# --------------------------------------------------------------------------- vector layers


def _read_vector_features(path_or_gdf, grid: Grid, layer_name: str | None):
    """Non-empty geometries in the grid CRS and a description of their source."""
    import geopandas as gpd

    if isinstance(path_or_gdf, gpd.GeoDataFrame | gpd.GeoSeries):
        gdf = path_or_gdf
        source = f"vector layer '{layer_name}'" if layer_name else "vector layer"
    else:
        path = Path(path_or_gdf)
        source = f"vector file {path}" + (f" (layer '{layer_name}')" if layer_name else "")
        if not path.exists():
            raise MetalsmInputError(f"{source} not found")
        try:
            gdf = gpd.read_file(path)
        except Exception as exc:  # pyogrio raises several error types
            raise MetalsmInputError(f"cannot read {source}: {exc}") from exc
    geoms = gdf.geometry if isinstance(gdf, gpd.GeoDataFrame) else gdf
    geoms = geoms[geoms.notna() & ~geoms.is_empty]
    if len(geoms) == 0:
        raise MetalsmInputError(f"{source} has no features (or only empty geometries)")
    if geoms.crs is None:
        raise MetalsmInputError(
            f"{source} has no CRS; add a .prj / set one (e.g. ogr2ogr -a_srs EPSG:XXXX)"
        )
    if geoms.crs != grid.crs:
        log.info("reprojecting %s from %s to the grid CRS %s", source, geoms.crs, grid.crs)
        geoms = geoms.to_crs(grid.crs)
    return geoms, source


def extended_grid(geoms, grid: Grid, source: str) -> tuple[Affine, tuple[int, int], int, int]:
    """The grid grown so that features up to one grid diagonal outside count: its
    transform, shape, and the rows and columns added above and left of ``grid``."""
    cs = grid.cell_size
    h, w = grid.shape
    left, bottom, right, top = grid.bounds
    fx0, fy0, fx1, fy1 = geoms.total_bounds
    reach = int(math.ceil(math.hypot(h, w)))

    def extend(distance: float) -> int:
        return int(min(reach, max(0, math.ceil(distance / cs))))

    pad_left, pad_right = extend(left - fx0), extend(fx1 - right)
    pad_top, pad_bottom = extend(fy1 - top), extend(bottom - fy0)
    t = grid.transform
    if t.b != 0 or t.d != 0:
        raise MetalsmInputError(f"grid must be north-up (no rotation) to rasterize {source}")
    transform = t @ Affine.translation(-pad_left, -pad_top)
    return transform, (h + pad_top + pad_bottom, w + pad_left + pad_right), pad_top, pad_left


def no_feature_error(geoms, grid: Grid, source: str) -> MetalsmInputError:
    fx0, fy0, fx1, fy1 = geoms.total_bounds
    return MetalsmInputError(
        f"no feature of {source} lies on or within one grid diagonal of the study grid "
        f"(features span {tuple(round(v) for v in (fx0, fy0, fx1, fy1))}, "
        f"grid spans {tuple(round(v) for v in grid.bounds)} in {grid.crs})"
    )


def rasterize_vector_distance(path_or_gdf, grid: Grid, layer_name: str | None = None) -> np.ndarray:
    """Distance in metres from each cell centre of ``grid`` to the nearest feature.

    The whole-array reference of :func:`metalsm.terrain.vector_distance_raster`
    (scipy's distance transform). Reads points, lines or polygons (geopandas /
    pyogrio), reprojects to the grid CRS when it differs, burns them with
    ``all_touched=True`` and measures with an exact Euclidean distance transform, so
    touched cells (and polygon interiors) are 0. Features just outside the grid count
    too: the raster is extended by up to one grid diagonal, as far as the features
    reach. Raises :class:`MetalsmInputError` naming the file when it is missing,
    unreadable, empty, has no CRS, or no feature lies on or near the grid.
    """
    from rasterio.features import rasterize

    geoms, source = _read_vector_features(path_or_gdf, grid, layer_name)
    transform, out_shape, pad_top, pad_left = extended_grid(geoms, grid, source)
    burned = rasterize(
        ((geom, 1) for geom in geoms),
        out_shape=out_shape,
        transform=transform,
        fill=0,
        all_touched=True,
        dtype="uint8",
    ).astype(bool)
    if not burned.any():
        raise no_feature_error(geoms, grid, source)
    distance = ndimage.distance_transform_edt(~burned) * grid.cell_size
    h, w = grid.shape
    return distance[pad_top : pad_top + h, pad_left : pad_left + w].copy()


# ---------------------------------------------------------------------------- orchestrator


def derive_terrain(
    dem: np.ndarray,
    grid: Grid,
    names: Iterable[str],
    drainage_threshold_cells: float = 500,
    progress: Callable[[str], None] | None = None,
    routing: str = "d8",
) -> dict[str, np.ndarray]:
    """Compute the requested :data:`TERRAIN_FACTORS` from ``dem`` on ``grid``.

    The whole-array form of :func:`metalsm.terrain.write_terrain_factors`
    (the same :func:`window_factors` on one window, the same flow routing), kept as
    the reference the windowed files are tested against. Only what is asked is
    computed, and shared steps run once (gradient, fill, D8, accumulation). Outputs
    are float32, NaN wherever ``dem`` is NaN, keyed in request order:

    * ``elevation`` (m), ``slope`` (degrees, Horn), ``aspect_sin``/``aspect_cos``;
    * ``plan_curvature``/``profile_curvature`` (1/m, Zevenbergen & Thorne, + = convex);
    * ``flow_accumulation``: upstream cells incl. itself, routed on the filled DEM by
      ``routing``: ``"d8"`` (one receiver, whole cells) or ``"mfd"`` (Freeman's
      multiple flow directions, fractional cells; see :func:`mfd_flow_accumulation`);
      ``log_flow_accumulation``: its log10;
    * ``twi``: ln(a / tan beta); ``spi``: ln(1 + a tan beta) (see :func:`log_spi`);
    * ``distance_to_drainage`` (m) to cells with accumulation >= ``drainage_threshold_cells``
      (of the same routing).

    Flow routing is :func:`flow_routing_counts`: a float32 DEM is filled in float32,
    other dtypes in float64.
    """
    step = progress or (lambda _message: None)
    requested = check_factor_names(names)
    check_routing(routing)
    z = _as_dem(dem)
    if z.shape != grid.shape:
        raise MetalsmInputError(f"DEM shape {z.shape} does not match the grid {grid.shape}")
    cell_size = _check_cell_size(grid.cell_size)
    counts = None
    if any(n in FLOW_FACTORS for n in requested):
        fill_dtype = np.float32 if np.asarray(dem).dtype == np.float32 else np.float64
        counts = flow_routing_counts(lambda: z.astype(fill_dtype), step, routing)
        check_drainage(requested, drainage_threshold_cells, counts)
    whole = (slice(None), slice(None))
    out = window_factors(z, whole, [n for n in requested if n != "distance_to_drainage"],
                         counts, cell_size, step)
    if "distance_to_drainage" in requested:
        step("distance to drainage")
        distance = distance_to_mask(counts >= drainage_threshold_cells, cell_size)
        out["distance_to_drainage"] = np.where(np.isnan(z), np.nan, distance).astype(np.float32)
    return {name: out[name] for name in requested}


#: Factors that need flow routing (global: computed once over the whole grid).
FLOW_FACTORS = ("flow_accumulation", "log_flow_accumulation", "twi", "spi",
                "distance_to_drainage")


def check_routing(routing: str) -> str:
    """``routing`` if it names one of :data:`FLOW_ROUTINGS`, else a named error."""
    if routing not in FLOW_ROUTINGS:
        raise MetalsmInputError(
            f"unknown flow routing {routing!r}; valid: {', '.join(FLOW_ROUTINGS)}"
        )
    return routing


def check_factor_names(names: Iterable[str] | str) -> list[str]:
    """The requested factor names without repeats; unknown names are an error."""
    requested = list(dict.fromkeys([names] if isinstance(names, str) else names))
    unknown = [n for n in requested if n not in TERRAIN_FACTORS]
    if unknown:
        raise MetalsmInputError(
            f"unknown terrain factor(s) {unknown}; valid names are: {', '.join(TERRAIN_FACTORS)}"
        )
    return requested


def check_drainage(requested: list[str], threshold_cells: float,
                   counts: np.ndarray | None = None) -> None:
    """Distance to drainage needs a positive threshold that some cell (of ``counts``,
    when given) reaches."""
    if "distance_to_drainage" not in requested:
        return
    if not threshold_cells > 0:
        raise MetalsmInputError(
            f"drainage threshold must be a positive number of cells, got {threshold_cells}"
        )
    if counts is not None and counts.max() < threshold_cells:
        raise MetalsmInputError(
            f"no cell reaches the drainage threshold of {threshold_cells} "
            f"cells (max accumulation {counts.max():.0f}); "
            "lower terrain.drainage_threshold_km2"
        )


def window_factors(
    block: np.ndarray,
    crop: tuple[slice, slice],
    names: Iterable[str],
    counts: np.ndarray | None,
    cell_size: float,
    step: Callable[[str], None] | None = None,
) -> dict[str, np.ndarray]:
    """The one factor-name table: the factors ``names`` (all but distance to drainage)
    of one window, float32 with NaN where the DEM has no data.

    ``block`` is the window's DEM with a one-cell halo (clipped at the grid edge, so
    the real edge keeps the edge handling of the 3x3 functions), ``crop`` the slices
    back to the window, ``counts`` the window's upstream cell counts (flow factors).
    """
    step = step or (lambda _message: None)
    z = np.asarray(block[crop], dtype=np.float64)
    nodata = np.isnan(z)
    cache: dict[str, np.ndarray] = {}

    def local(key: str) -> np.ndarray:
        if key not in cache:
            if key in ("slope", "sin", "cos") and "gradient" not in cache:
                dzdx, dzdy = horn_gradient(block, cell_size)  # once for slope and aspect
                cache["gradient"] = (dzdx[crop], dzdy[crop])
            if key == "slope":
                step("slope")
                cache["slope"] = slope_from_gradient(*cache["gradient"])
            elif key in ("sin", "cos"):
                step("aspect")
                cache["sin"], cache["cos"] = aspect_from_gradient(*cache["gradient"])
            else:
                step("curvature")
                plan, profile = curvatures(block, cell_size)
                cache["plan"], cache["profile"] = plan[crop], profile[crop]
        return cache[key]

    table: dict[str, Callable[[], np.ndarray]] = {
        "elevation": lambda: z,
        "slope": lambda: local("slope"),
        "aspect_sin": lambda: local("sin"),
        "aspect_cos": lambda: local("cos"),
        "plan_curvature": lambda: local("plan"),
        "profile_curvature": lambda: local("profile"),
        "flow_accumulation": lambda: counts,
        "log_flow_accumulation": lambda: np.log10(counts.astype(np.float64)),
        "twi": lambda: twi(counts, local("slope"), cell_size),
        "spi": lambda: log_spi(counts, local("slope"), cell_size),
    }
    out = {}
    for name in names:
        with np.errstate(divide="ignore", invalid="ignore"):  # no-data cells count 0
            result = np.asarray(table[name](), dtype=np.float32).copy()
        result[nodata] = np.nan
        out[name] = result
    return out
