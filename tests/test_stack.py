"""The factor stack: one window (in memory) and many windows (on disk) give the same
``factors.tif``, equal to the whole-array reference functions, on a real Kaghan crop."""

from __future__ import annotations

import numpy as np
import rasterio
from conftest import write_config

from metalsm import terrain
from metalsm.config import load_config
from metalsm.raster import read_aligned, reference_grid
from metalsm.scale import compute_context
from metalsm.stack import (
    FactorStack,
    FileFactorStack,
    read_dem,
    write_factors,
)


def test_one_window_and_many_windows_give_the_same_stack(kaghan_crop, kaghan, tmp_path):
    config = load_config(write_config(tmp_path / "crop.toml", kaghan_crop, kaghan))
    one = write_factors(config, tmp_path / "one" / "factors.tif")
    with compute_context(None, num_workers=2) as compute:  # threads, windows cut unevenly
        many = write_factors(config, tmp_path / "many" / "factors.tif", compute, chunk_size=67)
    with rasterio.open(one) as a, rasterio.open(many) as b:
        assert a.descriptions == b.descriptions and a.tags() == b.tags()
        np.testing.assert_array_equal(a.read(), b.read())
    assert not list((tmp_path / "many").glob(".*"))  # per-layer intermediates removed

    # the one-window stack equals the whole-array references it replaced
    stack = FactorStack.read(one)
    grid = reference_grid(config)
    dem = read_dem(config.dem, grid)
    threshold = max(1, round(config.terrain.drainage_threshold_km2 * 1e6 / grid.cell_area))
    expected = terrain.derive_terrain(dem, grid, config.terrain.factors,
                                      drainage_threshold_cells=threshold)
    for raster in config.rasters:
        expected[raster.name] = read_aligned(raster.path, grid, name=raster.name,
                                             categorical=True).values
    faults = terrain.rasterize_vector_distance(config.vectors[0].path, grid)
    expected["distance_to_faults"] = np.where(np.isnan(dem), np.nan, faults).astype(np.float32)
    assert stack.names == tuple(expected)
    for name in stack.names:
        np.testing.assert_array_equal(stack.layer(name), expected[name], err_msg=name)
    assert set(stack.categorical) == {"geology", "landcover"}

    # both stacks read the same windows
    on_disk = FileFactorStack(many, chunk_size=50)
    window = rasterio.windows.Window(40, 30, 70, 55)
    np.testing.assert_array_equal(on_disk.read_window(window), stack.read_window(window))
    np.testing.assert_array_equal(on_disk.valid, stack.valid)


def test_terrain_routing_setting_reaches_the_flow_factors(kaghan_crop, kaghan, tmp_path):
    config = load_config(write_config(
        tmp_path / "mfd.toml", kaghan_crop, kaghan,
        terrain='factors = ["slope", "twi"]\nrouting = "mfd"'))
    stack = FactorStack.read(write_factors(config, tmp_path / "mfd" / "factors.tif"))
    grid = reference_grid(config)
    dem = read_dem(config.dem, grid)
    mfd = terrain.derive_terrain(dem, grid, ["twi"], routing="mfd")["twi"]
    d8 = terrain.derive_terrain(dem, grid, ["twi"])["twi"]
    np.testing.assert_array_equal(stack.layer("twi"), mfd)
    valid = ~np.isnan(dem)
    assert np.abs(mfd[valid] - d8[valid]).mean() > 0.1  # a different routing, not D8
