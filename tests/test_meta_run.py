"""The block-wise meta-learning stage end to end, on a real Kaghan crop and a Hong Kong slice."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import rasterio
import torch
from conftest import write_config
from torch.func import functional_call
from typer.testing import CliRunner

from metalsm.cli import app
from metalsm.config import load_config
from metalsm.datasets import EXAMPLES_DIR
from metalsm.errors import MetalsmInputError
from metalsm.models.blockwise import BlockModels
from metalsm.models.recipes import FactorEncoder
from metalsm.pipeline._meta import METHODS

BLOCKS = "n_blocks = 12\ncompactness = 0.5\nmeta_train_fraction = 0.6\nseed = 3"
META = ("iterations = 40\npretrain_epochs = 2\nmeta_batch = 8\nk_shots = [\"1\", \"5\", "
        "\"half\"]\nmap_k = \"5\"\nrepeats = 2\nseed = 5")
MODEL = 'names = ["lr"]\nmap_model = "meta-blockwise"\nseed = 7'


def _config(tmp, kaghan, crop, **extra):
    return write_config(tmp / "meta.toml", crop, kaghan, blocks=BLOCKS, meta=META, model=MODEL,
                        validation='n_folds = 2\nspatial_method = "kmeans"\nseed = 7',
                        **extra)


@pytest.fixture(scope="module")
def meta_run(kaghan, kaghan_crop, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("meta")
    config = _config(tmp, kaghan, kaghan_crop)
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    return tmp, config, tmp / "run"


def test_outputs_are_written(meta_run):
    _, _, run = meta_run
    names = {p.name for p in run.iterdir()}
    assert {"susceptibility.tif", "zones.tif", "zones.csv", "blocks.tif", "metrics.json",
            "kshot.csv", "block_models.csv", "report.html", "validation.csv", "map.png",
            "manifest.json"} <= names
    assert {"intermediate.pt", "intermediate.json", "blocks.pt", "blocks.json",
            "encoder.json", "pretrained.pt"} <= {p.name for p in (run / "models").iterdir()}
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["map_model"] == "meta-blockwise"
    assert len(metrics["meta"]["kshot"]) == 12  # 4 methods (zero-shot included) x 3 K
    flat = metrics["meta"]["map"]
    assert 0 < flat["within_block_std"] < 0.5 and 0 < flat["within_block_std_held_out"] < 0.5
    assert 0 < flat["held_out_top_zone_area_share"] < 1
    assert 0 <= flat["held_out_top_zone_landslide_share"] <= 1
    assert set(metrics["meta"]["step_sizes"]) == {
        f"{layer}.{kind}" for layer in ("hidden.0", "hidden.1", "hidden.2", "out")
        for kind in ("weight", "bias")}
    assert "lr" in metrics["validation"]["spatial"]  # classic models still compared
    assert "Block-wise meta-learning" in (run / "report.html").read_text()


def test_map_is_a_probability_with_nan_only_outside_the_blocks(meta_run):
    _, _, run = meta_run
    with rasterio.open(run / "susceptibility.tif") as s, rasterio.open(run / "blocks.tif") as b:
        values, labels = s.read(1), b.read(1)
    assert np.array_equal(np.isfinite(values), labels >= 0)
    finite = values[np.isfinite(values)]
    assert 0.0 <= finite.min() and finite.max() <= 1.0 and finite.std() > 0.01


def test_every_cell_is_predicted_by_its_blocks_model(meta_run):
    _, _, run = meta_run
    models = BlockModels.load(run / "models")
    encoder = FactorEncoder.load(run / "models" / "encoder.json")
    with rasterio.open(run / "factors.tif") as f:
        names = list(f.descriptions)
        stack = f.read()
    with rasterio.open(run / "blocks.tif") as b:
        labels = b.read(1)
    with rasterio.open(run / "susceptibility.tif") as s:
        values = s.read(1)
    rng = np.random.default_rng(0)
    rows = rng.integers(0, labels.shape[0], 300)
    cols = rng.integers(0, labels.shape[1], 300)
    cells = stack[[names.index(n) for n in encoder.factor_names]][:, rows, cols].T
    X = encoder.transform(cells.astype(np.float64))
    for i in range(rows.size):
        block = labels[rows[i], cols[i]]
        m = models.model_index[block]
        params = models.learner.params_ if m < 0 else {
            k: v[m] for k, v in models.stacked.items()}
        xs = torch.as_tensor(models.learner._standardize(X[i:i + 1]))
        with torch.no_grad():
            p = torch.sigmoid(functional_call(models.learner.net_, params, (xs,))).item()
        assert values[rows[i], cols[i]] == pytest.approx(p, abs=1e-6)
    # the blocks do not all share one model
    assert np.unique(models.model_index).size > 3


def test_kshot_table_has_methods_by_k(meta_run):
    _, _, run = meta_run
    kshot = pd.read_csv(run / "kshot.csv")
    assert list(kshot["method"].unique()) == list(METHODS)
    assert sorted(kshot["k"].astype(str).unique()) == ["1", "5", "half"]
    assert len(kshot) == 12 and (kshot["repeats"] == 2).all()
    # one shot cannot be checked, so the guard keeps the zero-shot model
    by = kshot.set_index(["method", "k"])
    assert by.loc[("proposed", "1"), "auc_mean"] == pytest.approx(
        by.loc[("zero-shot", "1"), "auc_mean"], abs=1e-12)
    for metric in ("accuracy", "f1", "auc", "within_auc", "within_spread"):
        assert kshot[f"{metric}_mean"].between(0, 1).all()
        assert (kshot[f"{metric}_std"] >= 0).all()
    # K = half uses more shots, so fewer query samples than K = 1
    q = kshot.set_index(["method", "k"])["n_query"]
    assert q["proposed", "half"] < q["proposed", "1"]


def test_same_seed_same_map_and_adapt_command_remakes_it(meta_run, tmp_path):
    tmp, config, run = meta_run
    with rasterio.open(run / "susceptibility.tif") as s:
        first = s.read(1)
    # re-make the map from the saved intermediate model with the adapt step
    again = tmp_path / "again"
    again.mkdir()
    shutil.copytree(run / "models", again / "models")
    result = CliRunner().invoke(app, ["adapt", str(config), "--out", str(again), "--k", "5",
                                      "--quiet"])
    assert result.exit_code == 0, result.output
    with rasterio.open(again / "susceptibility.tif") as s:
        remade = s.read(1)
    assert np.array_equal(first, remade, equal_nan=True)
    assert (again / "zones.tif").exists()


def test_separate_steps_equal_the_one_shot_run(meta_run, tmp_path):
    _, config, run = meta_run
    for step in ("pretrain", "metatrain"):
        result = CliRunner().invoke(app, [step, str(config), "--out", str(tmp_path), "--quiet"])
        assert result.exit_code == 0, result.output
    assert "saved pretraining" in result.output
    a = torch.load(run / "models" / "intermediate.pt", weights_only=True)
    b = torch.load(tmp_path / "models" / "intermediate.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_meta_blockwise_without_meta_names_the_key(kaghan, kaghan_crop, tmp_path):
    config = write_config(tmp_path / "c.toml", kaghan_crop, kaghan, blocks=BLOCKS, model=MODEL)
    with pytest.raises(MetalsmInputError, match=r"map_model.*meta-blockwise.*'meta' section"):
        load_config(config)
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "'meta' section" in result.output


def test_adapt_without_a_trained_model_is_a_clear_error(kaghan, kaghan_crop, tmp_path):
    config = _config(tmp_path, kaghan, kaghan_crop)
    result = CliRunner().invoke(app, ["adapt", str(config), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "intermediate" in result.output


def test_hong_kong_slice_runs_without_rasters(tmp_path):
    src = load_config(EXAMPLES_DIR / "hongkong-meta.toml").table.path
    raw = pd.read_csv(src, encoding="utf-8-sig")
    cut = raw[raw["X"] < raw["X"].quantile(0.3)].copy()
    cut.iloc[:7, cut.columns.get_loc("slope")] = np.nan  # dropped, and said so in metrics.json
    cut.to_csv(tmp_path / "hk.csv", index=False)
    text = (EXAMPLES_DIR / "hongkong-meta.toml").read_text()
    text = text.replace('"${METALSM_DATA}/hongkong/samples_HK_noTS.csv"',
                        f'"{tmp_path / "hk.csv"}"')
    text = _set(text, "iterations", "30")
    text = _set(text, "pretrain_epochs", "2")
    text = _set(text, "repeats", "2")
    text = _set(text, "n_blocks", "16")
    text = _set(text, "n_folds", "2")
    (tmp_path / "hk.toml").write_text(text)
    result = CliRunner().invoke(app, ["run", str(tmp_path / "hk.toml"), "--out",
                                      str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"blocks.csv", "tasks.csv", "kshot.csv", "metrics.json", "report.html",
            "block_models.csv", "validation.csv", "samples.gpkg", "roc.png", "folds.png",
            "manifest.json"} <= names
    # one table-area report: the K-shot table and the same validation section as a
    # table run without [meta] (summary with fold spread, all metrics, fold map)
    report = (tmp_path / "run" / "report.html").read_text()
    assert "K-shot results on meta-test blocks" in report
    assert "Mean ± std over folds" in report and "Where the folds lie" in report
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert set(manifest["seeds"]) == {"validation", "blocks", "meta"}
    assert not {"susceptibility.tif", "blocks.tif"} & names
    kshot = pd.read_csv(tmp_path / "run" / "kshot.csv")
    assert len(kshot) == 12 and kshot["auc_mean"].between(0, 1).all()
    warnings = json.loads((tmp_path / "run" / "metrics.json").read_text())["warnings"]
    assert any("7 of" in w and "slope" in w for w in warnings), warnings


def _set(text: str, key: str, value: str) -> str:
    lines = [f"{key} = {value}" if ln.split("=")[0].strip() == key else ln
             for ln in text.splitlines()]
    return "\n".join(lines) + "\n"


def test_a_second_run_with_the_same_seed_gives_the_same_map(meta_run, tmp_path):
    _, config, run = meta_run
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    with rasterio.open(run / "susceptibility.tif") as a, \
            rasterio.open(tmp_path / "susceptibility.tif") as b:
        assert np.array_equal(a.read(1), b.read(1), equal_nan=True)
    assert (pd.read_csv(run / "kshot.csv")).equals(pd.read_csv(tmp_path / "kshot.csv"))


def test_bundled_meta_examples_load():
    for name in ("kaghan-meta.toml", "hongkong-meta.toml"):
        config = load_config(EXAMPLES_DIR / name)
        assert config.model.map_model == "meta-blockwise"
        assert config.meta is not None and config.blocks is not None
