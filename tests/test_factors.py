"""Frequency ratio, differentiation, MIC, VIF and the selection rule (factors.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from metalsm.analysis import differentiation, factor_classes, fr_table, mic, select_factors, vif
from metalsm.errors import MetalsmInputError


def test_fr_table_on_a_hand_made_categorical_raster():
    values = np.zeros((10, 10))
    values[:, 5:] = 1.0  # two classes, half the area each
    slide = np.zeros((10, 10), bool)
    slide[0, 0:2] = True  # 2 landslide cells in class 0
    slide[0, 5:9] = True
    slide[1, 5:9] = True  # 8 in class 1
    cls = factor_classes("rock", values, categorical=True, class_names={0: "granite", 1: "shale"},
                         n_classes=2)
    table = fr_table(cls, values, slide)
    assert list(table["label"]) == ["granite", "shale"]
    assert list(table["n_cells"]) == [50, 50]
    assert list(table["n_landslide_cells"]) == [2, 8]
    np.testing.assert_allclose(table["fr"], [0.4, 1.6])
    np.testing.assert_allclose(table["iv"], np.log([0.4, 1.6]))
    # area-weighted std of FR around 1: sqrt(0.5 * 0.36 + 0.5 * 0.36)
    assert differentiation(table) == pytest.approx(0.6)


def test_fr_table_continuous_quantile_classes():
    values = np.arange(100, dtype=float).reshape(10, 10)
    slide = values >= 80  # every landslide cell lies in the top quartile
    cls = factor_classes("slope", values, n_classes=4)
    table = fr_table(cls, values, slide)
    assert list(table["n_cells"]) == [25, 25, 25, 25]
    np.testing.assert_allclose(table["fr"], [0, 0, 0, 4.0])  # all slides on 25 % of the area
    assert np.isnan(table["iv"][0]) and table["iv"][3] == pytest.approx(np.log(4.0))


def test_bad_factors_are_clear():
    with pytest.raises(MetalsmInputError, match="single value"):
        factor_classes("flat", np.full(50, 3.0))
    with pytest.raises(MetalsmInputError, match="max_categories = 5"):
        factor_classes("soil", np.arange(20.0), categorical=True, max_categories=5)
    cls = factor_classes("slope", np.arange(100.0), n_classes=10)
    few = np.zeros(100, bool)
    few[[3, 50, 90]] = True
    with pytest.raises(MetalsmInputError, match="only 3 landslide cell"):
        fr_table(cls, np.arange(100.0), few)


@pytest.mark.parametrize(
    "func",
    [lambda x: 3 * x - 1, lambda x: x**2, lambda x: np.sin(4 * np.pi * x)],
    ids=["linear", "parabola", "sine"],
)
def test_mic_is_one_for_noiseless_functions(func):
    x = np.random.default_rng(0).uniform(-1, 1, 1000)
    assert mic(x, func(x)) > 0.97


def test_mic_is_near_zero_for_independent_variables():
    rng = np.random.default_rng(1)
    values = [mic(rng.uniform(size=1000), rng.normal(size=1000)) for _ in range(3)]
    assert max(values) < 0.2
    noisy = rng.uniform(-1, 1, 1000)
    assert 0.25 < mic(noisy, noisy + rng.normal(0, 0.4, 1000)) < 0.9  # in between


def test_mic_with_a_binary_label():
    x = np.random.default_rng(2).normal(size=1000)
    label = (x > np.median(x)).astype(float)
    assert mic(x, label) == pytest.approx(1.0)
    assert mic(x, np.random.default_rng(3).integers(0, 2, 1000)) < 0.2


def _corr(columns: dict[str, np.ndarray]) -> pd.DataFrame:
    return pd.DataFrame(columns).corr()


def test_vif_on_constructed_collinear_data():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=5000), rng.normal(size=5000)
    near = a + rng.normal(0, 0.05, 5000)
    v = vif(_corr({"a": a, "b": b, "near": near}))
    assert v[0] > 100 and v[2] > 100
    assert v[1] == pytest.approx(1.0, abs=0.01)
    exact = vif(_corr({"a": a, "b": b, "copy": 2 * a}))
    assert np.isinf(exact[0]) and np.isinf(exact[2])
    assert exact[1] == pytest.approx(1.0, abs=0.01)


def test_selection_keeps_and_drops_as_the_thresholds_say():
    rng = np.random.default_rng(5)
    a, b, c = rng.normal(size=(3, 4000))
    corr = _corr({"a": a, "a_twin": a + rng.normal(0, 0.1, 4000), "b": b, "weak": c})
    summary = pd.DataFrame(
        {"mic": [0.4, 0.3, 0.05, 0.02], "differentiation": [0.1, 0.2, 0.5, 0.1]},
        index=["a", "a_twin", "b", "weak"],
    )
    out = select_factors(summary, corr, mic_min=0.15, differentiation_min=0.3, vif_max=10)
    assert out["kept"].to_dict() == {"a": True, "a_twin": False, "b": True, "weak": False}
    assert out.at["a", "reason"].startswith("kept: MIC 0.400")
    assert out.at["b", "reason"] == "kept: differentiation 0.500 >= 0.3"
    assert "collinear" in out.at["a_twin", "reason"]
    assert "weak" in out.at["weak", "reason"]
    assert out.at["a", "vif"] > 10 and out.at["a", "vif_selected"] < 1.1
    np.testing.assert_allclose(out["tolerance"], 1 / out["vif"])
    # stricter relevance: the twin and "b" are now too weak
    strict = select_factors(summary, corr, mic_min=0.35, differentiation_min=0.6, vif_max=10)
    assert strict["kept"].to_dict() == {"a": True, "a_twin": False, "b": False, "weak": False}
