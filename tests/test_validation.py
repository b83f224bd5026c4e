"""Validation: hand-checked metrics, random/spatial folds and CV on real Hong Kong samples."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import hk_slice, hongkong_table
from sklearn.metrics import auc as sk_auc

from metalsm.errors import MetalsmInputError
from metalsm.evaluation._validation import (
    METRICS,
    CVResult,
    Evaluation,
    area_share_above,
    classification_metrics,
    cross_validate_model,
    evaluate_models,
    prediction_rate,
    random_folds,
    rate_curve,
    rate_curve_from_counts,
    roc_points,
    spatial_folds,
    within_group_metrics,
)
from metalsm.models import MODEL_NAMES, make_model

CATEGORICAL = ["land use", "lithology"]




def factors(table: pd.DataFrame) -> pd.DataFrame:
    return table[[c for c in table.columns if c not in ("X", "Y", "label")]]


# --------------------------------------------------------------------------- metrics


def test_metrics_perfect_predictions():
    y = np.array([0, 0, 1, 1, 1])
    m = classification_metrics(y, np.array([0.1, 0.2, 0.8, 0.9, 0.6]))
    assert m == {metric: 1.0 for metric in METRICS}


def test_metrics_hand_checked_case():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.2, 0.6, 0.4, 0.3, 0.1])
    m = classification_metrics(y, p)
    # TP=3 FN=1 FP=1 TN=3: accuracy=precision=recall=f1=0.75;
    # kappa = (0.75 - 0.5) / (1 - 0.5) = 0.5; AUC = 13 of 16 pairs ranked right
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["precision"] == pytest.approx(0.75)
    assert m["recall"] == pytest.approx(0.75)
    assert m["f1"] == pytest.approx(0.75)
    assert m["kappa"] == pytest.approx(0.5)
    assert m["auc"] == pytest.approx(13 / 16)
    # (n, 2) input and a threshold: at 0.65 the negative at 0.6 becomes TN -> precision 1
    m2 = classification_metrics(y, np.column_stack([1 - p, p]), threshold=0.65)
    assert m2["precision"] == 1.0
    assert m2["recall"] == pytest.approx(0.75)
    assert m2["auc"] == pytest.approx(13 / 16)


def test_metrics_single_class_and_zero_division():
    m = classification_metrics(np.zeros(4, dtype=int), np.array([0.1, 0.2, 0.3, 0.4]))
    assert np.isnan(m["auc"])
    assert m["accuracy"] == 1.0
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0
    with pytest.raises(MetalsmInputError, match="0/1"):
        classification_metrics(np.array([0, 2]), np.array([0.1, 0.9]))


def test_roc_points():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.2, 0.6, 0.4, 0.3, 0.1])
    fpr, tpr, thresholds, auc = roc_points(y, p)
    assert auc == pytest.approx(13 / 16)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert thresholds.shape == fpr.shape
    assert sk_auc(fpr, tpr) == pytest.approx(auc)


def _trapezoid(curve):
    return float(np.sum(np.diff(curve.area_share)
                        * (curve.landslide_share[1:] + curve.landslide_share[:-1]) / 2))


def test_success_rate_hand_checked():
    """Five cells, landslides on the 0.9 and 0.5 cells. Ranked down: after 1 cell 1/2 of
    the landslides, after 2 still 1/2, after 3 all. Area under: 0.05 + 0.1 + 0.15 + 0.4
    = 0.7 = mean over landslides of the share of area below them, ties half:
    (4 + 0.5) / 5 and (2 + 0.5) / 5."""
    curve = rate_curve([0.9, 0.8, 0.5, 0.2, 0.1], [0.9, 0.5])
    np.testing.assert_allclose(curve.area_share, [0, 0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(curve.landslide_share, [0, 0.5, 0.5, 1, 1, 1])
    assert curve.auc == pytest.approx(0.7)
    # classes with ties (counts low -> high): 2 cells/0 slides, 1/1, 1/1
    tied = rate_curve_from_counts([2, 1, 1], [0, 1, 1])
    np.testing.assert_allclose(tied.area_share, [0, 0.25, 0.5, 1.0])
    assert tied.auc == pytest.approx(0.75) == pytest.approx((3.5 / 4 + 2.5 / 4) / 2)
    with pytest.raises(MetalsmInputError, match="cells in both"):
        rate_curve_from_counts([1, 2], [0, 0])


def test_prediction_rate_hand_checked():
    """Held-out landslides at 0.35 (one area cell above: 1/4) and 0.2 (two above and a tie:
    2.5/4); AUC = 1 - mean(0.25, 0.625) = 0.5625, the area under the step curve."""
    shares = area_share_above([0.1, 0.2, 0.3, 0.4], [0.35, 0.2])
    np.testing.assert_allclose(shares, [0.25, 0.625])
    curve = prediction_rate(np.r_[shares, np.nan])  # NaN: non-landslides, skipped
    assert curve.auc == pytest.approx(0.5625) == pytest.approx(_trapezoid(curve))
    np.testing.assert_allclose(curve.area_share, [0, 0.25, 0.25, 0.625, 0.625, 1])
    np.testing.assert_allclose(curve.landslide_share, [0, 0, 0.5, 0.5, 1, 1])


# --------------------------------------------------------------------------- folds


def test_random_folds_are_stratified_and_seeded():
    y = np.r_[np.zeros(60, dtype=int), np.ones(40, dtype=int)]
    folds = random_folds(y, 5, seed=1)
    assert folds.shape == (100,)
    for k in range(5):
        assert (folds == k).sum() == 20
        assert y[folds == k].sum() == 8
    np.testing.assert_array_equal(folds, random_folds(y, 5, seed=1))
    assert not np.array_equal(folds, random_folds(y, 5, seed=2))
    with pytest.raises(MetalsmInputError, match="n_folds"):
        random_folds(y, 1, seed=0)


def test_kmeans_folds_are_spatially_separate_and_hold_both_classes():
    table = hk_slice(4000)
    xy = table[["X", "Y"]].to_numpy()
    y = table["label"].to_numpy(dtype=int)
    folds = spatial_folds(xy[:, 0], xy[:, 1], 5, seed=0)
    assert set(np.unique(folds)) == set(range(5))
    centroids = np.array([xy[folds == k].mean(axis=0) for k in range(5)])
    dist = np.linalg.norm(xy[:, None, :] - centroids[None, :, :], axis=2)
    own = dist[np.arange(len(folds)), folds]
    others = dist[np.arange(len(folds))[:, None], np.arange(5)[None, :]]
    other_mean = (others.sum(axis=1) - own) / 4
    assert own.mean() < 0.5 * other_mean.mean()
    # every sample is nearest to its own fold's centroid (Voronoi regions: no interleaving)
    assert np.mean(dist.argmin(axis=1) == folds) > 0.99
    for k in range(5):
        assert set(np.unique(y[folds == k])) == {0, 1}
    np.testing.assert_array_equal(folds, spatial_folds(xy[:, 0], xy[:, 1], 5, seed=0))


def test_grid_folds_keep_blocks_whole_and_balance_counts():
    table = hk_slice(4000)
    x, yc = table["X"].to_numpy(), table["Y"].to_numpy()
    block = 3000.0
    folds = spatial_folds(x, yc, 4, seed=0, method="grid", block_size=block)
    cells = pd.DataFrame(
        {"i": np.floor((x - x.min()) / block), "j": np.floor((yc - yc.min()) / block), "f": folds}
    )
    assert (cells.groupby(["i", "j"])["f"].nunique() == 1).all()
    counts = np.bincount(folds, minlength=4)
    assert counts.min() > 0.8 * counts.max()
    default = spatial_folds(x, yc, 5, seed=0, method="grid")
    assert set(np.unique(default)) == set(range(5))
    with pytest.raises(MetalsmInputError, match="'kmeans' or 'grid'"):
        spatial_folds(x, yc, 5, seed=0, method="hex")


# --------------------------------------------------------------------------- cross-validation


def _lr():
    return make_model("lr")


def test_cross_validate_model_out_of_fold_and_metrics():
    table = hk_slice()
    X, y = factors(table), table["label"].to_numpy(dtype=int)
    folds = random_folds(y, 4, seed=0)
    res = cross_validate_model(_lr, X, y, folds)
    assert isinstance(res, CVResult)
    assert res.oof_proba.shape == (len(y),)
    assert np.isfinite(res.oof_proba).all()
    assert len(res.fold_metrics) == 4
    assert res.fold_metrics["n_test"].sum() == len(y)
    assert res.mean["auc"] == pytest.approx(res.fold_metrics["auc"].mean())
    assert res.std["auc"] == pytest.approx(res.fold_metrics["auc"].std(ddof=0))
    assert res.mean["auc"] > 0.8
    assert res.notes == []


def test_cross_validate_single_class_test_fold_and_training_fold():
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=40), "b": rng.normal(size=40)})
    y = np.r_[np.zeros(20, dtype=int), np.ones(20, dtype=int)]
    folds = np.r_[np.zeros(10, dtype=int), np.ones(10, dtype=int), np.ones(20, dtype=int) * 2]
    folds[[0, 20]] = 3  # fold 3 mixes classes; folds 0, 1 test negatives only, fold 2 positives
    res = cross_validate_model(_lr, X, y, folds)
    aucs = res.fold_metrics.set_index("fold")["auc"]
    assert np.isnan(aucs[[0, 1, 2]]).all() and not np.isnan(aucs[3])
    assert res.notes == [
        "fold 0: test part holds class 0 only; AUC skipped",
        "fold 1: test part holds class 0 only; AUC skipped",
        "fold 2: test part holds class 1 only; AUC skipped",
    ]
    assert res.mean["auc"] == aucs[3]  # NaN folds are left out of the mean
    assert np.isfinite(res.oof_proba).all()
    with pytest.raises(
        MetalsmInputError, match=r"fold 0: the training part holds a single class \(1\)"
    ):
        cross_validate_model(_lr, X, y, y)


# --------------------------------------------------------------------------- model comparison


@pytest.fixture(scope="module")
def evaluation() -> Evaluation:
    table = hk_slice()
    calls: list[int] = []
    ev = evaluate_models(
        MODEL_NAMES,
        factors(table),
        table["label"].to_numpy(dtype=int),
        table[["X", "Y"]],
        CATEGORICAL,
        n_folds=5,
        seed=0,
        model_params={"rf": {"n_estimators": 60}},
        progress=calls.append,
        area=factors(table).sample(800, random_state=0),
    )
    ev.calls = calls  # type: ignore[attr-defined]
    return ev


def test_evaluate_models_table_and_oof(evaluation):
    table = evaluation.table
    assert len(table) == 2 * len(MODEL_NAMES)
    assert set(zip(table["model"], table["scheme"], strict=True)) == {
        (m, s) for m in MODEL_NAMES for s in ("random", "spatial")
    }
    for metric in METRICS:
        assert {f"{metric}_mean", f"{metric}_std"} <= set(table.columns)
    assert set(evaluation.oof) == {(m, s) for m in MODEL_NAMES for s in ("random", "spatial")}
    for proba in evaluation.oof.values():
        assert proba.shape == (2000,) and np.all((proba >= 0) & (proba <= 1))
    assert sum(evaluation.calls) == 2 * 5 * len(MODEL_NAMES)
    print("\n" + table[["model", "scheme", "auc_mean", "auc_std", "pooled_auc"]].to_string())


def test_spatial_cv_is_not_more_optimistic_than_random_cv(evaluation):
    auc = evaluation.table.set_index(["model", "scheme"])["auc_mean"]
    for name in MODEL_NAMES:
        # spatial holds out whole regions: no neighbour leakage, so no better than random
        assert auc[(name, "spatial")] <= auc[(name, "random")] + 0.02
        assert auc[(name, "random")] > 0.82
        assert auc[(name, "spatial")] > 0.7


def test_prediction_rate_auc_per_model_and_scheme(evaluation):
    rates = evaluation.table.set_index(["model", "scheme"])["prediction_rate_auc"]
    for name in MODEL_NAMES:
        # the "area" here is the sample table, half landslides: a perfect model ranks a
        # landslide above the other half only, so the AUC tops out near 0.75
        assert 0.55 < rates[(name, "spatial")] <= rates[(name, "random")] + 0.02 < 0.77
        shares = evaluation.results[(name, "spatial")].area_share_above
        ranked = np.isfinite(shares)
        assert ranked.sum() == int(hk_slice()["label"].sum())  # every landslide, once
        assert rates[(name, "spatial")] == pytest.approx(1 - np.nanmean(shares))


def test_evaluate_models_rejects_unknown_model_before_fitting():
    table = hk_slice()
    calls: list[int] = []
    with pytest.raises(MetalsmInputError, match="unknown model 'gbm'"):
        evaluate_models(
            ["lr", "gbm"],
            factors(table),
            table["label"],
            table[["X", "Y"]],
            CATEGORICAL,
            progress=calls.append,
        )
    assert calls == []


def test_evaluate_models_accepts_rich_style_progress():
    class FakeProgress:
        def __init__(self):
            self.total = None
            self.done = 0

        def add_task(self, description, total):
            self.total = total
            return 1

        def advance(self, task, n):
            self.done += n

    table = hk_slice(500)
    progress = FakeProgress()
    ev = evaluate_models(
        ["fr"],
        factors(table),
        table["label"],
        table[["X", "Y"]].to_numpy(),
        CATEGORICAL,
        n_folds=3,
        seed=1,
        schemes=("spatial",),
        spatial_method="grid",
        progress=progress,
    )
    assert progress.total == progress.done == 3
    assert list(ev.table["scheme"]) == ["spatial"]
    assert set(ev.folds) == {"spatial"}


def test_a_buffer_lowers_never_raises_the_optimism_of_random_folds():
    """1,500 Hong Kong samples round the table's centre (median spacing ~140 m): leaving
    out training samples within 300 and 600 m of each test fold lowers the random-fold
    AUC step by step towards the spatial one, and hardly moves the spatial folds."""
    table = hongkong_table().astype(float)
    centre = np.hypot(table["X"] - table["X"].median(), table["Y"] - table["Y"].median())
    near = table.iloc[np.argsort(centre.to_numpy())[:1500]].reset_index(drop=True)
    X, y = factors(near), near["label"].to_numpy(dtype=int)  # noqa: N806
    runs = {b: evaluate_models(["lr"], X, y, near[["X", "Y"]], CATEGORICAL, n_folds=5, seed=0,
                               buffer_m=b).table.set_index("scheme")
            for b in (0.0, 300.0, 600.0)}
    random = [runs[b].loc["random", "auc_mean"] for b in runs]
    optimism = [runs[b].loc["random", "auc_mean"] - runs[b].loc["spatial", "auc_mean"]
                for b in runs]
    assert random[0] >= random[1] - 0.002 and random[1] >= random[2] - 0.002
    assert optimism[2] < optimism[0] - 0.01 and min(optimism) >= -0.01
    assert abs(runs[600.0].loc["spatial", "auc_mean"] - runs[0.0].loc["spatial", "auc_mean"]) < 0.01
    left_out = [runs[b].loc["random", "n_buffered_mean"] for b in (300.0, 600.0)]
    assert 0 < left_out[0] < left_out[1] < 0.8 * len(near)
    assert "buffer_m" not in runs[0.0].columns
    with pytest.raises(MetalsmInputError, match="buffer_m must be >= 0"):
        evaluate_models(["lr"], X, y, near[["X", "Y"]], CATEGORICAL, n_folds=3, buffer_m=-1)


def test_within_group_metrics_hand_checked() -> None:
    """Block 0 ranks its cells perfectly (AUC 1), block 1 backwards (AUC 0), block 2 holds
    one class (no AUC) and one cell (no spread): pooled numbers hide all of this."""
    y = np.array([1, 0, 1, 0, 1])
    p = np.array([0.9, 0.7, 0.2, 0.4, 0.5])
    groups = np.array([0, 0, 1, 1, 2])
    out = within_group_metrics(y, p, groups)
    assert out["within_auc"] == pytest.approx(0.5)
    assert out["within_spread"] == pytest.approx(np.mean([0.1, 0.1]))
    flat = within_group_metrics(y, np.full(5, 0.3), groups)
    assert flat["within_spread"] == 0 and flat["within_auc"] == pytest.approx(0.5)
    assert np.isnan(within_group_metrics([1, 1], [0.2, 0.4], [0, 0])["within_auc"])


def test_repeats_redraw_the_folds_and_give_the_spread_over_repeats():
    """Three repeats on 600 real Hong Kong samples: repeat r's folds are those drawn with
    seed + r, the table's means are over all 3 x 3 folds, and the repeat std is the std
    of the three per-repeat means -- each checked against its own cross-validation."""
    table = hk_slice(600, seed=3)
    X, y, xy = factors(table), table["label"].to_numpy(dtype=int), table[["X", "Y"]]  # noqa: N806
    area = X.sample(300, random_state=1)
    ev = evaluate_models(["fr"], X, y, xy, CATEGORICAL, n_folds=3, seed=5, repeats=3,
                         area=area, schemes=("random", "spatial"), spatial_method="grid")
    assert ev.repeat_folds["random"].shape == (3, 600)
    for r in range(3):
        assert np.array_equal(ev.repeat_folds["random"][r], random_folds(y, 3, seed=5 + r))
        assert np.array_equal(ev.repeat_folds["spatial"][r],
                              spatial_folds(xy["X"], xy["Y"], 3, seed=5 + r, method="grid",
                                            random_origin=True))
    assert np.array_equal(ev.folds["spatial"], ev.repeat_folds["spatial"][0])
    assert not np.array_equal(ev.repeat_folds["random"][0], ev.repeat_folds["random"][1])
    row = ev.table.set_index("scheme").loc["spatial"]
    by_hand = [cross_validate_model(lambda: make_model("fr", CATEGORICAL, 5), X, y, folds,
                                    area=area)
               for folds in ev.repeat_folds["spatial"]]
    fold_aucs = np.concatenate([r.fold_metrics["auc"] for r in by_hand])
    means = [r.mean["auc"] for r in by_hand]
    assert row["repeats"] == 3
    assert row["auc_mean"] == pytest.approx(fold_aucs.mean())
    assert row["auc_std"] == pytest.approx(fold_aucs.std())
    assert row["auc_repeat_std"] == pytest.approx(np.std(means))
    assert 0 < row["auc_repeat_std"] < row["auc_std"]  # grid folds move; folds vary more
    pooled = [roc_points(y, r.oof_proba).auc for r in by_hand]
    assert row["pooled_auc"] == pytest.approx(np.mean(pooled))
    assert row["pooled_auc_repeat_std"] == pytest.approx(np.std(pooled))
    rates = [prediction_rate(r.area_share_above).auc for r in by_hand]
    assert row["prediction_rate_auc"] == pytest.approx(np.mean(rates))
    # pooling every repeat's ranks gives one curve whose AUC is the mean over repeats
    assert prediction_rate(ev.area_shares("fr", "spatial")).auc == pytest.approx(np.mean(rates))
    once = evaluate_models(["fr"], X, y, xy, CATEGORICAL, n_folds=3, seed=5,
                           schemes=("spatial",), spatial_method="grid")
    assert not [c for c in once.table.columns if "repeat" in c]
    assert np.array_equal(once.folds["spatial"],  # one draw: the grid stays where it was
                          spatial_folds(xy["X"], xy["Y"], 3, seed=5, method="grid"))
    # what a raster run's metrics.json gives as the map model's prediction-rate spread
    from metalsm.pipeline._run import _rate_repeat_spread

    spread = _rate_repeat_spread(ev, "fr")
    assert spread["repeats"] == 3
    assert spread["prediction_rate_spatial_auc_repeat_std"] == pytest.approx(np.std(rates))
    assert _rate_repeat_spread(once, "fr") == {}
    with pytest.raises(MetalsmInputError, match="repeats must be an integer >= 1, got 0"):
        evaluate_models(["fr"], X, y, xy, CATEGORICAL, n_folds=3, repeats=0)
