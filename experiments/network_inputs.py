"""Can another input encoding lift the meta-learner's network to the global tree models?

On Kaghan the block-wise meta-learner stays 0.014-0.019 AUC behind LightGBM and RF
(docs/results.md), and its zero-shot network is already behind them. Trees are blind
to monotone rescaling and split categories freely; a network sees standardized raw
values and one-hot classes. Each variant here changes only what the network reads
(``data.X``), fitted on meta-train samples only:

* ``onehot``: the package's encoding (one-hot classes, raw continuous values, which
  the learner standardizes with the meta-train mean and deviation);
* ``fr``: each categorical factor as one column, the Laplace-smoothed log-odds of a
  landslide among the meta-train samples of its class (the second paper's FR idea);
* ``quantile``: continuous factors as normal scores of their meta-train quantiles;
* ``ple8``: continuous factors by piecewise-linear encoding on 8 meta-train quantile
  bins (Gorishniy, Rubachev, Babenko 2022, "On embeddings for numerical features in
  tabular deep learning");
* ``wide``: ``onehot`` with hidden layers (64, 64, 32) instead of ``[meta] hidden``.

Every variant is scored twice with the area's ``[meta]`` settings: by nested
validation inside the meta-train blocks (the score ``[meta] tune`` would choose by:
pooled AUC on the inner-validation blocks, mean of K = 5 and half) and by the K-shot
protocol on the meta-test blocks (the proposed method and its zero-shot row, beside
RF and LightGBM on the same shots), for the record. Writes ``inputs.csv`` (raw rows)
and prints both tables.

    python experiments/network_inputs.py examples/kaghan-experiments.toml --out runs/inputs
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.preprocessing import QuantileTransformer

from metalsm.config import load_config
from metalsm.evaluation import compare_methods, summarize
from metalsm.experiments.common import PRESETS, apply_preset, experiment_data, experiment_meta
from metalsm.experiments.methods import pretrained_state, resolve_methods
from metalsm.models.recipes import MetaData, make_learner
from metalsm.models.tuning import tune_learner

VARIANTS = ("onehot", "fr", "quantile", "ple8", "wide")
WIDE = (64, 64, 32)


def _columns(data: MetaData) -> tuple[list[int], dict[str, list[int]]]:
    """Indices of the continuous features and of each categorical factor's one-hot columns."""
    names = data.encoder.feature_names
    classes = {f: [i for i, n in enumerate(names) if n.startswith(f"{f}=")]
               for f in data.encoder.categories}
    one_hot = {i for cols in classes.values() for i in cols}
    return [i for i in range(len(names)) if i not in one_hot], classes


def encode(data: MetaData, variant: str) -> np.ndarray:
    """``data.X`` re-encoded by ``variant``; every statistic from meta-train samples only."""
    X, train = data.X, data.train
    continuous, classes = _columns(data)
    if variant in ("onehot", "wide"):
        return X
    if variant == "fr":
        y = data.y[train].astype(np.float64)
        parts = [X[:, continuous]]
        for cols in classes.values():
            onehot = X[:, cols]
            rate = (onehot[train] * y[:, None]).sum(0) + 1.0
            rate /= onehot[train].sum(0) + 2.0
            parts.append(onehot @ np.log(rate / (1.0 - rate))[:, None])
        return np.hstack(parts)
    if variant == "quantile":
        out = X.copy()
        quantiles = QuantileTransformer(output_distribution="normal", random_state=0,
                                        n_quantiles=min(1000, int(train.sum())))
        out[:, continuous] = quantiles.fit(X[train][:, continuous]).transform(X[:, continuous])
        return out
    if variant == "ple8":
        parts = []
        for j in range(X.shape[1]):
            if j not in continuous:
                parts.append(X[:, [j]])
                continue
            edges = np.unique(np.quantile(X[train, j], np.linspace(0.0, 1.0, 9)))
            lo, hi = edges[:-1], edges[1:]
            parts.append(np.clip((X[:, [j]] - lo) / (hi - lo), 0.0, 1.0))
        return np.hstack(parts)
    raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")


def nested_score(data: MetaData, meta, seed: int) -> dict[str, float]:
    """What ``[meta] tune`` sees: the configured settings scored on inner-validation blocks."""
    train = data.train
    pretrained = pretrained_state(data, meta, seed) if meta.pretrain else None
    result = tune_learner(make_learner(meta, seed=seed), data.X[train], data.y[train],
                          data.blocks[train], seed=seed, candidates=(("as configured", {}),),
                          init_state=pretrained.state if pretrained is not None else None)
    row = result.table[result.table["adapt_guard"] == meta.adapt_guard].iloc[0]
    return {"nested_auc": row["score_auc"], "nested_auc_k5": row["auc_k5"],
            "nested_auc_khalf": row["auc_khalf"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--preset", choices=PRESETS, help="small: a quick look, not for results")
    args = parser.parse_args()

    config = apply_preset(load_config(args.config), args.preset)
    data, _ = experiment_data(config, args.out / "blocks")
    meta = experiment_meta(config)
    started = time.perf_counter()
    nested, kshot = [], []
    for variant in args.variants:
        vmeta = replace(meta, hidden=WIDE) if variant == "wide" else meta
        vdata = replace(data, X=encode(data, variant), cache={})
        names = ["proposed", "zero-shot"] + (["rf", "lightgbm"] if variant == "onehot" else [])
        raw = compare_methods(vdata, vmeta, resolve_methods(names), vmeta.k_shots,
                              args.repeats, args.seed)
        kshot.append(raw.assign(variant=variant))
        for r in range(args.repeats):
            nested.append({"variant": variant, "repeat": r,
                           **nested_score(vdata, vmeta, args.seed + r)})
        print(f"{variant}: {time.perf_counter() - started:.0f} s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    raw = pd.concat(kshot, ignore_index=True)
    raw.to_csv(args.out / "inputs.csv", index=False)
    pd.DataFrame(nested).to_csv(args.out / "nested.csv", index=False)
    print("\nNested validation inside the meta-train blocks (mean over repeats):")
    print(pd.DataFrame(nested).groupby("variant", sort=False).mean().drop(columns="repeat")
          .round(4).to_string())
    table = summarize(raw.assign(method=raw["variant"] + " " + raw["method"]),
                      ("auc", "within_auc"))
    print("\nK-shot on the meta-test blocks (AUC, mean ± std over repeats):")
    shown = table.assign(auc=table["auc_mean"].round(3).astype(str) + " ± "
                         + table["auc_std"].round(3).astype(str),
                         within_auc=table["within_auc_mean"].round(3))
    print(shown[["method", "k", "auc", "within_auc"]].to_string(index=False))
    print(f"\n{time.perf_counter() - started:.0f} s; {args.out / 'inputs.csv'}")


if __name__ == "__main__":
    main()
