"""Choosing the meta-learner's settings by nested validation inside the meta-train blocks.

The meta-test blocks are what the K-shot table scores, so they never inform a setting.
:func:`tune_learner` splits the *meta-train* blocks once more, seeded, into
inner-train and inner-validation blocks, meta-trains each candidate of
:data:`CANDIDATES` on the inner-train blocks, adapts it to every inner-validation block
from K of its samples exactly as the K-shot evaluation does, and scores the rest of
those blocks (pooled AUC, then accuracy, averaged over the K values). Candidates are
tried in order until the time budget is spent (the first always runs); each fitted
candidate is scored with and without the adaptation guard, which costs only
adaptation. The winner's settings are returned with the whole search as a table, for
the run's manifest.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone

from metalsm import evaluation as validation
from metalsm.errors import MetalsmInputError
from metalsm.models.blockwise import adapt_blocks
from metalsm.models.meta import MetaLearner

__all__ = ["CANDIDATES", "TuningResult", "tune_learner"]

#: Settings tried, in order (overrides of the configured learner): the configured
#: settings first, then one change at a time along the axes that mattered in
#: docs/results.md (how step sizes are set, meta learning rate, support rule, steps,
#: activation, query size).
CANDIDATES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("as configured", {}),
    ("Meta-SGD per tensor", {"inner_lr_mode": "per-tensor"}),
    ("fixed step 0.01", {"inner_lr_mode": "fixed", "inner_lr": 0.01}),
    ("meta lr 3e-3", {"outer_lr": 3e-3}),
    ("stratified support", {"support_rule": "stratified"}),
    ("10 inner steps", {"inner_steps": 10}),
    ("relu units", {"activation": "relu"}),
    ("adaptive steps 5/10/20", {"guard_steps": (5, 10, 20)}),
    ("query 50 per task", {"k_query": 50}),
    ("fixed step 0.1 (paper)", {"inner_lr_mode": "fixed", "inner_lr": 0.1,
                                "outer_lr": 1e-4}),
)


@dataclass(frozen=True)
class TuningResult:
    """The chosen overrides (learner parameter names) and one row per scored setting."""

    best: dict[str, Any]
    best_name: str
    table: pd.DataFrame
    inner_train_blocks: np.ndarray
    inner_validation_blocks: np.ndarray
    seconds: float


def tune_learner(learner: MetaLearner, X: Any, y: Any, groups: Any, *,
                 init_state: dict | None = None, k_shots: Sequence[str | int] = (5, "half"),
                 budget_s: float = 600.0, iterations: int | None = None,
                 validation_fraction: float = 0.4, seed: int = 0,
                 candidates: Sequence[tuple[str, dict[str, Any]]] = CANDIDATES,
                 ) -> TuningResult:
    """Nested validation of ``candidates`` on the blocks ``groups`` (meta-train only).

    ``iterations``: meta-iterations per candidate (default: the learner's, at most
    1,000, so a search fits a run). ``init_state``: pretrained hidden layers, shared by
    every candidate (pretraining uses no labels, so it does not leak).
    """
    started = time.perf_counter()
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y).astype(np.int64).ravel()
    groups = np.asarray(groups).ravel()
    blocks = np.unique(groups)
    if blocks.size < 4:
        raise MetalsmInputError(
            f"meta.tune needs at least 4 meta-train blocks to split, got {blocks.size}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(blocks)
    n_val = int(np.clip(round(validation_fraction * blocks.size), 2, blocks.size - 2))
    val_blocks, train_blocks = np.sort(order[:n_val]), np.sort(order[n_val:])
    inner_train = np.isin(groups, train_blocks)
    val = ~inner_train
    _, val_codes = np.unique(groups[val], return_inverse=True)
    its = iterations if iterations is not None else min(learner.iterations, 1000)

    rows: list[dict[str, Any]] = []
    for i, (name, overrides) in enumerate(candidates):
        elapsed = time.perf_counter() - started
        if i > 0 and elapsed + _mean_cost(rows) > budget_s:
            break
        t = time.perf_counter()
        model = clone(learner).set_params(**{"iterations": its, **overrides})
        model.fit(X[inner_train], y[inner_train], groups=groups[inner_train],
                  init_state=init_state)
        fit_seconds = time.perf_counter() - t
        for guard in (True, False):
            model.set_params(adapt_guard=guard)
            scores = _score(model, X[val], y[val], val_codes, k_shots, seed)
            rows.append({"candidate": name, "adapt_guard": guard, **_flat(overrides),
                         **scores, "fit_seconds": round(fit_seconds, 2)})
    table = pd.DataFrame(rows)
    best = table.sort_values(["score_auc", "score_accuracy"], ascending=False,
                             kind="stable").iloc[0]
    chosen = dict(dict(candidates)[best["candidate"]], adapt_guard=bool(best["adapt_guard"]))
    table["chosen"] = (table["candidate"] == best["candidate"]) & (
        table["adapt_guard"] == best["adapt_guard"])
    return TuningResult(chosen, str(best["candidate"]), table, train_blocks, val_blocks,
                        round(time.perf_counter() - started, 2))


def _mean_cost(rows: list[dict[str, Any]]) -> float:
    return float(np.mean([r["fit_seconds"] for r in rows])) if rows else 0.0


def _flat(overrides: dict[str, Any]) -> dict[str, Any]:
    return {f"set_{k}": v for k, v in overrides.items()}


def _score(model: MetaLearner, X: np.ndarray, y: np.ndarray, blocks: np.ndarray,
           k_shots: Sequence[str | int], seed: int) -> dict[str, float]:
    """Mean over K of the pooled query AUC and accuracy on the inner-validation blocks."""
    aucs, accs, per_k = [], [], {}
    for k in k_shots:
        k = int(k) if str(k).isdigit() else str(k)
        models = adapt_blocks(model, X, y, blocks, k=k, seed=seed)
        query = np.ones(y.size, dtype=bool)
        query[models.support_samples] = False
        p = models.predict_proba(X[query], blocks[query])
        m = validation.classification_metrics(y[query], p)
        aucs.append(m["auc"])
        accs.append(m["accuracy"])
        per_k.update({f"auc_k{k}": m["auc"], f"accuracy_k{k}": m["accuracy"]})
    return {"score_auc": float(np.nanmean(aucs)), "score_accuracy": float(np.nanmean(accs)),
            **per_k}
