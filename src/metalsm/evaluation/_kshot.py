"""The K-shot protocol: one way to score any method on the meta-test blocks.

Repeat ``r`` trains every method with seed ``seed + r`` and draws the support sets with
:func:`draw_support` (seed ``seed + r``, the learners' ``support_rule``), so all methods
see the same shots; the query (meta-test samples not in the support) is scored, pooled
and within blocks. Meta-train blocks never contribute a query sample, and query samples
are never trained on or used to choose anything. One fitted model of a repeat serves
every K. ``metalsm run`` (``kshot.csv``) and every experiment use this protocol.

A method is a :class:`Method` (``fit(data, meta, seed) -> FittedMethod``);
:class:`AdaptedBlocks` and :class:`ZeroShot` wrap a fitted meta-learner (adapted per
meta-test block from its shots, or not at all). ``data`` is anything shaped like
:class:`KShotData` (:class:`metalsm.pipeline.MetaData` is).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

from metalsm.errors import MetalsmInputError
from metalsm.evaluation import _validation as validation
from metalsm.models import blockwise
from metalsm.models.meta import MetaLearner

if TYPE_CHECKING:
    from metalsm.config import MetaConfig

#: Pooled metrics of the query, then how well each block's cells are ranked and spread
#: (:func:`metalsm.evaluation._validation.within_group_metrics`).
QUERY_METRICS = (*validation.METRICS, "within_auc", "within_spread")
RAW_COLUMNS = ("method", "family", "k", "repeat", "seed", *QUERY_METRICS, "n_query")

__all__ = [
    "QUERY_METRICS",
    "RAW_COLUMNS",
    "AdaptedBlocks",
    "ArrayStore",
    "FittedMethod",
    "KShotData",
    "Method",
    "ZeroShot",
    "compare_methods",
    "draw_support",
    "fit_set",
    "query_mask",
    "summarize",
    "KSHOT_METRICS",
    "METHOD_LABELS",
]


class KShotData(Protocol):
    """What the protocol reads of a study area's encoded samples and block split."""

    X: np.ndarray
    y: np.ndarray
    blocks: np.ndarray
    n_blocks: int
    centres: np.ndarray | None

    @property
    def train(self) -> np.ndarray: ...

    @property
    def test(self) -> np.ndarray: ...

    @property
    def test_blocks(self) -> np.ndarray: ...



class ArrayStore(dict):
    """A dict of arrays kept in ``DataFrame.attrs``: compared by identity, so pandas can
    check attrs equality (concat, groupby) without comparing arrays element-wise."""

    def __eq__(self, other: object) -> bool:
        return self is other

    __hash__ = None  # type: ignore[assignment]


class FittedMethod:
    """A trained method of one repeat: ``predict_query(data, support_mask, seed)``."""

    def predict_query(self, data: KShotData, support_mask: np.ndarray, seed: int
                      ) -> np.ndarray:
        raise NotImplementedError


@dataclass(frozen=True)
class Method:
    """A named method: ``fit(data, meta, seed) -> FittedMethod``."""

    name: str
    family: str
    label: str
    fit: Callable[[KShotData, MetaConfig, int], FittedMethod]


def draw_support(data: KShotData, k: str | int, seed: int, rule: str = "stratified"
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


def query_mask(data: KShotData, support_mask: np.ndarray) -> np.ndarray:
    """The scored samples: meta-test samples not in the support set."""
    return data.test & ~np.asarray(support_mask, dtype=bool)


def fit_set(data: KShotData, support_mask: np.ndarray) -> np.ndarray:
    """Samples a global method trains on: meta-train samples plus the support samples."""
    return data.train | (np.asarray(support_mask, dtype=bool) & data.test)


@dataclass
class AdaptedBlocks(FittedMethod):
    """A network adapted per meta-test block from its support samples."""

    learner: MetaLearner

    def predict_query(self, data: KShotData, support_mask: np.ndarray, seed: int
                      ) -> np.ndarray:
        test = np.flatnonzero(data.test)
        models = blockwise.adapt_blocks(
            self.learner, data.X[test], data.y[test], data.blocks[test], k="all",
            n_blocks=data.n_blocks, centres=data.centres, seed=seed,
            support=np.asarray(support_mask, dtype=bool)[test])
        query = query_mask(data, support_mask)
        return models.predict_proba(data.X[query], data.blocks[query])


@dataclass
class ZeroShot(FittedMethod):
    """The intermediate model as it is: no block sees its shots (the baseline adaptation
    has to beat). Each block's query is predicted as one set."""

    learner: MetaLearner

    def predict_query(self, data: KShotData, support_mask: np.ndarray, seed: int
                      ) -> np.ndarray:
        del seed
        query = query_mask(data, support_mask)
        return self.learner.predict_proba(data.X[query], data.blocks[query])[:, 1]


def compare_methods(data: KShotData, meta: MetaConfig, methods: Sequence[Method],
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
    rows: list[dict[str, Any]] = []
    proba: dict[tuple[str, str, int], np.ndarray] = ArrayStore()
    labels: dict[tuple[str, int], np.ndarray] = ArrayStore()
    for r in range(repeats):
        s = seed + r
        supports = {str(k): draw_support(data, k, s, meta.support_rule) for k in k_shots}
        for k, mask in supports.items():
            labels[(k, r)] = data.y[query_mask(data, mask)]
        for method in methods:
            fitted = method.fit(data, meta, s)
            for k, mask in supports.items():
                y = labels[(k, r)]
                p = fitted.predict_query(data, mask, s) if y.size else np.zeros(0)
                groups = data.blocks[query_mask(data, mask)]
                scores = ({**validation.classification_metrics(y, p),
                           **validation.within_group_metrics(y, p, groups)} if y.size
                          else dict.fromkeys(QUERY_METRICS, np.nan))
                rows.append({"method": method.name, "family": method.family, "k": k,
                             "repeat": r, "seed": s, **scores, "n_query": int(y.size)})
                proba[(method.name, k, r)] = p
            if progress is not None:
                progress(1)
    raw = pd.DataFrame(rows, columns=list(RAW_COLUMNS))
    raw.attrs["proba"] = proba
    raw.attrs["y"] = labels
    return raw


def summarize(raw: pd.DataFrame, metrics: Sequence[str] = QUERY_METRICS) -> pd.DataFrame:
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


METHOD_LABELS = {
    "proposed": "meta-learned (pretraining + weighted tasks)",
    "zero-shot": "meta-learned, zero-shot (no adaptation)",
    "maml": "plain MAML (no pretraining, uniform weights)",
    "mlp-ft": "global MLP, fine-tuned",
}


KSHOT_METRICS = ("accuracy", "f1", "auc", "within_auc", "within_spread")
