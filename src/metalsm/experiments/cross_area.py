"""Cross-area experiments A–D: does what is learnt in one area carry over to another?

The study area is split in two (:mod:`metalsm.experiments.areas`: ``[experiments]
cross_area_split`` = ``west-east``, ``north-south`` or a polygon file; every block
goes to area 1 or 2). Two *different* study areas sharing factors are not supported
here: the split is always of one study area (one sample table or one factor stack).
The blocks of the meta run (same ``[blocks]`` segmentation, same encoding) are then
re-split by :func:`metalsm.blocks.split_by_area`, ``fraction`` =
``[experiments] cross_area_fraction``:

* **A**: meta-train on part of area 1, test on the rest of area 1 (area 2 unused);
* **B**: train on all of area 1, test on area 2;
* **C**: train on part of area 1 and part of area 2, test on the rest of area 1;
* **D**: train on all of area 1 and part of area 2, test on the rest of area 2.

For each scheme every method (``[experiments] methods``, default the transfer and
meta-learning methods plus a global RF and MLP for reference) is trained on the
scheme's meta-train blocks and scored on the query samples of its meta-test blocks at
each K (:func:`metalsm.evaluation.compare_methods`: same shots for every
method, ``repeats`` seeds). Global methods also train on the support samples.

Outputs: ``cross_area_raw.csv`` (one row per scheme, method, K, repeat),
``cross_area_summary.csv`` (mean/std/min/max per scheme, method, K),
``cross_area_<scheme>.csv`` (mean ± std tables), ``cross_area_blocks.csv`` (area and
role of every block in every scheme), ``cross_area.png`` (accuracy and AUC by scheme
and method, ±σ bars) and ``cross_area_map.png`` (the two areas and each scheme's
train/test blocks).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from metalsm.atomic import write_csv, write_json
from metalsm.blocks import split_by_area
from metalsm.config import StudyAreaConfig
from metalsm.experiments.areas import SPLITS, area_of_blocks, check_areas
from metalsm.experiments.common import (
    ExperimentResult,
    apply_preset,
    experiment_data,
    experiment_meta,
    repeats_of,
    since,
)
from metalsm.report.html import Section

__all__ = ["DEFAULT_METHODS", "SCHEMES", "area_of_blocks", "run_cross_area", "scheme_splits"]

SCHEMES = ("A", "B", "C", "D")
SCHEME_TEXT = {
    "A": "train: part of area 1; test: rest of area 1",
    "B": "train: all of area 1; test: area 2",
    "C": "train: part of areas 1 and 2; test: rest of area 1",
    "D": "train: all of area 1 + part of area 2; test: rest of area 2",
}
DEFAULT_METHODS = ("rf", "lightgbm", "mlp", "rl-based", "maml", "proposed", "zero-shot")


def _split_source(config: StudyAreaConfig) -> str:
    split = config.experiments.cross_area_split
    if split in SPLITS:
        return split
    path = Path(split)
    if not path.is_absolute() and config.source:
        path = Path(config.source).parent / path
    return str(path)


def _crs(config: StudyAreaConfig, stage: Any) -> Any:
    if stage.blocks is not None:
        return stage.blocks.grid.crs
    return config.table.crs if config.table is not None else None


def scheme_splits(area: np.ndarray, fraction: float, seed: int
                  ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(meta-train, meta-test) blocks of each scheme; blocks of area 0 take no part."""
    area = np.asarray(area)
    mapping = {int(b): int(a) for b, a in enumerate(area) if a in (1, 2)}
    return {s: split_by_area(mapping, s, fraction, seed) for s in SCHEMES}


def run_cross_area(config: StudyAreaConfig, out_dir: str | Path, *,
                   repeats: int | None = None, preset: str | None = None
                   ) -> ExperimentResult:
    """Schemes A–D × methods × K on one study area split in two; tables, figures, section."""
    from metalsm.evaluation import compare_methods, summarize
    from metalsm.experiments.methods import display_table, resolve_methods

    started = time.perf_counter()
    config = apply_preset(config, preset)
    exp = config.experiments
    meta = experiment_meta(config)
    n_repeats = repeats_of(config, repeats)
    if exp.ablation_repeats > 0:  # four schemes x every method: the costlier repeats cap
        n_repeats = min(n_repeats, exp.ablation_repeats)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    data, stage = experiment_data(config, out / "blocks")
    split = _split_source(config)
    area = area_of_blocks(stage.samples.coords, data.blocks, data.n_blocks, split,
                          _crs(config, stage))
    check_areas(area, exp.cross_area_split)
    splits = scheme_splits(area, exp.cross_area_fraction, exp.seed)
    timings["blocks"] = since(t)

    methods = list(exp.methods) or list(DEFAULT_METHODS)
    raws = []
    for scheme, (train, test) in splits.items():
        t = time.perf_counter()
        # a fresh cache: what methods cache per data value (pretraining on the meta-train
        # samples) differs from scheme to scheme
        scheme_data = replace(data, train_blocks=train, test_blocks=test)
        if hasattr(scheme_data, "cache"):
            scheme_data.cache = {}
        raw = compare_methods(scheme_data, meta, resolve_methods(methods), exp.k_shots,
                              n_repeats, exp.seed)
        raw = raw.assign(scheme=scheme)
        raw.attrs = {}  # query probabilities per scheme are not kept
        raws.append(raw)
        timings[f"scheme_{scheme}"] = since(t)
    raw = pd.concat(raws, ignore_index=True)
    raw = raw[["scheme", *[c for c in raw.columns if c != "scheme"]]]
    raw.attrs = {}
    summary = pd.concat([summarize(r.drop(columns="scheme")).assign(scheme=s)
                         for s, r in raw.groupby("scheme", sort=False)], ignore_index=True)
    summary = summary[["scheme", *[c for c in summary.columns if c != "scheme"]]]

    blocks = block_roles(area, splits, data)
    paths: dict[str, Path] = {
        "raw": write_csv(out / "cross_area_raw.csv", raw.round(4)),
        "summary": write_csv(out / "cross_area_summary.csv", summary.round(4)),
        "blocks": write_csv(out / "cross_area_blocks.csv", blocks),
    }
    tables: dict[str, pd.DataFrame] = {"raw": raw, "summary": summary, "blocks": blocks}
    for scheme in SCHEMES:
        display = display_table(summary[summary["scheme"] == scheme].reset_index(drop=True))
        tables[scheme] = display
        paths[f"table_{scheme}"] = write_csv(out / f"cross_area_{scheme}.csv", display)
    paths["figure"] = plot_cross_area(summary, out / "cross_area.png",
                                      title=f"{config.name}: cross-area schemes A–D "
                                            f"({exp.cross_area_split} split)")
    paths["map"] = plot_area_map(stage.samples.coords, data.blocks, blocks,
                                 out / "cross_area_map.png", title=f"{config.name}: areas "
                                 f"and blocks of each scheme ({exp.cross_area_split} split)")
    seconds = time.perf_counter() - started
    timings["total"] = round(seconds, 3)
    counts = {f"area_{a}_blocks": int((area == a).sum()) for a in (1, 2)}
    counts["blocks_without_samples"] = int((area == 0).sum())
    info = {"study_area": config.name, "split": exp.cross_area_split,
            "fraction": exp.cross_area_fraction, "seed": exp.seed, "repeats": n_repeats,
            "k_shots": list(exp.k_shots), "methods": methods,
            "meta_iterations": meta.iterations, **counts,
            "schemes": {s: {"train_blocks": tr.tolist(), "test_blocks": te.tolist()}
                        for s, (tr, te) in splits.items()},
            "timings_s": timings}
    paths["summary_json"] = write_json(out / "cross_area.json", info)
    section = Section(
        "Cross-area experiments A–D",
        text=_section_text(exp, counts, n_repeats, meta.iterations),
        images=[("Accuracy and AUC by scheme and method (±σ over repeats)", paths["figure"]),
                ("Areas and the train/test blocks of each scheme", paths["map"])],
        tables=[(f"Scheme {s}: {SCHEME_TEXT[s]}", tables[s]) for s in SCHEMES],
        preformatted=[("Timings (s)", timings)],
    )
    return ExperimentResult(paths, seconds, tables, section)


def _section_text(exp: Any, counts: dict[str, int], repeats: int, iterations: int) -> str:
    how = {"west-east": "area 1 = west of the median sample x, area 2 = east",
           "north-south": "area 1 = north of the median sample y, area 2 = south"}.get(
        exp.cross_area_split, f"area 1 = inside the polygon(s) of `{exp.cross_area_split}`")
    return (
        f"One study area split in two ({how}; a block goes to the side of most of its "
        f"samples): {counts['area_1_blocks']} blocks in area 1, {counts['area_2_blocks']} "
        f"in area 2. Where a scheme splits an area, {exp.cross_area_fraction:.0%} of its "
        f"blocks train (seed {exp.seed}).\n\n"
        + "\n".join(f"- **{s}**: {t}" for s, t in SCHEME_TEXT.items())
        + f"\n\nEach method is trained on the scheme's meta-train blocks ({iterations} "
        "meta-iterations for the meta-learners) and scored on the query samples of the "
        f"test blocks after K shots per block, mean ± std over {repeats} repeats (seeds, "
        "support draws). Global methods train on the meta-train samples plus the shots.")


def block_roles(area: np.ndarray, splits: dict[str, tuple[np.ndarray, np.ndarray]],
                data: Any) -> pd.DataFrame:
    """One row per block: area, samples, and its role (train/test/unused) per scheme."""
    n = area.size
    inside = data.blocks >= 0
    table = pd.DataFrame({"block": np.arange(n), "area": area,
                          "samples": np.bincount(data.blocks[inside], minlength=n)})
    for scheme, (train, test) in splits.items():
        role = np.full(n, "unused", dtype=object)
        role[train] = "train"
        role[test] = "test"
        table[scheme] = role
    return table


def plot_cross_area(summary: pd.DataFrame, path: Path, title: str,
                    metrics: tuple[str, ...] = ("accuracy", "auc")) -> Path:
    """Grouped bars (scheme groups, one bar per method, ±σ) for each K and metric."""
    from metalsm.report.figures import save_figure

    ks = list(dict.fromkeys(summary["k"].astype(str)))
    methods = list(dict.fromkeys(summary["method"]))
    schemes = [s for s in SCHEMES if s in set(summary["scheme"])]
    fig = Figure(figsize=(max(6.0, 1.3 * len(schemes) * max(1, len(methods)) / 3 + 2)
                          * len(ks) / 1.5, 3.3 * len(metrics)), layout="constrained")
    axes = fig.subplots(len(metrics), len(ks), squeeze=False)
    width = 0.8 / max(1, len(methods))
    colours = [f"C{i}" for i in range(len(methods))]
    x = np.arange(len(schemes))
    indexed = summary.assign(k=summary["k"].astype(str)).set_index(["scheme", "method", "k"])
    for i, metric in enumerate(metrics):
        for j, k in enumerate(ks):
            ax = axes[i, j]
            for m, method in enumerate(methods):
                keys = [(s, method, k) for s in schemes]
                present = [key in indexed.index for key in keys]
                mean = np.array([indexed.loc[key, f"{metric}_mean"] if ok else np.nan
                                 for key, ok in zip(keys, present, strict=True)], float)
                std = np.array([indexed.loc[key, f"{metric}_std"] if ok else np.nan
                                for key, ok in zip(keys, present, strict=True)], float)
                ax.bar(x + (m - (len(methods) - 1) / 2) * width, mean, width, yerr=std,
                       color=colours[m], edgecolor="0.3", linewidth=0.5, capsize=2,
                       label=method, error_kw={"linewidth": 0.8})
            ax.set_xticks(x, [f"scheme {s}" for s in schemes])
            ax.set_ylim(0, 1)
            ax.axhline(0.5, color="0.5", linewidth=0.7, linestyle="--")
            ax.set_ylabel(metric)
            ax.set_title(f"K = {k}", fontsize=10)
            ax.grid(axis="y", alpha=0.3)
    axes[0, -1].legend(fontsize=7, loc="lower right", ncol=2, framealpha=0.85)
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


def plot_area_map(coords: np.ndarray, sample_blocks: np.ndarray, roles: pd.DataFrame,
                  path: Path, title: str) -> Path:
    """Five panels of the sample points: the two areas, then train/test blocks per scheme."""
    from metalsm.report.figures import save_figure

    xy = np.asarray(coords, dtype=float)
    ids = np.asarray(sample_blocks)
    ok = ids >= 0
    xy, ids = xy[ok], ids[ok]
    span = np.ptp(xy, axis=0)
    aspect = float(span[1] / span[0]) if span[0] > 0 else 1.0
    panel = 3.2
    fig = Figure(figsize=(panel * 5, panel * min(2.0, max(0.5, aspect)) + 1.0),
                 layout="constrained")
    axes = fig.subplots(1, 5)
    area = roles["area"].to_numpy()[ids]
    area_colours = np.where(area == 1, "#1b9e77", np.where(area == 2, "#d95f02", "0.7"))
    role_colour = {"train": "#2c7bb6", "test": "#d7191c", "unused": "0.8"}
    order = np.random.default_rng(0).permutation(ids.size)
    axes[0].scatter(xy[order, 0], xy[order, 1], s=2, c=area_colours[order], linewidths=0)
    axes[0].set_title("areas (1 green, 2 orange)", fontsize=9)
    for ax, scheme in zip(axes[1:], SCHEMES, strict=True):
        role = roles[scheme].to_numpy()[ids]
        colours = np.array([role_colour[r] for r in ("train", "test", "unused")])
        code = np.select([role == "train", role == "test"], [0, 1], 2)
        ax.scatter(xy[order, 0], xy[order, 1], s=2, c=colours[code[order]], linewidths=0)
        ax.set_title(f"scheme {scheme}: blue train, red test", fontsize=9)
    for ax in axes:
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)

