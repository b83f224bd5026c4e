"""What pretraining on unlabelled raster cells changes (not run in tests).

For a raster meta config (default ``examples/kaghan-meta.toml``): builds the factor
stack, samples and blocks once, then for each ``--cells`` value pretrains the hidden
layers (RBM, RBM, DAE) on all sample vectors plus that many seeded random valid map
cells (``[meta] unlabelled_cells``; 0 = samples only), meta-trains the intermediate model
from that start (same seed, same iterations) and scores the proposed method on the
meta-test blocks at the config's K values (mean ± std over ``repeats`` shot draws).
Prints one row per (cells, K) and the pretraining / meta-training seconds.

    python benchmarks/meta_unlabelled.py --cells 0 20000 --out /tmp/unl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import pandas as pd

from metalsm.config import load_config
from metalsm.models.recipes import pretrain_state
from metalsm.pipeline._meta import (
    fit_intermediate,
    kshot_table,
    meta_data,
    prepare_stage,
    unlabelled_cells,
)
from metalsm.progress import RunProgress


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="examples/kaghan-meta.toml")
    ap.add_argument("--cells", type=int, nargs="+", default=[0, 20000])
    ap.add_argument("--iterations", type=int, default=None,
                    help="meta-iterations (default: the config's)")
    ap.add_argument("--out", default="/tmp/metalsm-unlabelled")
    args = ap.parse_args()

    config = load_config(args.config)
    meta = config.meta
    if args.iterations is not None:
        meta = dataclasses.replace(meta, iterations=args.iterations)
        config = dataclasses.replace(config, meta=meta)
    out = Path(args.out)
    with RunProgress(enabled=False) as progress:
        stage, stack = prepare_stage(config, out, progress)
    data = meta_data(stage)
    rows, seconds = [], {}
    for n in args.cells:
        cells = unlabelled_cells(stack, n, meta.seed)
        unl = None if cells is None else data.encoder.transform(cells)
        t = time.perf_counter()
        pre = pretrain_state(meta, data, unl)
        t_pre = time.perf_counter() - t
        t = time.perf_counter()
        learner = fit_intermediate(config, data, unl, pre)
        t_meta = time.perf_counter() - t
        seconds[n] = {"pretrain_s": round(t_pre, 2), "metatrain_s": round(t_meta, 2),
                      "pretrain_rows": int(data.X.shape[0] + (0 if unl is None else len(unl))),
                      "errors": {k: [round(v[0], 5), round(v[-1], 5)]
                                 for k, v in pre.history.items()}}
        table = kshot_table({"proposed": learner}, data, meta)
        for row in table.to_dict("records"):
            rows.append({"unlabelled_cells": n, "K": row["k"],
                         **{m: f"{row[f'{m}_mean']:.3f} ± {row[f'{m}_std']:.3f}"
                            for m in ("accuracy", "f1", "auc")},
                         "pretrain_s": seconds[n]["pretrain_s"]})
        print(json.dumps({str(n): seconds[n]}), flush=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(out / "unlabelled.csv", index=False)
    print(frame.to_string(index=False))


if __name__ == "__main__":
    main()
