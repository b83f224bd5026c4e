"""Credibility map time and memory on Kaghan and on the Kaghan stack tiled N times.

Usage:
    .venv/bin/python benchmarks/credibility_speed.py --run outputs/kaghan --tile 2 5

``--run`` is a finished run directory (``factors.tif``, ``samples.csv``); the
positives are its landslide samples. Each case runs in a fresh subprocess and
reports wall time and the process's peak memory (VmHWM) against its memory once
the stack is loaded, so the figure is what the credibility computation adds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _support import status_mb


def child(run: Path, rows: int, cols: int) -> None:
    from metalsm.config import CredibilityConfig, FactorSelectionConfig
    from metalsm.raster import Grid
    from metalsm.samples import credibility_map
    from metalsm.stack import FactorStack

    stack = FactorStack.read(run / "factors.tif")
    samples = pd.read_csv(run / "samples.csv")
    pos = samples[samples["label"] == 1]
    pos_rows, pos_cols = pos["row"].to_numpy(), pos["col"].to_numpy()
    if rows * cols > 1:
        h, w = stack.grid.shape
        values = np.tile(stack.values, (1, rows, cols))
        grid = Grid(stack.grid.crs, stack.grid.transform, h * rows, w * cols)
        stack = FactorStack(grid, stack.names, values, stack.class_names)
        shift_r = (np.arange(rows) * h)[:, None].repeat(cols, 1).ravel()
        shift_c = (np.arange(cols) * w)[None, :].repeat(rows, 0).ravel()
        pos_rows = (pos_rows[None, :] + shift_r[:, None]).ravel()
        pos_cols = (pos_cols[None, :] + shift_c[:, None]).ravel()
    before = status_mb("VmRSS")
    start = time.perf_counter()
    credibility, _ = credibility_map(stack, (pos_rows, pos_cols), CredibilityConfig(),
                                     FactorSelectionConfig())
    seconds = time.perf_counter() - start
    print(json.dumps({
        "cells": int(np.prod(stack.grid.shape)), "seconds": seconds,
        "stack_mb": stack.values.nbytes / 2**20, "rss_before_mb": before,
        "peak_mb": status_mb("VmHWM"), "mean": float(np.nanmean(credibility)),
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("outputs/kaghan"))
    parser.add_argument("--tile", nargs=2, type=int, default=[2, 5], metavar=("ROWS", "COLS"))
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), int(args.child[1]), int(args.child[2]))
        return
    print("| stack | cells | seconds | cells/s | stack (MB) | RSS with stack (MB) | peak (MB) |")
    print("|---|---|---|---|---|---|---|")
    for rows, cols in ((1, 1), tuple(args.tile)):
        result = subprocess.run(
            [sys.executable, __file__, "--child", str(args.run), str(rows), str(cols)],
            check=True, capture_output=True, text=True,
        )
        m = json.loads(result.stdout.strip().splitlines()[-1])
        label = "Kaghan" if rows * cols == 1 else f"Kaghan tiled {rows}x{cols}"
        print(f"| {label} | {m['cells']:,} | {m['seconds']:.2f} | {m['cells'] / m['seconds']:,.0f} "
              f"| {m['stack_mb']:.0f} | {m['rss_before_mb']:.0f} | {m['peak_mb']:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
