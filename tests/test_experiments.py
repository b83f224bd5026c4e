"""The experiments (issue 6): method registry, shared support draws, summaries, CLI."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import hk_slice
from typer.testing import CliRunner

from metalsm.cli import app
from metalsm.config import load_config
from metalsm.errors import MetalsmInputError
from metalsm.evaluation import compare_methods, draw_support, fit_set, query_mask, summarize
from metalsm.experiments import EXPERIMENTS
from metalsm.experiments.common import apply_preset, experiment_data, experiment_meta
from metalsm.experiments.methods import METHODS, resolve_methods
from metalsm.report.figures import candle_table, plot_candles


def _table_config(tmp: Path, n: int = 1200, seed: int = 0, extra: str = "") -> Path:
    hk_slice(n, seed).to_csv(tmp / "hk.csv", index=False)
    path = tmp / "hk.toml"
    path.write_text(
        'name = "hk-slice"\n[table]\npath = "hk.csv"\nlabel_column = "label"\n'
        'x_column = "X"\ny_column = "Y"\ncategorical = ["land use", "lithology"]\n'
        "[blocks]\nn_blocks = 24\ncompactness = 3.0\n[meta]\niterations = 30\n"
        "pretrain_epochs = 2\n" + extra)
    return path


@pytest.fixture(scope="module")
def hk_data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hk_exp")
    config = apply_preset(load_config(_table_config(tmp)), "small")
    data, _ = experiment_data(config, tmp / "blocks")
    return config, data


def test_registry_holds_every_family():
    assert {"lr", "rf", "svm", "mlp", "lightgbm", "fr", "fr-rf"} <= {
        n for n, m in METHODS.items() if m.family == "global"}
    assert METHODS["rl-based"].family == "transfer"
    assert METHODS["maml"].family == "meta" and METHODS["proposed"].family == "meta"
    assert all(m.name == n and m.label for n, m in METHODS.items())
    assert {"overall", "kshot", "ablation", "validation", "credibility", "all"} <= set(
        EXPERIMENTS)


def test_experiments_section_defaults_and_unknown_keys(tmp_path):
    config = load_config(_table_config(tmp_path))
    assert config.experiments.k_shots == ("1", "5", "half")
    assert config.experiments.repeats == 10
    path = _table_config(tmp_path, extra='[experiments]\nrepeats = 3\nk_shots = ["2"]\n')
    assert load_config(path).experiments.repeats == 3
    path = _table_config(tmp_path, extra="[experiments]\nrepeat = 3\n")
    with pytest.raises(MetalsmInputError, match="experiments.*repeat"):
        load_config(path)
    path = _table_config(tmp_path, extra='[experiments]\nk_shots = ["all"]\n')
    with pytest.raises(MetalsmInputError, match="k_shots"):
        load_config(path)
    assert config.experiments.ablations == ("adaptation", "pretrain_loss", "balanced",
                                            "blocks")
    path = _table_config(tmp_path, extra='[experiments]\nablations = ["balanced"]\n')
    assert load_config(path).experiments.ablations == ("balanced",)
    path = _table_config(tmp_path, extra='[experiments]\nablations = ["adapt"]\n')
    with pytest.raises(MetalsmInputError, match=r"ablations must name .* got \['adapt'\]"):
        load_config(path)


def test_support_draw_is_shared_stratified_and_respects_k(hk_data):
    _, data = hk_data
    for k in (1, 5, "half"):
        a, b = draw_support(data, k, 7), draw_support(data, str(k), 7)
        assert np.array_equal(a, b)  # one draw per (K, seed), whatever method asks
        assert not (a & data.train).any()  # shots only from meta-test blocks
        counts = np.bincount(data.blocks[a], minlength=data.n_blocks)
        n = np.bincount(data.blocks[data.test], minlength=data.n_blocks)
        want = np.where(n > 0, np.maximum(1, n // 2), 0) if k == "half" else np.minimum(k, n)
        assert np.array_equal(counts[data.test_blocks], want[data.test_blocks])
    assert not np.array_equal(draw_support(data, 5, 7), draw_support(data, 5, 8))


def test_global_methods_never_fit_on_query(hk_data):
    _, data = hk_data
    support = draw_support(data, "half", 3)
    query, fit = query_mask(data, support), fit_set(data, support)
    assert query.any() and not (fit & query).any()
    assert np.array_equal(fit | query, np.ones_like(fit))  # every sample: train, shot or query


def test_compare_methods_rows_seeds_and_probabilities(hk_data):
    config, data = hk_data
    meta = experiment_meta(config)
    raw = compare_methods(data, meta, resolve_methods(["lr", "maml"]), ["1", "half"], 2, 5)
    assert len(raw) == 2 * 2 * 2
    assert set(raw["seed"]) == {5, 6}
    for col in ("accuracy", "precision", "recall", "f1", "auc"):
        assert raw[col].between(0, 1).all()
    # both methods scored on the same query samples per (K, repeat)
    assert raw.groupby(["k", "repeat"])["n_query"].nunique().eq(1).all()
    for (_method, k, r), p in raw.attrs["proba"].items():
        assert p.shape == raw.attrs["y"][(k, r)].shape
        assert np.isfinite(p).all()


def test_summarize_by_hand():
    raw = pd.DataFrame({
        "method": ["a", "a", "a", "b", "b", "b"], "k": ["1"] * 3 + ["5"] * 3,
        "accuracy": [0.5, 0.7, 0.9, 0.6, 0.6, 0.6], "n_query": [10, 10, 10, 8, 8, 8]})
    out = summarize(raw, metrics=("accuracy",)).set_index("method")
    assert out.loc["a", "accuracy_mean"] == pytest.approx(0.7)
    assert out.loc["a", "accuracy_std"] == pytest.approx(np.sqrt(0.08 / 3))
    assert (out.loc["a", "accuracy_min"], out.loc["a", "accuracy_max"]) == (0.5, 0.9)
    assert out.loc["b", "accuracy_std"] == 0.0 and out.loc["b", "repeats"] == 3
    assert out.loc["b", "n_query"] == 8


def test_candle_chart_one_candle_per_method_and_k(tmp_path):
    raw = pd.DataFrame({"method": np.repeat(["x", "y", "z"], 6),
                        "k": np.tile(np.repeat(["1", "5", "half"], 2), 3),
                        "accuracy": np.linspace(0.5, 0.9, 18)})
    summary = summarize(raw, metrics=("accuracy",))
    assert len(candle_table(summary)) == 9
    path = plot_candles(summary, tmp_path / "candles.png")
    assert path.stat().st_size > 1000


def test_cli_experiment_all_small_preset(tmp_path):
    cheap = ["lr", "fr", "lightgbm", "rl-based", "maml", "proposed"]
    path = _table_config(tmp_path, n=800, seed=1, extra="[experiments]\nmethods = [" +
                         ", ".join(f'"{m}"' for m in cheap) + "]\n"
                         '[validation]\nrepeats = 2\nspatial_method = "grid"\n')
    out = tmp_path / "exp"
    only = {k: EXPERIMENTS[k] for k in ("kshot", "overall", "ablation", "validation",
                                        "credibility", "all")}
    import metalsm.experiments as registry

    saved = dict(registry.EXPERIMENTS)
    registry.EXPERIMENTS.clear()
    registry.EXPERIMENTS.update(only)  # the other helpers' experiments have their own tests
    try:
        result = CliRunner().invoke(app, ["experiment", "all", str(path), "--out", str(out),
                                          "--preset", "small", "--quiet"])
    finally:
        registry.EXPERIMENTS.clear()
        registry.EXPERIMENTS.update(saved)
    assert result.exit_code == 0, result.output
    for rel in ("overall/overall.csv", "kshot/kshot.csv", "ablation/ablation_pretrain_loss.csv",
                "ablation/ablation_balanced.csv", "ablation/ablation_blocks.csv",
                "validation/validation.csv"):
        table = pd.read_csv(out / rel)
        means = table[[c for c in table.columns if c.endswith("_mean")
                       and not c.startswith("kappa")]].to_numpy() if "accuracy_mean" in \
            table else table[["accuracy_random", "auc_spatial"]].to_numpy()
        assert len(table) and np.nanmin(means) >= 0 and np.nanmax(means) <= 1, rel
    overall = pd.read_csv(out / "overall/overall.csv")
    assert set(overall["method"]) == set(cheap) and set(overall["k"].astype(str)) == {"half"}
    kshot = pd.read_csv(out / "kshot/kshot.csv")
    assert set(kshot["k"].astype(str)) == {"1", "5", "half"}
    # the strongest global models are always shown beside the few-shot methods
    assert set(kshot["method"]) == {"rf", "lightgbm", "mlp", "rl-based", "maml", "proposed"}
    for png in ("kshot/kshot_candles.png", "overall/overall_roc.png"):
        assert (out / png).stat().st_size > 0
    report = (out / "report.html").read_text()
    assert "K-shot comparison" in report and "skipped" in report  # credibility: a table
    # the validation experiment follows [validation]: folds drawn twice
    folds = pd.read_csv(out / "validation/validation_folds.csv")
    assert (folds["repeats"] == 2).all() and (folds["auc_repeat_std"] >= 0).all()
    assert "Folds drawn 2 times" in report
    assert (out / "manifest.json").exists()


def test_cli_unknown_preset_is_an_input_error(tmp_path):
    path = _table_config(tmp_path, n=400)
    result = CliRunner().invoke(app, ["experiment", "overall", str(path), "--out",
                                      str(tmp_path / "o"), "--preset", "huge", "--quiet"])
    assert result.exit_code == 2 and "preset" in result.output


def test_methods_config_unknown_name(hk_data, tmp_path):
    config, _ = hk_data
    bad = replace(config, experiments=replace(config.experiments, methods=("nope",)))
    with pytest.raises(MetalsmInputError, match="unknown method"):
        EXPERIMENTS["overall"](bad, tmp_path / "o")


def test_cli_meta_iterations_reaches_the_experiment(tmp_path, monkeypatch):
    import metalsm.experiments as registry
    from metalsm.experiments.common import ExperimentResult, experiment_meta

    seen = {}

    def record(config, out, **kwargs):
        seen["iterations"] = experiment_meta(config).iterations
        return ExperimentResult(paths={}, seconds=0.0)

    monkeypatch.setitem(registry.EXPERIMENTS, "kshot", record)
    path = _table_config(tmp_path, n=400)
    args = ["experiment", "kshot", str(path), "--out", str(tmp_path / "o"), "--quiet"]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert seen["iterations"] == 30  # [meta] iterations of the config
    assert CliRunner().invoke(app, [*args, "--meta-iterations", "5000"]).exit_code == 0
    assert seen["iterations"] == 5000
    clash = CliRunner().invoke(app, [*args, "--meta-iterations", "50", "--preset", "small"])
    assert clash.exit_code != 0 and "--meta-iterations" in clash.output


def test_chunk_size_reaches_the_experiments_and_changes_nothing(kaghan_crop, kaghan, tmp_path,
                                                                 monkeypatch):
    """`--chunk-size` keeps an experiment's stack on disk, window by window, with the
    same samples and blocks as in memory."""
    from conftest import write_config

    from metalsm.config import load_config
    from metalsm.stack import FileFactorStack

    config = load_config(write_config(tmp_path / "crop.toml", kaghan_crop, kaghan,
                                      blocks="n_blocks = 6\nseed = 3",
                                      terrain='factors = ["elevation", "slope"]'))
    in_memory, _ = experiment_data(config, tmp_path / "memory")
    chunked_config = replace(config, compute=replace(config.compute, chunk_size=64))
    chunked, stage = experiment_data(chunked_config, tmp_path / "chunked")
    assert isinstance(stage.stack, FileFactorStack)
    np.testing.assert_array_equal(chunked.X, in_memory.X)
    np.testing.assert_array_equal(chunked.blocks, in_memory.blocks)

    import metalsm.experiments as registry
    seen = {}

    def record(config, out, **kwargs):
        seen["chunk_size"] = config.compute.chunk_size
        from metalsm.experiments.common import ExperimentResult

        return ExperimentResult(paths={}, seconds=0.0)

    monkeypatch.setitem(registry.EXPERIMENTS, "kshot", record)
    args = ["experiment", "kshot", str(tmp_path / "crop.toml"), "--out", str(tmp_path / "o"),
            "--quiet", "--chunk-size", "128"]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert seen["chunk_size"] == 128
