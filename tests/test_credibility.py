"""Credibility by fuzzy membership, band sampling, the band sweep and the CLI, on the crop."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import rasterio
from conftest import write_config
from typer.testing import CliRunner

from metalsm.cli import app
from metalsm.config import load_config
from metalsm.errors import MetalsmInputError
from metalsm.experiments.credibility import spatial_holdout
from metalsm.inputs import landslide_mask, positive_cells, read_inventory
from metalsm.raster import cog_problems
from metalsm.samples import (
    CredibilityBandWarning,
    NegativeRequest,
    band_mask,
    credibility_map,
    draw_negatives,
    draw_samples,
)
from metalsm.stack import build_factor_stack

FAST = (
    'models = ["fr-rf", "svm"]\nn_estimators = 25\nmax_area_cells = 4000\n'
    "test_regions = 4\nseed = 3"
)


@pytest.fixture(scope="module")
def crop(kaghan, kaghan_crop, tmp_path_factory):
    out = tmp_path_factory.mktemp("cred")
    path = write_config(out / "crop.toml", kaghan_crop, kaghan, credibility=FAST)
    config = load_config(path)
    stack = build_factor_stack(config)
    inventory = read_inventory(config.inventory.path, stack.grid)
    mask = landslide_mask(inventory, stack.grid)
    positives = positive_cells(inventory, stack.grid, stack.valid, rule="centroid")
    return path, config, stack, inventory, mask, positives


def test_credibility_is_in_range_and_lower_on_landslides(crop):
    _, config, stack, _, mask, positives = crop
    cred, model = credibility_map(stack, positives, config.credibility, config.factor_selection)
    valid = stack.valid
    assert cred.shape == stack.grid.shape and cred.dtype == np.float32
    assert np.isnan(cred[~valid]).all() and np.isfinite(cred[valid]).all()
    assert cred[valid].min() == pytest.approx(0.0, abs=1e-6)  # rescaled to the full range
    assert cred[valid].max() == pytest.approx(1.0, abs=1e-6)
    on_slides = cred[mask & valid].mean()
    elsewhere = cred[~mask & valid].mean()
    assert on_slides < elsewhere - 0.05
    assert model.weights.sum() == pytest.approx(1.0)
    # fuzzy intersection and equal weights are valid too, and still in [0, 1]
    from dataclasses import replace

    other, _ = credibility_map(stack, positives,
                               replace(config.credibility, combine="min", weighting="equal"))
    assert np.nanmin(other) >= 0 and np.nanmax(other) <= 1
    assert np.nanmean(other[mask & valid]) < np.nanmean(other[~mask & valid])


def test_test_landslides_never_influence_the_credibility(crop):
    _, config, stack, _, _, positives = crop
    split = spatial_holdout(stack.grid, stack.valid, positives, 4, seed=3)
    base, _ = credibility_map(stack, split.train, config.credibility)
    # the credibility depends on the training landslides only: adding the test landslides
    # changes it, so a map built from train cells alone cannot have seen them
    with_test = (np.r_[split.train[0], split.test[0]], np.r_[split.train[1], split.test[1]])
    leaked, _ = credibility_map(stack, with_test, config.credibility)
    assert not np.allclose(base, leaked, equal_nan=True)
    # moving the test landslides anywhere leaves the training-only map unchanged
    again, _ = credibility_map(stack, split.train, config.credibility)
    np.testing.assert_array_equal(base, again)


def test_band_sampling_draws_only_from_the_band_outside_landslides():
    shape = (60, 80)
    cred = np.tile(np.linspace(0, 1, 80, dtype=np.float32), (60, 1))
    mask = np.zeros(shape, bool)
    mask[20:30, 60:70] = True
    request = NegativeRequest(np.ones(shape, bool), mask, n=300, cell_size=10.0,
                              credibility=cred, credibility_band=(0.7, 1.0))
    rows, cols = draw_negatives("credibility", request, seed=1)
    assert rows.size == 300 and np.unique(rows * 80 + cols).size == 300
    assert (cred[rows, cols] >= 0.7).all()
    assert not mask[rows, cols].any()
    assert band_mask(np.array([0.2, 0.4, 1.0, np.nan]), (0.2, 0.4)).tolist() == [
        True, False, False, False]
    assert band_mask(np.array([0.8, 1.0]), (0.8, 1.0)).all()  # the top band is closed


def test_a_thin_band_warns_with_the_count_or_fails_when_strict():
    shape = (40, 40)
    cred = np.full(shape, 0.5, np.float32)
    cred[0, :7] = 0.1  # 7 cells in [0, 0.2)
    request = NegativeRequest(np.ones(shape, bool), np.zeros(shape, bool), n=50, cell_size=1.0,
                              credibility=cred, credibility_band=(0.0, 0.2))
    with pytest.warns(CredibilityBandWarning, match="only 7 candidate cell.*drawing all 7"):
        rows, cols = draw_negatives("credibility", request, seed=0)
    assert rows.size == 7 and (cred[rows, cols] < 0.2).all()
    strict = NegativeRequest(**{**request.__dict__, "strict": True})
    with pytest.raises(MetalsmInputError, match=r"band \[0, 0.2\) has only 7"):
        draw_negatives("credibility", strict, seed=0)
    no_map = NegativeRequest(np.ones(shape, bool), np.zeros(shape, bool), n=5, cell_size=1.0)
    with pytest.raises(MetalsmInputError, match="needs a credibility map"):
        draw_negatives("credibility", no_map, seed=0)


def test_pipeline_draws_credibility_negatives(crop, kaghan, kaghan_crop, tmp_path):
    _, _, stack, inventory, mask, _ = crop
    path = write_config(tmp_path / "c.toml", kaghan_crop, kaghan,
                        sampling='method = "credibility"\nratio = 1.0\nbuffer_m = 60.0\n'
                                 "credibility_band = [0.6, 1.0]\nseed = 7")
    config = load_config(path)
    samples = draw_samples(config, stack, inventory, mask)
    neg = samples.table[samples.table.label == 0]
    pos = samples.table[samples.table.label == 1]
    cred, _ = credibility_map(stack, (pos.row.to_numpy(), pos["col"].to_numpy()),
                              config.credibility, config.factor_selection)
    assert len(neg) == len(pos)
    assert (cred[neg.row, neg["col"]] >= 0.6).all()
    assert not mask[neg.row, neg["col"]].any()


def test_bad_band_config_names_the_key(kaghan, kaghan_crop, tmp_path):
    path = write_config(tmp_path / "b.toml", kaghan_crop, kaghan,
                        credibility="bands = [[0.0, 0.2], [0.5, 0.3]]")
    with pytest.raises(MetalsmInputError, match=r"credibility.bands\[1\]"):
        load_config(path)
    path = write_config(tmp_path / "s.toml", kaghan_crop, kaghan,
                        sampling='method = "credibility"\nstrict = "yes"')
    with pytest.raises(MetalsmInputError, match="sampling.strict.*true or false"):
        load_config(path)


def test_cli_factors_writes_tables_and_heatmap(crop, tmp_path):
    path = crop[0]
    out = tmp_path / "factors"
    result = CliRunner().invoke(app, ["factors", str(path), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    for name in ("fr_tables.csv", "factor_selection.csv", "pearson.csv", "spearman.csv",
                 "fr_tables.png", "correlation.png"):
        assert (out / name).stat().st_size > 0, name
    fr = pd.read_csv(out / "fr_tables.csv")
    for _, table in fr.groupby("factor"):
        assert table["area_share"].sum() == pytest.approx(1.0, abs=1e-4)
        assert table["landslide_share"].sum() == pytest.approx(1.0, abs=1e-4)
    selection = pd.read_csv(out / "factor_selection.csv")
    assert set(selection["factor"]) == set(crop[2].names)
    assert selection["reason"].str.match("^(kept|dropped): ").all()
    assert "selected factors:" in result.output


def test_cli_credibility_writes_tif_and_png(crop, tmp_path):
    path, _, stack, *_ = crop
    out = tmp_path / "cred"
    result = CliRunner().invoke(app, ["credibility", str(path), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert (out / "credibility.png").stat().st_size > 0
    with rasterio.open(out / "credibility.tif") as src:
        assert (src.height, src.width) == stack.grid.shape
        assert src.transform.almost_equals(stack.grid.transform)
        values = src.read(1)
    assert np.nanmin(values) >= 0 and np.nanmax(values) <= 1
    assert cog_problems(out / "credibility.tif") == []


def test_cli_experiment_credibility_on_the_crop(crop, tmp_path):
    path, config, stack, *_ = crop
    out = tmp_path / "exp"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CredibilityBandWarning)
        result = CliRunner().invoke(app, ["experiment", "credibility", str(path), "--out",
                                          str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    out = out / "credibility"  # like every experiment: OUT/NAME
    metrics = pd.read_csv(out / "band_metrics.csv")
    assert set(metrics["model"]) == {"fr-rf", "svm"}
    assert len(metrics) == 2 * (len(config.credibility.bands) + 1)
    for col in ("precision", "recall", "f1", "auc"):
        assert metrics[col].between(0, 1).all()
    # every band is tested on the same held-out samples
    assert metrics["n_test_pos"].nunique() == 1 and metrics["n_test_neg"].nunique() == 1
    zones = pd.read_csv(out / "band_zones.csv")
    assert list(zones["label"][:5]) == ["Very low", "Low", "Moderate", "High", "Very high"]
    for _, part in zones.groupby(["band", "model"]):
        assert part["area_share"].sum() == pytest.approx(1.0, abs=1e-3)
        assert part["landslide_share"].sum() == pytest.approx(1.0, abs=1e-3)
    for name in ("band_metrics.png", "band_zones.png", "credibility.png", "experiment.json"):
        assert (out / name).stat().st_size > 0
    # the experiment's credibility map is the one fitted on training landslides only
    split = spatial_holdout(stack.grid, stack.valid,
                            positive_cells(crop[3], stack.grid, stack.valid, rule="centroid",
                                           seed=config.sampling.seed),
                            config.credibility.test_regions, config.credibility.seed)
    expected, _ = credibility_map(stack, split.train, config.credibility,
                                  config.factor_selection)
    with rasterio.open(out / "credibility.tif") as src:
        np.testing.assert_allclose(src.read(1), expected, equal_nan=True)


def test_cli_unknown_experiment_and_bad_input_exit_2(crop, kaghan, kaghan_crop, tmp_path):
    path = crop[0]
    result = CliRunner().invoke(app, ["experiment", "nope", str(path), "--out",
                                      str(tmp_path / "x")])
    assert result.exit_code == 2 and "unknown experiment 'nope'" in result.output
    bad = write_config(tmp_path / "bad.toml", kaghan_crop, kaghan,
                       factor_selection="max_categories = 3")
    result = CliRunner().invoke(app, ["factors", str(bad), "--out", str(tmp_path / "y")])
    assert result.exit_code == 2
    assert "more than factor_selection.max_categories = 3" in " ".join(result.output.split())
