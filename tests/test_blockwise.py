"""Block-wise few-shot models (models/blockwise.py): known answer, fallbacks, save/load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from metalsm.datasets import study_area
from metalsm.evaluation._validation import within_group_metrics
from metalsm.models.blockwise import (
    BlockModels,
    adapt_blocks,
    choose_steps,
    draw_support,
    load_intermediate,
)
from metalsm.models.meta import MetaLearner
from metalsm.models.pretrain import PretrainConfig
from metalsm.raster import Grid, read_aligned
from metalsm.terrain import derive_terrain

torch.set_num_threads(1)

LOCAL = ["slope", "aspect_sin", "aspect_cos", "plan_curvature", "twi", "distance_to_drainage"]
HK_FACTORS = ["land use", "lithology", "DEM", "slope", "curvature", "aspect", "NDVI", "SPI",
              "TWI", "dis2road", "dis2drainage", "dis2catchment", "dis2faults", "DV"]


def two_environment_data(seed: int = 0, n_blocks: int = 300, per_block: int = 40,
                         block: int = 30, sharpness: float = 8.0) -> dict[str, np.ndarray]:
    """Semi-synthetic Kaghan tasks: real factor values, a label rule that differs by half.

    Factors are real Kaghan terrain values (slope, aspect, plan curvature, TWI, distance
    to drainage from the AW3D30 DEM) at random cells of ``n_blocks`` random 30x30-cell
    square blocks. West half: steep slopes fail (``z = slope``); east half: gentle cells
    near drainage fail (``z = (-log distance_to_drainage - slope) / sqrt(2)``), both
    z-scored within their half; ``P(y=1) = sigmoid(sharpness * z)``. The factors do not
    say which half a cell is in, so one global model has to average the two rules.
    """
    root = study_area("kaghan")
    grid = Grid.from_raster(root / "AW3D30.tif")
    dem = read_aligned(root / "AW3D30.tif", grid, name="dem", categorical=False).values
    terrain = derive_terrain(dem, grid, LOCAL)
    layers = np.stack([terrain[n] for n in LOCAL], -1)
    rng = np.random.default_rng(seed)
    rows_b, cols_b = dem.shape[0] // block, dem.shape[1] // block
    chosen = rng.choice(rows_b * cols_b, n_blocks, replace=False)
    r = ((chosen // cols_b)[:, None] * block + rng.integers(0, block, (n_blocks, per_block)))
    c = ((chosen % cols_b)[:, None] * block + rng.integers(0, block, (n_blocks, per_block)))
    r, c = r.ravel(), c.ravel()
    X = layers[r, c].astype(np.float64)
    west = c < dem.shape[1] // 2

    def z(v: np.ndarray, half: np.ndarray) -> np.ndarray:
        return (v - np.median(v[half])) / v[half].std()

    slope, near = X[:, 0], -np.log1p(X[:, 5])
    score = np.where(west, z(slope, west), (z(near, ~west) - z(slope, ~west)) / np.sqrt(2))
    y = (rng.random(score.size) < 1 / (1 + np.exp(-sharpness * score))).astype(int)
    blocks = np.repeat(np.arange(n_blocks), per_block)
    order = rng.permutation(n_blocks)
    cut = int(0.6 * n_blocks)
    return {"X": X, "y": y, "blocks": blocks, "west": west,
            "train_blocks": order[:cut], "test_blocks": order[cut:]}


def known_answer_scores(seed: int = 0, iterations: int = 500) -> dict[str, float]:
    """Accuracy on held-out blocks (shots excluded): meta K=5 vs global MLP vs intermediate."""
    d = two_environment_data(seed)
    X, y, blocks = d["X"], d["y"], d["blocks"]
    train = np.isin(blocks, d["train_blocks"])
    test = ~train
    learner = MetaLearner(iterations=iterations, outer_lr=2e-2, k_support=5, k_query=15,
                          pretrain=PretrainConfig(epochs=2), seed=seed, n_threads=1)
    learner.fit(X[train], y[train], groups=blocks[train])
    test_ids = np.searchsorted(np.sort(d["test_blocks"]), blocks[test])
    models = adapt_blocks(learner, X[test], y[test], test_ids, k=5, seed=seed + 1)
    scored = np.ones(test.sum(), dtype=bool)
    scored[models.support_samples] = False
    y_eval = y[test][scored]
    p_meta = models.predict_proba(X[test], test_ids)[scored]
    p_inter = learner.predict_proba(X[test])[scored, 1]
    scaler = StandardScaler().fit(X[train])
    mlp = MLPClassifier((32, 32, 16), max_iter=300, early_stopping=True, random_state=seed)
    mlp.fit(scaler.transform(X[train]), y[train])
    p_mlp = mlp.predict_proba(scaler.transform(X[test]))[scored, 1]
    return {"meta_k5": accuracy_score(y_eval, p_meta >= 0.5),
            "intermediate": accuracy_score(y_eval, p_inter >= 0.5),
            "global_mlp": accuracy_score(y_eval, p_mlp >= 0.5)}


def test_known_answer_blockwise_meta_beats_global_mlp() -> None:
    # Observed (500 iterations, seeds 0-3): meta K=5 0.862/0.861/0.867/0.783, global MLP
    # 0.622/0.651/0.671/0.644, margin 0.24/0.21/0.20/0.14 accuracy; intermediate model
    # alone 0.49-0.67. The test runs seed 0 and asks for a margin of 0.12.
    scores = known_answer_scores(seed=0)
    assert scores["meta_k5"] >= scores["global_mlp"] + 0.12, scores
    # the gain comes from adaptation, not from a better global fit
    assert scores["meta_k5"] >= scores["intermediate"] + 0.10, scores


# --------------------------------------------------------------------------- small fixtures


@pytest.fixture(scope="module")
def hk_learner() -> tuple[MetaLearner, pd.DataFrame]:
    df = pd.read_csv(study_area("hongkong") / "samples_HK_noTS.csv", encoding="utf-8-sig")
    df = df.iloc[::4].reset_index(drop=True)
    df["block"] = (pd.qcut(df["X"], 6, labels=False) * 5 + pd.qcut(df["Y"], 5, labels=False))
    # no guard: these tests pin the draw, the fallbacks and the vmap arithmetic
    learner = MetaLearner(iterations=10, outer_lr=1e-2, pretrain=False, seed=1, n_threads=1,
                          adapt_guard=False)
    learner.fit(df[HK_FACTORS].to_numpy(), df["label"].to_numpy(), groups=df["block"])
    return learner, df


def test_fallback_rules_are_recorded(hk_learner) -> None:
    learner, df = hk_learner
    X, y = df[HK_FACTORS].to_numpy(), df["label"].to_numpy()
    ids = df["block"].to_numpy().copy()
    n_blocks = 32  # blocks 30 and 31 have no samples
    ids[(ids == 3) & (y == 0)] = -1  # block 3: positives only
    models = adapt_blocks(learner, X, y, ids, k=5, n_blocks=n_blocks, seed=0)
    assert models.rule[3] == "intermediate" and models.reason[3] == "single-class"
    assert models.rule[30] == "intermediate" and models.reason[30] == "no-samples"
    assert models.rule[0] == "adapted" and models.n_support[0] == 5
    assert models.model_index[3] == -1 and models.source_block[3] == -1

    centres = np.zeros((n_blocks, 2))
    centres[:, 0] = np.arange(n_blocks)
    centres[30, 0] = 5.8  # most like block 6
    centres[3, 0] = 2.9   # most like block 2 (block 3 itself is not adapted)
    near = adapt_blocks(learner, X, y, ids, k=5, n_blocks=n_blocks, centres=centres, seed=0)
    assert near.rule[30] == "similar-block" and near.source_block[30] == 6
    assert near.rule[4] == "similar-block" and near.source_block[4] == 5  # block 4 is empty
    assert near.rule[3] == "similar-block" and near.source_block[3] == 2
    rows = np.flatnonzero(df["block"] == 0)[:20]
    np.testing.assert_array_equal(near.predict_proba(X[rows], np.full(20, 30)),
                                  near.predict_proba(X[rows], np.full(20, 6)))

    balanced = MetaLearner(**{**learner.get_params(), "balanced": True})
    for attr in ("n_features_in_", "classes_", "mean_", "std_", "net_", "params_",
                 "inner_lrs_"):
        setattr(balanced, attr, getattr(learner, attr))
    bal = adapt_blocks(balanced, X, y, ids, k=5, n_blocks=n_blocks, seed=0)
    assert bal.rule[3] == "adapted"  # balanced loss on: single-class blocks are adapted


def test_k_options_and_vmap_matches_single_adaptation(hk_learner) -> None:
    learner, df = hk_learner
    X, y, ids = df[HK_FACTORS].to_numpy(), df["label"].to_numpy(), df["block"].to_numpy()
    n = np.bincount(ids)
    half = adapt_blocks(learner, X, y, ids, k="half", seed=0)
    usable = np.array([r == "adapted" for r in half.rule])
    assert np.array_equal(half.n_support[usable], np.maximum(1, n[usable] // 2))
    every = adapt_blocks(learner, X, y, ids, k="all", seed=0)
    assert np.array_equal(every.n_support[usable], n[usable])
    one = adapt_blocks(learner, X, y, ids, k=1, seed=0)
    assert set(one.n_support[usable].tolist()) == {1}
    # block 5 adapted alone through MetaLearner.adapt on the same shots
    b = 5
    shots = np.intersect1d(every.support_samples, np.flatnonzero(ids == b))
    params = learner.adapt(X[shots], y[shots])
    rows = np.flatnonzero(ids == b)
    alone = 1 / (1 + np.exp(-learner.logits(X[rows], params).astype(np.float64)))
    np.testing.assert_allclose(every.predict_proba(X[rows], ids[rows]), alone, rtol=1e-5,
                               atol=1e-6)


def test_save_load_gives_identical_predictions(hk_learner, tmp_path: Path) -> None:
    learner, df = hk_learner
    X, y, ids = df[HK_FACTORS].to_numpy(), df["label"].to_numpy(), df["block"].to_numpy()
    models = adapt_blocks(learner, X[::3], y[::3], ids[::3], k=5, n_blocks=31,
                          factor_names=HK_FACTORS, seed=2)
    cell_ids = ids.copy()
    cell_ids[:10] = -1
    before = models.predict_proba(X, cell_ids)
    assert np.isnan(before[:10]).all() and np.isfinite(before[10:]).all()
    out = models.save(tmp_path / "models")
    for name in ("intermediate.pt", "intermediate.json", "blocks.pt", "blocks.json"):
        assert (out / name).exists()
    assert not list(out.glob(".*partial*"))
    meta = json.loads((out / "blocks.json").read_text())
    assert meta["factor_names"] == HK_FACTORS and meta["k"] == 5 and meta["seed"] == 1
    assert len(meta["blocks"]) == 31 and meta["blocks"][30]["reason"] == "no-samples"
    assert len(meta["mean"]) == len(HK_FACTORS)
    loaded = BlockModels.load(out)
    np.testing.assert_array_equal(loaded.predict_proba(X, cell_ids), before)
    assert loaded.rule == models.rule and loaded.seed == 2
    inter, names = load_intermediate(out)
    assert names == HK_FACTORS
    np.testing.assert_array_equal(inter.predict_proba(X), learner.predict_proba(X))
    for name, rate in learner.step_sizes.items():  # Meta-SGD rates travel with the model
        torch.testing.assert_close(inter.step_sizes[name], rate, rtol=0, atol=0)


def test_half_support_takes_half_of_each_class_so_queries_keep_both():
    """A block with 10 % landslides: an alternating draw of 20 of 40 would take all 4
    landslides and leave a one-class query; the "half" draw takes 2 of them."""
    rng = np.random.default_rng(3)
    blocks = np.repeat(np.arange(3), [40, 41, 30])
    y = np.concatenate([np.r_[np.ones(4), np.zeros(36)], np.r_[np.ones(20), np.zeros(21)],
                        np.r_[np.ones(27), np.zeros(3)]]).astype(int)
    order = rng.permutation(y.size)
    blocks, y = blocks[order], y[order]
    for seed in range(5):
        support = draw_support(y, blocks, "half", seed)
        for b in range(3):
            inb = blocks == b
            assert support[inb].sum() == inb.sum() // 2
            for cls in (0, 1):
                n_cls = int((y[inb] == cls).sum())
                taken = int((y[inb & support] == cls).sum())
                assert abs(taken - n_cls / 2) <= 1
                assert (y[inb & ~support] == cls).sum() >= 1


def _guarded(learner: MetaLearner, guard_steps=(3, 6)) -> MetaLearner:
    out = MetaLearner(**{**learner.get_params(), "adapt_guard": True,
                         "guard_steps": guard_steps})
    for attr in ("n_features_in_", "classes_", "mean_", "std_", "net_", "params_",
                 "inner_lrs_"):
        setattr(out, attr, getattr(learner, attr))
    return out


def test_guard_picks_the_step_count_with_the_lowest_cross_validated_loss(hk_learner) -> None:
    """The vectorized choice equals a per-block loop: leave-one-out on the support, summed
    log-loss for 0 (zero-shot), 3 and 6 steps, ties to the fewer steps."""
    learner, df = hk_learner
    guarded = _guarded(learner)
    X, y, ids = df[HK_FACTORS].to_numpy(), df["label"].to_numpy(), df["block"].to_numpy()
    sets = []
    for b in range(8):
        rows = np.flatnonzero(ids == b)[: 2 + b]  # support sizes 2..9
        sets.append((torch.as_tensor(guarded._standardize(X[rows])),
                     torch.as_tensor(y[rows].astype(np.float32))))
    width = max(len(s[1]) for s in sets)
    xs = torch.zeros(len(sets), width, X.shape[1])
    ys = torch.zeros(len(sets), width)
    ms = torch.zeros(len(sets), width, dtype=torch.bool)
    for i, (x, t) in enumerate(sets):
        xs[i, :len(t)], ys[i, :len(t)], ms[i, :len(t)] = x, t, True
    chosen = choose_steps(guarded, xs, ys, ms)

    def loss(params, x, t) -> float:
        logit = torch.func.functional_call(guarded.net_, params, (x,))
        return float(torch.nn.functional.binary_cross_entropy_with_logits(
            logit, t, reduction="sum"))

    for i, (x, t) in enumerate(sets):
        totals = [loss(guarded.params_, x, t), 0.0, 0.0]
        for j in range(len(t)):  # leave-one-out (sizes below GUARD_FOLDS)
            keep = np.arange(len(t)) != j
            for c, steps in enumerate((3, 6), start=1):
                adapted = guarded.adapt(guarded.mean_ + guarded.std_ * x[keep].numpy(),
                                        t[keep].numpy(), steps=steps)
                totals[c] += loss(adapted, x[j:j + 1], t[j:j + 1])
        assert chosen[i] == (0, 3, 6)[int(np.argmin(totals))], (i, totals)


def test_one_shot_keeps_the_zero_shot_model_and_guard_is_recorded(hk_learner) -> None:
    learner, df = hk_learner
    guarded = _guarded(learner)
    X, y, ids = df[HK_FACTORS].to_numpy(), df["label"].to_numpy(), df["block"].to_numpy()
    one = adapt_blocks(guarded, X, y, ids, k=1, seed=0)
    assert set(one.rule) == {"intermediate"}
    assert set(one.reason) == {"guard", "no-samples"}  # qcut grid cells without samples
    np.testing.assert_allclose(one.predict_proba(X, ids), guarded.predict_proba(X)[:, 1],
                               rtol=1e-6)
    half = adapt_blocks(guarded, X, y, ids, k="half", seed=0)
    steps = np.array([r["n_steps"] for r in half.block_table()])
    assert set(steps.tolist()) <= {0, 3, 6}
    assert np.array_equal(steps == 0, np.isin(half.reason, ["guard", "no-samples"]))
    assert (steps > 0).any() and (np.array(half.reason) == "guard").any()


def test_default_settings_survive_rescaled_factors() -> None:
    """A real slice with one factor x 1000 and another shifted by 500: the meta-learner
    with the package defaults (fewer iterations) still ranks cells inside held-out
    blocks and never collapses a block with both classes to one predicted class."""
    df = pd.read_csv(study_area("hongkong") / "samples_HK_noTS.csv", encoding="utf-8-sig")
    df = df.iloc[::3].reset_index(drop=True)
    df["DEM"] *= 1000.0
    df["slope"] += 500.0
    blocks = (pd.qcut(df["X"], 6, labels=False) * 5 + pd.qcut(df["Y"], 5, labels=False))
    blocks = blocks.to_numpy()
    X, y = df[HK_FACTORS].to_numpy(), df["label"].to_numpy()
    test_blocks = np.random.default_rng(0).permutation(30)[:12]
    test = np.isin(blocks, test_blocks)
    learner = MetaLearner(iterations=300, pretrain=PretrainConfig(epochs=5), seed=0,
                          n_threads=1).fit(X[~test], y[~test], groups=blocks[~test])
    models = adapt_blocks(learner, X[test], y[test], blocks[test], k=5, seed=0)
    query = np.ones(int(test.sum()), dtype=bool)
    query[models.support_samples] = False
    p = models.predict_proba(X[test][query], blocks[test][query])
    yq, bq = y[test][query], blocks[test][query]
    assert within_group_metrics(yq, p, bq)["within_auc"] > 0.7
    for b in np.unique(bq):
        inside = bq == b
        if np.unique(yq[inside]).size == 2 and inside.sum() >= 10:
            assert np.unique(p[inside] >= 0.5).size == 2, b
