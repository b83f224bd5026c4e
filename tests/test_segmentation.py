"""Scene segmentation on real Kaghan crops and the real Hong Kong sample table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import rasterio
from affine import Affine
from scipy import ndimage

from metalsm.blocks import _segmentation as seg
from metalsm.errors import MetalsmInputError
from metalsm.raster import Grid, read_aligned
from metalsm.stack import FactorStack


@pytest.fixture(scope="module")
def kaghan_layers(kaghan):
    grid = Grid.from_raster(kaghan / "AW3D30.tif")
    dem = read_aligned(kaghan / "AW3D30.tif", grid, name="elevation", categorical=False)
    geo = read_aligned(kaghan / "Geology.tif", grid, name="geology", categorical=True)
    lc = read_aligned(kaghan / "Landcover.tif", grid, name="landcover", categorical=True)
    return grid, dem.values, geo, lc


def make_stack(kaghan_layers, row0, col0, height, width, names=None, holes=False):
    """Real DEM/geology/land cover window + simple gradient factors as a FactorStack."""
    grid, dem, geo, lc = kaghan_layers
    rows, cols = slice(row0, row0 + height), slice(col0, col0 + width)
    z = dem[rows, cols].astype(np.float64)
    dz_dr, dz_dc = np.gradient(z, grid.cell_size)
    layers = {
        "elevation": z,
        "slope": np.degrees(np.arctan(np.hypot(dz_dr, dz_dc))),
        "aspect_sin": np.sin(np.arctan2(-dz_dc, dz_dr)),
        "geology": geo.values[rows, cols],
        "landcover": lc.values[rows, cols],
    }
    names = names or tuple(layers)
    values = np.stack([layers[n].astype(np.float32) for n in names])
    if holes:  # a real-looking nodata patch plus a nodata border strip
        values[:, : height // 5, : width // 4] = np.nan
        values[:, -3:, :] = np.nan
    sub = Grid(grid.crs, grid.transform @ Affine.translation(col0, row0), height, width)
    class_names = {n: {} for n in ("geology", "landcover") if n in names}
    return FactorStack(sub, tuple(names), values, class_names)


def _inputs(stack, k, weights=None):
    w = seg._resolve_weights(stack.names, weights)
    norm, is_cat, _ = seg._normalize(stack)
    valid = np.isfinite(norm).all(axis=0)
    centres, step = seg.initial_centres(norm, valid, is_cat, w, k)
    return norm, valid, is_cat, w, centres, step


# ----------------------------------------------------------------------------- fast == reference


@pytest.mark.parametrize(
    ("window", "k", "m", "weights", "holes"),
    [
        ((550, 150, 64, 64), 9, 0.3, None, False),
        ((300, 400, 80, 100), 12, 0.5, None, True),
        ((300, 400, 80, 100), 12, 0.2,
         {"elevation": 2.0, "slope": 0.5, "aspect_sin": 0.0, "geology": 1.5, "landcover": 0.7},
         False),
        ((550, 150, 64, 64), 6, 0.1,
         {"elevation": 0.3, "slope": 3.0, "aspect_sin": 1.0, "geology": 0.2, "landcover": 2.0},
         True),
    ],
)
def test_fast_matches_numpy_reference_cell_for_cell(kaghan_layers, window, k, m, weights, holes):
    stack = make_stack(kaghan_layers, *window, holes=holes)
    norm, valid, is_cat, w, centres, step = _inputs(stack, k, weights)
    assert is_cat.sum() == 2 and len(centres) >= k // 2
    fast_labels, fast_centres = seg.slic_fast(norm, valid, is_cat, w, centres, step, m, 5)
    ref_labels, ref_centres = seg.slic_reference(norm, valid, is_cat, w, centres, step, m, 5)
    np.testing.assert_array_equal(fast_labels, ref_labels)
    np.testing.assert_array_equal(fast_centres, ref_centres)
    assert (fast_labels[~valid] == -1).all()
    assert len(np.unique(fast_labels[valid])) > 1


# ----------------------------------------------------------------------------- partition properties


@pytest.mark.parametrize("holes", [False, True])
def test_blocks_partition_the_valid_cells_into_connected_blocks(kaghan_layers, holes):
    stack = make_stack(kaghan_layers, 550, 150, 200, 240, holes=holes)
    blocks = seg.segment_raster(stack, 25, 0.4)
    valid = stack.valid
    labels = blocks.labels
    assert labels.dtype == np.int32 and labels.shape == stack.grid.shape
    assert (labels[~valid] == -1).all() and (labels[valid] >= 0).all()
    assert np.array_equal(np.unique(labels[valid]), np.arange(blocks.n_blocks))
    assert 12 <= blocks.n_blocks <= 50
    sizes = blocks.sizes()
    assert sizes.sum() == valid.sum()
    min_size = blocks.meta["min_size"]
    valid_islands, _ = ndimage.label(valid)
    for b in range(blocks.n_blocks):
        _, n_parts = ndimage.label(labels == b)  # 4-connectivity
        assert n_parts == 1, f"block {b} has {n_parts} parts"
        if sizes[b] < min_size:  # only allowed when the block is a whole valid island
            island = np.unique(valid_islands[labels == b])
            assert island.size == 1 and (valid_islands == island[0]).sum() == sizes[b]
    assert blocks.centres.shape == (blocks.n_blocks, 2 + len(stack.names))
    rows, cols = np.nonzero(labels == 3)
    np.testing.assert_allclose(blocks.centres[3, :2], [rows.mean(), cols.mean()])
    assert set(blocks.centres[:, 2 + stack.names.index("geology")]) <= set(
        np.unique(stack.layer("geology")[valid])
    )
    assert (blocks.block_of(np.array([0, -5]), np.array([0, 3])) == [labels[0, 0], -1]).all()


def test_isolated_small_island_stays_its_own_block(kaghan_layers):
    stack = make_stack(kaghan_layers, 550, 150, 120, 120)
    values = stack.values.copy()
    values[:, 100:103, :] = np.nan  # cut off a strip ...
    values[:, 103:, 10:] = np.nan  # ... leaving a tiny 17 x 10 island in the corner
    stack = FactorStack(stack.grid, stack.names, values, stack.class_names)
    blocks = seg.segment_raster(stack, 9, 0.4)
    island = blocks.labels[103:, :10]
    assert np.unique(island).size == 1
    assert blocks.sizes()[island[0, 0]] == island.size < blocks.meta["min_size"]


# ----------------------------------------------------------------------------- known answers


def _synthetic(width=60, height=40):
    grid = Grid(rasterio.crs.CRS.from_epsg(32643), rasterio.Affine(30, 0, 0, 0, -30, 0),
                height, width)
    values = np.zeros((1, height, width), np.float32)
    values[0, :, width // 2:] = 1.0
    return FactorStack(grid, ("f",), values, {})


def test_small_compactness_never_straddles_a_feature_boundary():
    stack = _synthetic()
    blocks = seg.segment_raster(stack, 8, 0.05)
    left = set(np.unique(blocks.labels[:, :30]))
    right = set(np.unique(blocks.labels[:, 30:]))
    assert left.isdisjoint(right)


def test_large_compactness_gives_grid_like_blocks():
    stack = _synthetic(width=80, height=80)
    stack.values[0] = np.random.default_rng(0).random((80, 80))  # noisy features
    blocks = seg.segment_raster(stack, 16, 1000.0)
    assert blocks.n_blocks == 16
    sizes = blocks.sizes()
    assert sizes.min() >= 0.8 * 400 and sizes.max() <= 1.2 * 400
    for b in range(16):  # each block is nearly its 20 x 20 bounding box
        rows, cols = np.nonzero(blocks.labels == b)
        box = (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
        assert sizes[b] / box > 0.8
    noisy = seg.segment_raster(stack, 16, 0.01)
    assert noisy.n_blocks != 16 or not np.array_equal(noisy.labels, blocks.labels)


def test_zero_weight_equals_dropping_the_factor(kaghan_layers):
    names = ("elevation", "slope", "aspect_sin", "geology", "landcover")
    full = make_stack(kaghan_layers, 300, 400, 100, 120, names=names)
    dropped = make_stack(kaghan_layers, 300, 400, 100, 120, names=names[:2] + names[3:])
    wf = {"elevation": 1.0, "slope": 2.0, "aspect_sin": 0.0, "geology": 0.5, "landcover": 1.0}
    wd = {k: v for k, v in wf.items() if k != "aspect_sin"}
    a = seg.segment_raster(full, 16, 0.3, weights=wf)
    b = seg.segment_raster(dropped, 16, 0.3, weights=wd)
    np.testing.assert_array_equal(a.labels, b.labels)
    c = seg.segment_raster(full, 16, 0.3, weights={**wf, "aspect_sin": 1.0})
    assert not np.array_equal(a.labels, c.labels)


def test_normalization_rule(kaghan_layers):
    stack = make_stack(kaghan_layers, 300, 400, 80, 100, holes=True)
    norm = seg.normalize_factors(stack)
    valid = stack.valid
    assert norm.dtype == np.float32 and np.isnan(norm[:, ~valid]).all()
    elev = norm[0][valid]
    assert elev.min() == 0.0 and elev.max() == 1.0
    assert 0.97 <= np.mean((elev > 0) & (elev < 1)) <= 0.99  # p1/p99 clipping
    geo = stack.layer("geology")[valid]
    ranks = norm[stack.names.index("geology")][valid]
    np.testing.assert_array_equal(ranks, np.searchsorted(np.unique(geo), geo))


# ----------------------------------------------------------------------------- output


def test_write_blocks(kaghan_layers, tmp_path):
    import geopandas as gpd

    stack = make_stack(kaghan_layers, 550, 150, 100, 120, holes=True)
    blocks = seg.segment_raster(stack, 8, 0.4)
    rng = np.random.default_rng(0)
    rows, cols = np.nonzero(stack.valid)
    pick = rng.choice(rows.size, 60, replace=False)
    samples = pd.DataFrame({"row": rows[pick], "col": cols[pick], "label": np.arange(60) % 2})
    paths = seg.write_blocks(blocks, tmp_path, samples_table=samples)
    with rasterio.open(paths["tif"]) as src:
        assert src.nodata == -1 and src.dtypes[0] == "int32"
        np.testing.assert_array_equal(src.read(1), blocks.labels)
    gdf = gpd.read_file(paths["gpkg"])
    assert list(gdf["id"]) == list(range(blocks.n_blocks))
    assert (gdf.geom_type == "Polygon").all()  # 4-connected: one polygon per block
    np.testing.assert_allclose(gdf.area / 1e6, gdf["area_km2"], rtol=1e-6)
    assert gdf["n_pos"].sum() == 30 and gdf["n_neg"].sum() == 30


# ----------------------------------------------------------------------------- points


@pytest.fixture(scope="module")
def hk_table():
    from metalsm.datasets import study_area

    path = study_area("hongkong") / "samples_HK_noTS.csv"
    return pd.read_csv(path, encoding="utf-8-sig").iloc[:3000].reset_index(drop=True)


HK_FACTORS = ["land use", "lithology", "DEM", "slope", "curvature", "aspect", "NDVI", "SPI",
              "TWI", "dis2road", "dis2drainage", "dis2catchment", "dis2faults"]


def test_points_blocks_are_contiguous_and_cover_every_row(hk_table):
    k = 30
    ids = seg.segment_points(hk_table, HK_FACTORS, n_blocks=k, compactness=2.0,
                             categorical=("land use", "lithology"))
    assert ids.shape == (len(hk_table),) and ids.dtype == np.int32
    n = ids.max() + 1
    assert np.array_equal(np.unique(ids), np.arange(n))
    assert k / 2 <= n <= 2 * k
    xy = hk_table[["X", "Y"]].to_numpy()
    from scipy.spatial import ConvexHull

    step = np.sqrt(ConvexHull(xy).volume / k)
    edges = seg.point_neighbour_edges(xy, step)
    for b in range(n):
        members = np.flatnonzero(ids == b)
        inside = np.isin(edges, members).all(axis=1)
        sub = edges[inside]
        pos = np.searchsorted(members, sub)
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        graph = coo_matrix((np.ones(len(pos)), (pos[:, 0], pos[:, 1])),
                           shape=(members.size, members.size))
        assert connected_components(graph, directed=False)[0] == 1, f"block {b} is split"


def test_points_deterministic_and_compactness(hk_table):
    cols = HK_FACTORS
    a = seg.segment_points(hk_table, cols, n_blocks=20, compactness=0.5, categorical=cols[:2])
    b = seg.segment_points(hk_table, cols, n_blocks=20, compactness=0.5, categorical=cols[:2])
    np.testing.assert_array_equal(a, b)
    xy = hk_table[["X", "Y"]].to_numpy()

    def spread(ids):
        centre = np.stack([np.bincount(ids, weights=xy[:, j]) / np.bincount(ids)
                           for j in range(2)], axis=1)
        return np.mean(np.hypot(*(xy - centre[ids]).T))

    compact = seg.segment_points(hk_table, cols, n_blocks=20, compactness=50.0)
    loose = seg.segment_points(hk_table, cols, n_blocks=20, compactness=0.05)
    assert spread(compact) < spread(loose)


# ----------------------------------------------------------------------------- weights


def test_weights_from_data(kaghan_layers):
    stack = make_stack(kaghan_layers, 300, 400, 150, 150)
    rows, cols = np.nonzero(stack.valid)
    rng = np.random.default_rng(1)
    pick = rng.choice(rows.size, 400, replace=False)
    X = stack.sample(rows[pick], cols[pick])  # noqa: N806
    y = (X["slope"] > X["slope"].median()).astype(int).to_numpy()  # slope decides the class
    for method in ("fr_differentiation", "rf_importance"):
        w = seg.weights_from_data(stack, X, y, method=method, seed=3)
        assert list(w) == list(stack.names)
        assert sum(w.values()) == pytest.approx(len(stack.names))
        assert max(w, key=w.get) == "slope"
        blocks = seg.segment_raster(stack, 9, 0.3, weights=w)
        assert blocks.n_blocks >= 4
    assert seg.weights_from_data(stack, X, y, "rf_importance", seed=3) == \
        seg.weights_from_data(stack, X, y, "rf_importance", seed=3)


# ----------------------------------------------------------------------------- bad input


def test_bad_input_errors(kaghan_layers, hk_table):
    stack = make_stack(kaghan_layers, 550, 150, 40, 40)
    with pytest.raises(MetalsmInputError, match="n_blocks must be an integer >= 1, got 0"):
        seg.segment_raster(stack, 0, 1.0)
    with pytest.raises(MetalsmInputError, match=r"n_blocks=2000 is larger .*valid cells \(1600\)"):
        seg.segment_raster(stack, 2000, 1.0)
    with pytest.raises(MetalsmInputError, match="compactness must be > 0, got 0.0"):
        seg.segment_raster(stack, 4, 0.0)
    with pytest.raises(MetalsmInputError, match=r"unknown factor\(s\) \['rainfall'\]"):
        seg.segment_raster(stack, 4, 1.0, weights={n: 1.0 for n in stack.names} | {"rainfall": 1})
    with pytest.raises(MetalsmInputError, match=r"missing factor\(s\) \['landcover'\]"):
        seg.segment_raster(stack, 4, 1.0, weights={n: 1.0 for n in stack.names[:-1]})
    empty = FactorStack(stack.grid, stack.names, np.full_like(stack.values, np.nan),
                        stack.class_names)
    with pytest.raises(MetalsmInputError, match="no valid cell"):
        seg.segment_raster(empty, 4, 1.0)
    with pytest.raises(MetalsmInputError, match=r"no coordinate column\(s\) \['X'\]"):
        seg.segment_points(hk_table.drop(columns="X"), HK_FACTORS, n_blocks=5, compactness=1)
    with pytest.raises(MetalsmInputError, match="compactness must be > 0, got -1"):
        seg.segment_points(hk_table, HK_FACTORS, n_blocks=5, compactness=-1)
    with pytest.raises(MetalsmInputError, match=r"n_blocks=5000 is larger .*sample rows \(3000\)"):
        seg.segment_points(hk_table, HK_FACTORS, n_blocks=5000, compactness=1)
