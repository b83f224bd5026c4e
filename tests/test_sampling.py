import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt

from metalsm.errors import MetalsmInputError
from metalsm.inputs import landslide_mask, read_inventory
from metalsm.raster import Grid
from metalsm.samples import NEGATIVE_SAMPLERS, NegativeRequest, draw_negatives, random_negatives


@pytest.fixture(scope="module")
def real_mask(kaghan):
    grid = Grid.from_raster(kaghan / "AW3D30.tif")
    return grid, landslide_mask(read_inventory(kaghan / "landslides.shp", grid), grid)


def test_negatives_respect_the_buffer_on_real_inventory(real_mask):
    grid, mask = real_mask
    request = NegativeRequest(
        valid=np.ones(grid.shape, bool), landslide_mask=mask, n=3000,
        cell_size=grid.cell_size, buffer_m=100.0,
    )
    rows, cols = random_negatives(request, seed=1)
    distance = distance_transform_edt(~mask) * grid.cell_size
    assert rows.size == 3000
    assert np.unique(rows * grid.width + cols).size == 3000
    assert (distance[rows, cols] > 100.0).all()
    assert not mask[rows, cols].any()


def test_slope_threshold_and_valid_mask():
    shape = (50, 60)
    valid = np.ones(shape, bool)
    valid[:10] = False
    slope = np.tile(np.linspace(0, 59, 60), (50, 1))
    mask = np.zeros(shape, bool)
    mask[40:, :5] = True
    request = NegativeRequest(valid, mask, n=500, cell_size=10.0, buffer_m=0.0, slope=slope,
                              min_slope_deg=20.0)
    rows, cols = draw_negatives("random", request, seed=0)
    assert (rows >= 10).all()
    assert (slope[rows, cols] >= 20).all()


def test_seeded_and_reproducible():
    request = NegativeRequest(np.ones((40, 40), bool), np.zeros((40, 40), bool), n=100,
                              cell_size=1.0)
    a = random_negatives(request, seed=5)
    b = random_negatives(request, seed=5)
    c = random_negatives(request, seed=6)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0] * 40 + a[1], c[0] * 40 + c[1])


def test_too_few_candidates_and_unknown_method_are_clear():
    request = NegativeRequest(np.ones((5, 5), bool), np.zeros((5, 5), bool), n=30,
                              cell_size=1.0)
    with pytest.raises(MetalsmInputError, match="only 25 cells are eligible.*30 are needed"):
        random_negatives(request, seed=0)
    with pytest.raises(MetalsmInputError, match="unknown negative sampling method 'nearby'"):
        draw_negatives("nearby", request, seed=0)
    slope_missing = NegativeRequest(np.ones((5, 5), bool), np.zeros((5, 5), bool), n=3,
                                    cell_size=1.0, min_slope_deg=10.0)
    with pytest.raises(MetalsmInputError, match="'slope' is not among the terrain factors"):
        random_negatives(slope_missing, seed=0)
    assert "random" in NEGATIVE_SAMPLERS
