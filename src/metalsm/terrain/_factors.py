"""The one factor-name table: which terrain factors exist, how one window's factors
come from its DEM and flow counts, and :func:`derive_terrain`, the whole-array form
kept as the reference the windowed files are tested against."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from metalsm.config import TERRAIN_FACTORS
from metalsm.errors import MetalsmInputError
from metalsm.raster import Grid
from metalsm.terrain._distance import distance_to_mask
from metalsm.terrain._hydrology import check_routing, flow_routing_counts, log_spi, twi
from metalsm.terrain._local import (
    _as_dem,
    _check_cell_size,
    aspect_from_gradient,
    curvatures,
    horn_gradient,
    slope_from_gradient,
)

__all__ = [
    "FLOW_FACTORS",
    "TERRAIN_FACTORS",
    "check_drainage",
    "check_factor_names",
    "derive_terrain",
    "window_factors",
]




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
