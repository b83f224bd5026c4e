"""Ablations of the proposed method (paper Table 3 and beyond).

* **pretraining × task loss**: unsupervised RBM/RBM/DAE pretraining off/on × uniform /
  weighted (softmax) task loss; off + uniform is plain MAML, the config's setting is
  the proposed method.
* **adaptation** (:data:`ADAPTATION_VARIANTS`): the configured setting against one
  change at a time -- Meta-SGD off (one fixed step size), the paper's step sizes,
  the other support rule, the guard off, five times the meta-iterations, the authors'
  transductive batch norm.
* **class-balanced adaptation** off/on (``[meta] balanced``: the inner loop weights
  each class of a support set equally, in meta-training and in adaptation).
* **number of blocks K** (``[experiments] ablation_blocks``): the study area
  re-segmented into that many blocks (:func:`metalsm.pipeline.with_blocks`), the
  proposed method retrained. Different K give different meta-test blocks, so these
  rows compare settings, not the same query samples.

Every variant: the seeds and support draws of the comparisons (repeats: at most
``[experiments] ablation_repeats``), scored at every ``[experiments] k_shots`` on the
query samples of the meta-test blocks.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd

from metalsm.atomic import write_csv
from metalsm.config import ABLATION_TABLES, BlocksConfig, MetaConfig, StudyAreaConfig
from metalsm.evaluation import Method, summarize
from metalsm.experiments.common import (
    ExperimentResult,
    experiment_data,
)
from metalsm.experiments.comparison import Context, begin_run, method_rows
from metalsm.experiments.methods import METHODS, fit_proposed
from metalsm.pipeline._blocks import with_blocks
from metalsm.report import figures
from metalsm.report.html import Section

__all__ = ["run_ablation"]

_SHOWN = ("accuracy", "f1", "auc", "within_auc")


def _variant(name: str, **changes: object) -> Method:
    def fit(data, meta: MetaConfig, seed: int):
        return fit_proposed(data, replace(meta, **changes), seed)
    return Method(name, "meta", name, fit)


def adaptation_variants(meta: MetaConfig) -> list[tuple[str, dict[str, object]]]:
    """(label, changes to ``[meta]``): the configured setting first, then one change each."""
    other_rule = "stratified" if meta.support_rule == "random" else "random"
    variants: list[tuple[str, dict[str, object]]] = [("as configured", {})]
    if meta.inner_lr_mode != "fixed":
        variants.append(("Meta-SGD off (fixed step)", {"inner_lr_mode": "fixed"}))
    variants += [
        ("paper steps (0.1 fixed, meta lr 1e-4)",
         {"inner_lr_mode": "fixed", "inner_lr": 0.1, "meta_lr": 1e-4}),
        (f"support {other_rule}", {"support_rule": other_rule}),
        (f"guard {'off' if meta.adapt_guard else 'on'}", {"adapt_guard": not meta.adapt_guard}),
        (f"{5 * meta.iterations} meta-iterations", {"iterations": 5 * meta.iterations}),
    ]
    if meta.normalization != "batchnorm":
        variants.append(("transductive batch norm", {"normalization": "batchnorm"}))
    return variants


def _pretrain_weighting(meta: MetaConfig) -> list[tuple[Method, dict[str, str]]]:
    out = []
    for pretrain in (False, True):
        for weighting in ("uniform", "softmax"):
            setting = {"pretraining": "on" if pretrain else "off",
                       "task loss": "weighted" if weighting == "softmax" else "uniform"}
            if not pretrain and weighting == "uniform":
                method = METHODS["maml"]
            elif pretrain == meta.pretrain and weighting == meta.task_weighting:
                method = METHODS["proposed"]
            else:
                method = _variant(f"pretrain={setting['pretraining']}, "
                                  f"loss={setting['task loss']}",
                                  pretrain=pretrain, task_weighting=weighting)
            out.append((method, setting))
    return out


def _short(summary: pd.DataFrame, setting_cols: list[str]) -> pd.DataFrame:
    out = summary[[*setting_cols, "k"]].copy()
    for metric in _SHOWN:
        out[metric] = (summary[f"{metric}_mean"].map("{:.3f}".format) + " ± "
                       + summary[f"{metric}_std"].map("{:.3f}".format))
    return out


def _pretrain_loss_table(context: Context, meta: MetaConfig, ks: list[str], n: int,
                         seed: int) -> pd.DataFrame:
    parts = []
    for method, setting in _pretrain_weighting(meta):
        raw = method_rows(context, meta, [method], ks, n, seed)
        parts.append(summarize(raw).assign(**setting))
    return pd.concat(parts, ignore_index=True)


def _adaptation_table(context: Context, meta: MetaConfig, ks: list[str], n: int,
                      seed: int) -> pd.DataFrame:
    parts = []
    for label, changes in adaptation_variants(meta):
        # the variant's [meta] also draws the shots (a support-rule row adapts from shots
        # drawn by its own rule)
        raw = method_rows(context, replace(meta, **changes), [METHODS["proposed"]], ks, n,
                          seed)
        parts.append(summarize(raw).assign(setting=label))
    return pd.concat(parts, ignore_index=True)


def _balanced_table(context: Context, meta: MetaConfig, ks: list[str], n: int,
                    seed: int) -> pd.DataFrame:
    parts = []
    for balanced in (False, True):
        method = (METHODS["proposed"] if balanced == meta.balanced
                  else _variant(f"balanced={'on' if balanced else 'off'}", balanced=balanced))
        raw = method_rows(context, meta, [method], ks, n, seed)
        parts.append(summarize(raw).assign(**{"balanced adaptation":
                                              "on" if balanced else "off"}))
    return pd.concat(parts, ignore_index=True)


def _blocks_table(config: StudyAreaConfig, out: Path, context: Context, meta: MetaConfig,
                  ks: list[str], n: int, seed: int) -> pd.DataFrame:
    parts = []
    own = (config.blocks or BlocksConfig()).n_blocks
    for n_blocks in config.experiments.ablation_blocks:
        if n_blocks == own:
            ctx = context
        else:
            data, _ = experiment_data(with_blocks(config, n_blocks, None),
                                      out / f"blocks_{n_blocks}",
                                      stack=getattr(context.stage, "stack", None),
                                      samples=context.stage.samples)
            ctx = Context(data=data)
        raw = method_rows(ctx, meta, [METHODS["proposed"]], ks, n, seed)
        parts.append(summarize(raw).assign(
            **{"blocks asked": n_blocks, "blocks made": ctx.data.n_blocks,
               "meta-test blocks": int(ctx.data.test_blocks.size)}))
    return pd.concat(parts, ignore_index=True)


#: Report title and setting columns of each ablation table.
_TABLES = {
    "adaptation": ("Adaptation settings, one change at a time", ["setting"]),
    "pretrain_loss": ("Pretraining × task loss (mean ± std)", ["pretraining", "task loss"]),
    "balanced": ("Class-balanced adaptation", ["balanced adaptation"]),
    "blocks": ("Number of blocks", ["blocks asked", "blocks made", "meta-test blocks"]),
}


def run_ablation(config: StudyAreaConfig, out_dir: str | Path, *, repeats: int | None = None,
                 preset: str | None = None, context: Context | None = None
                 ) -> ExperimentResult:
    """The tables of ``[experiments] ablations``: adaptation settings, pretraining ×
    task loss, balanced adaptation, number of blocks."""
    run = begin_run(config, out_dir, repeats, preset, context)
    config, out, context, exp, meta, n = (run.config, run.out, run.context, run.exp,
                                          run.meta, run.repeats)
    if exp.ablation_repeats > 0:
        n = min(n, exp.ablation_repeats)
    ks = list(exp.k_shots)
    paths, tables = {}, {}
    for name in ABLATION_TABLES:
        if name not in exp.ablations:
            continue
        if name == "blocks":
            table = _blocks_table(config, out, context, meta, ks, n, exp.seed)
        else:
            table = {"adaptation": _adaptation_table, "pretrain_loss": _pretrain_loss_table,
                     "balanced": _balanced_table}[name](context, meta, ks, n, exp.seed)
        tables[name] = table
        paths[name] = write_csv(out / f"ablation_{name}.csv", table.round(5))
    images = []
    if "blocks" in tables:
        table = tables["blocks"]
        paths["blocks_png"] = figures.plot_candles(
            table.assign(method=table["blocks asked"].map(lambda b: f"{b} blocks")),
            out / "ablation_blocks.png", metric="accuracy",
            title="Proposed method: accuracy against K, by number of blocks")
        images.append(("Accuracy against K by number of blocks", paths["blocks_png"]))

    text = (
        "Ablations of the proposed method, each at K = " + ", ".join(ks) + f", {n} repeats "
        f"(seeds {exp.seed} … {exp.seed + n - 1}; the same support draws as the comparisons). "
        "Pretraining off with a uniform task loss is plain MAML; the setting of [meta] is "
        "the proposed method. Class-balanced adaptation changes the inner-loop loss in "
        "meta-training and adaptation. Different numbers of blocks re-segment the study "
        "area, so their meta-test blocks (and query samples) differ."
    )
    section = Section("Ablations", text=text, tables=[
        (_TABLES[name][0], _short(table, _TABLES[name][1])) for name, table in tables.items()],
        images=images)
    return run.finish(paths, tables, section)
