import numpy as np
import pytest
import rasterio
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.enums import Resampling

from metalsm.errors import MetalsmInputError
from metalsm.grid import (
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
