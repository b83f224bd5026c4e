"""COG outputs: GDAL's layout rules, and nothing lost in the copy."""

import json

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling

from metalsm.raster import Grid, atomic_cog, cog_problems


def _grid(shape):
    return Grid(CRS.from_epsg(32643), rasterio.Affine(30, 0, 500000, 0, -30, 3800000), *shape)


def _write(path, values, grid, overviews=()):
    profile = grid.profile(count=values.shape[0], dtype="float32", nodata=np.nan, predictor=3)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(values)
        if overviews:
            dst.build_overviews(list(overviews), Resampling.average)
        dst.set_band_description(1, "slope")
        dst.update_tags(METALSM_TEST=json.dumps({"a": 1}))


def test_plain_geotiff_with_overviews_is_rejected_and_the_cog_copy_accepted(tmp_path):
    grid = _grid((700, 900))
    values = np.random.default_rng(0).random((2, *grid.shape)).astype(np.float32)
    values[:, :20, :30] = np.nan
    _write(tmp_path / "plain.tif", values, grid, overviews=(2, 4))
    problems = cog_problems(tmp_path / "plain.tif")
    assert any("main IFD" in p for p in problems)  # overviews appended after the image
    with atomic_cog(tmp_path / "cog.tif") as tmp:
        _write(tmp, values, grid, overviews=(2, 4, 8))
    assert cog_problems(tmp_path / "cog.tif") == []
    with rasterio.open(tmp_path / "cog.tif") as src:
        np.testing.assert_array_equal(src.read(), values)
        assert src.descriptions[0] == "slope" and np.isnan(src.nodata)
        assert json.loads(src.tags()["METALSM_TEST"]) == {"a": 1}
        assert src.overviews(1) == [2, 4, 8]  # the writer's own overview factors kept
        assert src.crs == grid.crs and src.transform == grid.transform
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cog.tif", "plain.tif"]


def test_overviews_are_added_when_the_writer_built_none(tmp_path):
    grid = _grid((600, 1100))
    with atomic_cog(tmp_path / "cog.tif", overview_resampling="nearest") as tmp:
        _write(tmp, np.ones((1, *grid.shape), np.float32), grid)
    with rasterio.open(tmp_path / "cog.tif") as src:
        assert src.overviews(1) == [2, 4, 8]  # until the longer side fits one 256-cell tile
    assert cog_problems(tmp_path / "cog.tif") == []


def test_a_failed_write_leaves_nothing(tmp_path):
    grid = _grid((300, 300))
    with pytest.raises(RuntimeError, match="broke"), atomic_cog(tmp_path / "x.tif") as tmp:
        _write(tmp, np.ones((1, *grid.shape), np.float32), grid)
        raise RuntimeError("broke")
    assert list(tmp_path.iterdir()) == []


def test_windowed_writer_takes_windows_in_any_order_and_leaves_a_cog(tmp_path):
    from rasterio.windows import Window

    from metalsm.raster import windowed_geotiff

    grid = _grid((600, 700))
    values = np.arange(600 * 700, dtype=np.float32).reshape(600, 700)
    values[:10] = np.nan
    windows = [Window(c, r, min(256, 700 - c), min(256, 600 - r))
               for r in range(0, 600, 256) for c in range(0, 700, 256)]
    path = tmp_path / "out.tif"
    with windowed_geotiff(path, grid, descriptions=["values"], tags={"METALSM_X": "1"},
                          overviews=(2, 4), predictor=3) as out:
        for win in reversed(windows):  # completion order is not window order
            out.write(values[win.toslices()], win)
        assert not path.exists()  # only the temporary file while writing
    assert cog_problems(path) == []
    with rasterio.open(path) as src:
        np.testing.assert_array_equal(src.read(1), values)
        assert src.descriptions == ("values",) and src.tags()["METALSM_X"] == "1"
        assert src.overviews(1) == [2, 4]
    assert [p.name for p in tmp_path.iterdir()] == ["out.tif"]


def test_windowed_writer_leaves_nothing_when_the_block_fails(tmp_path):
    from metalsm.raster import windowed_geotiff

    path = tmp_path / "out.tif"
    with pytest.raises(RuntimeError, match="window failed"):
        with windowed_geotiff(path, _grid((300, 300)), dtype="int32", nodata=-1, cog=False):
            raise RuntimeError("window failed")
    assert list(tmp_path.iterdir()) == []


def test_gdal_cache_is_bounded_in_bytes():
    """rasterio passes an integer GDAL_CACHEMAX to GDAL as bytes: the bounded cache must
    be GDAL_CACHE_MB megabytes, not GDAL_CACHE_MB bytes (which disables caching and made
    the factor stack's COG copy 6x slower)."""
    from metalsm.raster import GDAL_CACHE_MB, gdal_cache

    with gdal_cache():
        assert rasterio.env.getenv()["GDAL_CACHEMAX"] == GDAL_CACHE_MB * 1024 * 1024
    with rasterio.Env(GDAL_CACHEMAX=10 * 1024 * 1024), gdal_cache():  # the user's choice wins
        assert rasterio.env.getenv()["GDAL_CACHEMAX"] == 10 * 1024 * 1024


def test_a_cog_copy_caches_five_strips_of_tiles_and_the_user_setting_still_wins():
    """The COG copy of a 20000-cell wide 11-band stack thrashed a 256 MB cache (GDAL
    decompressed every strip again per band: ~1,650 s against 426 s with 900 MB): its
    cache holds 5 strips of 256-cell tiles across the width, then the bounded cache is
    back."""
    from metalsm.raster import GDAL_CACHE_MB, cog_copy_cache_mb, gdal_cache

    assert cog_copy_cache_mb(20000, 11, "float32") == 1075  # 5 * 20000 * 256 * 11 * 4 B
    assert cog_copy_cache_mb(826, 11, "float32") == GDAL_CACHE_MB
    assert cog_copy_cache_mb(40000, 1, "uint8") == GDAL_CACHE_MB
    with gdal_cache():
        with gdal_cache(1075):
            assert rasterio.env.getenv()["GDAL_CACHEMAX"] == 1075 * 1024 * 1024
        assert rasterio.env.getenv()["GDAL_CACHEMAX"] == GDAL_CACHE_MB * 1024 * 1024
    with rasterio.Env(GDAL_CACHEMAX=10 * 1024 * 1024), gdal_cache(1075):
        assert rasterio.env.getenv()["GDAL_CACHEMAX"] == 10 * 1024 * 1024


def test_rasters_that_may_pass_4_gb_are_written_as_bigtiff(tmp_path):
    """GDAL's default stays classic TIFF for compressed files whatever their size, and a
    province-scale stack then fails at 4 GB; a 24,000² float32 layer (2.3 GB raw) must
    be BigTIFF, a small one classic (the outputs users already have stay as they were)."""
    from metalsm.raster import windowed_geotiff

    with windowed_geotiff(tmp_path / "big.tif", _grid((24_000, 24_000)), cog=False,
                          SPARSE_OK=True):
        pass  # sparse: no tile written, only the header and directory
    with windowed_geotiff(tmp_path / "small.tif", _grid((300, 200))) as writer:
        writer.write(np.ones((300, 200), np.float32))
    assert (tmp_path / "big.tif").read_bytes()[:4] == b"II+\x00"  # BigTIFF
    assert (tmp_path / "small.tif").read_bytes()[:4] == b"II*\x00"  # classic TIFF
    assert cog_problems(tmp_path / "small.tif") == []


def test_a_wide_cog_copy_gives_its_cache_back(tmp_path):
    """A copy whose cache is raised past the bounded 256 MB must not leave the process
    that much larger (the freed heap is trimmed): 6,000 cells wide, 11 bands -> 323 MB."""
    import psutil

    from metalsm.raster import GDAL_CACHE_MB, Grid, cog_copy_cache_mb, windowed_geotiff

    assert cog_copy_cache_mb(6000, 11, "float32") > GDAL_CACHE_MB
    grid = Grid(rasterio.crs.CRS.from_epsg(32643),
                rasterio.Affine(30.0, 0, 300000.0, 0, -30.0, 3800000.0), 1536, 6000)
    values = np.random.default_rng(0).random((11, 256, 6000), dtype=np.float32)
    before = psutil.Process().memory_info().rss
    with windowed_geotiff(tmp_path / "wide.tif", grid, count=11, interleave="pixel") as out:
        for row in range(0, 1536, 256):
            out.write(values, rasterio.windows.Window(0, row, 6000, 256))
    grown = psutil.Process().memory_info().rss - before
    assert grown < 150 * 2**20, f"{grown / 2**20:.0f} MB kept after the copy"
    with rasterio.open(tmp_path / "wide.tif") as src:
        assert src.count == 11 and src.overviews(1)
