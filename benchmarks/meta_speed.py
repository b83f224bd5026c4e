"""Speed of the meta-learning pipeline on Hong Kong-sized data (not run in tests).

Times, on the real Hong Kong sample table with k-means blocks on X/Y as tasks:
pretraining (RBM, RBM, DAE at the paper's settings), N meta-iterations (extrapolated
to 5,000), the vmap speed-up over a Python loop over the tasks of a meta-batch (same
batches, same run), adapting every block, and predicting ~815k cells (the Kaghan grid
size, 987 x 826) by block. Also prints the DAE's denoising-error history at the paper's
lr 1e-5 next to lr 1e-3.

    python benchmarks/meta_speed.py --iterations 500 --threads 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.cluster import KMeans

from metalsm.datasets import study_area
from metalsm.models.blockwise import adapt_blocks
from metalsm.models.meta import (
    MetaLearner,
    MetaNet,
    TaskIndex,
    init_params,
    make_task_batch,
    meta_objective,
    sample_meta_batch,
    task_weights,
)
from metalsm.models.pretrain import PretrainConfig, pretrain_network

FACTORS = ["land use", "lithology", "DEM", "slope", "curvature", "aspect", "NDVI", "SPI", "TWI",
           "dis2road", "dis2drainage", "dis2catchment", "dis2faults", "DV"]


def _vmap_vs_loop(X: np.ndarray, y: np.ndarray, codes: np.ndarray, repeats: int,
                  meta_batch: int, first_order: bool) -> dict[str, float]:
    """Seconds per meta-iteration (objective + backward) with vmap and with a task loop."""
    net = MetaNet(X.shape[1])
    init_params(net, torch.Generator().manual_seed(0))
    params = dict(net.named_parameters())
    index = TaskIndex.build(codes, int(codes.max()) + 1)
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(repeats):
        s = sample_meta_batch(codes, y, meta_batch, 5, 15, rng, index)
        batches.append((make_task_batch(X, y, s),
                        task_weights(index.counts[s["tasks"]], float(y.size))))
    out = {}
    for vectorize in (True, False, True):  # vmap twice: the first pass warms up
        t = time.perf_counter()
        for batch, w in batches:
            loss = meta_objective(net, params, batch, w, first_order=first_order,
                                  vectorize=vectorize)
            torch.autograd.grad(loss, list(params.values()))
        out["vmap" if vectorize else "loop"] = (time.perf_counter() - t) / repeats
    out["speedup"] = out["loop"] / out["vmap"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--blocks", type=int, default=300, help="k-means blocks on X/Y")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads for training (the library default is 1: "
                             "2 threads stall under CPU contention, see TRAIN_THREADS)")
    parser.add_argument("--meta-batch", type=int, default=16)
    parser.add_argument("--compare-repeats", type=int, default=40)
    parser.add_argument("--cells", type=int, default=987 * 826)
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, object] = {"threads": args.threads, "blocks": args.blocks}

    df = pd.read_csv(study_area("hongkong") / "samples_HK_noTS.csv", encoding="utf-8-sig")
    X, y = df[FACTORS].to_numpy(np.float64), df["label"].to_numpy()
    blocks = KMeans(args.blocks, n_init=1, random_state=0).fit(df[["X", "Y"]]).labels_
    rng = np.random.default_rng(0)
    train_blocks = rng.permutation(args.blocks)[: int(0.6 * args.blocks)]
    train = np.isin(blocks, train_blocks)
    Xs = ((X - X[train].mean(0)) / X[train].std(0)).astype(np.float32)
    print(f"{len(df)} samples, {args.blocks} blocks, {train.sum()} meta-train samples, "
          f"{args.threads} threads")

    # pretraining (paper settings) and the DAE at a larger lr for comparison
    t = time.perf_counter()
    pre = pretrain_network(Xs[train], config=PretrainConfig(epochs=args.pretrain_epochs,
                                                             n_threads=args.threads),
                           generator=torch.Generator().manual_seed(0))
    results["pretrain_s"] = time.perf_counter() - t
    results["pretrain_history"] = pre.history
    pre_fast = pretrain_network(Xs[train], config=PretrainConfig(epochs=args.pretrain_epochs,
                                                                 dae_lr=1e-3,
                                                                 n_threads=args.threads),
                                generator=torch.Generator().manual_seed(0))
    results["dae_history_lr1e-3"] = pre_fast.history["dae3"]
    print(f"pretraining: {results['pretrain_s']:.1f} s")
    for name, hist in pre.history.items():
        print(f"  {name}: {hist[0]:.4f} -> {hist[-1]:.4f}")
    print(f"  dae3 at lr 1e-3: {pre_fast.history['dae3'][0]:.4f} -> "
          f"{pre_fast.history['dae3'][-1]:.4f}")

    # vmap vs a Python loop over tasks, same batches, one run
    for first_order in (False, True):
        cmp = _vmap_vs_loop(Xs[train], y[train].astype(np.float32),
                            np.unique(blocks[train], return_inverse=True)[1],
                            args.compare_repeats, args.meta_batch, first_order)
        key = "first_order" if first_order else "second_order"
        results[f"vmap_vs_loop_{key}"] = cmp
        print(f"{key}: vmap {cmp['vmap'] * 1e3:.1f} ms/it, loop {cmp['loop'] * 1e3:.1f} ms/it, "
              f"speed-up {cmp['speedup']:.2f}x")

    # meta-training (pretraining excluded: timed above); warm-up fit first (imports)
    MetaLearner(iterations=2, pretrain=False, n_threads=args.threads).fit(
        X[train], y[train], groups=blocks[train])
    learner = MetaLearner(iterations=args.iterations, pretrain=False, meta_batch=args.meta_batch,
                          seed=0, n_threads=args.threads)
    t = time.perf_counter()
    learner.fit(X[train], y[train], groups=blocks[train])
    meta_s = time.perf_counter() - t
    per_it = meta_s / max(args.iterations, 1)
    results.update(meta_s=meta_s, per_iteration_s=per_it, iterations=args.iterations,
                   extrapolated_5000_s=per_it * 5000)
    print(f"meta-training: {args.iterations} iterations in {meta_s:.1f} s = "
          f"{per_it * 1e3:.1f} ms/it -> 5,000 iterations ~ {per_it * 5000:.0f} s")

    # adapt every block (all blocks, K = 5 and half)
    for k in (5, "half"):
        t = time.perf_counter()
        models = adapt_blocks(learner, X, y, blocks, k=k, n_blocks=args.blocks, seed=0)
        results[f"adapt_all_blocks_k{k}_s"] = time.perf_counter() - t
        print(f"adapting {args.blocks} blocks at K={k}: "
              f"{results[f'adapt_all_blocks_k{k}_s']:.2f} s")

    # predict a Kaghan-sized table of cells with their block ids
    cells = rng.integers(0, len(df), args.cells)
    Xc = X[cells] * (1 + 0.01 * rng.standard_normal((args.cells, 1)))
    t = time.perf_counter()
    p = models.predict_proba(Xc, blocks[cells])
    results["predict_cells"] = args.cells
    results["predict_s"] = time.perf_counter() - t
    print(f"predicting {args.cells} cells by block: {results['predict_s']:.2f} s "
          f"(mean p {np.nanmean(p):.3f})")
    total = (results["pretrain_s"] + per_it * 5000 + results["adapt_all_blocks_k5_s"]
             + results["predict_s"])
    results["pipeline_5000_estimate_s"] = total
    print(f"pretrain + 5,000 iterations + adapt + map ~ {total:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
