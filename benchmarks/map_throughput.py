"""Map throughput and peak memory of the prediction step (windowed), per model and stack size.

Usage:
    .venv/bin/python benchmarks/map_throughput.py --run outputs/kaghan --tile 2 5

``--run`` is a finished run directory (``factors.tif`` and ``samples.csv``).
The stack is also tiled ``rows x cols`` times (2 x 5 = 10x the cells) to show
that peak memory does not grow with the raster. Each prediction runs in a fresh
subprocess so its peak resident memory is its own.
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from _support import status_mb
from rasterio.windows import Window

from metalsm.models.classic import make_model
from metalsm.stack import stack_metadata


def tile_stack(source: Path, target: Path, rows: int, cols: int) -> Path:
    """Repeat ``source`` rows x cols times into a new tiled GeoTIFF, window by window."""
    with rasterio.open(source) as src:
        profile = src.profile.copy()
        profile.update(height=src.height * rows, width=src.width * cols, tiled=True,
                       blockxsize=256, blockysize=256, compress="deflate", BIGTIFF="IF_SAFER")
        data = src.read()
        with rasterio.open(target, "w", **profile) as dst:
            for i in range(rows):
                for j in range(cols):
                    window = Window(j * src.width, i * src.height, src.width, src.height)
                    dst.write(data, window=window)
            dst.descriptions = src.descriptions
            dst.update_tags(**src.tags())
    return target


def child(model_path: str, factors: str, out: str, window_size: int) -> None:
    """Predict one map in this process and print timings and memory as JSON."""
    from metalsm.mapping import predict_raster

    with open(model_path, "rb") as handle:
        model, names = pickle.load(handle)
    baseline = status_mb("VmRSS")
    start = time.perf_counter()
    predict_raster(model, factors, out, feature_names=names, window_size=window_size,
                   overviews=())
    seconds = time.perf_counter() - start
    peak = status_mb("VmHWM")
    with rasterio.open(out) as src:
        cells = int(np.isfinite(src.read(1, out_shape=(src.height // 8, src.width // 8))).sum()
                    * 64)
        shape = src.shape
    print(json.dumps({"seconds": seconds, "baseline_mb": baseline, "peak_mb": peak,
                      "shape": shape, "valid_cells_approx": cells}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("outputs/kaghan"))
    parser.add_argument("--models", nargs="+", default=["lr", "rf", "mlp"])
    parser.add_argument("--tile", nargs=2, type=int, default=[2, 5], metavar=("ROWS", "COLS"))
    parser.add_argument("--window-size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child[:3], int(args.child[3]))
        return

    factors = args.run / "factors.tif"
    samples = pd.read_csv(args.run / "samples.csv")
    with rasterio.open(factors) as src:
        names, class_names = stack_metadata(src)
        n_cells = src.height * src.width
    names = list(names)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tiled = tile_stack(factors, tmp / "tiled.tif", *args.tile)
        for name in args.models:
            model = make_model(name, list(class_names), args.seed)
            model.fit(samples[names], samples["label"])
            model_path = tmp / f"{name}.pkl"
            model_path.write_bytes(pickle.dumps((model, names)))
            for label, stack, cells in (
                ("Kaghan", factors, n_cells),
                (f"Kaghan tiled {args.tile[0]}x{args.tile[1]}", tiled,
                 n_cells * args.tile[0] * args.tile[1]),
            ):
                out = tmp / f"{name}_{stack.stem}.tif"
                result = subprocess.run(
                    [sys.executable, __file__, "--child", str(model_path), str(stack), str(out),
                     str(args.window_size)],
                    check=True, capture_output=True, text=True,
                )
                measured = json.loads(result.stdout.strip().splitlines()[-1])
                rows.append({
                    "model": name,
                    "stack": label,
                    "cells": cells,
                    "seconds": round(measured["seconds"], 2),
                    "cells_per_s": int(cells / measured["seconds"]),
                    "rss_before_mb": round(measured["baseline_mb"]),
                    "peak_rss_mb": round(measured["peak_mb"]),
                })
                print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    print()
    print(table.to_markdown(index=False) if _has_tabulate() else table.to_string(index=False))


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
