"""Cross-area schemes A–D, the two-area split, embeddings and the side-by-side maps figure."""

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
from affine import Affine
from conftest import write_config
from rasterio.crs import CRS

from metalsm.config import load_config
from metalsm.datasets import EXAMPLES_DIR
from metalsm.errors import MetalsmInputError
from metalsm.experiments import EXPERIMENTS
from metalsm.experiments.areas import area_of_blocks, check_areas, sample_sides
from metalsm.experiments.common import apply_preset, experiment_data, experiment_meta
from metalsm.experiments.cross_area import SCHEMES, scheme_splits
from metalsm.experiments.embeddings import representations_of, run_embeddings
from metalsm.experiments.methods import fit_maml, fit_proposed
from metalsm.raster import Grid
from metalsm.report.figures import plot_maps_side_by_side

UTM = "EPSG:32643"


def _points():
    """Ten blocks of three samples each, block b at x = 10 b (+ 0, 1, 2), y = 100 - 10 b."""
    b = np.repeat(np.arange(10), 3)
    x = 10.0 * b + np.tile([0.0, 1.0, 2.0], 10)
    return np.column_stack([x, 100.0 - 10.0 * b]), b


def test_west_east_and_north_south_split_at_the_median_sample():
    coords, blocks = _points()
    side = sample_sides(coords, "west-east")
    assert (side[coords[:, 0] <= np.median(coords[:, 0])] == 1).all()
    assert area_of_blocks(coords, blocks, 11, "west-east").tolist() == [1] * 5 + [2] * 5 + [0]
    assert area_of_blocks(coords, blocks, 10, "north-south").tolist() == [1] * 5 + [2] * 5


def test_a_block_goes_to_the_side_of_most_of_its_samples():
    coords = np.array([[0.0, 0], [1, 0], [2, 0], [3, 0], [4, 0], [5, 0]])
    blocks = np.array([0, 0, 1, 0, 1, 1])  # block 0: x 0, 1, 3 -> 2 of 3 west of 2.5
    assert area_of_blocks(coords, blocks, 2, "west-east").tolist() == [1, 2]


def test_polygon_split_is_reprojected_and_inside_is_area_1(tmp_path):
    coords, blocks = _points()
    coords = coords * 100 + [350_000.0, 3_820_000.0]  # UTM 43N, Kaghan
    west = shapely.box(349_000, 3_800_000, 350_000 + 100 * 35, 3_900_000)  # blocks 0..3
    gpd.GeoDataFrame(geometry=[west], crs=UTM).to_crs("EPSG:4326").to_file(tmp_path / "a.gpkg")
    area = area_of_blocks(coords, blocks, 10, str(tmp_path / "a.gpkg"), crs=UTM)
    assert area.tolist() == [1] * 4 + [2] * 6


def test_polygon_outside_the_study_area_is_a_clear_error(tmp_path):
    coords, blocks = _points()
    far = shapely.box(1e6, 1e6, 1e6 + 10, 1e6 + 10)
    gpd.GeoDataFrame(geometry=[far], crs=UTM).to_file(tmp_path / "far.gpkg")
    with pytest.raises(MetalsmInputError, match="does not overlap"):
        area_of_blocks(coords, blocks, 10, str(tmp_path / "far.gpkg"), crs=UTM)
    with pytest.raises(MetalsmInputError, match="neither"):
        area_of_blocks(coords, blocks, 10, str(tmp_path / "missing.gpkg"))


def test_a_split_leaving_an_area_short_of_blocks_says_which():
    with pytest.raises(MetalsmInputError, match="area 2 with 1 block"):
        check_areas(np.array([1, 1, 1, 2, 0]), "west-east")


def _check_scheme(scheme, train, test, one, two):
    train, test = set(train.tolist()), set(test.tolist())
    assert train and test and not train & test
    if scheme == "A":
        assert train <= one and test <= one
    elif scheme == "B":
        assert train == one and test == two
    elif scheme == "C":
        assert test <= one and train & one and train & two
    else:
        assert test <= two and one <= train and train & two


def test_schemes_follow_their_definitions():
    area = np.array([1, 2, 1, 1, 2, 0, 2, 1, 2, 1, 2, 2])
    one = set(np.flatnonzero(area == 1).tolist())
    two = set(np.flatnonzero(area == 2).tolist())
    splits = scheme_splits(area, 0.6, seed=3)
    assert list(splits) == list(SCHEMES)
    for scheme, (train, test) in splits.items():
        assert 5 not in train and 5 not in test  # area 0: no samples, no part
        _check_scheme(scheme, train, test, one, two)


@pytest.fixture(scope="module")
def hk_config(tmp_path_factory):
    """The Hong Kong example on its western 30 % of samples, tiny settings."""
    tmp = tmp_path_factory.mktemp("hk_cross")
    src = load_config(EXAMPLES_DIR / "hongkong-split.toml").table.path
    raw = pd.read_csv(src, encoding="utf-8-sig")
    raw[raw["X"] < raw["X"].quantile(0.3)].to_csv(tmp / "hk.csv", index=False)
    text = (EXAMPLES_DIR / "hongkong-split.toml").read_text()
    text = text.replace('"${METALSM_DATA}/hongkong/samples_HK_noTS.csv"', f'"{tmp / "hk.csv"}"')
    text = text.split("[experiments]")[0] + (
        '[experiments]\nmethods = ["lr", "maml"]\nk_shots = ["5"]\nrepeats = 1\nseed = 4\n'
        'meta_iterations = 10\ncross_area_split = "west-east"\ncross_area_fraction = 0.6\n')
    (tmp / "hk.toml").write_text(text)
    return load_config(tmp / "hk.toml"), tmp


def test_cross_area_experiment_on_a_hong_kong_slice(hk_config, tmp_path):
    config, _ = hk_config
    result = EXPERIMENTS["cross-area"](config, tmp_path, preset="small")
    names = {p.name for p in tmp_path.iterdir()}
    assert {"cross_area_raw.csv", "cross_area_summary.csv", "cross_area_blocks.csv",
            "cross_area.png", "cross_area_map.png", *(f"cross_area_{s}.csv" for s in SCHEMES)
            } <= names
    summary = pd.read_csv(tmp_path / "cross_area_summary.csv")
    assert len(summary) == 4 * 2  # schemes x methods, one K
    assert summary["accuracy_mean"].between(0, 1).all()
    roles = pd.read_csv(tmp_path / "cross_area_blocks.csv")
    area = roles["area"].to_numpy()
    one = set(roles.loc[area == 1, "block"])
    two = set(roles.loc[area == 2, "block"])
    for scheme in SCHEMES:
        train = roles.loc[roles[scheme] == "train", "block"].to_numpy()
        test = roles.loc[roles[scheme] == "test", "block"].to_numpy()
        _check_scheme(scheme, train, test, one, two)
    assert result.section is not None and result.tables["A"].shape[0] == 2


def test_embeddings_table_has_one_row_per_panel(hk_config, tmp_path):
    config, tmp = hk_config
    config = apply_preset(config, "small")
    data, _ = experiment_data(config, tmp / "emb_blocks")
    meta = experiment_meta(config)
    learners = {"maml": fit_maml(data, meta, 1).learner,
                "proposed": fit_proposed(data, meta, 1).learner}
    reps, y = representations_of(data, learners, 200, seed=0)
    assert reps["proposed"].shape == (200, meta.hidden[-1])
    assert ((reps["proposed"] > 0) & (reps["proposed"] < 1)).all()  # sigmoid units
    methods = ("pca", "isomap", "tsne")
    table, paths = run_embeddings(reps, y, tmp_path, methods=methods, seed=0)
    csv = pd.read_csv(paths["table"])
    assert len(csv) == 3 * len(methods)
    assert set(zip(csv["representation"], csv["method"], strict=True)) == {
        (r, m) for r in ("raw", "maml", "proposed") for m in methods}
    assert csv["knn5_accuracy"].between(0, 1).all()
    assert csv["silhouette"].between(-1, 1).all()
    assert paths["figure"].stat().st_size > 10_000


def test_maps_side_by_side_share_extent_and_ramp(tmp_path):
    grid = Grid(CRS.from_string(UTM), Affine(30, 0, 350_000, 0, -30, 3_830_000), 40, 50)
    rng = np.random.default_rng(0)
    arrays = [rng.random(grid.shape) for _ in range(3)]
    arrays[0][:5] = np.nan
    profile = {"driver": "GTiff", "height": 40, "width": 50, "count": 1, "dtype": "float32",
               "crs": grid.crs, "transform": grid.transform, "nodata": np.nan}
    with rasterio.open(tmp_path / "a.tif", "w", **profile) as dst:
        dst.write(arrays[2].astype("float32"), 1)
    dem = np.add.outer(np.arange(40.0), np.arange(50.0)) * 10
    inventory = gpd.GeoSeries([shapely.Point(350_600, 3_829_400).buffer(60)], crs=UTM)
    out = plot_maps_side_by_side([arrays[0], arrays[1], tmp_path / "a.tif"], ["x", "y", "z"],
                                 tmp_path / "side.png", grid=grid, dem=dem,
                                 inventory=inventory)
    assert out.exists() and out.stat().st_size > 10_000
    other = Grid(grid.crs, Affine(30, 0, 360_000, 0, -30, 3_830_000), 40, 50)
    with pytest.raises(ValueError, match="one extent"):
        plot_maps_side_by_side([tmp_path / "a.tif", arrays[1]], ["a", "b"],
                               tmp_path / "bad.png", grid=other)


def test_maps_experiment_skips_table_study_areas(hk_config, tmp_path):
    config, _ = hk_config
    result = EXPERIMENTS["maps"](config, tmp_path)
    assert result.paths == {} and "skipped" in result.section.text


def test_maps_experiment_on_a_kaghan_crop(kaghan, kaghan_crop, tmp_path):
    config = load_config(write_config(
        tmp_path / "crop.toml", kaghan_crop, kaghan,
        blocks="n_blocks = 8\ncompactness = 0.5\nseed = 3",
        meta='iterations = 10\npretrain_epochs = 1\nmap_k = "5"\nseed = 5',
        experiments="seed = 2\nmeta_iterations = 10"))
    result = EXPERIMENTS["maps"](config, tmp_path / "out", preset="small")
    table = result.tables["maps"]
    assert table["method"].tolist() == ["rf", "mlp", "proposed", "maml"]
    for name in table["method"]:
        with rasterio.open(tmp_path / "out" / "maps" / f"{name}.tif") as src:
            p = src.read(1)
        assert np.nanmin(p) >= 0 and np.nanmax(p) <= 1
    assert (tmp_path / "out" / "maps.png").stat().st_size > 10_000


def test_each_scheme_gets_its_own_blocks_and_a_fresh_cache(hk_config, tmp_path, monkeypatch):
    from metalsm import evaluation

    config, _ = hk_config
    seen = []

    def fake(data, meta, names, k_shots, repeats, seed, progress=None):
        data.cache["touched"] = True
        seen.append((data.train_blocks.copy(), data.test_blocks.copy(), data.cache))
        return pd.DataFrame([{"method": "lr", "family": "global", "k": "5", "repeat": 0,
                              "seed": seed, **dict.fromkeys(evaluation.QUERY_METRICS, 0.5),
                              "n_query": int(data.test.sum())}])

    monkeypatch.setattr(evaluation, "compare_methods", fake)  # cross_area's look-up
    EXPERIMENTS["cross-area"](config, tmp_path, preset="small")
    roles = pd.read_csv(tmp_path / "cross_area_blocks.csv")
    assert len(seen) == 4 and len({id(c) for *_, c in seen}) == 4
    for scheme, (train, test, _) in zip(SCHEMES, seen, strict=True):
        assert train.tolist() == roles.loc[roles[scheme] == "train", "block"].tolist()
        assert test.tolist() == roles.loc[roles[scheme] == "test", "block"].tolist()
