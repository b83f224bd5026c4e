"""Hostile inputs, as a new user would try them: each ends with exit 2 and one message that
names the file, key or column and what was expected; none ends in a traceback; no output
appears, and an existing run directory is never mixed with a failed one.

Fixtures are small real crops: 200 x 200 cells of Kaghan and 2,000 rows of Hong Kong.
Validation fires before any heavy work, so all but three cases take well under a second.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
from conftest import HK_FACTORS, hk_slice, write_config
from rasterio.windows import Window
from typer.testing import CliRunner

from metalsm.atomic import staged_directory
from metalsm.cli import app
from metalsm.config import TableConfig
from metalsm.errors import MetalsmInputError
from metalsm.inputs import landslide_mask, read_inventory
from metalsm.pipeline._preflight import check_run
from metalsm.raster import Grid
from metalsm.samples import Samples, draw_samples, read_sample_table, warn_constant_factors
from metalsm.stack import build_factor_stack

WINDOW = Window(col_off=150, row_off=550, width=200, height=200)
FAST = {"terrain": 'factors = ["elevation", "slope"]\ndrainage_threshold_km2 = 0.5',
        "model": 'names = ["lr"]\nmap_model = "lr"\nseed = 7',
        "validation": 'n_folds = 2\nspatial_method = "kmeans"\nseed = 7'}
HK_META = ('[blocks]\nn_blocks = 8\nseed = 1\n\n[model]\nnames = ["lr"]\n'
           'map_model = "meta-blockwise"\n\n[validation]\nn_folds = 2\n\n'
           '[meta]\nhidden = [8]\npretrain = false\niterations = 5\nk_shots = ["1"]\n'
           'map_k = "1"\nrepeats = 1\n')


@pytest.fixture(scope="module")
def crop(kaghan: Path, tmp_path_factory) -> Path:
    """DEM, geology and land cover of a 200 x 200 window of Kaghan."""
    out = tmp_path_factory.mktemp("hostile_crop")
    for name in ("AW3D30", "Geology", "Landcover"):
        with rasterio.open(kaghan / f"{name}.tif") as src:
            profile = src.profile | {"width": WINDOW.width, "height": WINDOW.height,
                                     "transform": rasterio.windows.transform(WINDOW,
                                                                             src.transform),
                                     "tiled": False}
            profile.pop("blockxsize", None)
            profile.pop("blockysize", None)
            with rasterio.open(out / f"{name}.tif", "w", **profile) as dst:
                dst.write(src.read(window=WINDOW))
    return out


@pytest.fixture(scope="module")
def hk_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hostile_hk") / "hk.csv"
    hk_slice(2000, seed=3).to_csv(path, index=False)
    return path


def _config(tmp: Path, crop: Path, kaghan: Path, **sections: str) -> Path:
    return write_config(tmp / "area.toml", crop, kaghan, **(FAST | sections))


def _hk_config(tmp: Path, table: Path) -> Path:
    path = tmp / "hk.toml"
    path.write_text(f'name = "hk"\n\n[table]\npath = "{table}"\nlabel_column = "label"\n'
                    f'x_column = "X"\ny_column = "Y"\ncrs = "EPSG:2326"\n'
                    f'categorical = ["land use", "lithology"]\n\n{HK_META}')
    return path


def _truncate(source: Path, target: Path, keep: float = 0.6) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * keep)])
    return target


def _invoke(*args: str):
    return CliRunner().invoke(app, [*map(str, args), "--quiet"])


def _assert_clean_failure(result, out: Path, *fragments: str) -> None:
    """Exit 2, one message naming what is wrong, no traceback, nothing written."""
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert text.count("error:") == 1, text
    for fragment in fragments:
        assert fragment in text, (fragment, text)
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*")), "staging folder left behind"


# --------------------------------------------------------------------------- the catalogue
# Each case: (id, make(tmp, crop, kaghan) -> (config path, fragments the message names)).


def _set_key(section: str, text: str):
    def make(tmp, crop, kaghan):
        return _config(tmp, crop, kaghan, **{section: text}), []
    return make


def _config_is_a_folder(tmp, crop, kaghan):
    (tmp / "folder.toml").mkdir()
    return tmp / "folder.toml", ["folder.toml is a folder"]


def _config_not_utf8(tmp, crop, kaghan):
    path = _config(tmp, crop, kaghan)
    path.write_bytes("# Höhenmodell\n".encode("latin-1") + path.read_bytes())
    return path, ["area.toml is not UTF-8"]


def _config_not_toml(tmp, crop, kaghan):
    path = _config(tmp, crop, kaghan)
    path.write_text(path.read_text() + "\n[zones\n")
    return path, ["area.toml is not valid TOML"]


def _dem_replaced(make_dem):
    def make(tmp, crop, kaghan):
        dem = make_dem(tmp, crop)
        path = _config(tmp, crop, kaghan)
        path.write_text(path.read_text().replace(str(crop / "AW3D30.tif"), str(dem)))
        return path, [str(dem)]
    return make


def _raster_replaced(name, make_raster):
    def make(tmp, crop, kaghan):
        raster = make_raster(tmp, crop)
        path = _config(tmp, crop, kaghan)
        path.write_text(path.read_text().replace(str(crop / name), str(raster)))
        return path, [str(raster)]
    return make


def _without_crs(tmp, crop):
    with rasterio.open(crop / "Geology.tif") as src:
        profile = src.profile | {"crs": None}
        values = src.read()
    with rasterio.open(tmp / "nocrs.tif", "w", **profile) as dst:
        dst.write(values)
    return tmp / "nocrs.tif"


def _far_away(tmp, crop):
    with rasterio.open(crop / "Landcover.tif") as src:
        profile = src.profile | {"transform": src.transform @ rasterio.Affine.translation(
            0, -1e5)}
        values = src.read()
    with rasterio.open(tmp / "elsewhere.tif", "w", **profile) as dst:
        dst.write(values)
    return tmp / "elsewhere.tif"


def _not_a_raster(tmp, crop):
    (tmp / "notes.tif").write_text("this is not a GeoTIFF\n")
    return tmp / "notes.tif"


def _vector_without_prj(tmp, crop, kaghan):
    for suffix in (".shp", ".shx", ".dbf"):
        shutil.copy(kaghan / f"Confirmed_faults{suffix}", tmp / f"faults{suffix}")
    path = _config(tmp, crop, kaghan)
    path.write_text(path.read_text().replace(str(kaghan / "Confirmed_faults.shp"),
                                             str(tmp / "faults.shp")))
    return path, ["vectors[0] 'distance_to_faults'", "faults.shp has no CRS"]


def _inventory_elsewhere(tmp, crop, kaghan):
    points = gpd.GeoDataFrame(geometry=gpd.points_from_xy([0.0, 10.0], [0.0, 10.0]),
                              crs="EPSG:32643")
    points.to_file(tmp / "elsewhere.gpkg")
    path = _config(tmp, crop, kaghan, inventory=f'path = "{tmp / "elsewhere.gpkg"}"')
    return path, ["inventory", "elsewhere.gpkg lies outside the study grid"]


def _inventory_table_without_crs(tmp, crop, kaghan):
    pd.DataFrame({"x": [1.0], "y": [2.0]}).to_csv(tmp / "points.csv", index=False)
    path = _config(tmp, crop, kaghan, inventory=f'path = "{tmp / "points.csv"}"')
    return path, ["points.csv is a table: set inventory.crs"]


def _inventory_table_without_x(tmp, crop, kaghan):
    pd.DataFrame({"east": [1.0], "y": [2.0]}).to_csv(tmp / "points.csv", index=False)
    path = _config(tmp, crop, kaghan,
                   inventory=f'path = "{tmp / "points.csv"}"\ncrs = "EPSG:32643"')
    return path, ["points.csv", "missing coordinate column(s) ['x']"]


def _several_problems(tmp, crop, kaghan):
    path = _config(tmp, crop, kaghan, zones="levels = 0",
                   validation="n_folds = 1", sampling="buffer_m = -10.0")
    return path, ["3 problems", "zones.levels", "validation.n_folds", "sampling.buffer_m"]


def _problems_in_several_inputs(tmp, crop, kaghan):
    path = _config(tmp, crop, kaghan)
    text = path.read_text().replace(str(crop / "Geology.tif"), str(tmp / "missing.tif"))
    text = text.replace(str(kaghan / "Confirmed_faults.shp"), str(tmp / "gone.shp"))
    path.write_text(text)
    return path, ["2 problems", "missing.tif", "gone.shp"]


def _float_classes(tmp, crop):
    with rasterio.open(crop / "Geology.tif") as src:
        profile = src.profile | {"dtype": "float32"}
        values = src.read().astype("float32") + 0.5
    with rasterio.open(tmp / "geology_float.tif", "w", **profile) as dst:
        dst.write(values)
    return tmp / "geology_float.tif"


def _all_nodata(tmp, crop):
    with rasterio.open(crop / "AW3D30.tif") as src:
        profile = src.profile
        values = np.full((1, src.height, src.width), src.nodata, dtype="float32")
    with rasterio.open(tmp / "dem_empty.tif", "w", **profile) as dst:
        dst.write(values)
    return tmp / "dem_empty.tif"


def _inventory_without_features(tmp, crop, kaghan):
    empty = gpd.read_file(kaghan / "landslides.shp", rows=1).iloc[:0]
    empty.to_file(tmp / "none.gpkg")
    path = _config(tmp, crop, kaghan, inventory=f'path = "{tmp / "none.gpkg"}"')
    return path, ["inventory", "none.gpkg holds no features"]


CASES = {
    "config is a folder": _config_is_a_folder,
    "config not UTF-8": _config_not_utf8,
    "config not TOML": _config_not_toml,
    "unknown key": _set_key("zones", "levls = 4"),
    "grid.crs unknown": _set_key("grid", 'crs = "EPSG:999999"'),
    "grid.resolution negative": _set_key("grid", "resolution = -30"),
    "grid.resolution zero": _set_key("grid", "resolution = 0"),
    "unknown model": _set_key("model", 'names = ["lr", "xgboost"]\nmap_model = "lr"'),
    "one fold": _set_key("validation", "n_folds = 1"),
    "folds as text": _set_key("validation", 'n_folds = "five"'),
    "zero zones": _set_key("zones", "levels = 0"),
    "negative buffer": _set_key("sampling", "buffer_m = -5.0"),
    "negative drainage threshold": _set_key("terrain", 'factors = ["slope"]\n'
                                            "drainage_threshold_km2 = -1.0"),
    "unknown terrain factor": _set_key("terrain", 'factors = ["slope", "slop"]'),
    "window too small": _set_key("output", "window_size = 4"),
    "several settings wrong": _several_problems,
    "DEM missing": _dem_replaced(lambda tmp, crop: tmp / "no_dem.tif"),
    "DEM truncated": _dem_replaced(
        lambda tmp, crop: _truncate(crop / "AW3D30.tif", tmp / "dem_cut.tif")),
    "DEM not a raster": _dem_replaced(lambda tmp, crop: _not_a_raster(tmp, crop)),
    "thematic raster truncated": _raster_replaced(
        "Geology.tif", lambda tmp, crop: _truncate(crop / "Geology.tif", tmp / "geo_cut.tif")),
    "thematic raster without CRS": _raster_replaced("Geology.tif", _without_crs),
    "thematic raster elsewhere": _raster_replaced("Landcover.tif", _far_away),
    "DEM all no-data": _dem_replaced(_all_nodata),
    "categorical raster with fractions": _raster_replaced("Geology.tif", _float_classes),
    "inventory without features": _inventory_without_features,
    "vector without .prj": _vector_without_prj,
    "inventory outside the grid": _inventory_elsewhere,
    "inventory table without CRS": _inventory_table_without_crs,
    "inventory table without x": _inventory_table_without_x,
    "problems in several inputs": _problems_in_several_inputs,
}

KEYS = {"unknown key": "levls", "grid.crs unknown": "grid.crs",
        "grid.resolution negative": "grid.resolution", "grid.resolution zero": "grid.resolution",
        "unknown model": "model.names[1] 'xgboost'", "one fold": "validation.n_folds",
        "folds as text": "validation.n_folds", "zero zones": "zones.levels",
        "negative buffer": "sampling.buffer_m",
        "negative drainage threshold": "terrain.drainage_threshold_km2",
        "unknown terrain factor": "terrain.factors", "window too small": "output.window_size",
        "DEM all no-data": "has no valid cells",
        "categorical raster with fractions": "holds non-integer values"}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_raster_study_area(case, crop, kaghan, tmp_path):
    config, fragments = CASES[case](tmp_path, crop, kaghan)
    fragments = [*fragments, *([KEYS[case]] if case in KEYS else [])]
    out = tmp_path / "run"
    _assert_clean_failure(_invoke("run", config, "--out", out), out, *fragments)


def _table(make):
    def case(tmp, source):
        path = tmp / "table.csv"
        make(pd.read_csv(source), path)
        return path
    return case


def _duplicated(frame, path):
    frame.insert(3, "slope_copy", frame["slope"])
    frame.to_csv(path, index=False, header=[*frame.columns[:3], "slope", *frame.columns[4:]])


def _write_with(**kwargs):
    def make(frame, path):
        frame.to_csv(path, index=False, **kwargs)
    return make


def _with_column(name, values):
    def make(frame, path):
        frame[name] = values
        frame.to_csv(path, index=False)
    return make


FOLDS_4 = (("[validation]\nn_folds = 2", "[validation]\nn_folds = 4"),)
TABLE_CASES = {
    "duplicated column": (_table(_duplicated), (), ["column name(s) ['slope'] appear more"]),
    "semicolon-delimited": (_table(_write_with(sep=";")), (), ["looks ';'-delimited"]),
    "all-NaN column": (_table(_with_column("NDVI", np.nan)), (), ["['NDVI'] hold no value"]),
    "label not 0/1": (_table(_with_column("label", 2)), (), ["column 'label' must hold 0/1"]),
    "one class": (_table(_with_column("label", 1)), (), ["'label' holds one class only"]),
    "text in a factor": (_table(_with_column("DEM", "high")), (),
                         ["non-numeric values in column(s) ['DEM']"]),
    "no label column": (_table(lambda f, p: f.drop(columns="label").to_csv(p, index=False)),
                        (), ["missing column(s) ['label']"]),
    "header only": (_table(lambda f, p: f.iloc[:0].to_csv(p, index=False)), (),
                    ["has no rows"]),
    "table missing": (lambda tmp, source: tmp / "nowhere.csv", (), ["nowhere.csv"]),
    "more folds than positives": (_table(lambda f, p: f.assign(
        label=(np.arange(len(f)) < 3).astype(int)).to_csv(p, index=False)), FOLDS_4,
        ["validation.n_folds = 4 is more than the 3 samples"]),
    "table.crs unknown": (_table(_write_with()), (('crs = "EPSG:2326"', 'crs = "EPSG:0"'),),
                          ["table.crs"]),
}


@pytest.mark.parametrize("case", list(TABLE_CASES))
def test_hostile_sample_table(case, hk_csv, tmp_path):
    make, edits, fragments = TABLE_CASES[case]
    config = _hk_config(tmp_path, make(tmp_path, hk_csv))
    text = config.read_text()
    for old, new in edits:
        assert old in text
        text = text.replace(old, new)
    config.write_text(text)
    out = tmp_path / "run"
    _assert_clean_failure(_invoke("run", config, "--out", out), out, *fragments)


@pytest.mark.parametrize("command", ["factors", "credibility"])
def test_raster_commands_on_a_table_study_area(command, hk_csv, tmp_path):
    out = tmp_path / "out"
    result = _invoke(command, _hk_config(tmp_path, hk_csv), "--out", out)
    _assert_clean_failure(result, out, "sample-table study area",
                          f"`metalsm {command}` needs a raster study area")


# --------------------------------------------------------------------------- the output folder


def test_out_is_an_existing_file(crop, kaghan, tmp_path):
    out = tmp_path / "report.txt"
    out.write_text("mine")
    result = _invoke("run", _config(tmp_path, crop, kaghan), "--out", out)
    assert result.exit_code == 2 and "is a file" in result.output
    assert out.read_text() == "mine"


def test_out_on_a_location_nobody_may_write(crop, kaghan, tmp_path):
    target = Path("/proc/metalsm-run")  # refused even to root
    result = _invoke("run", _config(tmp_path, crop, kaghan), "--out", target)
    assert result.exit_code == 2, result.output
    assert "cannot write in /proc" in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_out_holding_other_files_is_refused(crop, kaghan, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = _invoke("run", _config(tmp_path, crop, kaghan), "--out", out)
    assert result.exit_code == 2
    assert "not a metalsm run (notes.txt)" in " ".join(result.output.split())
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_an_input_inside_out_is_never_modified(crop, kaghan, tmp_path):
    """A DEM stored as OUT/factors.tif: refused by name, the file byte-identical."""
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(crop / "AW3D30.tif", out / "factors.tif")
    before = (out / "factors.tif").read_bytes()
    config = _config(tmp_path, crop, kaghan)
    config.write_text(config.read_text().replace(str(crop / "AW3D30.tif"),
                                                 str(out / "factors.tif")))
    for command in ("run", "factors", "credibility", "segment", "pretrain"):
        result = _invoke(command, config, "--out", out)
        text = " ".join(result.output.split())
        assert result.exit_code == 2, result.output
        assert f"input dem {out / 'factors.tif'} lies inside the output folder" in text
        assert (out / "factors.tif").read_bytes() == before
        assert [p.name for p in out.iterdir()] == ["factors.tif"]


@pytest.mark.parametrize("command", ["factors", "credibility"])
def test_truncated_raster_in_the_raster_commands(command, crop, kaghan, tmp_path):
    cut = _truncate(crop / "Geology.tif", tmp_path / "geo_cut.tif")
    config = _config(tmp_path, crop, kaghan)
    config.write_text(config.read_text().replace(str(crop / "Geology.tif"), str(cut)))
    out = tmp_path / "out"
    _assert_clean_failure(_invoke(command, config, "--out", out), out,
                          f"rasters[0] 'geology': raster {cut} cannot be read to its end",
                          "truncated or corrupt")


@pytest.mark.parametrize("command", [["segment"], ["experiment", "overall"]])
def test_step_commands_check_their_inputs_first(command, crop, kaghan, tmp_path):
    """Commands that add to a folder (blocks, meta-learning steps, experiments) check the
    inputs before any work too: nothing is written."""
    config = _config(tmp_path, crop, kaghan)
    config.write_text(config.read_text().replace(str(crop / "Landcover.tif"),
                                                 str(tmp_path / "gone.tif")))
    out = tmp_path / "out"
    _assert_clean_failure(_invoke(*command, config, "--out", out), out,
                          f"rasters[1] 'landcover': raster file not found: {tmp_path}/gone.tif")


def test_debug_shows_the_traceback(crop, kaghan, tmp_path):
    config = _config(tmp_path, crop, kaghan, zones="levels = 0")
    result = CliRunner().invoke(app, ["--debug", "run", str(config), "--out",
                                      str(tmp_path / "run")])
    assert result.exit_code != 0
    assert isinstance(result.exception, MetalsmInputError)
    assert "zones.levels" in str(result.exception)


# --------------------------------------------------------------------------- warnings


def test_dropped_rows_are_counted_per_column(hk_csv, tmp_path, caplog):
    frame = pd.read_csv(hk_csv)
    frame.loc[:199, "NDVI"] = np.nan
    frame.loc[150:249, "SPI"] = np.nan
    frame.to_csv(tmp_path / "t.csv", index=False)
    with caplog.at_level(logging.WARNING, logger="metalsm"):
        samples = read_sample_table(TableConfig(path=str(tmp_path / "t.csv"),
                                                factors=tuple(HK_FACTORS)))
    assert len(samples.table) == 2000 - 250
    assert samples.table.attrs["missing_per_column"] == {"NDVI": 200, "SPI": 100}
    assert "250 of 2000 rows dropped for missing values (per column: NDVI 200, SPI 100)" \
        in caplog.text


def test_utf16_table_reads_as_utf8(hk_csv, tmp_path):
    frame = pd.read_csv(hk_csv)
    frame.to_csv(tmp_path / "u16.csv", index=False, encoding="utf-16")
    utf16 = read_sample_table(TableConfig(path=str(tmp_path / "u16.csv")))
    utf8 = read_sample_table(TableConfig(path=str(hk_csv)))
    pd.testing.assert_frame_equal(utf16.table, utf8.table)
    assert utf16.factor_names == tuple(HK_FACTORS)


def test_constant_factor_is_named(caplog):
    table = pd.DataFrame({"x": [0.0, 1, 2], "y": [0.0, 1, 2], "label": [0, 1, 1],
                          "slope": [0.0, 0.0, 0.0], "elevation": [1.0, 2.0, 3.0]})
    with caplog.at_level(logging.WARNING, logger="metalsm"):
        constant = warn_constant_factors(Samples(table, ("slope", "elevation"), ()))
    assert constant == ["slope"]
    assert "slope = 0" in caplog.text and "elevation" not in caplog.text


def test_invalid_polygons_are_repaired_and_counted(crop, tmp_path, caplog):
    grid = Grid.from_raster(crop / "AW3D30.tif")
    left, bottom, right, top = grid.bounds
    x, y, d = (left + right) / 2, (bottom + top) / 2, 300.0
    bowtie = shapely.Polygon([(x, y), (x + d, y + d), (x + d, y), (x, y + d)])
    square = shapely.box(x - 2 * d, y - 2 * d, x - d, y - d)
    assert not bowtie.is_valid
    gpd.GeoDataFrame(geometry=[bowtie, square], crs=grid.crs).to_file(tmp_path / "inv.gpkg")
    with caplog.at_level(logging.WARNING, logger="metalsm"):
        inventory = read_inventory(tmp_path / "inv.gpkg", grid)
    assert "1 invalid polygon(s)" in caplog.text
    assert inventory.attrs["n_repaired"] == 1
    assert shapely.is_valid(inventory.geometry.values).all()
    assert inventory.geometry.iloc[0].area == pytest.approx(d * d / 2)  # two triangles


def test_raster_covering_part_of_the_grid_is_reported(crop, kaghan, tmp_path, caplog):
    with rasterio.open(crop / "Landcover.tif") as src:
        profile = src.profile | {"width": 100, "transform": src.transform}
        values = src.read(window=Window(0, 0, 100, 200))
    with rasterio.open(tmp_path / "half.tif", "w", **profile) as dst:
        dst.write(values)
    config = _config(tmp_path, crop, kaghan)
    config.write_text(config.read_text().replace(str(crop / "Landcover.tif"),
                                                 str(tmp_path / "half.tif")))
    from metalsm.config import load_config

    config = load_config(config)
    with caplog.at_level(logging.WARNING, logger="metalsm"):
        check_run(config, tmp_path / "run")
    assert "half.tif covers 50 % of the study grid" in caplog.text
    assert not (tmp_path / "run").exists()
    # the landslides on the uncovered half are counted, and the layer lacking data named
    stack = build_factor_stack(config)
    inventory = read_inventory(config.inventory.path, stack.grid)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="metalsm"):
        samples = draw_samples(config, stack, inventory, landslide_mask(inventory, stack.grid))
    anchors = shapely.point_on_surface(inventory.geometry.values)
    rows, cols = stack.grid.rowcol(shapely.get_x(anchors), shapely.get_y(anchors))
    inside = stack.grid.contains(rows, cols)
    off_half = np.unique((rows * 200 + cols)[inside & (cols >= 100)]).size
    assert samples.table["col"].max() < 100
    match = re.search(r"(\d+) landslide cell\(s\) fall where a factor has no data .*"
                      r"per layer: landcover (\d+)\)", caplog.text)
    assert match, caplog.text
    assert int(match[1]) == int(match[2]) >= 0.9 * off_half > 100


# --------------------------------------------------------------------------- one run per folder


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(crop, kaghan, tmp_path_factory):
    """One complete run of the crop (about 15 s): the previous run of the rerun tests."""
    base = tmp_path_factory.mktemp("previous")
    config = _config(base, crop, kaghan)
    out = base / "run"
    result = _invoke("run", config, "--out", out)
    assert result.exit_code == 0, result.output
    return config, out


def test_a_failed_rerun_leaves_the_previous_run_byte_identical(finished_run, crop, kaghan,
                                                               tmp_path):
    """The rerun fails late (the map cannot be cross-validated with more folds than
    samples, found only once the stack and samples exist): nothing of it shows."""
    _, out = finished_run
    before = _snapshot(out)
    assert {"susceptibility.tif", "zones.tif", "manifest.json", "report.html"} <= set(before)
    config = _config(tmp_path, crop, kaghan, validation="n_folds = 5000")
    result = _invoke("run", config, "--out", out)
    assert result.exit_code == 2, result.output
    assert "validation.n_folds = 5000 is more than the" in " ".join(result.output.split())
    assert _snapshot(out) == before
    assert not list(out.parent.glob(".run.*"))


def _start(config: Path, out: Path) -> subprocess.Popen:
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    return subprocess.Popen([sys.executable, "-c", "from metalsm.cli import app; app()", "run",
                             str(config), "--out", str(out), "--quiet"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_staging(process: subprocess.Popen, out: Path, name: str) -> Path:
    stage = out.with_name(f".{out.name}.staging-{process.pid}")
    deadline = time.monotonic() + 120
    while not (stage / name).exists():
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "the run never reached its samples"
        time.sleep(0.05)
    return stage


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_a_killed_rerun_leaves_the_previous_run_byte_identical(how, finished_run, tmp_path):
    """kill -9 (or Ctrl-C) once the rerun has written factors.tif into its staging folder:
    the run directory is still the previous run, byte for byte; Ctrl-C says so."""
    config, previous = finished_run
    out = tmp_path / "run"
    shutil.copytree(previous, out)
    before = _snapshot(out)
    process = _start(config, out)
    stage = _wait_for_staging(process, out, "factors.tif")
    process.send_signal(getattr(signal, how))
    output, _ = process.communicate(timeout=120)
    assert _snapshot(out) == before, output
    if how == "SIGINT":
        assert process.returncode == 130, output
        assert "interrupted; no outputs were changed" in output
        assert "Traceback" not in output
        assert not stage.exists()
    else:
        assert process.returncode == -signal.SIGKILL
        assert stage.exists()  # what kill -9 leaves: only the hidden staging folder
        with pytest.raises(RuntimeError), staged_directory(out):  # the next run, failing
            assert not stage.exists()  # ... removed the dead run's staging folder first
            raise RuntimeError("the next run fails too")
        assert _snapshot(out) == before
        assert not list(out.parent.glob(".run.*"))


def test_many_more_blocks_than_samples_are_reported(hk_csv, tmp_path, caplog):
    """2,000 samples in 1,500 blocks: most blocks are empty or one-class; the warning
    counts them and the cells whose models fall back."""
    from metalsm.blocks import block_task_table
    from metalsm.config import BlocksConfig
    from metalsm.pipeline._blocks import warn_sparse_blocks

    y = pd.read_csv(hk_csv)["label"].to_numpy()
    sample_blocks = np.random.default_rng(0).integers(0, 1500, size=y.size)
    tasks = block_task_table(sample_blocks, y, 1500)
    labels = np.arange(3000).reshape(60, 50) % 1500  # two cells per block
    with caplog.at_level(logging.WARNING, logger="metalsm"):
        weak = warn_sparse_blocks(tasks, BlocksConfig(n_blocks=1500), labels)
    empty, single = int(tasks["empty"].sum()), int(tasks["single_class"].sum())
    assert weak == empty + single and empty > 100 and single > 500
    assert f"{empty} of 1500 blocks hold no sample and {single} only one class" in caplog.text
    assert f"{2 * weak} of 3000 mapped cells lie in them" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="metalsm"):
        tasks = block_task_table(np.arange(y.size) % 8, y, 8)
        assert warn_sparse_blocks(tasks, BlocksConfig(n_blocks=8)) == 0
    assert caplog.text == ""
