"""Flow routing and the indices built on it (TWI, SPI, channels).

Routing is **global**: a halo cannot make it correct across window edges, so it runs
once over compact whole-grid arrays (numba kernels, O(N), no array of N indices).

* D8 flow directions are int8 codes, clockwise from east:
  ``0 E, 1 SE, 2 S, 3 SW, 4 W, 5 NW, 6 N, 7 NE`` (ESRI's 1, 2, 4, ..., 128 as
  0..7); ``-1`` marks outlets (no lower neighbour) and no-data cells.
* Flow accumulation counts upstream cells *including the cell itself*: whole cells
  along D8 receivers, or fractions of cells along Freeman's (1991) multiple flow
  directions (``routing="mfd"``).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable

import numpy as np
from numba import njit

from metalsm.errors import MetalsmInputError
from metalsm.terrain._local import _as_dem, _check_cell_size

__all__ = [
    "D8_COL_OFFSETS",
    "D8_NODATA",
    "D8_ROW_OFFSETS",
    "FLOW_ROUTINGS",
    "MFD_EXPONENT",
    "MIN_TWI_SLOPE_DEG",
    "check_routing",
    "d8_flow_directions",
    "drainage_network",
    "fill_depressions",
    "flow_accumulation",
    "flow_accumulation_counts",
    "flow_routing_counts",
    "log_spi",
    "mfd_flow_accumulation",
    "spi",
    "twi",
]


#: Row / column offsets of the D8 codes 0..7 (E, SE, S, SW, W, NW, N, NE).
D8_ROW_OFFSETS = np.array([0, 1, 1, 1, 0, -1, -1, -1], dtype=np.int64)


D8_COL_OFFSETS = np.array([1, 1, 0, -1, -1, -1, 0, 1], dtype=np.int64)


#: Minimum slope used by :func:`twi` so that flat cells do not divide by zero.
MIN_TWI_SLOPE_DEG = 0.1


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


def check_routing(routing: str) -> str:
    """``routing`` if it names one of :data:`FLOW_ROUTINGS`, else a named error."""
    if routing not in FLOW_ROUTINGS:
        raise MetalsmInputError(
            f"unknown flow routing {routing!r}; valid: {', '.join(FLOW_ROUTINGS)}"
        )
    return routing
