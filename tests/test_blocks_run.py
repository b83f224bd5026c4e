"""The block stage end to end: `metalsm segment` on a real Kaghan crop and the Hong Kong table."""

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
from metalsm.datasets import EXAMPLES_DIR
from metalsm.pipeline._run import run_pipeline
from metalsm.raster import cog_problems

BLOCKS = "n_blocks = 12\ncompactness = 0.5\nmeta_train_fraction = 0.6\nseed = 3"


@pytest.fixture(scope="module")
def crop_blocks(kaghan, kaghan_crop, tmp_path_factory):
    out = tmp_path_factory.mktemp("segment")
    config = write_config(out / "crop.toml", kaghan_crop, kaghan, blocks=BLOCKS)
    result = CliRunner().invoke(app, ["segment", str(config), "--out", str(out / "blocks"),
                                      "--quiet"])
    assert result.exit_code == 0, result.output
    assert "blocks, samples per block" in result.output
    return out / "blocks"


def test_block_raster_covers_the_grid(crop_blocks, kaghan_crop):
    with rasterio.open(crop_blocks / "blocks.tif") as blocks, \
            rasterio.open(kaghan_crop / "AW3D30.tif") as dem:
        assert blocks.crs == dem.crs and blocks.shape == dem.shape
        assert blocks.transform.almost_equals(dem.transform)
        assert blocks.dtypes[0] == "int32" and blocks.nodata == -1
        labels = blocks.read(1)
    assert cog_problems(crop_blocks / "blocks.tif") == []
    ids = np.unique(labels)
    assert ids.min() == 0 and np.array_equal(ids, np.arange(ids.size))  # crop has no nodata
    assert 6 <= ids.size <= 24


def test_tasks_count_every_sample_once(crop_blocks):
    tasks = pd.read_csv(crop_blocks / "tasks.csv")
    with rasterio.open(crop_blocks / "blocks.tif") as src:
        n_blocks = int(src.read(1).max()) + 1
    assert list(tasks["block"]) == list(range(n_blocks))
    assert (tasks["positives"] + tasks["negatives"] == tasks["samples"]).all()
    assert tasks["samples"].sum() > 1000
    assert set(tasks["split"]) == {"meta-train", "meta-test"}
    assert (tasks["split"] == "meta-train").sum() == round(0.6 * n_blocks)
    polygons = gpd.read_file(crop_blocks / "blocks.gpkg")
    assert sorted(polygons["id"]) == list(range(n_blocks))
    by_block = polygons.set_index("id").sort_index()
    assert np.array_equal(by_block["n_pos"], tasks["positives"])
    assert np.array_equal(by_block["n_neg"], tasks["negatives"])
    # the meta-train / meta-test split of tasks.csv, on the block polygons
    assert by_block["split"].tolist() == tasks["split"].tolist()
    assert (crop_blocks / "blocks.png").stat().st_size > 10_000


def test_hong_kong_table_is_segmented_into_contiguous_blocks(tmp_path):
    result = CliRunner().invoke(app, ["segment", str(EXAMPLES_DIR / "hongkong.toml"),
                                      "--blocks", "40", "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    per_sample = pd.read_csv(tmp_path / "blocks.csv")
    tasks = pd.read_csv(tmp_path / "tasks.csv")
    assert len(per_sample) == 17093 and (per_sample["block"] >= 0).all()
    assert tasks["samples"].sum() == 17093
    assert 20 <= len(tasks) <= 80
    assert tasks["single_class"].mean() < 0.2
    split = tasks.set_index("block")["split"]  # each sample carries its block's split
    assert (per_sample["split"] == split[per_sample["block"]].to_numpy()).all()


def test_command_line_overrides_are_checked(kaghan, kaghan_crop, tmp_path):
    config = write_config(tmp_path / "c.toml", kaghan_crop, kaghan, blocks=BLOCKS)
    for option, message in ((["--blocks", "0"], "n_blocks"),
                            (["--compactness", "0"], "compactness")):
        result = CliRunner().invoke(app, ["segment", str(config), "--out", str(tmp_path / "o"),
                                          *option])
        assert result.exit_code == 2
        assert message in result.output


def test_given_weights_must_name_real_factors(kaghan, kaghan_crop, tmp_path):
    config = write_config(tmp_path / "w.toml", kaghan_crop, kaghan,
                          blocks=BLOCKS + '\nweighting = "given"\nfactor_weights = { slop = 2 }')
    result = CliRunner().invoke(app, ["segment", str(config), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "unknown factor(s) ['slop']" in " ".join(result.output.split())


def test_table_without_coordinates_is_named(tmp_path, kaghan):
    table = tmp_path / "t.csv"
    table.write_text("a,b,label\n1,2,0\n3,4,1\n")
    config = tmp_path / "t.toml"
    config.write_text(f'name = "t"\n[table]\npath = "{table}"\n')
    result = CliRunner().invoke(app, ["segment", str(config), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "missing column(s) ['X', 'Y']" in " ".join(result.output.split())


def test_run_with_blocks_writes_the_block_outputs(kaghan, kaghan_crop, tmp_path):
    config = load_config(write_config(tmp_path / "r.toml", kaghan_crop, kaghan, blocks=BLOCKS,
                                      model='names = ["lr"]\nmap_model = "lr"\nseed = 1'))
    run_pipeline(config, tmp_path / "run", show_progress=False)
    assert {"blocks.tif", "blocks.gpkg", "tasks.csv", "susceptibility.tif"} <= {
        p.name for p in (tmp_path / "run").iterdir()
    }
    project = ET.parse(tmp_path / "run" / "project.qgs").getroot()
    layers = {e.findtext("layername"): e for e in project.iter("maplayer")}
    assert layers["block outlines"].findtext("datasource") == "./blocks.gpkg|layername=blocks"
    assert layers["blocks"].find("pipe/rasterrenderer").get("type") == "paletted"
