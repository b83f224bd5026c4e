"""How the `[meta]` defaults were chosen: nested validation inside the meta-train blocks.

For one study-area config, the meta-train blocks are split again (60/40, seeded); every
candidate of `metalsm.models.tuning.CANDIDATES` (or the iteration counts given with
`--iterations`) is meta-trained on the inner-train blocks from the same pretraining and
scored on the inner-validation blocks at K = 5 and half, with and without the guard. The
meta-test blocks never enter. Writes the search as CSV and prints it.

    python experiments/tune_defaults.py examples/kaghan-experiments.toml --out runs/tune-kaghan
    python experiments/tune_defaults.py examples/kaghan-experiments.toml --out runs/its \\
        --iterations 1000 5000
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from metalsm.config import load_config
from metalsm.experiments.common import experiment_data, experiment_meta
from metalsm.experiments.methods import pretrained_state
from metalsm.models.recipes import make_learner
from metalsm.models.tuning import CANDIDATES, tune_learner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--iterations", type=int, nargs="*", default=None,
                        help="compare these meta-iteration counts instead of the candidates")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    config = load_config(args.config)
    data, _ = experiment_data(config, args.out / "blocks")
    meta = replace(experiment_meta(config), tune_budget_s=1e9)
    candidates = (tuple((f"{n} iterations", {"iterations": n}) for n in args.iterations)
                  if args.iterations else CANDIDATES)
    pretrained = pretrained_state(data, meta, args.seed)
    train = data.train
    started = time.perf_counter()
    result = tune_learner(make_learner(meta), data.X[train], data.y[train],
                          data.blocks[train], init_state=pretrained.state,
                          budget_s=1e9, seed=args.seed, candidates=candidates)
    args.out.mkdir(parents=True, exist_ok=True)
    result.table.to_csv(args.out / "tuning.csv", index=False)
    shown = [c for c in result.table.columns if not c.startswith("set_")]
    print(result.table[shown].round(4).to_string(index=False))
    print(f"chosen: {result.best_name} {result.best} "
          f"({time.perf_counter() - started:.0f} s; {args.out / 'tuning.csv'})")


if __name__ == "__main__":
    main()
