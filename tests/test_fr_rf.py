"""The frequency ratio–random forest coupled model ("fr-rf")."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.model_selection import cross_val_score

from metalsm.errors import MetalsmInputError
from metalsm.models import MODEL_NAMES, FrequencyRatioClassifier, make_model


@pytest.fixture(scope="module")
def table():
    rng = np.random.default_rng(0)
    n = 600
    X = pd.DataFrame({
        "slope": rng.uniform(0, 60, n),
        "noise": rng.normal(size=n),
        "geology": rng.integers(1, 5, n).astype(float),
    })
    logit = 0.12 * (X.slope - 30) + 1.5 * (X.geology == 3) - 0.5
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(int)
    return X, y.to_numpy()


def test_fr_rf_is_registered_and_fits(table):
    X, y = table
    assert "fr-rf" in MODEL_NAMES
    model = make_model("fr-rf", ["geology"], seed=1, n_estimators=40)
    assert isinstance(model.named_steps["fr"], FrequencyRatioClassifier)
    assert model.named_steps["model"].n_estimators == 40
    model.fit(X, y)
    proba = model.predict_proba(X)
    assert proba.shape == (len(X), 2)
    assert ((proba >= 0) & (proba <= 1)).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    # the forest sees FR values: one FR per class of the categorical factor
    encoded = model.named_steps["fr"].transform(X)
    assert np.unique(encoded[:, 2]).size == 4
    # an unseen category gets the neutral FR and still predicts
    unseen = X.head(3).assign(geology=99.0)
    assert model.predict_proba(unseen).shape == (3, 2)


def test_fr_rf_clones_and_cross_validates(table):
    X, y = table
    model = make_model("fr-rf", ["geology"], seed=1, n_estimators=30)
    twin = clone(model)
    assert twin.get_params()["model__n_estimators"] == 30
    assert twin.get_params()["fr__categorical_features"] == ("geology",)
    scores = cross_val_score(twin, X, y, cv=3, scoring="roc_auc")
    assert scores.mean() > 0.75  # slope and geology carry real signal


def test_fr_rf_rejects_bad_input(table):
    X, y = table
    model = make_model("fr-rf", ["geology"], seed=1, n_estimators=10)
    with pytest.raises(MetalsmInputError, match="single class"):
        model.fit(X, np.zeros(len(X), int))
    with pytest.raises(MetalsmInputError, match="NaN"):
        model.fit(X.assign(slope=np.nan), y)
    with pytest.raises(MetalsmInputError, match="no parameter"):
        make_model("fr-rf", ["geology"], seed=1, n_trees=10)
