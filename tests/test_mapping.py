import time

import numpy as np
import pytest
import rasterio
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from rasterio.crs import CRS
from sklearn.linear_model import LogisticRegression

from metalsm.errors import MetalsmInputError
from metalsm.evaluation import rate_curve, success_rate
from metalsm.mapping import (
    classify_raster,
    classify_values,
    predict_raster,
    zone_breaks,
    zone_table,
)
from metalsm.raster import Grid, read_aligned
from metalsm.stack import FactorStack

FEATURES = ["elevation", "geology"]


@pytest.fixture(scope="module")
def crop_stack(kaghan_crop, tmp_path_factory):
    """factors.tif from the real Kaghan DEM + geology crop, and a model fitted on it."""
    grid = Grid.from_raster(kaghan_crop / "AW3D30.tif")
    dem = read_aligned(kaghan_crop / "AW3D30.tif", grid, name="elevation", categorical=False)
    geo = read_aligned(kaghan_crop / "Geology.tif", grid, name="geology", categorical=True)
    values = np.stack([dem.values, geo.values])
    values[0, :5, :7] = np.nan  # a guaranteed nodata corner
    values[1, 100:103, 200:260] = np.nan  # nodata in one factor only
    stack = FactorStack(grid, ("elevation", "geology"), values, {"geology": geo.class_names})
    path = stack.write(tmp_path_factory.mktemp("stack") / "factors.tif")

    rng = np.random.default_rng(0)
    rows, cols = np.nonzero(stack.valid)
    pick = rng.choice(rows.size, 400, replace=False)
    X = stack.sample(rows[pick], cols[pick])  # noqa: N806
    y = (X["elevation"] > np.median(X["elevation"])).astype(int)
    model = LogisticRegression(max_iter=1000).fit(X[FEATURES], y)
    return stack, path, model


def _grid(shape=(4, 4), cell=100.0):
    return Grid(CRS.from_epsg(32643), rasterio.Affine(cell, 0, 500000, 0, -cell, 3800000), *shape)


def _write(path, array, grid, dtype="float32", nodata=np.nan):
    with rasterio.open(path, "w", **grid.profile(dtype=dtype, nodata=nodata)) as dst:
        dst.write(array.astype(dtype), 1)
    return path


def test_predict_raster_matches_whole_prediction(crop_stack, tmp_path):
    stack, factors, model = crop_stack
    out = tmp_path / "susceptibility.tif"
    calls = []
    started = time.perf_counter()
    predict_raster(
        model, factors, out, feature_names=FEATURES, window_size=128,
        progress=lambda n, done: calls.append((n, done)),
    )
    seconds = time.perf_counter() - started
    valid = stack.valid
    with rasterio.open(out) as src, rasterio.open(factors) as fsrc:
        assert src.crs == fsrc.crs and src.transform == fsrc.transform
        assert src.shape == fsrc.shape == stack.grid.shape
        assert src.dtypes == ("float32",)
        assert np.isnan(src.nodata)
        assert src.overviews(1) == [2, 4, 8, 16]
        assert src.profile["tiled"] or min(src.shape) < 256
        result = src.read(1)
    assert np.array_equal(np.isnan(result), ~valid)
    assert ((result[valid] >= 0) & (result[valid] <= 1)).all()
    rows, cols = np.nonzero(valid)
    expected = model.predict_proba(stack.sample(rows, cols)[FEATURES].astype(np.float64))[:, 1]
    assert np.allclose(result[rows, cols], expected, atol=1e-6)
    # 260 x 300 in 128-windows: 3 x 3 windows, the edge ones partial
    assert len(calls) == 9
    assert sum(n for n, _ in calls) == calls[-1][1] == valid.sum()
    assert not list(tmp_path.glob("*.partial*"))
    print(f"predict_raster: {valid.sum() / seconds:,.0f} cells/s")


def test_predict_raster_feature_order_and_missing_factor(crop_stack, tmp_path):
    stack, factors, _ = crop_stack
    reordered = ["geology", "elevation"]
    rows, cols = np.nonzero(stack.valid)
    X = stack.sample(rows, cols)[reordered]  # noqa: N806
    y = (X["elevation"] > X["elevation"].median()).astype(int)
    model = LogisticRegression(max_iter=1000).fit(X, y)
    out = predict_raster(model, factors, tmp_path / "s.tif", feature_names=reordered)
    with rasterio.open(out) as src:
        expected = model.predict_proba(X.astype(np.float64))[:, 1]
        assert np.allclose(src.read(1)[rows, cols], expected, atol=1e-6)
    with pytest.raises(MetalsmInputError, match=r"'slope'.*factors\.tif"):
        predict_raster(model, factors, tmp_path / "x.tif", feature_names=["slope"])
    assert not (tmp_path / "x.tif").exists()


class _FailsOnSecondWindow:
    def __init__(self, model):
        self.model = model
        self.calls = 0

    def predict_proba(self, X):  # noqa: N803
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("model broke")
        return self.model.predict_proba(X)


def test_failing_model_leaves_nothing_behind(crop_stack, tmp_path):
    _, factors, model = crop_stack
    out = tmp_path / "susceptibility.tif"
    with pytest.raises(RuntimeError, match="model broke"):
        predict_raster(
            _FailsOnSecondWindow(model), factors, out, feature_names=FEATURES, window_size=128
        )
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_quantile_breaks_give_equal_counts():
    values = np.random.default_rng(3).random(1001)
    for levels in (3, 4, 5, 7):
        edges = zone_breaks(values, "quantile", levels)
        counts = np.bincount(classify_values(values, edges), minlength=levels + 1)
        assert counts[0] == 0
        assert counts[1:].max() - counts[1:].min() <= 1
        assert edges[0] == values.min() and edges[-1] == values.max()


def test_equal_interval_breaks_are_equally_spaced():
    values = np.array([0.2, 0.9, np.nan, 0.5, 0.4])
    edges = zone_breaks(values, "equal_interval", 5)
    assert np.allclose(edges, [0.2, 0.34, 0.48, 0.62, 0.76, 0.9])


def test_natural_breaks_split_between_clusters():
    rng = np.random.default_rng(1)
    clusters = [rng.normal(0.1, 0.01, 500), rng.normal(0.5, 0.02, 300), rng.normal(0.9, 0.01, 80)]
    values = rng.permutation(np.concatenate(clusters))
    edges = zone_breaks(values, "natural_breaks", 3)
    assert len(edges) == 4
    assert clusters[0].max() < edges[1] < clusters[1].min()
    assert clusters[1].max() < edges[2] < clusters[2].min()
    # quantile breaks would cut the big cluster instead
    assert not clusters[0].max() < zone_breaks(values, "quantile", 3)[1]


def test_natural_breaks_are_optimal_on_a_hand_checkable_case():
    # {1, 2, 3} {10, 11} {20}: within-class sum of squares 2 + 0.5 + 0 is the minimum
    values = np.array([20, 1, 11, 2, 10, 3], dtype=float)
    assert np.allclose(zone_breaks(values, "natural_breaks", 3), [1, 6.5, 15.5, 20])


def test_zone_breaks_from_a_raster_and_bad_input(tmp_path):
    grid = _grid((300, 300))
    values = np.random.default_rng(0).random(grid.shape)
    values[:50] = np.nan
    path = _write(tmp_path / "s.tif", values, grid)
    edges = zone_breaks(path, "quantile", 4)
    assert edges[0] == np.float32(np.nanmin(values)) and edges[-1] == np.float32(np.nanmax(values))
    valid = values[np.isfinite(values)].astype(np.float32)
    counts = np.bincount(classify_values(valid, edges))[1:]
    assert counts.tolist() == [valid.size // 4] * 4
    jenks = zone_breaks(path, "natural_breaks", 4, seed=5)
    assert np.array_equal(jenks, zone_breaks(path, "natural_breaks", 4, seed=5))
    with pytest.raises(MetalsmInputError, match="zone method"):
        zone_breaks(values, "kmeans")
    with pytest.raises(MetalsmInputError, match="no finite"):
        zone_breaks(np.full(5, np.nan))


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float64, st.integers(1, 200), elements=st.floats(-1e3, 1e3)),
    st.sampled_from(["quantile", "natural_breaks", "equal_interval"]),
    st.integers(1, 8),
)
def test_edges_are_sorted_and_complete(values, method, levels):
    edges = zone_breaks(values, method, levels)
    assert len(edges) == levels + 1
    assert np.all(np.diff(edges) >= 0)
    assert edges[0] == values.min() and edges[-1] == values.max()
    zones = classify_values(values, edges)
    assert zones.min() >= 1 and zones.max() <= levels


def test_classify_and_zone_table_by_hand(tmp_path):
    grid = _grid((4, 4), cell=100.0)  # 0.01 km2 per cell
    suscept = np.array(
        [
            [0.05, 0.10, 0.30, 0.35],
            [0.15, 0.20, 0.40, 0.45],
            [0.55, 0.60, 0.80, 0.90],
            [0.65, np.nan, 0.85, 0.95],
        ]
    )
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = True  # zone 1
    mask[2, 2:] = True  # zone 4 (0.80, 0.90)
    mask[3, 3] = True  # zone 4 (0.95)
    mask[3, 1] = True  # nodata cell: not counted
    spath = _write(tmp_path / "s.tif", suscept, grid)
    zpath = classify_raster(spath, tmp_path / "zones.tif", [0.0, 0.25, 0.5, 0.75, 1.0],
                            window_size=3)
    with rasterio.open(zpath) as src:
        zones = src.read(1)
        assert src.dtypes == ("uint8",) and src.nodata == 0
        assert src.transform == grid.transform
    assert zones.tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 0, 4, 4]]

    table = zone_table(zpath, mask, labels=["a", "b", "c", "d"], window_size=3)
    assert table["label"].tolist() == ["a", "b", "c", "d"]
    assert table["n_cells"].tolist() == [4, 4, 3, 4]
    assert np.allclose(table["area_km2"], [0.04, 0.04, 0.03, 0.04])
    assert np.allclose(table["area_share"], np.array([4, 4, 3, 4]) / 15)
    assert table["landslide_cells"].tolist() == [1, 0, 0, 3]
    assert np.allclose(table["landslide_share"], [0.25, 0, 0, 0.75])
    assert np.allclose(table["ratio"], np.array([0.25, 0, 0, 0.75]) / (np.array([4, 4, 3, 4]) / 15))
    assert table["area_share"].sum() == pytest.approx(1)
    assert table["landslide_share"].sum() == pytest.approx(1)
    assert np.allclose(table["cum_landslide_share"], [1, 0.75, 0.75, 0.75])
    assert table["cum_area_share"].iloc[0] == pytest.approx(1)

    points = zone_table(zpath, None, sample_points=(np.array([0, 3, 3, 9]), np.array([3, 2, 1, 0])))
    assert points["points"].tolist() == [0, 1, 0, 1]
    assert "ratio" not in points
    assert points["label"].tolist() == ["Low", "Moderate", "High", "Very high"]
    with pytest.raises(MetalsmInputError, match="labels"):
        zone_table(zpath, mask, labels=["a", "b"])
    with pytest.raises(MetalsmInputError, match="shape"):
        zone_table(zpath, np.zeros((3, 3), bool))


def test_classify_raster_overviews_and_atomicity(tmp_path):
    grid = _grid((300, 280))
    values = np.linspace(0, 1, grid.height * grid.width).reshape(grid.shape)
    spath = _write(tmp_path / "s.tif", values, grid)
    edges = zone_breaks(spath, "quantile", 5)
    zpath = classify_raster(spath, tmp_path / "zones.tif", edges, window_size=100)
    with rasterio.open(zpath) as src:
        assert src.overviews(1) == [2, 4, 8, 16]
        counts = np.bincount(src.read(1).ravel(), minlength=6)
    assert counts[0] == 0 and counts[1:].max() - counts[1:].min() <= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "s.qml", "s.tif", "zones.qml", "zones.tif", "zones.tif.aux.xml"]  # styles beside
    with pytest.raises(MetalsmInputError, match="non-decreasing"):
        classify_raster(spath, tmp_path / "z2.tif", [0.5, 0.2, 1.0])


def test_success_rate_of_a_raster_equals_the_exact_curve(tmp_path):
    grid = _grid((300, 280))
    rng = np.random.default_rng(1)
    values = rng.random(grid.shape)
    values[:4, :9] = np.nan
    mask = rng.random(grid.shape) < values * 0.1  # landslides where susceptible
    path = _write(tmp_path / "s.tif", values, grid)
    curve = success_rate(path, mask, window_size=100)
    stored = values.astype(np.float32)
    exact = rate_curve(stored, stored[mask])
    assert curve.auc == pytest.approx(exact.auc, abs=2e-4)  # 10,000 probability classes
    assert 0.6 < curve.auc < 0.75  # P(slide) rises with the value: well above 0.5
    with pytest.raises(MetalsmInputError, match="shape"):
        success_rate(path, mask[:10])


def test_quantile_breaks_with_fewer_values_than_zones():
    edges = zone_breaks(np.array([0.2, 0.7]), "quantile", 3)
    assert edges.tolist() == [0.2, 0.7, 0.7, 0.7]


def test_spread_raster_is_the_std_of_each_models_map(crop_stack, tmp_path):
    """uncertainty.tif equals, cell by cell, the std (ddof=1) of the maps that each of
    three real-data models writes alone; nodata stays nodata; one model is refused."""
    from metalsm.mapping import predict_spread_raster

    stack, factors, model = crop_stack
    rows, cols = np.nonzero(stack.valid)
    X = stack.sample(rows[::97], cols[::97])[FEATURES]  # noqa: N806
    models = [model]
    for threshold in (0.3, 0.7):  # two other models of the same cells
        y = (X["elevation"] > X["elevation"].quantile(threshold)).astype(int)
        models.append(LogisticRegression(max_iter=1000).fit(X, y))
    maps = []
    for i, m in enumerate(models):
        predict_raster(m, factors, tmp_path / f"m{i}.tif", feature_names=FEATURES,
                       window_size=128)
        with rasterio.open(tmp_path / f"m{i}.tif") as src:
            maps.append(src.read(1).astype(np.float64))
    out = predict_spread_raster(models, factors, tmp_path / "uncertainty.tif",
                                feature_names=FEATURES, window_size=100)
    with rasterio.open(out) as src:
        spread = src.read(1)
        assert src.descriptions[0].startswith("standard deviation")
    assert np.array_equal(np.isnan(spread), ~stack.valid)
    expected = np.std(np.stack(maps), axis=0, ddof=1)
    assert np.allclose(spread[stack.valid], expected[stack.valid], atol=1e-6)
    assert spread[stack.valid].max() > 0.1  # the three models disagree somewhere
    with pytest.raises(MetalsmInputError, match="at least 2 models"):
        predict_spread_raster(models[:1], factors, tmp_path / "u1.tif", feature_names=FEATURES)
