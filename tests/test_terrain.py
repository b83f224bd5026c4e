"""Known-answer tests for terrain factors: planes, paraboloids, cones, hand-drawn flow."""

from __future__ import annotations

import math

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.windows import Window
from scipy import ndimage
from shapely.geometry import LineString, Point

from metalsm import terrain
from metalsm.errors import MetalsmInputError
from metalsm.raster import Grid

L = 10.0  # cell size of synthetic DEMs, metres


def coords(h: int, w: int, cell: float = L) -> tuple[np.ndarray, np.ndarray]:
    """Map x (east) and y (north) of cell centres on a north-up grid (row 0 = north)."""
    rows, cols = np.mgrid[0:h, 0:w].astype(float)
    return cols * cell, -rows * cell


def plane(a: float, b: float, h: int = 12, w: int = 15) -> np.ndarray:
    x, y = coords(h, w)
    return 1000.0 + a * x + b * y


def synthetic_grid(h: int, w: int, cell: float = L) -> Grid:
    return Grid(CRS.from_epsg(32643), Affine(cell, 0, 500000.0, 0, -cell, 3800000.0), h, w)


@pytest.fixture(scope="module")
def kaghan_dem(kaghan) -> tuple[np.ndarray, Grid]:
    """A 200 x 200 crop of the real AW3D30 DEM (NaN = no data) and its grid."""
    window = Window(col_off=300, row_off=400, width=200, height=200)
    with rasterio.open(kaghan / "AW3D30.tif") as src:
        dem = src.read(1, window=window).astype(np.float64)
        transform = src.transform @ Affine.translation(window.col_off, window.row_off)
        grid = Grid(src.crs, transform, 200, 200)
    dem[np.abs(dem) > 1e30] = np.nan
    return dem, grid


# ----------------------------------------------------------------------------- slope / aspect


@pytest.mark.parametrize(("a", "b"), [(0.3, 0.0), (0.0, -0.5), (0.2, 0.4), (-1.5, 0.7)])
def test_slope_of_tilted_plane_is_exact_everywhere_including_edges(a, b):
    slope = terrain.slope_degrees(plane(a, b), L)
    expected = math.degrees(math.atan(math.hypot(a, b)))
    np.testing.assert_allclose(slope, expected, atol=1e-9)


@pytest.mark.parametrize(
    ("a", "b", "azimuth"),
    [
        (-0.3, 0.0, 90.0),  # falls towards the east -> east-facing
        (0.0, -0.3, 0.0),  # falls towards the north
        (0.3, 0.0, 270.0),  # falls towards the west
        (0.0, 0.3, 180.0),  # falls towards the south
        (-0.2, -0.2, 45.0),  # north-east
    ],
)
def test_aspect_of_tilted_plane(a, b, azimuth):
    sin_a, cos_a = terrain.aspect(plane(a, b), L)
    np.testing.assert_allclose(sin_a, math.sin(math.radians(azimuth)), atol=1e-12)
    np.testing.assert_allclose(cos_a, math.cos(math.radians(azimuth)), atol=1e-12)


def test_flat_dem_has_zero_slope_and_zero_aspect():
    dem = np.full((5, 6), 123.0)
    assert np.all(terrain.slope_degrees(dem, L) == 0)
    sin_a, cos_a = terrain.aspect(dem, L)
    assert np.all(sin_a == 0) and np.all(cos_a == 0)


def test_nan_cells_stay_nan_and_neighbours_stay_finite():
    dem = plane(0.3, 0.1)
    dem[5, 5] = np.nan
    dem[0, 0] = np.nan
    slope = terrain.slope_degrees(dem, L)
    assert np.isnan(slope[5, 5]) and np.isnan(slope[0, 0])
    assert np.isfinite(slope).sum() == dem.size - 2
    # mirrored neighbours keep a plane exact next to holes
    np.testing.assert_allclose(
        slope[4:7, 4:7][~np.isnan(slope[4:7, 4:7])], math.degrees(math.atan(math.hypot(0.3, 0.1)))
    )


def test_cone_slope_and_aspect_point_away_from_the_peak():
    k = 0.6
    h = w = 61
    x, y = coords(h, w)
    cx, cy = x[30, 30], y[30, 30]
    dx, dy = x - cx, y - cy
    r = np.hypot(dx, dy)
    dem = 2000.0 - k * r  # a cone peak
    slope = terrain.slope_degrees(dem, L)
    sin_a, cos_a = terrain.aspect(dem, L)
    ring = (r > 8 * L) & (r < 25 * L)
    np.testing.assert_allclose(slope[ring], math.degrees(math.atan(k)), atol=0.3)
    # descent points away from the centre: (sin, cos) = (dx, dy) / r
    np.testing.assert_allclose(sin_a[ring], dx[ring] / r[ring], atol=0.01)
    np.testing.assert_allclose(cos_a[ring], dy[ring] / r[ring], atol=0.01)
    # a bowl (inverted cone) faces the centre
    sin_b, cos_b = terrain.aspect(-dem, L)
    np.testing.assert_allclose(sin_b[ring], -dx[ring] / r[ring], atol=0.01)


def test_paraboloid_slope_at_radius():
    c = 0.002
    x, y = coords(41, 41)
    dx, dy = x - x[20, 20], y - y[20, 20]
    dem = c * (dx**2 + dy**2)
    slope = terrain.slope_degrees(dem, L)
    # Horn's differences are exact for quadratics: |grad| = 2 c r
    interior = np.s_[1:-1, 1:-1]
    expected = np.degrees(np.arctan(2 * c * np.hypot(dx, dy)))
    np.testing.assert_allclose(slope[interior], expected[interior], atol=1e-9)
    assert slope[20, 20] == 0


# ------------------------------------------------------------------------------- curvature


def test_curvature_of_plane_is_zero():
    plan, profile = terrain.curvatures(plane(0.4, -0.25), L)
    np.testing.assert_allclose(plan, 0, atol=1e-12)
    np.testing.assert_allclose(profile, 0, atol=1e-12)


@pytest.mark.parametrize("c", [0.01, -0.01])
def test_paraboloid_curvature_known_value(c):
    """z = c (x^2 + y^2): D = E = c, F = 0, so both curvatures are -2c everywhere inside.

    Hand check at the centre of the bowl (c = 0.01, L = 10): neighbours N/S/E/W are
    c L^2 = 1 m higher, so D = ((1 + 1) / 2 - 0) / 100 = 0.01, E = 0.01 and
    -(D + E) = -0.02 1/m (concave). A dome (c < 0) gives +0.02 (convex).
    """
    x, y = coords(21, 21)
    dx, dy = x - x[10, 10], y - y[10, 10]
    dem = c * (dx**2 + dy**2)
    plan, profile = terrain.curvatures(dem, L)
    interior = np.s_[1:-1, 1:-1]
    np.testing.assert_allclose(profile[interior], -2 * c, rtol=1e-9)
    np.testing.assert_allclose(plan[interior], -2 * c, rtol=1e-9)
    assert profile[10, 10] == pytest.approx(-0.02 if c > 0 else 0.02)


def test_curvature_signs_distinguish_profile_and_plan():
    x, y = coords(21, 21)
    # a slope falling east whose gradient steepens downhill: z = -0.1 x - 0.001 x^2
    convex_profile = -0.1 * x - 0.001 * x**2
    plan, profile = terrain.curvatures(convex_profile, L)
    np.testing.assert_allclose(profile[1:-1, 1:-1], 0.002, rtol=1e-9)  # -2D, D = -0.001
    np.testing.assert_allclose(plan[1:-1, 1:-1], 0, atol=1e-12)
    # a valley running east (falls east, V across y): contours concave -> plan < 0
    valley = -0.1 * x + 0.002 * (y - y[10, 10]) ** 2
    plan, profile = terrain.curvatures(valley, L)
    assert plan[10, 10] == pytest.approx(-0.004)  # -2 E with E = 0.002
    assert profile[10, 10] == pytest.approx(0.0, abs=1e-12)
    ridge_plan, _ = terrain.curvatures(-0.1 * x - 0.002 * (y - y[10, 10]) ** 2, L)
    assert ridge_plan[10, 10] == pytest.approx(0.004)


# ------------------------------------------------------------------------------------ fill


def test_fill_raises_pit_to_spill_level():
    dem = plane(-0.1, 0.0, h=7, w=7)  # falls to the east, 1 m per cell
    dem[3, 3] -= 5.0  # a pit 5 m deep
    filled = terrain.fill_depressions(dem)
    # lowest neighbour on the rim is east (dem[*, 4] = 1000 - 4), so it spills there
    spill = min(dem[2:5, 4].min(), dem[2, 3], dem[4, 3])
    assert spill <= filled[3, 3] <= spill + 1e-9
    assert filled[3, 3] > spill
    mask = np.ones_like(dem, dtype=bool)
    mask[3, 3] = False
    np.testing.assert_allclose(filled[mask], dem[mask], atol=1e-9)


def test_fill_leaves_pit_free_dem_nearly_unchanged():
    dem = plane(0.2, -0.3) + 0.01 * np.arange(12)[:, None]
    filled = terrain.fill_depressions(dem)
    assert np.abs(filled - dem).max() < 1e-9


def test_fill_resolves_flats_and_treats_nan_as_outlet():
    dem = np.full((6, 6), 10.0)
    dem[0, :] = dem[-1, :] = dem[:, 0] = dem[:, -1] = 20.0  # walled basin with a flat floor
    dem[2, 2] = np.nan  # a hole inside drains the basin
    filled = terrain.fill_depressions(dem)
    assert np.isnan(filled[2, 2])
    directions = terrain.d8_flow_directions(filled)
    interior = np.zeros_like(dem, dtype=bool)
    interior[1:-1, 1:-1] = True
    next_to_hole = np.zeros_like(interior)
    next_to_hole[1:4, 1:4] = True
    # every floor cell drains (to the hole), the floor stays within epsilon of 10 m
    assert np.all(directions[interior & ~next_to_hole] >= 0)
    floor = interior & ~np.isnan(dem)
    assert np.all(np.abs(filled[floor] - 10.0) < 1e-9)


def test_filled_real_dem_has_no_interior_sinks(kaghan_dem):
    dem, _ = kaghan_dem
    filled = terrain.fill_depressions(dem)
    assert np.all(filled[~np.isnan(dem)] >= dem[~np.isnan(dem)])
    directions = terrain.d8_flow_directions(filled)
    valid = ~np.isnan(dem)
    edge = np.zeros_like(valid)
    edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = True
    next_to_nodata = np.zeros_like(valid)
    if (~valid).any():
        next_to_nodata = ndimage.binary_dilation(~valid, structure=np.ones((3, 3)))
    sinks = (directions == -1) & valid & ~edge & ~next_to_nodata
    assert sinks.sum() == 0
    assert (directions[~valid] == -1).all()
    # the raw DEM does have pits (otherwise this test proves nothing)
    raw = terrain.d8_flow_directions(dem)
    assert ((raw == -1) & valid & ~edge & ~next_to_nodata).sum() > 0


# -------------------------------------------------------------------------- D8 + accumulation


def test_d8_and_accumulation_on_hand_drawn_valley():
    # a V-shaped valley draining south along the middle column
    dem = np.array(
        [
            [9.0, 8.0, 9.0],
            [8.0, 6.0, 8.0],
            [7.0, 4.0, 7.0],
            [6.0, 2.0, 6.0],
        ]
    )
    directions = terrain.d8_flow_directions(dem)
    # drop / distance, e.g. (1,0): E 8-6 = 2 vs SE (8-4)/sqrt2 = 2.83 -> SE;
    # (0,1): S 2 vs SE/SW 0 -> S; bottom row drains sideways into the outlet (3,1)
    expected = np.array(
        [
            [1, 2, 3],  # SE, S, SW
            [1, 2, 3],
            [1, 2, 3],
            [0, -1, 4],  # E, outlet, W
        ],
        dtype=np.int8,
    )
    np.testing.assert_array_equal(directions, expected)
    acc = terrain.flow_accumulation(directions)
    expected_acc = np.array(
        [
            [1, 1, 1],
            [1, 4, 1],
            [1, 7, 1],
            [1, 12, 1],
        ],
        dtype=float,
    )
    np.testing.assert_array_equal(acc, expected_acc)


def test_d8_encoding_offsets_point_to_the_receiver():
    for code in range(8):
        dem = np.full((3, 3), 10.0)
        r, c = 1 + terrain.D8_ROW_OFFSETS[code], 1 + terrain.D8_COL_OFFSETS[code]
        dem[r, c] = 0.0
        assert terrain.d8_flow_directions(dem)[1, 1] == code
    names = ["E", "SE", "S", "SW", "W", "NW", "N", "NE"]
    assert (terrain.D8_ROW_OFFSETS[names.index("N")], terrain.D8_COL_OFFSETS[names.index("N")]) == (
        -1,
        0,
    )


def test_accumulation_on_east_tilted_plane_equals_column_plus_one():
    dem = plane(-0.2, 0.0, h=6, w=9)
    directions = terrain.d8_flow_directions(terrain.fill_depressions(dem))
    acc = terrain.flow_accumulation(directions)
    np.testing.assert_array_equal(acc, np.broadcast_to(np.arange(1, 10, dtype=float), acc.shape))


def test_accumulation_sum_at_outlets_equals_valid_cells(kaghan_dem):
    dem, _ = kaghan_dem
    dem = dem.copy()
    dem[50:60, 70:90] = np.nan  # a no-data hole
    filled = terrain.fill_depressions(dem)
    directions = terrain.d8_flow_directions(filled)
    valid = ~np.isnan(dem)
    acc = terrain.flow_accumulation(directions, np.where(valid, 1.0, np.nan))
    assert np.isnan(acc[~valid]).all()
    assert (acc[valid] >= 1).all()
    outlets = (directions == -1) & valid
    assert acc[outlets].sum() == valid.sum()


def test_accumulation_with_weights_and_cycle_detection():
    directions = np.array([[0, 0, -1]], dtype=np.int8)
    acc = terrain.flow_accumulation(directions, np.array([[2.0, 0.5, 1.0]]))
    np.testing.assert_allclose(acc, [[2.0, 2.5, 3.5]])
    cycle = np.array([[0, 4]], dtype=np.int8)  # E then W: a two-cell loop
    with pytest.raises(MetalsmInputError, match="cycle"):
        terrain.flow_accumulation(cycle)


# -------------------------------------------------------------- multiple flow directions


def test_mfd_splits_a_peak_by_freeman_weights():
    dem = np.full((3, 3), 9.0)
    dem[1, 1] = 10.0  # drops of 1 to every neighbour; the ring itself is flat
    acc = terrain.mfd_flow_accumulation(dem)
    assert acc.dtype == np.float32
    diagonal = (1 / math.sqrt(2)) ** terrain.MFD_EXPONENT  # (tan beta) ** 1.1
    total = 4 * 1.0 + 4 * diagonal
    expected = np.array([[1 + diagonal / total, 1 + 1 / total, 1 + diagonal / total],
                         [1 + 1 / total, 1.0, 1 + 1 / total],
                         [1 + diagonal / total, 1 + 1 / total, 1 + diagonal / total]])
    np.testing.assert_allclose(acc, expected, rtol=1e-6)
    # exponent 1 splits in proportion to the gradient; on a tilted plane (one lower
    # column) flow goes straight down the column as in D8
    tilted = terrain.mfd_flow_accumulation(plane(-0.2, 0.0, h=6, w=9))
    d8 = terrain.flow_accumulation(terrain.d8_flow_directions(plane(-0.2, 0.0, h=6, w=9)))
    assert tilted[:, -1].sum() == pytest.approx(54)  # everything leaves by the east edge
    assert (tilted[:, 0] == 1).all() and (np.diff(tilted, axis=1) > 0).all()
    assert not np.array_equal(tilted, d8)  # diagonal receivers share the flow
    with pytest.raises(MetalsmInputError, match="exponent"):
        terrain.mfd_flow_accumulation(dem, exponent=0)


def test_mfd_on_real_dem_conserves_cells_and_disperses(kaghan_dem):
    dem, grid = kaghan_dem
    dem = dem.copy()
    dem[50:60, 70:90] = np.nan  # a no-data hole
    valid = ~np.isnan(dem)
    filled = terrain.fill_depressions(dem)
    mfd = terrain.mfd_flow_accumulation(filled)
    d8 = terrain.flow_accumulation_counts(terrain.d8_flow_directions(filled))
    assert (mfd[~valid] == 0).all() and (mfd[valid] >= 1).all()
    outlets = (terrain.d8_flow_directions(filled) == -1) & valid  # no lower neighbour
    assert mfd[outlets].sum() == pytest.approx(valid.sum(), rel=1e-5)
    # hillslopes: D8 leaves ~18 % of cells with no upstream cell, MFD almost none
    assert (d8[valid] == 1).mean() > 0.1 > 10 * (mfd[valid] < 1.01).mean()
    # the same landscape: TWI ranks agree, and the routing used is the one asked for
    out = terrain.derive_terrain(dem, grid, ["twi", "flow_accumulation"], routing="mfd")
    np.testing.assert_allclose(out["flow_accumulation"][valid], mfd[valid], rtol=1e-6)
    reference = terrain.derive_terrain(dem, grid, ["twi"])["twi"][valid]
    ranks = np.corrcoef(np.argsort(np.argsort(out["twi"][valid])),
                        np.argsort(np.argsort(reference)))[0, 1]
    assert 0.5 < ranks < 0.95
    with pytest.raises(MetalsmInputError, match="unknown flow routing 'dinf'"):
        terrain.derive_terrain(dem, grid, ["twi"], routing="dinf")


# ------------------------------------------------------------------------ TWI / SPI / drainage


def test_twi_and_spi_formulas():
    acc = np.array([[1.0, 100.0, 100.0]])
    slope = np.array([[45.0, 45.0, 0.0]])
    t = terrain.twi(acc, slope, 30.0)
    assert t[0, 0] == pytest.approx(math.log(30.0))
    assert t[0, 1] == pytest.approx(math.log(3000.0))
    assert t[0, 2] == pytest.approx(math.log(3000.0 / math.tan(math.radians(0.1))))
    raw = terrain.spi(acc, slope, 30.0)
    np.testing.assert_allclose(raw, [[30.0, 3000.0, 0.0]], atol=1e-9)
    np.testing.assert_allclose(terrain.log_spi(acc, slope, 30.0), np.log1p(raw))


def test_distance_to_mask_known_values():
    mask = np.zeros((4, 5), dtype=bool)
    mask[0, 0] = True
    d = terrain.distance_to_mask(mask, 2.0)
    assert d[0, 0] == 0
    assert d[0, 3] == pytest.approx(6.0)
    assert d[3, 4] == pytest.approx(2.0 * math.hypot(3, 4))
    valid = np.ones_like(mask)
    valid[2, 2] = False
    d = terrain.distance_to_mask(mask, 2.0, valid=valid)
    assert np.isnan(d[2, 2]) and np.isfinite(d).sum() == mask.size - 1
    with pytest.raises(MetalsmInputError, match="no True"):
        terrain.distance_to_mask(np.zeros((2, 2), dtype=bool), 1.0)


def test_drainage_network_threshold():
    acc = np.array([[1.0, 5.0, np.nan, 10.0]])
    np.testing.assert_array_equal(terrain.drainage_network(acc, 5), [[False, True, False, True]])


# ------------------------------------------------------------------------------ vector distance


def test_rasterize_vector_distance_on_real_faults(kaghan):
    with rasterio.open(kaghan / "AW3D30.tif") as src:
        grid = Grid(src.crs, src.transform, src.height, src.width)
    faults = kaghan / "Confirmed_faults.shp"
    distance = terrain.rasterize_vector_distance(faults, grid, layer_name="faults")
    assert distance.shape == grid.shape
    gdf = gpd.read_file(faults).to_crs(grid.crs)
    touched = rasterize(
        ((g, 1) for g in gdf.geometry),
        out_shape=grid.shape,
        transform=grid.transform,
        all_touched=True,
        dtype="uint8",
    ).astype(bool)
    assert touched.any()
    assert (distance[touched] == 0).all()
    assert (distance[~touched] > 0).all()
    diagonal = math.hypot(*grid.shape) * grid.cell_size
    assert distance.max() <= diagonal
    # spot check one cell against shapely's exact distance (raster error <= one cell)
    rows, cols = np.unravel_index(np.argmax(distance), distance.shape)
    x, y = grid.xy(np.array([rows]), np.array([cols]))
    exact = gdf.distance(Point(float(x[0]), float(y[0]))).min()
    assert abs(distance[rows, cols] - exact) <= grid.cell_size * 1.5


def test_rasterize_vector_distance_reprojects_and_counts_nearby_features():
    grid = synthetic_grid(20, 30, cell=100.0)
    left, bottom, right, top = grid.bounds
    # a north-south line 500 m west of the grid, given in geographic coordinates
    line = gpd.GeoSeries([LineString([(left - 500, bottom), (left - 500, top)])], crs=grid.crs)
    distance = terrain.rasterize_vector_distance(line.to_crs(4326), grid)
    # first column's centre is 550 m from the line
    np.testing.assert_allclose(distance[:, 0], 550.0, atol=100.0)
    assert np.all(np.diff(distance[10]) > 0)


def test_rasterize_vector_distance_errors(tmp_path):
    grid = synthetic_grid(10, 10)
    missing = tmp_path / "nope.shp"
    with pytest.raises(MetalsmInputError, match="nope.shp"):
        terrain.rasterize_vector_distance(missing, grid, layer_name="faults")
    no_crs = tmp_path / "nocrs.gpkg"
    with pytest.warns(UserWarning, match="crs"):
        gpd.GeoDataFrame(geometry=[LineString([(0, 0), (1, 1)])]).to_file(no_crs)
    with pytest.raises(MetalsmInputError, match="nocrs.gpkg.*no CRS"):
        terrain.rasterize_vector_distance(no_crs, grid)
    empty = tmp_path / "empty.gpkg"
    gpd.GeoDataFrame(geometry=gpd.GeoSeries([], crs=grid.crs)).to_file(empty)
    with pytest.raises(MetalsmInputError, match="empty.gpkg.*no features"):
        terrain.rasterize_vector_distance(empty, grid)
    far = tmp_path / "far.gpkg"
    gpd.GeoDataFrame(geometry=[LineString([(0, 0), (10, 10)])], crs=grid.crs).to_file(far)
    with pytest.raises(MetalsmInputError, match="far.gpkg"):
        terrain.rasterize_vector_distance(far, grid)


# ------------------------------------------------------------------------------- orchestrator


def test_derive_terrain_on_real_crop(kaghan_dem):
    dem, grid = kaghan_dem
    out = terrain.derive_terrain(dem, grid, terrain.TERRAIN_FACTORS, drainage_threshold_cells=300)
    assert list(out) == list(terrain.TERRAIN_FACTORS)
    valid = ~np.isnan(dem)
    for name, values in out.items():
        assert values.dtype == np.float32, name
        assert values.shape == dem.shape, name
        assert np.isfinite(values[valid]).all(), name
        assert np.isnan(values[~valid]).all(), name
    slope = out["slope"][valid]
    assert slope.min() >= 0 and slope.max() < 90
    assert 25 <= slope.mean() <= 40  # steep Himalayan terrain
    assert (out["flow_accumulation"][valid] >= 1).all()
    np.testing.assert_allclose(
        out["log_flow_accumulation"], np.log10(out["flow_accumulation"]), rtol=1e-6
    )
    np.testing.assert_allclose(out["aspect_sin"] ** 2 + out["aspect_cos"] ** 2, 1, atol=1e-5)
    assert out["distance_to_drainage"].min() == 0
    assert out["distance_to_drainage"].max() < math.hypot(200, 200) * grid.cell_size
    # curvatures on a 30 m DEM are of order 1e-3 .. 1e-2 1/m, and ridges/valleys balance
    assert 1e-4 < np.abs(out["profile_curvature"]).mean() < 0.05
    assert abs(np.mean(out["plan_curvature"])) < 0.01


def test_derive_terrain_subset_nan_and_unknown_names():
    dem = plane(-0.3, 0.1, h=30, w=40)
    dem[10:12, 5:8] = np.nan
    grid = synthetic_grid(30, 40)
    progress: list[str] = []
    out = terrain.derive_terrain(
        dem, grid, ["slope", "twi"], drainage_threshold_cells=5, progress=progress.append
    )
    assert list(out) == ["slope", "twi"]
    assert np.isnan(out["slope"][10:12, 5:8]).all() and np.isnan(out["twi"][10, 6])
    assert "curvature" not in progress and progress.count("slope") == 1
    with pytest.raises(MetalsmInputError, match="valid names are: .*distance_to_drainage"):
        terrain.derive_terrain(dem, grid, ["slope", "roughness"])
    with pytest.raises(MetalsmInputError, match="drainage threshold"):
        terrain.derive_terrain(dem, grid, ["distance_to_drainage"], drainage_threshold_cells=1e9)
    with pytest.raises(MetalsmInputError, match="does not match the grid"):
        terrain.derive_terrain(dem[:5], grid, ["slope"])


# ----------------------------------------------------------------------------------- properties

_small_dems = arrays(
    np.float64,
    st.tuples(st.integers(3, 12), st.integers(3, 12)),
    elements=st.floats(0, 500, allow_nan=False, width=32),
)


@settings(max_examples=25, deadline=None)
@given(dem=_small_dems, shift=st.floats(-400, 400, width=32))
def test_slope_invariant_to_constant_offset(dem, shift):
    np.testing.assert_allclose(
        terrain.slope_degrees(dem + shift, L), terrain.slope_degrees(dem, L), atol=1e-6
    )


@settings(max_examples=25, deadline=None)
@given(dem=_small_dems)
def test_accumulation_conserves_cells_and_every_cell_drains(dem):
    filled = terrain.fill_depressions(dem)
    assert np.all(filled >= dem)
    directions = terrain.d8_flow_directions(filled)
    interior = np.zeros(dem.shape, dtype=bool)
    interior[1:-1, 1:-1] = True
    assert (directions[interior] >= 0).all()
    acc = terrain.flow_accumulation(directions)
    assert (acc >= 1).all()
    assert acc[directions == -1].sum() == dem.size
