"""Report tables a reader can take in at a glance: few columns, named units, no raw JSON.

Each function turns one machine-readable output (the validation table, the zone
table, the manifest) into a narrow DataFrame for :mod:`metalsm.report.html`; the
full-precision values stay in the CSV/JSON files beside the report.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "factor_table",
    "provenance_tables",
    "validation_table",
    "zone_report_table",
]

#: Validation columns shown as "mean ± std" over folds, with their report headings.
_FOLD_METRICS = {"auc": "AUC", "accuracy": "accuracy", "precision": "precision",
                 "recall": "recall", "f1": "F1", "kappa": "kappa"}


def _mean_std(mean: pd.Series, std: pd.Series) -> pd.Series:
    return mean.map("{:.3f}".format) + " ± " + std.map("{:.3f}".format)


def _with_repeat_spread(text: pd.Series, table: pd.DataFrame, column: str) -> pd.Series:
    """``text`` followed by "(± s)", s the std over repeats of ``column``, when the
    cross-validation was repeated."""
    spread = f"{column}_repeat_std"
    if spread not in table.columns:
        return text
    return text + table[spread].map(" (± {:.3f})".format)


def fold_spread(table: pd.DataFrame, metric: str) -> pd.Series:
    """``metric`` of ``validation.csv`` as "mean ± std over folds", followed by
    "(± std over repeats)" for a repeated cross-validation."""
    return _with_repeat_spread(_mean_std(table[f"{metric}_mean"], table[f"{metric}_std"]),
                               table, metric)


def validation_table(table: pd.DataFrame) -> pd.DataFrame:
    """Every metric of ``validation.csv`` as one "mean ± std over folds" column, so all
    of them fit the page; pooled and prediction-rate AUCs and fit time after them (the
    spread over repeats has its own table, :func:`repeat_spread_table`)."""
    out = table[["model", "scheme"]].copy()
    for metric, heading in _FOLD_METRICS.items():
        if f"{metric}_mean" in table.columns:
            out[heading] = _mean_std(table[f"{metric}_mean"], table[f"{metric}_std"])
    for column, heading in (("pooled_auc", "pooled AUC"),
                            ("prediction_rate_auc", "prediction-rate AUC")):
        if column in table.columns:
            out[heading] = table[column].map("{:.3f}".format)
    if "fit_seconds_mean" in table.columns:
        out["fit (s)"] = table["fit_seconds_mean"].round(2)
    return out


def repeat_spread_table(table: pd.DataFrame) -> pd.DataFrame | None:
    """For a repeated cross-validation, the std over repeats of each repeat's mean of
    every metric (``<metric>_repeat_std`` of ``validation.csv``); None otherwise."""
    if "repeats" not in table.columns:
        return None
    out = table[["model", "scheme"]].copy()
    headings = {**_FOLD_METRICS, "pooled_auc": "pooled AUC",
                "prediction_rate_auc": "prediction-rate AUC"}
    for metric, heading in headings.items():
        if f"{metric}_repeat_std" in table.columns:
            out[heading] = table[f"{metric}_repeat_std"].map("{:.3f}".format)
    return out


def zone_report_table(zones: pd.DataFrame) -> pd.DataFrame:
    """``zones.csv`` for reading: shares in %, the ratio named for what it is."""
    out = pd.DataFrame({"zone": zones["level"], "label": zones["label"]})
    if "susceptibility_min" in zones.columns:
        out["susceptibility"] = (zones["susceptibility_min"].map("{:.3f}".format) + " – "
                                 + zones["susceptibility_max"].map("{:.3f}".format))
    out["area (km²)"] = zones["area_km2"].round(2)
    out["area %"] = (100 * zones["area_share"]).round(1)
    if "landslide_share" in zones.columns:
        out["landslide cells"] = zones["landslide_cells"]
        out["landslides %"] = (100 * zones["landslide_share"]).round(1)
        out["ratio (landslides % ÷ area %)"] = zones["ratio"].round(2)
    out["cumulative area % (from the top zone)"] = (100 * zones["cum_area_share"]).round(1)
    if "cum_landslide_share" in zones.columns:
        out["cumulative landslides %"] = (100 * zones["cum_landslide_share"]).round(1)
    return out


def factor_table(factors: Sequence[str], categorical: Sequence[str]) -> pd.DataFrame:
    """The model's factors, one row each, with their kind."""
    return pd.DataFrame({"factor": list(factors),
                         "kind": ["categorical" if f in categorical else "continuous"
                                  for f in factors]})


def provenance_tables(manifest: Mapping[str, Any]) -> list[tuple[str, pd.DataFrame]]:
    """Inputs (paths relative to their common folder, checksum abbreviated), seeds,
    timings and versions as (caption, table) pairs; ``manifest.json`` keeps it all."""
    tables = []
    inputs = manifest.get("inputs_sha256", {})
    if inputs:
        paths = list(inputs)
        root = os.path.commonpath([os.path.dirname(p) for p in paths]) if len(paths) > 1 \
            else os.path.dirname(paths[0])
        tables.append((f"Inputs, under {root or '.'} (full SHA-256 in manifest.json)",
                       pd.DataFrame({"file": [os.path.relpath(p, root) if root else p
                                              for p in paths],
                                     "SHA-256 (first 16)": [str(h)[:16]
                                                            for h in inputs.values()]})))
    if manifest.get("seeds"):
        tables.append(("Seeds", pd.DataFrame({"stage": list(manifest["seeds"]),
                                              "seed": list(manifest["seeds"].values())})))
    if manifest.get("timings_s"):
        timings = manifest["timings_s"]
        tables.append(("Timings", pd.DataFrame({
            "stage": [k.replace("_", " ") for k in timings],
            "seconds": np.round(np.asarray(list(timings.values()), dtype=float), 1)})))
    if manifest.get("versions"):
        tables.append(("Versions", pd.DataFrame({"software": list(manifest["versions"]),
                                                 "version": list(manifest["versions"].values())})))
    return tables
