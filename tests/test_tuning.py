"""Nested tuning of the meta-learner on meta-train blocks (metalsm.models.tuning)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from conftest import HK_FACTORS, hongkong_table

from metalsm.config import MetaConfig
from metalsm.models.meta import MetaLearner
from metalsm.models.recipes import FactorEncoder, MetaData, tune_settings
from metalsm.models.tuning import tune_learner

CANDIDATES = (("as configured", {}),
              ("fixed step 0.1", {"inner_lr_mode": "fixed", "inner_lr": 0.1}))


@pytest.fixture(scope="module")
def hk() -> pd.DataFrame:
    df = hongkong_table().iloc[::5].reset_index(drop=True)
    df["block"] = (pd.qcut(df["X"], 6, labels=False) * 4
                   + pd.qcut(df["Y"], 4, labels=False)).astype(int)
    return df


def test_search_splits_the_given_blocks_and_keeps_the_best(hk: pd.DataFrame) -> None:
    X, y, g = hk[HK_FACTORS].to_numpy(), hk["label"].to_numpy(), hk["block"].to_numpy()
    learner = MetaLearner(pretrain=False, n_threads=1, seed=0)
    result = tune_learner(learner, X, y, g, candidates=CANDIDATES, iterations=15,
                          k_shots=(5,), seed=0)
    inner_train, inner_val = set(result.inner_train_blocks), set(result.inner_validation_blocks)
    assert not inner_train & inner_val and inner_train | inner_val == set(np.unique(g))
    assert len(inner_val) == round(0.4 * len(np.unique(g)))
    table = result.table
    assert len(table) == 4 and table["chosen"].sum() == 1  # 2 candidates x guard on/off
    best = table[table["chosen"]].iloc[0]
    assert best["score_auc"] == table["score_auc"].max()
    assert 0.5 < best["score_auc"] <= 1
    assert result.best["adapt_guard"] == best["adapt_guard"]
    assert result.best_name == best["candidate"]
    # no budget left after the first candidate: only it is scored
    quick = tune_learner(learner, X, y, g, candidates=CANDIDATES, iterations=15,
                         k_shots=(5,), seed=0, budget_s=0)
    assert set(quick.table["candidate"]) == {"as configured"}


def test_meta_test_labels_never_inform_the_choice(hk: pd.DataFrame) -> None:
    """Flipping every meta-test label changes nothing in the search or the choice."""
    X, y, g = hk[HK_FACTORS].to_numpy(), hk["label"].to_numpy(), hk["block"].to_numpy()
    blocks = np.unique(g)
    data = MetaData(FactorEncoder(tuple(HK_FACTORS)), X, y, g, int(blocks.max()) + 1,
                    train_blocks=blocks[:14], test_blocks=blocks[14:],
                    centres=np.zeros((int(blocks.max()) + 1, 1)))
    flipped = replace(data, y=np.where(data.test, 1 - y, y), cache={})
    meta = replace(MetaConfig(), iterations=10, pretrain=False, tune_budget_s=0)
    tuned, search = tune_settings(meta, data, None)
    tuned_flipped, search_flipped = tune_settings(meta, flipped, None)
    assert tuned == tuned_flipped
    cols = [c for c in search.table.columns if c != "fit_seconds"]
    pd.testing.assert_frame_equal(search.table[cols], search_flipped.table[cols])
    assert set(search.inner_train_blocks) | set(search.inner_validation_blocks) == set(
        blocks[:14])
