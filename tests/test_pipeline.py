"""End to end on a crop of the real Kaghan data: config → run directory, through the CLI."""

import json
import logging
import xml.etree.ElementTree as ET

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
from conftest import write_config
from typer.testing import CliRunner

from metalsm.cli import app
from metalsm.config import load_config
from metalsm.errors import MetalsmInputError
from metalsm.evaluation import random_folds, rate_curve_from_counts
from metalsm.pipeline._run import run_pipeline
from metalsm.raster import _styles as styles
from metalsm.raster import cog_problems

EXPECTED_OUTPUTS = {
    "factors.tif", "samples.csv", "validation.csv", "susceptibility.tif", "zones.tif",
    "zones.csv", "metrics.json", "roc.png", "map.png", "zones.png", "manifest.json",
    "report.html", "roc_folds.png", "rates.png", "samples.gpkg", "folds.png",
    "uncertainty.tif", "uncertainty.qml", "uncertainty.png", "project.qgs",
}


@pytest.fixture(scope="module")
def crop_run(kaghan, kaghan_crop, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    # with an uncertainty map from 2 bootstrap refits of the map model
    config = write_config(out / "crop.toml", kaghan_crop, kaghan,
                          uncertainty="refits = 2\nseed = 1")
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(out / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    return out / "run"


def test_every_output_is_written(crop_run):
    names = {p.name for p in crop_run.iterdir()}
    assert EXPECTED_OUTPUTS <= names
    assert not [n for n in names if "partial" in n]


def test_every_raster_output_is_a_cloud_optimized_geotiff(crop_run):
    rasters = sorted(crop_run.glob("*.tif"))
    assert {p.name for p in rasters} >= {"factors.tif", "susceptibility.tif", "zones.tif"}
    for path in rasters:
        assert cog_problems(path) == [], path.name
        with rasterio.open(path) as src:
            assert src.overviews(1), path.name  # the 260 x 300 crop is larger than a tile
            assert src.compression.name == "deflate" and src.block_shapes[0] == (256, 256)


def test_zone_styles_match_the_zone_table(crop_run):
    """QGIS opens zones.tif and susceptibility.tif with the classes, breaks and colours of
    zones.csv and metrics.json."""
    zones = pd.read_csv(crop_run / "zones.csv")
    edges = json.loads((crop_run / "metrics.json").read_text())["zones"]["edges"]
    palette = [e.attrib for e in ET.parse(crop_run / "zones.qml").getroot().iter("paletteEntry")]
    assert [int(e["value"]) for e in palette] == zones["level"].tolist()
    for entry, label, lo, hi in zip(palette, zones["label"], edges[:-1], edges[1:], strict=True):
        assert entry["label"] == f"{label} ({lo:.3f} – {hi:.3f})"
    with rasterio.open(crop_run / "zones.tif") as src:
        table = src.colormap(1)
    assert [styles.hex_colour(table[level][:3]) for level in zones["level"]] == [
        e["color"] for e in palette]
    items = [e.attrib for e in ET.parse(crop_run / "susceptibility.qml").getroot().iter("item")]
    assert [float(e["value"]) for e in items] == pytest.approx(edges[1:])
    assert [e["color"] for e in items] == [e["color"] for e in palette]


def test_success_and_prediction_rates(crop_run):
    metrics = json.loads((crop_run / "metrics.json").read_text())
    rates = metrics["rates"]
    zones = pd.read_csv(crop_run / "zones.csv")
    # the zones are a four-class success-rate curve: cells within a zone count as ties
    # (a straight line across the zone), so it lies a little under the fine curve
    four_class = rate_curve_from_counts(zones["n_cells"], zones["landslide_cells"]).auc
    x = np.r_[0, zones["cum_area_share"][::-1]]
    y = np.r_[0, zones["cum_landslide_share"][::-1]]
    assert four_class == pytest.approx(np.trapezoid(y, x))
    assert four_class - 0.005 <= rates["success_rate_auc"] <= four_class + 0.06
    # held-out landslides rank lower than the training ones, spatial folds lowest
    assert 0.5 < rates["prediction_rate_spatial_auc"] < rates["success_rate_auc"]
    assert rates["prediction_rate_spatial_auc"] <= rates["prediction_rate_random_auc"] + 0.02
    table = pd.read_csv(crop_run / "validation.csv").set_index(["model", "scheme"])
    assert table.loc[("rf", "spatial"), "prediction_rate_auc"] == pytest.approx(
        rates["prediction_rate_spatial_auc"])
    assert "repeats" not in rates and "repeats" not in table.columns  # one draw of folds
    assert "Success and prediction rates" in (crop_run / "report.html").read_text()


def test_samples_vector_has_crs_folds_and_out_of_fold_probabilities(crop_run, kaghan_crop):
    points = gpd.read_file(crop_run / "samples.gpkg")
    table = pd.read_csv(crop_run / "samples.csv")
    with rasterio.open(kaghan_crop / "AW3D30.tif") as dem:
        assert points.crs == dem.crs
    assert len(points) == len(table)
    np.testing.assert_array_equal(points["label"], table["label"])
    np.testing.assert_allclose(points.geometry.x, table["x"])
    np.testing.assert_allclose(points.geometry.y, table["y"])
    for scheme in ("random", "spatial"):
        assert sorted(points[f"fold_{scheme}"].unique()) == [0, 1, 2]  # the crop's 3 folds
        oof = points[f"oof_rf_{scheme}"]
        assert oof.between(0, 1).all()
    assert not [c for c in points.columns if c.endswith("_r1")]  # one repeat
    # the spatial folds are regions: each fold's points sit apart from the others
    centres = points.groupby("fold_spatial").apply(
        lambda g: (g.geometry.x.mean(), g.geometry.y.mean()), include_groups=False)
    assert len(set(centres)) == 3


def test_uncertainty_map_is_the_spread_of_bootstrap_refits(crop_run):
    """uncertainty.tif covers the mapped cells, its statistics in metrics.json are those
    of the raster (per zone too), and its style and report section use them."""
    metrics = json.loads((crop_run / "metrics.json").read_text())
    spread = metrics["uncertainty"]
    assert spread["refits"] == 2 and spread["model"] == "rf"
    with rasterio.open(crop_run / "uncertainty.tif") as src, \
            rasterio.open(crop_run / "susceptibility.tif") as sus, \
            rasterio.open(crop_run / "zones.tif") as zones_src:
        values, proba, zone = src.read(1), sus.read(1), zones_src.read(1)
        assert "2 bootstrap refits of rf" in src.descriptions[0]
    assert np.array_equal(np.isnan(values), np.isnan(proba))
    mapped = np.isfinite(values)
    assert spread["cells"] == mapped.sum()
    assert spread["mean_std"] == pytest.approx(values[mapped].mean(), rel=1e-5)
    assert spread["max_std"] == pytest.approx(values[mapped].max(), rel=1e-6)
    assert abs(spread["p95_std"] - np.quantile(values[mapped], 0.95)) <= 0.0006
    assert 0.01 < spread["mean_std"] < spread["p95_std"] < 0.5
    for row in spread["by_zone"]:
        inside = zone == row["level"]
        assert row["cells"] == inside.sum()
        assert row["mean_std"] == pytest.approx(values[inside].mean(), rel=1e-5)
    items = [e.attrib for e in ET.parse(crop_run / "uncertainty.qml").getroot().iter("item")]
    assert float(items[0]["value"]) == 0 and float(items[-1]["value"]) == pytest.approx(
        spread["p99_std"])
    assert cog_problems(crop_run / "uncertainty.tif") == []
    html = (crop_run / "report.html").read_text()
    assert "Uncertainty" in html and "bootstrap resample" in html


def test_qgis_project_lists_every_layer_with_its_style(crop_run, kaghan_crop):
    """project.qgs: relative sources that exist, the rasters' renderers equal to their
    .qml files, samples categorised by their label, the grid's CRS and extent."""
    root = ET.parse(crop_run / "project.qgs").getroot()
    layers = {e.findtext("layername"): e for e in root.iter("maplayer")}
    tree = {e.get("name"): e for e in root.iter("layer-tree-layer")}
    assert list(tree) == list(layers)  # every listed layer is defined, in order
    assert [n for n, e in tree.items() if e.get("checked") == "Qt::Checked"] == [
        "samples (label)", "susceptibility zones"]
    for name, layer in layers.items():
        source = layer.findtext("datasource")
        assert source.startswith("./") and (crop_run / source[2:].split("|")[0]).exists(), name
        assert tree[name].get("source") == source
    for name, file in (("susceptibility zones", "zones"),
                       ("susceptibility (probability)", "susceptibility"),
                       ("uncertainty (std over refits)", "uncertainty")):
        qml = ET.parse(crop_run / f"{file}.qml").getroot().find("pipe/rasterrenderer")
        drawn = layers[name].find("pipe/rasterrenderer")
        assert ET.canonicalize(ET.tostring(drawn), strip_text=True) == ET.canonicalize(
            ET.tostring(qml), strip_text=True), name
    grey = layers["factors"].find("pipe/rasterrenderer")  # band 1 (elevation), not RGB
    assert (grey.get("type"), grey.get("grayBand")) == ("singlebandgray", "1")
    with rasterio.open(crop_run / "factors.tif") as src:
        elevation = src.read(1, masked=True)
    lo = float(grey.findtext("contrastEnhancement/minValue"))
    hi = float(grey.findtext("contrastEnhancement/maxValue"))
    assert elevation.min() - 1 <= lo < hi <= elevation.max() + 1  # from an overview
    assert hi - lo > 0.8 * (elevation.max() - elevation.min())
    samples = layers["samples (label)"]
    renderer = samples.find("renderer-v2")
    assert renderer.get("type") == "categorizedSymbol" and renderer.get("attr") == "label"
    assert sorted(c.get("value") for c in renderer.iter("category")) == sorted(
        str(v) for v in gpd.read_file(crop_run / "samples.gpkg")["label"].unique())
    with rasterio.open(kaghan_crop / "AW3D30.tif") as dem:
        assert root.findtext("projectCrs/spatialrefsys/authid") == f"EPSG:{dem.crs.to_epsg()}"
        extent = [float(root.findtext(f"mapcanvas/extent/{k}"))
                  for k in ("xmin", "ymin", "xmax", "ymax")]
        assert extent == pytest.approx(list(dem.bounds))
    assert root.findtext("properties/Paths/Absolute") == "false"


def test_version_option_and_quiet_gdal_logging():
    from metalsm import __version__
    from metalsm.cli import _setup_logging

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"metalsm {__version__}"
    _setup_logging(quiet=False)
    assert logging.getLogger("pyogrio").getEffectiveLevel() >= logging.WARNING


def test_susceptibility_raster_is_on_the_input_grid(crop_run, kaghan_crop):
    with rasterio.open(kaghan_crop / "AW3D30.tif") as dem, \
            rasterio.open(crop_run / "susceptibility.tif") as sus:
        assert sus.crs == dem.crs
        assert sus.transform.almost_equals(dem.transform)
        assert sus.shape == dem.shape
        assert sus.dtypes[0] == "float32"
        assert sus.overviews(1)
        values = sus.read(1)
    finite = values[np.isfinite(values)]
    assert finite.size == values.size  # the crop has no nodata
    assert 0.0 <= finite.min() and finite.max() <= 1.0


def test_zones_are_equal_count_and_concentrate_landslides(crop_run):
    zones = pd.read_csv(crop_run / "zones.csv")
    assert list(zones["level"]) == [1, 2, 3, 4]
    assert zones["area_share"].sum() == pytest.approx(1.0)
    assert zones["landslide_share"].sum() == pytest.approx(1.0)
    assert np.allclose(zones["area_share"], 0.25, atol=0.02)
    # a useful map: the very-high zone holds far more than its share of landslides
    assert zones["ratio"].iloc[-1] > 1.5 and zones["ratio"].iloc[0] < 0.7


def test_metrics_report_honest_spatial_and_random_validation(crop_run):
    metrics = json.loads((crop_run / "metrics.json").read_text())
    spatial, random = metrics["validation"]["spatial"], metrics["validation"]["random"]
    assert set(spatial) == set(random) == {"lr", "rf", "fr"}
    for model in spatial:
        assert 0.6 < spatial[model]["auc_mean"] < 0.95
        assert 0.6 < random[model]["auc_mean"] < 0.98
        for key in ("accuracy_mean", "precision_mean", "recall_mean", "f1_mean", "kappa_mean"):
            assert key in spatial[model]
    samples = metrics["samples"]
    assert samples["positives"] == samples["negatives"] > 500
    assert set(metrics["categorical_factors"]) == {"geology", "landcover"}


def test_samples_are_unique_cells_with_the_buffer(crop_run):
    samples = pd.read_csv(crop_run / "samples.csv")
    assert not samples.duplicated(["row", "col"]).any()
    assert set(samples["label"]) == {0, 1}
    assert samples.drop(columns=["row", "col", "x", "y", "label"]).notna().all().all()


def test_manifest_records_inputs_seeds_and_versions(crop_run, kaghan_crop):
    manifest = json.loads((crop_run / "manifest.json").read_text())
    assert manifest["seeds"] == {"sampling": 7, "model": 7, "validation": 7}
    checksummed = set(manifest["inputs_sha256"])
    assert str(kaghan_crop / "AW3D30.tif") in checksummed
    assert any(p.endswith("Geology.tif.aux.xml") for p in checksummed)
    assert any(p.endswith("landslides.dbf") for p in checksummed)
    assert manifest["versions"]["torch"].startswith("2.13.0")
    assert manifest["config"]["model"]["map_model"] == "rf"
    assert manifest["metrics"]["predictor"] == {"rf": "library"}  # sklearn's walk (as fast)


def test_report_embeds_its_figures(crop_run):
    html = (crop_run / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3
    assert "spatial" in html and "kaghan-crop" in html


def test_same_seed_same_map(crop_run, kaghan, kaghan_crop, tmp_path):
    config = load_config(write_config(tmp_path / "again.toml", kaghan_crop, kaghan,
                                      model='names = ["rf"]\nmap_model = "rf"\nseed = 7'))
    run_pipeline(config, tmp_path / "again", show_progress=False)
    with rasterio.open(crop_run / "susceptibility.tif") as a, \
            rasterio.open(tmp_path / "again" / "susceptibility.tif") as b:
        assert np.array_equal(a.read(1), b.read(1), equal_nan=True)


def test_bad_config_exits_with_a_named_error_and_no_outputs(kaghan, kaghan_crop, tmp_path):
    config = write_config(tmp_path / "bad.toml", kaghan_crop, kaghan,
                          sampling='method = "random"\nratio = 1.0\nbufer_m = 5.0')
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "unknown key(s) bufer_m" in result.output
    assert not (tmp_path / "out").exists()


def test_missing_input_raster_is_named(kaghan, kaghan_crop, tmp_path):
    config = write_config(tmp_path / "c.toml", kaghan_crop, kaghan)
    text = config.read_text().replace("Landcover.tif", "Landcover_missing.tif")
    config.write_text(text)
    with pytest.raises(MetalsmInputError, match="not found: .*Landcover_missing.tif"):
        run_pipeline(load_config(config), tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out" / "susceptibility.tif").exists()


def test_init_writes_a_loadable_template(tmp_path):
    target = tmp_path / "area.toml"
    result = CliRunner().invoke(app, ["init", str(target)])
    assert result.exit_code == 0
    assert load_config(target).zones.levels == 4
    again = CliRunner().invoke(app, ["init", str(target)])
    assert again.exit_code == 2 and "exists" in again.output


def test_run_on_a_sample_table_validates_without_a_map(tmp_path):
    """`metalsm run` on 600 real Hong Kong samples (no rasters): the study area's folds,
    buffer and repeats reach the validation (same table as evaluate_models with those
    settings), samples.gpkg carries the table CRS and both repeats' folds, and the
    report says there is no map."""
    from conftest import hk_slice

    from metalsm.evaluation import evaluate_models

    hk_slice(600, seed=1).to_csv(tmp_path / "hk.csv", index=False)
    config = tmp_path / "hk.toml"
    config.write_text(
        'name = "hk-600"\n[table]\npath = "hk.csv"\nlabel_column = "label"\nx_column = "X"\n'
        'y_column = "Y"\ncrs = "EPSG:2326"\ncategorical = ["land use", "lithology"]\n'
        '[model]\nnames = ["fr"]\nmap_model = "fr"\n'
        '[validation]\nn_folds = 3\nspatial_method = "grid"\nseed = 4\nrepeats = 2\n'
        'buffer_m = 400\n[blocks]\nn_blocks = 6\ncompactness = 3.0\n')
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    names = {p.name for p in out.iterdir()}
    assert {"validation.csv", "samples.csv", "samples.gpkg", "metrics.json", "manifest.json",
            "report.html", "roc.png", "roc_folds.png", "folds.png"} <= names
    assert not {"susceptibility.tif", "zones.tif", "map.png", "rates.png"} & names
    blocks = pd.read_csv(out / "blocks.csv")  # [blocks]: each sample's block and split
    assert len(blocks) == 600 and set(blocks["split"]) == {"meta-train", "meta-test"}
    assert {"tasks.csv", "blocks.png"} <= names
    table = pd.read_csv(out / "validation.csv").set_index("scheme")
    samples = pd.read_csv(out / "samples.csv")
    expected = evaluate_models(
        ["fr"], samples[[c for c in samples if c not in ("x", "y", "label")]],
        samples["label"], samples[["x", "y"]], ["land use", "lithology"], n_folds=3, seed=4,
        spatial_method="grid", buffer_m=400.0, repeats=2).table.set_index("scheme")
    for column in ("auc_mean", "auc_std", "auc_repeat_std", "pooled_auc", "n_buffered_mean"):
        assert table[column].to_numpy() == pytest.approx(expected[column].to_numpy()), column
    assert (table["repeats"] == 2).all() and (table["buffer_m"] == 400).all()
    assert table.loc["spatial", "auc_repeat_std"] > 0  # grid folds re-dealt per repeat
    assert table.loc["random", "n_buffered_mean"] > 0
    points = gpd.read_file(out / "samples.gpkg")
    assert points.crs.to_epsg() == 2326 and len(points) == 600
    assert {"fold_random", "fold_spatial", "fold_spatial_r1", "oof_fr_spatial"} <= set(
        points.columns)
    # the second repeat's folds: drawn with seed 4 + 1, so they differ from the first's
    np.testing.assert_array_equal(points["fold_random_r1"], random_folds(points["label"], 3, 5))
    assert (points["fold_random_r1"] != points["fold_random"]).mean() > 0.3
    assert "fold_random_r2" not in points
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["map"].startswith("none") and metrics["map_model"] is None
    assert metrics["validation"]["spatial"]["fr"]["auc_repeat_std"] == pytest.approx(
        table.loc["spatial", "auc_repeat_std"])
    html = (out / "report.html").read_text()
    assert "No map" in html and "no susceptibility map" in html
    assert "repeated 2 times" in html and "400 m" in html
    assert "Spread over 2 repeats" in html and "(± std over 2 repeats)" in html
