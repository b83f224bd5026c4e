"""The methods compared by the experiments: one registry, one protocol, same splits.

Every method is a :class:`Method` in :data:`METHODS` (adding one = one entry):

* **global** (``lr``, ``rf``, ``svm``, ``mlp``, ``lightgbm``, ``fr``, ``fr-rf``): a
  scikit-learn model of :func:`metalsm.models.classic.make_model` on the raw factor
  columns. It cannot adapt per block, so it is trained on the meta-train samples
  *plus* the support samples of the meta-test blocks, and predicts the query.
* **transfer** (``rl-based``): the network pretrained without labels (RBM, RBM,
  DAE, on the meta-train samples only), trained supervised on the meta-train
  samples, then fine-tuned per meta-test block from its support set with the
  meta-learners' inner loop; ``mlp-ft`` is the same without pretraining.
* **meta** (``maml``: plain MAML, no pretraining, uniform task weights;
  ``proposed``: pretraining + weighted tasks): meta-trained on the meta-train
  blocks, adapted per meta-test block from its support set.

Protocol: :func:`metalsm.evaluation.compare_methods` (the same shots for every
method of a repeat; ``metalsm run`` scores its K-shot table the same way).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from metalsm.config import MetaConfig
from metalsm.errors import MetalsmInputError
from metalsm.evaluation import AdaptedBlocks, FittedMethod, Method, ZeroShot, fit_set, query_mask
from metalsm.models.classic import make_model
from metalsm.models.meta import MetaLearner
from metalsm.models.recipes import (
    MetaData,
    fit_global_mlp,
    fit_plain_maml,
    make_learner,
    pretrain_state,
)

FAMILIES = ("global", "transfer", "meta")
#: The columns of the report tables (the CSVs keep every metric).
DISPLAY_METRICS = ("accuracy", "f1", "auc", "within_auc", "within_spread")

__all__ = ["DISPLAY_METRICS", "FAMILIES", "METHODS", "display_table", "fit_maml",
           "fit_proposed", "pretrained_state", "proposed_learner", "resolve_methods"]


# --------------------------------------------------------------------------- global


@dataclass
class _Global(FittedMethod):
    name: str
    seed: int

    def predict_query(self, data: MetaData, support_mask: np.ndarray, seed: int
                      ) -> np.ndarray:
        if data.table is None:
            raise MetalsmInputError("global methods need the raw factor table of the samples")
        fit = fit_set(data, support_mask)
        query = query_mask(data, support_mask)
        model = make_model(self.name, list(data.categorical), self.seed)
        model.fit(data.table[fit], data.y[fit])
        return model.predict_proba(data.table[query])[:, 1]


def _global(name: str) -> Callable[[MetaData, MetaConfig, int], FittedMethod]:
    def fit(data: MetaData, meta: MetaConfig, seed: int) -> FittedMethod:
        del meta
        return _Global(name, int(seed))
    return fit


# --------------------------------------------------------------------------- networks


def pretrained_state(data: MetaData, meta: MetaConfig, seed: int) -> Any:
    """RBM/RBM/DAE pretraining of ``seed`` on the meta-train samples only (labels unused;
    the meta-test samples, query included, stay unseen), computed once per data value,
    seed and pretraining settings (the proposed method and RL-based share it)."""
    key = ("pretrain", int(seed), tuple(meta.hidden), meta.pretrain_epochs, meta.rbm_lr,
           meta.dae_lr)
    if key not in data.cache:
        train = data.train
        seen = replace(data, X=data.X[train], y=data.y[train], blocks=data.blocks[train],
                       table=None, coords=None, cache={})
        data.cache[key] = pretrain_state(meta, seen, None, seed)
    return data.cache[key]


def proposed_learner(data: MetaData, meta: MetaConfig, seed: int) -> MetaLearner:
    """The intermediate model of the proposed method for ``seed`` and ``meta``, trained
    once per data value: the zero-shot row and the guard ablation (settings that only
    change adaptation) reuse the proposed method's."""
    key = ("proposed", int(seed), replace(meta, adapt_guard=True, guard_steps=()))
    if key not in data.cache:
        learner = make_learner(meta, seed=seed)
        pretrained = pretrained_state(data, meta, seed) if meta.pretrain else None
        train = data.train
        learner.fit(data.X[train], data.y[train], groups=data.blocks[train],
                    init_state=pretrained.state if pretrained is not None else None)
        data.cache[key] = learner
    return copy.copy(data.cache[key]).set_params(adapt_guard=meta.adapt_guard,
                                                 guard_steps=tuple(meta.guard_steps))


def fit_proposed(data: MetaData, meta: MetaConfig, seed: int) -> FittedMethod:
    """Weighted MAML from RBM/RBM/DAE-pretrained layers, as ``[meta]`` says (the
    ablations pass a ``meta`` with pretraining or task weighting changed)."""
    return AdaptedBlocks(proposed_learner(data, meta, seed))


def fit_zero_shot(data: MetaData, meta: MetaConfig, seed: int) -> FittedMethod:
    return ZeroShot(proposed_learner(data, meta, seed))


def fit_maml(data: MetaData, meta: MetaConfig, seed: int) -> FittedMethod:
    return AdaptedBlocks(fit_plain_maml(meta, data, seed))


def fit_rl_based(data: MetaData, meta: MetaConfig, seed: int) -> FittedMethod:
    pretrained = pretrained_state(data, meta, seed)
    return AdaptedBlocks(fit_global_mlp(meta, data, seed, init_state=pretrained.state))


def fit_mlp_finetuned(data: MetaData, meta: MetaConfig, seed: int) -> FittedMethod:
    return AdaptedBlocks(fit_global_mlp(meta, data, seed))


# --------------------------------------------------------------------------- registry

_GLOBAL_LABELS = {
    "lr": "Logistic regression", "rf": "Random forest", "svm": "SVM", "mlp": "MLP",
    "lightgbm": "LightGBM", "fr": "Frequency ratio", "fr-rf": "FR–RF",
}

METHODS: dict[str, Method] = {
    **{name: Method(name, "global", label, _global(name))
       for name, label in _GLOBAL_LABELS.items()},
    "rl-based": Method("rl-based", "transfer", "RL-based (RBM+DAE pretrained MLP, fine-tuned)",
                       fit_rl_based),
    "mlp-ft": Method("mlp-ft", "transfer", "MLP fine-tuned (no pretraining)",
                     fit_mlp_finetuned),
    "maml": Method("maml", "meta", "Plain MAML", fit_maml),
    "proposed": Method("proposed", "meta", "Proposed (pretraining + weighted tasks)",
                       fit_proposed),
    "zero-shot": Method("zero-shot", "meta", "Proposed, zero-shot (no adaptation)",
                        fit_zero_shot),
}


def resolve_methods(names: Sequence[str] | None) -> list[Method]:
    """Registry entries for ``names`` (empty/None: all), unknown names an error."""
    names = list(names or METHODS)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise MetalsmInputError(
            f"unknown method(s) {unknown}; registered: {', '.join(METHODS)}")
    return [METHODS[n] for n in names]


def display_table(summary: pd.DataFrame, metrics: Sequence[str] = DISPLAY_METRICS
                  ) -> pd.DataFrame:
    """``mean ± std`` strings per metric, method labels (report tables)."""
    out = pd.DataFrame({
        "method": summary["method"].map(lambda m: METHODS[m].label if m in METHODS else m),
        "K": summary["k"].astype(str),
    })
    for metric in metrics:
        out[metric] = (summary[f"{metric}_mean"].map("{:.3f}".format) + " ± "
                       + summary[f"{metric}_std"].map("{:.3f}".format))
    out["repeats"] = summary["repeats"].astype(int)
    return out


def with_iterations(meta: MetaConfig, iterations: int) -> MetaConfig:
    """``meta`` with ``iterations`` meta-iterations (0 keeps ``meta.iterations``)."""
    return replace(meta, iterations=iterations) if iterations > 0 else meta
