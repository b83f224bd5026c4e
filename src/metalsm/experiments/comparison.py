"""The method comparisons: ``overall`` (paper Table 1) and ``kshot`` (paper Tables 3–7).

Both score the registered methods (:mod:`metalsm.experiments.methods`) on the query
samples of the meta-test blocks, with the same support draws for every method.

* ``overall``: every method (``[experiments] methods``) at K = half, accuracy,
  precision, recall, F1, AUC and kappa, mean ± std over the repeats; ROC curves of
  the query probabilities pooled over the repeats.
* ``kshot``: the transfer and meta-learning methods, and the global MLP for
  reference, at every ``[experiments] k_shots``; candle chart of the overall
  accuracy against K (mean, ±σ bar, min/max whiskers).

A :class:`Context` (given by ``metalsm experiment all``) carries the prepared data
and the raw rows already computed, so a network trained for one repeat serves every
K and both experiments.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metalsm.atomic import write_csv
from metalsm.config import MetaConfig, StudyAreaConfig
from metalsm.evaluation import ArrayStore, Method, compare_methods, roc_points, summarize
from metalsm.experiments.common import (
    ExperimentResult,
    apply_preset,
    experiment_data,
    experiment_meta,
    repeats_of,
)
from metalsm.experiments.methods import METHODS, display_table, resolve_methods
from metalsm.report import figures
from metalsm.report.html import Section

__all__ = ["Context", "method_rows", "run_kshot", "run_overall"]


@dataclass
class Context:
    """Data and raw comparison rows shared by the experiments of one ``all`` run."""

    data: Any = None
    stage: Any = None
    rows: dict[tuple, pd.DataFrame] = field(default_factory=dict)
    proba: dict[tuple, np.ndarray] = field(default_factory=dict)
    labels: dict[tuple, np.ndarray] = field(default_factory=dict)


def context_data(config: StudyAreaConfig, out: Path, context: Context | None) -> Context:
    """``context`` (made when None) with the study area's data prepared once."""
    context = context or Context()
    if context.data is None:
        context.data, context.stage = experiment_data(config, out)
    return context


def method_rows(context: Context, meta: MetaConfig, methods: Sequence[Method],
                k_shots: Sequence[str], repeats: int, seed: int) -> pd.DataFrame:
    """Raw rows of ``methods`` × ``k_shots`` (compare_methods), computing only what the
    context lacks; all missing K of one method are computed from the same fits.
    ``attrs["proba"]``/``attrs["y"]`` as :func:`compare_methods`."""
    tag = (repeats, seed, meta)
    for method in methods:
        missing = [str(k) for k in k_shots if (method.name, str(k), tag) not in context.rows]
        if not missing:
            continue
        raw = compare_methods(context.data, meta, [method], missing, repeats, seed)
        plain = pd.DataFrame(raw.to_dict("list"))
        for k, part in plain.groupby("k", sort=False):
            context.rows[(method.name, str(k), tag)] = part
        context.proba.update({(key, tag): p for key, p in raw.attrs["proba"].items()})
        context.labels.update({(key, tag): y for key, y in raw.attrs["y"].items()})
    frames = [context.rows[(m.name, str(k), tag)] for m in methods for k in k_shots]
    raw = pd.concat(frames, ignore_index=True)
    raw.attrs = {"proba": ArrayStore({key: context.proba[(key, tag)] for m in methods
                                      for k in k_shots for key in
                                      [(m.name, str(k), r) for r in range(repeats)]}),
                 "y": ArrayStore({(str(k), r): context.labels[((str(k), r), tag)]
                                  for k in k_shots for r in range(repeats)})}
    return raw


def pooled_roc(raw: pd.DataFrame, k: str) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """Per method: ROC of the query probabilities of every repeat at ``k``, pooled."""
    curves = {}
    repeats = sorted(raw["repeat"].unique())
    for method in dict.fromkeys(raw["method"]):
        y = np.concatenate([raw.attrs["y"][(k, r)] for r in repeats])
        p = np.concatenate([raw.attrs["proba"][(method, k, r)] for r in repeats])
        ok = np.isfinite(p)
        if np.unique(y[ok]).size < 2:
            continue
        roc = roc_points(y[ok], p[ok])
        label = METHODS[method].label if method in METHODS else method
        curves[label] = (roc.fpr, roc.tpr, roc.auc)
    return curves


def _protocol_text(data: Any, meta: MetaConfig, repeats: int, seed: int) -> str:
    return (
        f"{int(data.train_blocks.size)} meta-train blocks ({int(data.train.sum())} samples), "
        f"{int(data.test_blocks.size)} meta-test blocks ({int(data.test.sum())} samples). "
        f"Repeat r (r = 0 … {repeats - 1}) trains every method with seed {seed} + r and "
        f"draws K stratified support samples per meta-test block with seed {seed} + r — "
        "the same support samples for every method. Scores are on the query: the "
        "meta-test samples outside the support, never trained on, never used to choose "
        "any setting. Global methods cannot adapt per block, so they are trained on the "
        "meta-train samples plus the support samples; transfer and meta-learning methods "
        f"adapt a copy per block from its support ({meta.inner_steps} steps of lr "
        f"{meta.inner_lr:g}). Networks: {meta.iterations} meta-iterations, "
        f"{meta.pretrain_epochs} pretraining epochs per layer; unsupervised pretraining "
        "sees the meta-train samples only."
    )


@dataclass
class ExperimentRun:
    """What every comparison-style experiment starts from: the (preset) config, its
    output folder, the shared prepared data, its settings and the repeats to run."""

    started: float
    config: StudyAreaConfig
    out: Path
    context: Context
    exp: Any
    meta: MetaConfig
    repeats: int

    def finish(self, paths: dict[str, Path], tables: dict[str, pd.DataFrame],
               section: Section) -> ExperimentResult:
        """The result, timed from :func:`begin_run`."""
        return ExperimentResult(paths, round(time.perf_counter() - self.started, 3), tables,
                                section)


def begin_run(config: StudyAreaConfig, out_dir: str | Path, repeats: int | None,
              preset: str | None, context: Context | None) -> ExperimentRun:
    """Start an experiment: apply the preset, make ``out_dir``, prepare (or reuse) the data."""
    started = time.perf_counter()
    config = apply_preset(config, preset)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    context = context_data(config, out / "blocks", context)
    return ExperimentRun(started, config, out, context, config.experiments,
                         experiment_meta(config), repeats_of(config, repeats))


def run_overall(config: StudyAreaConfig, out_dir: str | Path, *, repeats: int | None = None,
                preset: str | None = None, context: Context | None = None
                ) -> ExperimentResult:
    """Every method at K = half: the six metrics (mean ± std), ROC curves."""
    run = begin_run(config, out_dir, repeats, preset, context)
    config, out, context, exp, meta, n = (run.config, run.out, run.context, run.exp,
                                          run.meta, run.repeats)
    methods = resolve_methods(exp.methods)
    raw = method_rows(context, meta, methods, ["half"], n, exp.seed)
    summary = summarize(raw)
    paths = {
        "raw": write_csv(out / "overall_raw.csv", raw.round(5)),
        "summary": write_csv(out / "overall.csv", summary.round(5)),
    }
    curves = pooled_roc(raw, "half")
    if curves:
        paths["roc"] = figures.plot_roc(curves, out / "overall_roc.png",
                                        title="ROC, query samples (K = half, pooled repeats)")
    text = ("Every method on the same data and the same splits, K = half of each "
            "meta-test block's samples as support. " + _protocol_text(context.data, meta, n,
                                                                      exp.seed))
    section = Section("Overall comparison (K = half)", text=text,
                      tables=[("Mean ± std over repeats", display_table(summary))],
                      images=[("ROC curves", paths["roc"])] if "roc" in paths else [])
    return run.finish(paths, {"raw": raw, "summary": summary}, section)


#: Global models every K-shot table shows: the baselines that would embarrass the method.
KSHOT_REFERENCES = ("rf", "lightgbm", "mlp")


def kshot_methods(names: Sequence[str]) -> list[Method]:
    """Transfer and meta-learning methods of ``names`` (zero-shot included), after the
    strongest global models (:data:`KSHOT_REFERENCES`) as references."""
    chosen = resolve_methods(names)
    return ([METHODS[n] for n in KSHOT_REFERENCES]
            + [m for m in chosen if m.family in ("transfer", "meta")])


def run_kshot(config: StudyAreaConfig, out_dir: str | Path, *, repeats: int | None = None,
              preset: str | None = None, context: Context | None = None) -> ExperimentResult:
    """Transfer and meta methods (and the global MLP) at every K; candle chart."""
    run = begin_run(config, out_dir, repeats, preset, context)
    config, out, context, exp, meta, n = (run.config, run.out, run.context, run.exp,
                                          run.meta, run.repeats)
    methods = kshot_methods(exp.methods)
    raw = method_rows(context, meta, methods, list(exp.k_shots), n, exp.seed)
    summary = summarize(raw)
    paths = {
        "raw": write_csv(out / "kshot_raw.csv", raw.round(5)),
        "summary": write_csv(out / "kshot.csv", summary.round(5)),
    }
    labels = {m.name: m.label for m in methods}
    paths["candles"] = figures.plot_candles(
        summary.assign(method=summary["method"].map(labels)), out / "kshot_candles.png",
        metric="accuracy", title=f"Overall accuracy against K ({n} repeats)")
    text = ("Overall accuracy (and the other metrics) of the transfer-based and "
            "meta-learning methods, with the global MLP for reference, at K = "
            f"{', '.join(exp.k_shots)} support samples per meta-test block. The candle "
            "chart shows the mean (marker), ± one standard deviation (bar) and the "
            "minimum and maximum over the repeats (whiskers). "
            + _protocol_text(context.data, meta, n, exp.seed))
    section = Section("K-shot comparison", text=text,
                      tables=[("Mean ± std over repeats", display_table(summary))],
                      images=[("Accuracy against K", paths["candles"])])
    return run.finish(paths, {"raw": raw, "summary": summary}, section)
