import base64

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.crs import CRS
from shapely.geometry import Point, box

from metalsm.raster import Grid
from metalsm.report.figures import (
    hillshade,
    plot_raster_map,
    plot_roc,
    plot_susceptibility_map,
    plot_zone_bars,
)
from metalsm.report.html import Section, render_report, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path, min_bytes=1000):
    data = path.read_bytes()
    return data.startswith(PNG_MAGIC) and len(data) > min_bytes


def _zone_frame():
    return pd.DataFrame(
        {
            "level": [1, 2, 3, 4],
            "label": ["Low", "Moderate", "High", "Very high"],
            "area_share": [0.25, 0.25, 0.25, 0.25],
            "landslide_share": [0.05, 0.10, 0.25, 0.60],
            "ratio": [0.2, 0.4, 1.0, 2.4],
        }
    )


def test_hillshade_flat_and_facing():
    flat = hillshade(np.full((20, 30), 1234.0), 30.0, azimuth=315, altitude=40)
    assert np.allclose(flat, np.sin(np.radians(40)))
    rows, cols = np.mgrid[0:40, 0:40].astype(float)
    # terrain rising towards the south-east faces the north-west sun (azimuth 315)
    facing = hillshade((rows + cols) * 10.0, 30.0)
    away = hillshade(-(rows + cols) * 10.0, 30.0)
    assert facing.min() > np.sin(np.radians(45)) > away.max()
    assert ((facing >= 0) & (facing <= 1)).all() and ((away >= 0) & (away <= 1)).all()
    # lit from the east, an east-facing slope (falling to the east) is bright
    east = hillshade(-cols * 10.0, 30.0, azimuth=90)
    assert east.mean() > hillshade(cols * 10.0, 30.0, azimuth=90).mean()
    dem = np.ones((5, 5))
    dem[2, 2] = np.nan
    assert np.isnan(hillshade(dem, 1.0)[2, 2])


def test_plot_roc(tmp_path):
    fpr = np.linspace(0, 1, 50)
    curves = {"rf": (fpr, np.sqrt(fpr), 0.667), "lr": (fpr, fpr**0.7, 0.588)}
    path = plot_roc(curves, tmp_path / "roc.png")
    assert _is_png(path, 10_000)
    with pytest.raises(ValueError, match="at least one curve"):
        plot_roc({}, tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()


def test_susceptibility_map_on_the_real_kaghan_grid(kaghan, tmp_path):
    with rasterio.open(kaghan / "AW3D30.tif") as src:
        grid = Grid(src.crs, src.transform, src.height, src.width)
        dem = src.read(1, masked=True).astype(float).filled(np.nan)
    dem[np.abs(dem) > 1e30] = np.nan
    inventory = gpd.read_file(kaghan / "landslides.shp").to_crs(grid.crs)
    # zones from elevation quartiles stand in for a model
    edges = np.nanquantile(dem, [0.25, 0.5, 0.75])
    zones = np.where(np.isfinite(dem), np.digitize(dem, edges) + 1, 0)
    path = plot_susceptibility_map(
        zones, grid, dem, inventory, tmp_path / "map.png",
        labels=["Low", "Moderate", "High", "Very high"],
    )
    assert _is_png(path, 10_000)
    probability = np.where(np.isfinite(dem), (dem - np.nanmin(dem)) / np.ptp(dem[np.isfinite(dem)]),
                           np.nan)
    continuous = plot_susceptibility_map(
        probability, grid, dem, None, tmp_path / "prob.png", categorical=False
    )
    assert _is_png(continuous, 10_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.png", "prob.png"]


def test_raster_map_with_points_and_no_dem(tmp_path):
    grid = Grid(CRS.from_epsg(32643), rasterio.Affine(30, 0, 500000, 0, -30, 3800000), 50, 80)
    inventory = gpd.GeoDataFrame(
        geometry=[Point(500300, 3799500), box(501000, 3799000, 501300, 3799400)], crs=grid.crs
    )
    values = np.random.default_rng(0).random(grid.shape)
    path = plot_raster_map(values, grid, tmp_path / "r.png", inventory=inventory,
                           colorbar_label="value", title="random")
    assert _is_png(path)
    with pytest.raises(ValueError, match="shape"):
        plot_raster_map(values[:10], grid, tmp_path / "bad.png")


def test_plot_zone_bars(tmp_path):
    assert _is_png(plot_zone_bars(_zone_frame(), tmp_path / "bars.png"), 10_000)
    with pytest.raises(ValueError, match="landslide_share"):
        plot_zone_bars(_zone_frame().drop(columns="landslide_share"), tmp_path / "x.png")


def test_report_is_self_contained_and_escaped(tmp_path):
    image = plot_zone_bars(_zone_frame(), tmp_path / "bars.png")
    sections = [
        Section(
            "Summary",
            text="AUC <b>0.9</b> & more\n\n- **bold** item\n- `code` item",
            preformatted=[("metrics", {"auc": np.float64(0.91), "n": np.int64(3)})],
        ),
        Section("Zones", tables=[("Zone table", _zone_frame())], images=[("bars", image)]),
    ]
    path = write_report(tmp_path / "report.html", title="Kaghan <test> run", sections=sections)
    text = path.read_text(encoding="utf-8")
    assert "<title>Kaghan &lt;test&gt; run</title>" in text
    assert "AUC &lt;b&gt;0.9&lt;/b&gt; &amp; more" in text and "<b>0.9" not in text
    assert "<strong>bold</strong>" in text and "<code>code</code>" in text
    encoded = base64.b64encode(image.read_bytes()).decode()
    assert f"data:image/png;base64,{encoded}" in text
    assert "Very high" in text and "2.4" in text and "0.6" in text
    assert "<caption>Zone table</caption>" in text
    assert "&quot;auc&quot;: 0.91" in text
    assert text.count("<section") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bars.png", "report.html"]
    assert render_report(title="t", sections=[]).startswith("<!DOCTYPE html>")


def test_report_missing_image_names_it(tmp_path):
    with pytest.raises(ValueError, match="nope.png"):
        write_report(tmp_path / "r.html", title="t",
                     sections=[Section("s", images=[tmp_path / "nope.png"])])
    assert not (tmp_path / "r.html").exists()


def test_block_boundaries_mark_both_sides_of_an_edge():
    from metalsm.report.figures import block_boundaries

    labels = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [-1, -1, 1, 1]])
    expected = np.array([[0, 1, 1, 0], [1, 1, 1, 0], [0, 0, 1, 0]], dtype=bool)
    assert np.array_equal(block_boundaries(labels), expected)


def test_block_map_is_drawn(tmp_path):
    from metalsm.report.figures import plot_block_map

    grid = Grid(CRS.from_epsg(32643), rasterio.Affine(30.0, 0, 0, 0, -30.0, 3000.0), 100, 100)
    labels = (np.arange(100)[:, None] // 50) * 2 + (np.arange(100)[None, :] // 50)
    dem = np.add.outer(np.arange(100.0), np.arange(100.0))
    path = plot_block_map(labels, grid, tmp_path / "blocks.png", dem=dem)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    with pytest.raises(ValueError, match="does not match the grid"):
        plot_block_map(labels[:50], grid, tmp_path / "bad.png")


def test_map_colours_are_the_legend_colours_on_flat_ground(tmp_path):
    """No transparency over the hillshade: on flat ground every zone is drawn in exactly
    its legend (and zones.tif colour table) colour."""
    from matplotlib.image import imread

    from metalsm.report.figures import shaded_colours, zone_colors

    grid = Grid(CRS.from_epsg(32643), rasterio.Affine(30, 0, 500000, 0, -30, 3800000), 80, 120)
    zones = np.repeat(np.arange(1, 5), 30)[None, :].repeat(80, axis=0)
    flat = np.full(grid.shape, 1500.0)
    path = plot_susceptibility_map(zones, grid, flat, None, tmp_path / "map.png",
                                   edges=[0.0, 0.2, 0.4, 0.7, 1.0])
    pixels = (imread(path)[..., :3] * 255).round().reshape(-1, 3)
    for colour in zone_colors(4):
        rgb = np.round(np.array(colour[:3]) * 255)
        assert (np.abs(pixels - rgb).max(axis=1) <= 1).sum() > 2000, colour
    # on relief, slopes facing the light are lighter and those facing away darker
    rows, cols = np.mgrid[0:20, 0:20].astype(float)
    rgba = np.tile(np.array([0.5, 0.4, 0.3, 1.0]), (20, 20, 1))
    facing = shaded_colours(rgba, (rows + cols) * 10.0, 30.0)
    away = shaded_colours(rgba, -(rows + cols) * 10.0, 30.0)
    assert (facing[..., 0] > 0.5).all() and (away[..., 0] < 0.5).all()
    assert np.allclose(shaded_colours(rgba, np.zeros((20, 20)), 30.0), rgba)


def test_report_tables_are_narrow_and_free_of_absolute_paths():
    from metalsm.report.tables import (
        factor_table,
        fold_spread,
        provenance_tables,
        repeat_spread_table,
        validation_table,
    )

    table = pd.DataFrame({"model": ["rf"], "scheme": ["spatial"], "pooled_auc": [0.8123],
                          **{f"{m}_{s}": [0.5] for m in ("accuracy", "precision", "recall",
                                                         "f1", "auc", "kappa", "fit_seconds")
                             for s in ("mean", "std")}})
    shown = validation_table(table)
    assert list(shown.columns) == ["model", "scheme", "AUC", "accuracy", "precision", "recall",
                                   "F1", "kappa", "pooled AUC", "fit (s)"]
    assert shown.loc[0, "AUC"] == "0.500 ± 0.500"
    assert repeat_spread_table(table) is None  # one repeat: no spread table
    repeated = table.assign(repeats=3, auc_repeat_std=0.0123, pooled_auc_repeat_std=0.004)
    spread = repeat_spread_table(repeated)
    assert list(spread.columns) == ["model", "scheme", "AUC", "pooled AUC"]
    assert spread.loc[0, "AUC"] == "0.012" and spread.loc[0, "pooled AUC"] == "0.004"
    assert fold_spread(repeated, "auc").iloc[0] == "0.500 ± 0.500 (± 0.012)"
    manifest = {"inputs_sha256": {"/data/kaghan/AW3D30.tif": "ab" * 32,
                                  "/data/kaghan/vec/faults.shp": "cd" * 32},
                "seeds": {"sampling": 1}, "timings_s": {"predict_map": 1.234},
                "versions": {"numpy": "2.0"}}
    captions = dict(provenance_tables(manifest))
    inputs = captions["Inputs, under /data/kaghan (full SHA-256 in manifest.json)"]
    assert inputs["file"].tolist() == ["AW3D30.tif", "vec/faults.shp"]
    assert inputs.iloc[0, 1] == "ab" * 8
    assert captions["Timings"].iloc[0].tolist() == ["predict map", 1.2]
    kinds = factor_table(["slope", "geology"], ["geology"])
    assert kinds["kind"].tolist() == ["continuous", "categorical"]


def test_fold_maps_colour_each_fold(tmp_path):
    from matplotlib.image import imread

    from metalsm.report.figures import FOLD_COLOURS, plot_fold_maps

    grid = Grid(CRS.from_epsg(32643), rasterio.Affine(30, 0, 500000, 0, -30, 3800000), 100, 100)
    rng = np.random.default_rng(0)
    x = 500000 + rng.random(600) * 3000
    y = 3797000 + rng.random(600) * 3000
    spatial = (x > 501500).astype(int) + 2 * (y > 3798500)
    path = plot_fold_maps(x, y, {"random": rng.integers(0, 4, 600), "spatial": spatial}, grid,
                          tmp_path / "folds.png", labels=rng.integers(0, 2, 600))
    pixels = (imread(path)[..., :3] * 255).round().reshape(-1, 3)
    for colour in FOLD_COLOURS[:4]:
        rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(pixels - rgb).max(axis=1) <= 2).sum() > 200, colour
    with pytest.raises(ValueError, match="at least one scheme"):
        plot_fold_maps(x, y, {}, grid, tmp_path / "none.png")
