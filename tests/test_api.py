"""The public API: every advertised name resolves, and the README example runs its calls."""

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import hk_slice

import metalsm
from metalsm.config import load_config
from metalsm.pipeline._run import run_pipeline

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_public_name_resolves_to_the_real_object():
    assert metalsm.load_config is load_config and metalsm.run is run_pipeline
    for name in metalsm.__all__:
        assert getattr(metalsm, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        metalsm.nope  # noqa: B018


def test_readme_python_example_uses_only_the_public_api():
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    used = set(re.findall(r"metalsm\.(\w+)", code))
    assert used and used <= set(metalsm.__all__), used - set(metalsm.__all__)


def test_estimators_through_the_api_on_real_samples():
    table = hk_slice()
    factors = [c for c in table.columns if c not in ("X", "Y", "label")]
    samples = metalsm.Samples(table.rename(columns={"X": "x", "Y": "y"}), tuple(factors),
                              ("land use", "lithology"))
    model = metalsm.make_model("lr", samples.categorical, seed=0).fit(samples.X, samples.y)
    proba = model.predict_proba(samples.X)[:, 1]
    assert proba.shape == (len(table),) and np.all((proba >= 0) & (proba <= 1))
    auc = metalsm.evaluate_models(["lr"], samples.X, samples.y, samples.coords,
                                  samples.categorical, n_folds=3).table
    assert 0.7 < auc.set_index("scheme").loc["spatial", "auc_mean"] < 1.0
