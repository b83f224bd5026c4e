import numpy as np
import pytest
import rasterio
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.windows import Window

from metalsm.errors import MetalsmInputError
from metalsm.raster import (
    Grid,
    read_aligned,
    read_class_names,
    resampling_onto,
    source_cell_size_on,
)


def test_grid_of_the_real_dem(kaghan):
    grid = Grid.from_raster(kaghan / "AW3D30.tif")
    assert grid.shape == (987, 826)
    assert grid.crs.to_epsg() == 32643
    assert grid.cell_size == pytest.approx(28.55, abs=0.01)
    left, bottom, right, top = grid.bounds
    assert right - left == pytest.approx(826 * grid.cell_size)
    assert top - bottom == pytest.approx(987 * grid.cell_size)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 986), st.integers(0, 825))
def test_rowcol_inverts_xy(row, col):
    grid = Grid(
        rasterio.crs.CRS.from_epsg(32643),
        rasterio.Affine(28.55, 0, 339253.75, 0, -28.55, 3846704.88),
        987,
        826,
    )
    x, y = grid.xy(np.array([row]), np.array([col]))
    assert grid.rowcol(x, y) == (row, col)


def test_class_names_come_from_the_attribute_table(kaghan):
    names = read_class_names(kaghan / "Geology.tif")
    assert len(names) == 9
    assert names[2] == "Salkhala" and names[20] == "Alluvium"
    landcover = read_class_names(kaghan / "Landcover.tif")
    assert len(landcover) == 11 and set(landcover) <= set(range(1, 13))


def test_same_grid_read_keeps_values_and_nodata(kaghan):
    grid = Grid.from_raster(kaghan / "AW3D30.tif")
    layer = read_aligned(kaghan / "Geology.tif", grid, name="geology", categorical=True)
    with rasterio.open(kaghan / "Geology.tif") as src:
        raw = src.read(1)
    assert np.array_equal(np.isnan(layer.values), raw == -9999)
    assert np.array_equal(layer.values[raw != -9999], raw[raw != -9999].astype(np.float32))
    assert layer.class_names[3] == "Tanawal"


def test_a_raster_within_a_thousandth_of_a_cell_is_read_as_is(tmp_path, kaghan):
    """Kaghan's geology origin differs from the DEM's by 4e-5 m: the same grid, read
    without a warp. A DEM copy shifted by 5e-4 of a cell is read as is (its raw values);
    shifted by 2e-3 of a cell it is resampled (bilinear values differ from the raw)."""
    grid = Grid.from_raster(kaghan / "AW3D30.tif")
    with rasterio.open(kaghan / "Geology.tif") as src:
        assert src.transform != grid.transform and grid.holds(src)
    with rasterio.open(kaghan / "AW3D30.tif") as src:
        raw = src.read(1, masked=True).astype(np.float32).filled(np.nan)
        profile = src.profile
    cell = grid.cell_size
    for shift, held in [(5e-4, True), (2e-3, False)]:
        path = tmp_path / f"shifted_{shift}.tif"
        moved = grid.transform * rasterio.Affine.translation(shift, -shift)
        with rasterio.open(path, "w", **{**profile, "transform": moved}) as dst:
            dst.write(raw, 1)
        with rasterio.open(path) as src:
            assert grid.holds(src) is held, (shift, cell)
        values = read_aligned(path, grid, name="dem", categorical=False).values
        inner = (slice(1, -1), slice(1, -1))
        same = np.array_equal(values[inner], raw[inner], equal_nan=True)
        assert same is held


def test_coarsening_a_categorical_raster_keeps_only_its_codes(kaghan):
    fine = Grid.from_raster(kaghan / "Geology.tif")
    coarse = Grid(fine.crs, fine.transform @ rasterio.Affine.scale(4), fine.height // 4,
                  fine.width // 4)
    layer = read_aligned(kaghan / "Geology.tif", coarse, name="geology", categorical=True)
    codes = set(np.unique(layer.values[np.isfinite(layer.values)]).astype(int))
    assert codes <= {2, 3, 6, 7, 8, 10, 18, 19, 20}
    assert layer.values.shape == coarse.shape


def test_continuous_resampling_is_bilinear_and_in_range(kaghan):
    fine = Grid.from_raster(kaghan / "AW3D30.tif")
    half = Grid(fine.crs, fine.transform @ rasterio.Affine.scale(0.5), fine.height * 2,
                fine.width * 2)
    layer = read_aligned(kaghan / "AW3D30.tif", half, name="dem", categorical=False)
    values = layer.values[np.isfinite(layer.values)]
    assert 900 < values.min() and values.max() < 4100
    # bilinear at 2x gives values between neighbours: no new extremes
    assert values.max() <= 4099.16


def test_float_categorical_raster_is_rejected(tmp_path, kaghan):
    path = tmp_path / "float_classes.tif"
    grid = Grid.from_raster(kaghan / "AW3D30.tif")
    profile = grid.profile(dtype="float32", nodata=-1.0, tiled=False)
    profile.pop("blockxsize", None)
    profile.pop("blockysize", None)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.full((1, *grid.shape), 2.5, dtype=np.float32))
    with pytest.raises(MetalsmInputError, match="float_classes.tif.*non-integer"):
        read_aligned(path, grid, name="bad", categorical=True)


def test_raster_without_crs_is_named(tmp_path):
    path = tmp_path / "nocrs.tif"
    with rasterio.open(path, "w", driver="GTiff", width=4, height=4, count=1,
                       dtype="float32") as dst:
        dst.write(np.ones((1, 4, 4), np.float32))
    with pytest.raises(MetalsmInputError, match="nocrs.tif has no CRS"):
        Grid.from_raster(path)


def test_missing_and_unreadable_rasters_are_named(tmp_path):
    with pytest.raises(MetalsmInputError, match="not found: .*absent.tif"):
        Grid.from_raster(tmp_path / "absent.tif")
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"not a raster")
    with pytest.raises(MetalsmInputError, match="cannot read raster .*junk.tif"):
        Grid.from_raster(junk)


def test_all_nodata_raster_is_rejected(tmp_path, kaghan):
    grid = Grid.from_raster(kaghan / "AW3D30.tif")
    path = tmp_path / "empty.tif"
    profile = grid.profile(dtype="float32", nodata=-9999.0, tiled=False)
    profile.pop("blockxsize", None)
    profile.pop("blockysize", None)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.full((1, *grid.shape), -9999.0, dtype=np.float32))
    with pytest.raises(MetalsmInputError, match="empty.tif.*no valid cells"):
        read_aligned(path, grid, name="empty", categorical=False)


def test_categorical_raster_in_degrees_is_aligned_by_nearest_not_mode(kaghan_crop,
                                                                       landcover_geographic):
    """Degrees and metres are compared as the source cell's footprint on the grid: land cover
    in EPSG:4326 at its own resolution is not 'finer' than the 28.5 m grid, so it is read
    back by nearest neighbour and matches the original classes (mode: about 91 %)."""
    grid = Grid.from_raster(kaghan_crop / "AW3D30.tif")
    with rasterio.open(kaghan_crop / "Landcover.tif") as src:
        original = src.read(1)
        nodata = src.nodata
    aligned = read_aligned(landcover_geographic, grid, name="landcover", categorical=True).values
    both = np.isfinite(aligned) & (original != nodata)
    assert both.mean() > 0.95
    assert (aligned[both] == original[both]).mean() >= 0.98
    with rasterio.open(landcover_geographic) as src:
        assert resampling_onto(src, grid, categorical=True) is Resampling.nearest
        assert source_cell_size_on(src, grid) == pytest.approx(grid.cell_size, rel=0.1)
    # a source 4x finer than the grid in the same CRS is still summarised by mode
    with rasterio.open(kaghan_crop / "Landcover.tif") as src:
        coarse = Grid(grid.crs, grid.transform * rasterio.Affine.scale(4), 65, 75)
        assert resampling_onto(src, coarse, categorical=True) is Resampling.mode


# ------------------------------------------------------------------------------ windows


def test_windows_cover_the_grid_row_major_with_smaller_edges():
    from metalsm.raster import iter_windows, strips

    windows = [(w.row_off, w.col_off, w.height, w.width) for w in iter_windows((5, 7), 3)]
    assert windows == [(0, 0, 3, 3), (0, 3, 3, 3), (0, 6, 3, 1),
                       (3, 0, 2, 3), (3, 3, 2, 3), (3, 6, 2, 1)]
    assert [(w.row_off, w.height, w.width) for w in iter_windows((5, 7), (2, 7))] == [
        (0, 2, 7), (2, 2, 7), (4, 1, 7)]
    # one window: the whole grid
    assert [(w.height, w.width) for w in iter_windows((5, 7), 7)] == [(5, 7)]
    # strips of about 15 cells, whole multiples of 2 rows
    assert [(w.row_off, w.height) for w in strips((5, 7), 15, 2)] == [(0, 2), (2, 2), (4, 1)]
    with pytest.raises(MetalsmInputError, match="positive integer, got 0"):
        list(iter_windows((5, 7), 0))


def test_halo_grows_a_window_by_one_cell_clipped_at_the_grid_edge():
    from metalsm.raster import halo

    inner, crop = halo(Window(3, 2, 4, 3), (10, 8))  # col 3, row 2, 4 wide, 3 high
    assert (inner.row_off, inner.col_off, inner.height, inner.width) == (1, 2, 5, 6)
    assert crop == (slice(1, 4), slice(1, 5))
    corner, crop = halo(Window(0, 0, 3, 3), (10, 8))  # the grid corner: no halo above/left
    assert (corner.row_off, corner.col_off, corner.height, corner.width) == (0, 0, 4, 4)
    assert crop == (slice(0, 3), slice(0, 3))
    edge, crop = halo(Window(5, 7, 3, 3), (10, 8))  # bottom-right corner
    assert (edge.row_off, edge.col_off, edge.height, edge.width) == (6, 4, 4, 4)
    assert crop == (slice(1, 4), slice(1, 4))
    values = np.arange(80.0).reshape(10, 8)
    np.testing.assert_array_equal(values[inner.toslices()][halo(Window(3, 2, 4, 3), (10, 8))[1]],
                                  values[2:5, 3:7])


def test_one_cleanup_turns_declared_nodata_sentinels_and_infinities_into_nan(tmp_path):
    from metalsm.raster import nodata_to_nan, read_cells, read_window

    values = np.array([[1.0, -9999.0, np.inf], [-3.4e38, 2.5, np.nan]], dtype=np.float32)
    cleaned = nodata_to_nan(values.copy(), -9999.0)
    np.testing.assert_array_equal(np.isnan(cleaned), [[False, True, True], [True, False, True]])
    assert cleaned[0, 0] == 1.0 and cleaned[1, 1] == 2.5
    grid = Grid(CRS.from_epsg(32643), rasterio.Affine(30, 0, 0, 0, -30, 0), 2, 3)
    path = tmp_path / "sentinels.tif"
    with rasterio.open(path, "w", **grid.profile(dtype="float32", nodata=-9999.0)) as dst:
        dst.write(values, 1)
    with rasterio.open(path) as src:
        for dtype in (np.float32, np.float64):
            read = read_window(src, Window(1, 0, 2, 2), 1, dtype)
            assert read.dtype == dtype
            np.testing.assert_array_equal(np.isnan(read), [[True, True], [False, True]])
    cells = read_cells(path, np.array([1, 0, 1]), np.array([1, 0, 0]), chunk_size=1)
    np.testing.assert_array_equal(cells[:, 0], [2.5, 1.0, np.nan])
