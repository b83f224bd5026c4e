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

Protocol (:func:`compare_methods`): repeat ``r`` trains every method with seed
``seed + r`` and draws the support sets with :func:`draw_support` (seed ``seed + r``),
so all methods see the same shots; the query (meta-test samples not in the
support) is scored. Meta-train blocks never contribute a query sample, and query
samples are never trained on or used to choose anything. One fitted model of a
repeat serves every K.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from metalsm import validation
from metalsm.config import MetaConfig
from metalsm.errors import MetalsmInputError
from metalsm.meta_run import (
    MetaData,
    fit_global_mlp,
    fit_plain_maml,
    make_learner,
    pretrain_state,
)
from metalsm.models import blockwise
from metalsm.models.classic import make_model
from metalsm.models.meta import MetaLearner

log = logging.getLogger(__name__)

FAMILIES = ("global", "transfer", "meta")
#: Pooled metrics of the query, then how well each block's cells are ranked and spread
#: (:func:`metalsm.validation.within_group_metrics`).
METRICS = (*validation.METRICS, "within_auc", "within_spread")
#: The columns of the report tables (the CSVs keep every metric).
DISPLAY_METRICS = ("accuracy", "f1", "auc", "within_auc", "within_spread")
RAW_COLUMNS = ("method", "family", "k", "repeat", "seed", *METRICS, "n_query")

__all__ = ["FAMILIES", "METHODS", "FittedMethod", "Method", "compare_methods",
           "draw_support", "fit_set", "query_mask", "summarize"]


class ArrayStore(dict):
    """A dict of arrays kept in ``DataFrame.attrs``: compared by identity, so pandas can
    check attrs equality (concat, groupby) without comparing arrays element-wise."""

    def __eq__(self, other: object) -> bool:
        return self is other

    __hash__ = None  # type: ignore[assignment]


class FittedMethod:
    """A trained method of one repeat: ``predict_query(data, support_mask, seed)``."""

    def predict_query(self, data: MetaData, support_mask: np.ndarray, seed: int
                      ) -> np.ndarray:
        raise NotImplementedError


@dataclass(frozen=True)
class Method:
    """A named method: ``fit(data, meta, seed) -> FittedMethod``."""

    name: str
    family: str
    label: str
    fit: Callable[[MetaData, MetaConfig, int], FittedMethod]


# --------------------------------------------------------------------------- protocol


def draw_support(data: MetaData, k: str | int, seed: int, rule: str = "stratified"
                 ) -> np.ndarray:
    """Bool mask over all samples: K shots per meta-test block (``"half"``: half of the
    block's samples) drawn by ``rule`` (``[meta] support_rule``). The draw of
    :func:`metalsm.models.blockwise.draw_support`, so every method of a repeat adapts
    from exactly these samples."""
    k = int(k) if str(k).isdigit() else str(k)
    mask = np.zeros(data.y.size, dtype=bool)
    test = np.flatnonzero(data.test)
    mask[test] = blockwise.draw_support(data.y[test], data.blocks[test], k, seed,
                                        blocks=data.test_blocks, rule=rule)
    return mask


def query_mask(data: MetaData, support_mask: np.ndarray) -> np.ndarray:
    """The scored samples: meta-test samples not in the support set."""
    return data.test & ~np.asarray(support_mask, dtype=bool)


def fit_set(data: MetaData, support_mask: np.ndarray) -> np.ndarray:
    """Samples a global method trains on: meta-train samples plus the support samples."""
    return data.train | (np.asarray(support_mask, dtype=bool) & data.test)


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


@dataclass
class _Adapted(FittedMethod):
    """A network adapted per meta-test block from its support samples."""

    learner: MetaLearner

    def predict_query(self, data: MetaData, support_mask: np.ndarray, seed: int
                      ) -> np.ndarray:
        test = np.flatnonzero(data.test)
        models = blockwise.adapt_blocks(
            self.learner, data.X[test], data.y[test], data.blocks[test], k="all",
            n_blocks=data.n_blocks, centres=data.centres, seed=seed,
            support=np.asarray(support_mask, dtype=bool)[test])
        query = query_mask(data, support_mask)
        return models.predict_proba(data.X[query], data.blocks[query])


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
    return _Adapted(proposed_learner(data, meta, seed))


@dataclass
class _ZeroShot(FittedMethod):
    """The intermediate model as it is: no block sees its shots (the baseline adaptation
    has to beat)."""

    learner: MetaLearner

    def predict_query(self, data: MetaData, support_mask: np.ndarray, seed: int
                      ) -> np.ndarray:
        del seed
        query = query_mask(data, support_mask)
        return self.learner.predict_proba(data.X[query], data.blocks[query])[:, 1]


def fit_zero_shot(data: MetaData, meta: MetaConfig, seed: int) -> FittedMethod:
    return _ZeroShot(proposed_learner(data, meta, seed))


def fit_maml(data: MetaData, meta: MetaConfig, seed: int) -> FittedMethod:
    return _Adapted(fit_plain_maml(meta, data, seed))


def fit_rl_based(data: MetaData, meta: MetaConfig, seed: int) -> FittedMethod:
    pretrained = pretrained_state(data, meta, seed)
    return _Adapted(fit_global_mlp(meta, data, seed, init_state=pretrained.state))


def fit_mlp_finetuned(data: MetaData, meta: MetaConfig, seed: int) -> FittedMethod:
    return _Adapted(fit_global_mlp(meta, data, seed))


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


# --------------------------------------------------------------------------- comparison


def compare_methods(data: MetaData, meta: MetaConfig, methods: Sequence[str | Method],
                    k_shots: Sequence[str | int], repeats: int, seed: int,
                    progress: Callable[[int], Any] | None = None) -> pd.DataFrame:
    """Raw scores: one row per (method, K, repeat) on the query samples.

    Repeat ``r`` trains with seed ``seed + r`` and draws the support with seed
    ``seed + r`` (the same shots for every method). ``frame.attrs["proba"]`` maps
    ``(method, k, repeat)`` to the query probabilities and ``frame.attrs["y"]`` maps
    ``(k, repeat)`` to the query labels (for ROC curves). ``progress(1)`` is called
    after each method of each repeat.
    """
    if not data.test.any():
        raise MetalsmInputError("no meta-test samples: every block is a meta-train block")
    chosen = [m if isinstance(m, Method) else resolve_methods([m])[0] for m in methods]
    rows: list[dict[str, Any]] = []
    proba: dict[tuple[str, str, int], np.ndarray] = ArrayStore()
    labels: dict[tuple[str, int], np.ndarray] = ArrayStore()
    for r in range(repeats):
        s = seed + r
        supports = {str(k): draw_support(data, k, s, meta.support_rule) for k in k_shots}
        for k, mask in supports.items():
            labels[(k, r)] = data.y[query_mask(data, mask)]
        for method in chosen:
            fitted = method.fit(data, meta, s)
            for k, mask in supports.items():
                y = labels[(k, r)]
                p = fitted.predict_query(data, mask, s) if y.size else np.zeros(0)
                groups = data.blocks[query_mask(data, mask)]
                scores = ({**validation.classification_metrics(y, p),
                           **validation.within_group_metrics(y, p, groups)} if y.size
                          else dict.fromkeys(METRICS, np.nan))
                rows.append({"method": method.name, "family": method.family, "k": k,
                             "repeat": r, "seed": s, **scores, "n_query": int(y.size)})
                proba[(method.name, k, r)] = p
            if progress is not None:
                progress(1)
    raw = pd.DataFrame(rows, columns=list(RAW_COLUMNS))
    raw.attrs["proba"] = proba
    raw.attrs["y"] = labels
    return raw


def summarize(raw: pd.DataFrame, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """Per method × K: ``<metric>_mean/_std/_min/_max`` (std with ddof=0), repeats,
    mean query size; rows in the order methods and K first appear."""
    keys = ["method", "k"] + (["family"] if "family" in raw.columns else [])
    raw = pd.DataFrame(raw.to_dict("list"))
    group = raw.groupby(keys, sort=False)
    parts = [group.size().rename("repeats")]
    for metric in metrics:
        g = group[metric]
        parts += [g.mean().rename(f"{metric}_mean"), g.std(ddof=0).rename(f"{metric}_std"),
                  g.min().rename(f"{metric}_min"), g.max().rename(f"{metric}_max")]
    if "n_query" in raw.columns:
        parts.append(group["n_query"].mean().rename("n_query"))
    out = pd.concat(parts, axis=1).reset_index()
    out.attrs = {}
    return out


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
