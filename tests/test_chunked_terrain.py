"""Chunked terrain factors and distances equal the in-memory ones on the real Kaghan data."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from rasterio.windows import Window
from scipy import ndimage

from metalsm import terrain
from metalsm.errors import MetalsmInputError
from metalsm.raster import Grid
from metalsm.scale import compute_context
from metalsm.stack import read_dem
from metalsm.terrain import _write as chunked_terrain


class RecordingProgress:
    """Stands in for RunProgress: records each stage's total and how often it advanced."""

    def __init__(self) -> None:
        self.stages: dict[str, list[int]] = {}

    @contextmanager
    def stage(self, description: str, total: int | None = 1):
        record = self.stages.setdefault(description, [total or 0, 0])

        def advance(n: int = 1, note: str | None = None) -> None:
            record[1] += n

        yield advance


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        assert src.dtypes[0] == "float32" and np.isnan(src.nodata)
        return src.read(1)


def assert_same(chunked: dict[str, Path], in_memory: dict[str, np.ndarray]) -> None:
    assert list(chunked) == list(in_memory)
    for name, path in chunked.items():
        assert path.name == f"{name}.tif"
        np.testing.assert_array_equal(read(path), in_memory[name], err_msg=name)


@pytest.fixture(scope="module")
def holed_dem(kaghan, tmp_path_factory) -> Path:
    """A 230 x 251 crop of the real DEM with no-data holes, one of them on the grid edge."""
    window = Window(col_off=310, row_off=420, width=251, height=230)
    with rasterio.open(kaghan / "AW3D30.tif") as src:
        profile = src.profile.copy()
        values = src.read(1, window=window)
        transform = rasterio.windows.transform(window, src.transform)
    values[40:47, 60:95] = profile["nodata"]  # crosses the chunk edge at column 62
    values[0:5, 200:251] = profile["nodata"]  # on the north and east edges
    values[120, 130] = profile["nodata"]  # a single no-data cell
    profile.update(width=window.width, height=window.height, transform=transform)
    path = tmp_path_factory.mktemp("holed") / "dem.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(values, 1)
    return path


FLOW_FACTORS = ["flow_accumulation", "twi", "spi", "distance_to_drainage", "slope"]


def test_full_kaghan_dem_flow_factors_equal_in_memory(kaghan, tmp_path):
    """Flow crosses every chunk edge of the whole real DEM (the crop test has all factors)."""
    path = kaghan / "AW3D30.tif"
    grid = Grid.from_raster(path)
    expected = terrain.derive_terrain(
        read_dem(str(path), grid), grid, FLOW_FACTORS, drainage_threshold_cells=300
    )
    progress = RecordingProgress()
    out = chunked_terrain.write_terrain_factors(
        path, grid, FLOW_FACTORS, tmp_path, chunk_size=197,
        drainage_threshold_cells=300, progress=progress,
    )
    assert_same(out, expected)
    # every counted bar advanced exactly to its total; 6 x 5 windows of 197 cells
    assert progress.stages["terrain factors"] == [30, 30]
    assert all(total == done for total, done in progress.stages.values())
    with rasterio.open(out["slope"]) as src:
        assert src.crs == grid.crs and src.transform == grid.transform
        assert src.profile["tiled"] and src.compression.value == "ZSTD"  # intermediate layer
        assert src.descriptions == ("slope",)
    assert not list(tmp_path.glob(".*"))  # no partial files or scratch left behind


@pytest.mark.parametrize("routing", ["d8", "mfd"])
def test_chunk_edges_and_nodata_holes_match_in_memory(holed_dem, tmp_path, monkeypatch, routing):
    monkeypatch.setattr(chunked_terrain, "BAND_CELLS", 100)  # 3-row bands inside windows
    monkeypatch.setattr(chunked_terrain, "EDT_STRIP_CELLS", 0)  # EDT strips of 31**2 cells
    grid = Grid.from_raster(holed_dem)
    dem = read_dem(str(holed_dem), grid)
    assert np.isnan(dem).sum() == 7 * 35 + 5 * 51 + 1
    names = ["spi", "slope", "aspect_sin", "aspect_cos", "plan_curvature", "profile_curvature",
             "elevation", "twi", "log_flow_accumulation", "flow_accumulation",
             "distance_to_drainage"]
    expected = terrain.derive_terrain(dem, grid, names, drainage_threshold_cells=50,
                                      routing=routing)
    out = chunked_terrain.write_terrain_factors(
        holed_dem, grid, names, tmp_path, chunk_size=31, drainage_threshold_cells=50,
        routing=routing,
    )
    assert_same(out, expected)
    assert np.isnan(read(out["distance_to_drainage"])[40:47, 60:95]).all()


def test_only_local_factors_need_no_flow_routing(holed_dem, tmp_path):
    grid = Grid.from_raster(holed_dem)
    progress = RecordingProgress()
    out = chunked_terrain.write_terrain_factors(
        holed_dem, grid, "slope", tmp_path, chunk_size=64, progress=progress
    )
    assert list(out) == ["slope"]
    assert list(progress.stages) == ["terrain factors"]


def test_errors_name_the_value(holed_dem, tmp_path):
    grid = Grid.from_raster(holed_dem)
    with pytest.raises(MetalsmInputError, match="roughness"):
        chunked_terrain.write_terrain_factors(holed_dem, grid, ["roughness"], tmp_path)
    with pytest.raises(MetalsmInputError, match="chunk_size.*got 2"):
        chunked_terrain.write_terrain_factors(holed_dem, grid, ["slope"], tmp_path, chunk_size=2)
    with pytest.raises(MetalsmInputError, match="drainage threshold of 1000000"):
        chunked_terrain.write_terrain_factors(
            holed_dem, grid, ["distance_to_drainage"], tmp_path, drainage_threshold_cells=1e6
        )
    with pytest.raises(MetalsmInputError, match="nope.tif"):
        chunked_terrain.write_terrain_factors(tmp_path / "nope.tif", grid, ["slope"], tmp_path)
    assert not (tmp_path / "distance_to_drainage.tif").exists()


# ----------------------------------------------------------------------- lean flow routing


def test_lean_accumulation_equals_the_general_one_on_real_dem(holed_dem):
    grid = Grid.from_raster(holed_dem)
    dem = read_dem(str(holed_dem), grid)
    valid = ~np.isnan(dem)
    filled = terrain.fill_depressions(dem)
    assert filled.dtype == np.float32  # a float32 DEM is filled in float32
    assert (filled[valid] >= dem[valid]).all()
    codes = terrain.d8_flow_directions(filled)
    general = terrain.flow_accumulation(codes, np.where(valid, 1.0, np.nan))
    counts = terrain.flow_accumulation_counts(codes)
    assert counts.dtype == np.uint32
    np.testing.assert_array_equal(counts[valid], general[valid])
    lean = terrain.flow_routing_counts(lambda: dem.copy())
    np.testing.assert_array_equal(lean[valid], general[valid])
    assert (lean[~valid] == 0).all()
    with pytest.raises(MetalsmInputError, match="cycle"):
        terrain.flow_accumulation_counts(np.array([[0, 4]], dtype=np.int8))


# ------------------------------------------------------------------------------------ EDT


@settings(max_examples=40, deadline=None)
@given(
    mask=arrays(np.bool_, st.tuples(st.integers(1, 40), st.integers(1, 40)),
                elements=st.booleans()).filter(lambda m: m.any())
)
def test_squared_edt_equals_scipy(mask):
    expected = ndimage.distance_transform_edt(~mask)
    got = np.sqrt(terrain.squared_edt(mask))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)


def test_chunked_edt_on_random_sparse_mask_equals_scipy(tmp_path, monkeypatch):
    monkeypatch.setattr(chunked_terrain, "EDT_STRIP_CELLS", 0)  # many strips
    rng = np.random.default_rng(7)
    h, w = 173, 211
    mask = rng.random((h, w)) < 0.001
    mask[3, 5] = True
    grid = Grid(rasterio.crs.CRS.from_epsg(32643), Affine(30.0, 0, 0, 0, -30.0, 0), h, w)
    path = tmp_path / "d.tif"
    assert chunked_terrain._distance_raster(
        lambda c0, c1: mask[:, c0:c1], grid, path, 41,
        row_pad=0, col_pad=0, ext_shape=(h, w),
    )
    expected = ndimage.distance_transform_edt(~mask) * 30.0
    np.testing.assert_allclose(read(path), expected.astype(np.float32), rtol=0, atol=0)
    # an empty mask writes nothing and says so
    assert not chunked_terrain._distance_raster(
        lambda c0, c1: np.zeros((h, c1 - c0), bool), grid, tmp_path / "e.tif", 41,
        row_pad=0, col_pad=0, ext_shape=(h, w),
    )
    assert not (tmp_path / "e.tif").exists()


# ------------------------------------------------------------------------ vector distance


def test_vector_distance_on_real_faults_equals_in_memory(kaghan, holed_dem, tmp_path,
                                                        monkeypatch):
    monkeypatch.setattr(chunked_terrain, "EDT_STRIP_CELLS", 0)  # many strips
    grid = Grid.from_raster(holed_dem)
    faults = kaghan / "Confirmed_faults.shp"
    expected = terrain.rasterize_vector_distance(faults, grid, layer_name="faults")
    out = chunked_terrain.vector_distance_raster(
        faults, grid, tmp_path / "faults.tif", chunk_size=130, layer_name="faults",
        dem_path=holed_dem,
    )
    got = read(out)
    nodata = np.isnan(read_dem(str(holed_dem), grid))
    assert np.isnan(got[nodata]).all()
    np.testing.assert_allclose(got[~nodata], expected[~nodata], rtol=1e-7)
    assert (got[~nodata] == expected[~nodata].astype(np.float32)).all()


def test_vector_distance_errors_name_the_file(tmp_path, holed_dem):
    import geopandas as gpd
    from shapely.geometry import LineString

    grid = Grid.from_raster(holed_dem)
    with pytest.raises(MetalsmInputError, match="nope.shp"):
        chunked_terrain.vector_distance_raster(tmp_path / "nope.shp", grid, tmp_path / "x.tif")
    far = tmp_path / "far.gpkg"
    gpd.GeoDataFrame(geometry=[LineString([(0, 0), (10, 10)])], crs=grid.crs).to_file(far)
    with pytest.raises(MetalsmInputError, match="far.gpkg"):
        chunked_terrain.vector_distance_raster(far, grid, tmp_path / "x.tif", chunk_size=64)
    assert not (tmp_path / "x.tif").exists()


def test_dask_schedulers_give_the_same_files(holed_dem, tmp_path):
    from dask.distributed import Client

    grid = Grid.from_raster(holed_dem)
    names = ["slope", "twi", "profile_curvature"]
    reference = chunked_terrain.write_terrain_factors(
        holed_dem, grid, names, tmp_path / "serial", chunk_size=64, drainage_threshold_cells=50,
    )
    with Client(processes=False, n_workers=2, threads_per_worker=1,
                dashboard_address=":0") as client, compute_context(client) as compute:
        out = chunked_terrain.write_terrain_factors(
            holed_dem, grid, names, tmp_path / "cluster", chunk_size=64,
            drainage_threshold_cells=50, compute=compute,
        )
    for name in names:
        np.testing.assert_array_equal(read(out[name]), read(reference[name]), err_msg=name)
    assert not list((tmp_path / "cluster").glob(".counts-*"))  # the workers' scratch is gone


def test_cluster_tasks_carry_a_file_name_not_the_counts(tmp_path):
    """A cluster's window task captures the upstream counts as a scratch file: what is
    pickled to every worker stays small whatever the grid, and slices read back exact."""
    import pickle

    counts = np.arange(600 * 500, dtype=np.uint32).reshape(600, 500)
    spilled = chunked_terrain._CountsFile.spill(counts, str(tmp_path))
    assert len(pickle.dumps(spilled)) < 1_000 < counts.nbytes
    window = Window(col_off=30, row_off=70, width=100, height=40)
    np.testing.assert_array_equal(spilled[window.toslices()], counts[window.toslices()])


def test_dem_off_the_grid_is_warped_window_by_window(kaghan, tmp_path):
    path = kaghan / "AW3D30.tif"
    grid = Grid.from_raster(path).window(Window(100, 120, 200, 150))  # a sub-grid
    names = ["slope", "twi"]
    expected = terrain.derive_terrain(
        read_dem(str(path), grid), grid, names, drainage_threshold_cells=50
    )
    out = chunked_terrain.write_terrain_factors(
        path, grid, names, tmp_path, chunk_size=64, drainage_threshold_cells=50
    )
    assert_same(out, expected)
