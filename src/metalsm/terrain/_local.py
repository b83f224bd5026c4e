"""Local terrain derivatives from a DEM's 3x3 neighbourhoods, as plain functions over
numpy arrays (local: a window with a one-cell halo gives the whole-grid values).

Conventions shared by the functions of :mod:`metalsm.terrain`:

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
"""

from __future__ import annotations

import numpy as np

from metalsm.errors import MetalsmInputError

__all__ = [
    "aspect",
    "aspect_from_gradient",
    "curvatures",
    "horn_gradient",
    "slope_degrees",
    "slope_from_gradient",
]





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


# ------------------------------------------------------------------------ compound indices


# --------------------------------------------------------------------------- vector layers


# ---------------------------------------------------------------------------- orchestrator


