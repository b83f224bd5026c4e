"""``validation``: the global models under random versus spatial folds.

The same models, the same samples, the same seed, cross-validated twice
(:func:`metalsm.evaluation.evaluate_models`): random stratified folds and spatial
folds (``[validation] spatial_method`` clusters of the sample coordinates). The
difference random − spatial is the optimism of random folds: how much a random
split flatters a model because its test samples sit next to training samples.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from metalsm import evaluation as validation
from metalsm.atomic import write_csv
from metalsm.config import StudyAreaConfig
from metalsm.experiments.common import ExperimentResult
from metalsm.experiments.comparison import Context, begin_run
from metalsm.experiments.methods import METHODS, resolve_methods
from metalsm.report import figures
from metalsm.report.html import Section

__all__ = ["run_validation"]


def run_validation(config: StudyAreaConfig, out_dir: str | Path, *, repeats: int | None = None,
                   preset: str | None = None, context: Context | None = None
                   ) -> ExperimentResult:
    """Random vs spatial folds for the global methods; table with the optimism, ROC."""
    del repeats  # folds, not repeats
    run = begin_run(config, out_dir, None, preset, context)
    config, out, data = run.config, run.out, run.context.data
    names = [m.name for m in resolve_methods(config.experiments.methods) if m.family == "global"]
    settings = config.validation
    evaluation = validation.evaluate_models(
        names, data.table, data.y, data.coords, categorical=list(data.categorical),
        n_folds=settings.n_folds, seed=settings.seed, spatial_method=settings.spatial_method,
        buffer_m=settings.buffer_m, repeats=settings.repeats)
    table = evaluation.table
    wide = table.pivot(index="model", columns="scheme")
    rows = []
    for name in names:
        row = {"model": name}
        for metric in validation.METRICS:
            for scheme in validation.SCHEMES:
                row[f"{metric}_{scheme}"] = wide.loc[name, (f"{metric}_mean", scheme)]
            row[f"{metric}_optimism"] = (row[f"{metric}_random"] - row[f"{metric}_spatial"])
        rows.append(row)
    summary = pd.DataFrame(rows)
    paths = {"folds": write_csv(out / "validation_folds.csv", table.round(5)),
             "summary": write_csv(out / "validation.csv", summary.round(5))}
    for scheme in validation.SCHEMES:
        curves = {}
        for name in names:
            roc = validation.roc_points(data.y, evaluation.oof[(name, scheme)])
            curves[METHODS[name].label] = (roc.fpr, roc.tpr, roc.auc)
        paths[f"roc_{scheme}"] = figures.plot_roc(
            curves, out / f"validation_roc_{scheme}.png",
            title=f"ROC, out-of-fold, {scheme} folds")
    shown = pd.DataFrame({"model": summary["model"].map(lambda m: METHODS[m].label)})
    for metric in ("accuracy", "auc", "kappa"):
        for col in ("random", "spatial", "optimism"):
            shown[f"{metric} {col}"] = summary[f"{metric}_{col}"].map("{:+.3f}".format
                                                                      if col == "optimism"
                                                                      else "{:.3f}".format)
    text = (f"{settings.n_folds}-fold cross-validation of the global models on all "
            f"{data.y.size} samples, seed {settings.seed}: random stratified folds versus "
            f"spatial folds ({settings.spatial_method} clusters of the coordinates). "
            "Optimism = random − spatial: what random folds add because test samples "
            "lie next to training samples. Means over folds; ROC curves of the pooled "
            "out-of-fold probabilities."
            + (f" Folds drawn {settings.repeats} times (seed + repeat); the means are over "
               "every fold of every repeat." if settings.repeats > 1 else "")
            + (f" Training samples within {settings.buffer_m:g} m of a test fold are left "
               "out." if settings.buffer_m > 0 else ""))
    section = Section("Random versus spatial validation", text=text,
                      tables=[("Fold means and optimism", shown)],
                      images=[(f"ROC, {s} folds", paths[f"roc_{s}"])
                              for s in validation.SCHEMES])
    return run.finish(paths, {"folds": table, "summary": summary}, section)
