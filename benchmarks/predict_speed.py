"""Ours vs the library's predict, per model, on the same windows of real Kaghan cells.

Usage:
    .venv/bin/python benchmarks/predict_speed.py --cells 500000 --map
    .venv/bin/python benchmarks/predict_speed.py --run outputs/kaghan --models rf lightgbm

The factor stack and samples come from ``--run`` (a finished run directory with
``factors.tif`` and ``samples.csv``) or are built here from ``--config`` the way
``metalsm run`` builds them. Every model is the project's own ``make_model``
pipeline fitted on the samples. The first ``--cells`` valid cells are read window
by window (``--window-size``) once; then, window by window, the library path (a
DataFrame per window through ``predict_proba_library``: the pipeline's own
transform and the estimator's own ``predict_proba``, which is what the map did
before) and ours (``predict_cells``: NumPy encoding, trees compiled to machine code
as for a map of ``--plan-cells`` cells: by default the size from which forests and
LightGBM's optimised code are compiled)
predict the same cells one after the other, so both see the same load on a shared
machine. Compiling is timed apart (``compile_s``), and so is the first window
(loading code, numba's kernel from its cache). For the tree ensembles the walk
alone is also compared on the encoded windows, interleaved the same way: the
estimator's ``predict_proba``, the packed numba walk (models/_trees.py) and the
machine code (models/_native.py). Wall and CPU seconds are both kept: on a shared
machine the CPU ratio is the steadier one. ``--map`` also writes the whole Kaghan map both
ways with ``predict_raster`` (reading, predicting, deflating, overviews) and
compares the rasters.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio

from metalsm.mapping import predict_raster
from metalsm.models import _native, _trees
from metalsm.models.classic import FactorPipeline, make_model
from metalsm.raster import iter_windows
from metalsm.stack import stack_metadata

LIBRARY_THREADS = {"rf": "2 (n_jobs=2)", "fr-rf": "2 (n_jobs=2)", "lightgbm": "1 (n_jobs=1)"}


def build_inputs(config_path: Path, out: Path) -> Path:
    """``factors.tif`` and ``samples.csv`` as ``metalsm run`` draws them, into ``out``."""
    from metalsm.config import load_config
    from metalsm.inputs import landslide_mask, read_inventory
    from metalsm.pipeline._run import draw_samples
    from metalsm.stack import build_factor_stack

    config = load_config(config_path)
    stack = build_factor_stack(config)
    stack.write(out / "factors.tif")
    inventory = read_inventory(config.inventory.path, stack.grid, crs=config.inventory.crs,
                               x_column=config.inventory.x_column,
                               y_column=config.inventory.y_column)
    samples = draw_samples(config, stack, inventory, landslide_mask(inventory, stack.grid))
    samples.table.to_csv(out / "samples.csv", index=False)
    return out


def read_cells(factors: Path, names: list[str], n_cells: int, size: int) -> list[np.ndarray]:
    """The valid cells of the first windows, ``(n, n_factors)`` per window, up to ``n_cells``."""
    windows, total = [], 0
    with rasterio.open(factors) as src:
        bands = [list(src.descriptions).index(n) + 1 for n in names]
        for win in iter_windows(src.shape, size):
            values = src.read(bands, window=win, out_dtype=np.float64)
            valid = np.isfinite(values).all(axis=0)
            cells = values[:, valid].T[: n_cells - total]
            if len(cells):
                windows.append(cells)
                total += len(cells)
            if total >= n_cells:
                break
    return windows


class LibraryOnly:
    """A fitted registry model seen through the libraries' ``predict_proba`` only, so
    ``predict_raster`` takes its DataFrame path (the map before this change)."""

    def __init__(self, model) -> None:
        self.predict_proba = getattr(model, "predict_proba_library", model.predict_proba)


def compare(model, windows: list[np.ndarray], names: list[str], plan_cells: int) -> dict:
    """Cells/s of the library and of ours on the same windows, and their largest difference;
    ours compiled as for a map of ``plan_cells`` cells."""
    library = getattr(model, "predict_proba_library", model.predict_proba)
    started = time.perf_counter()
    if hasattr(model, "prepare_prediction"):
        model.prepare_prediction(plan_cells)
    compile_s = time.perf_counter() - started
    started = time.perf_counter()
    model.predict_cells(windows[0], names)  # load the code / numba's kernel from its cache
    first_call = time.perf_counter() - started
    wall = {"library": 0.0, "ours": 0.0}
    cpu = {"library": 0.0, "ours": 0.0}
    diff = 0.0
    for cells in windows:
        t, c = time.perf_counter(), time.process_time()
        expected = library(pd.DataFrame(cells, columns=names))[:, 1]
        wall["library"] += time.perf_counter() - t
        cpu["library"] += time.process_time() - c
        t, c = time.perf_counter(), time.process_time()
        got = model.predict_cells(cells, names)
        wall["ours"] += time.perf_counter() - t
        cpu["ours"] += time.process_time() - c
        diff = max(diff, float(np.abs(got - expected).max()))
    n = sum(len(w) for w in windows)
    return {
        "library_cells_per_s": n / wall["library"],
        "ours_cells_per_s": n / wall["ours"],
        "ratio": wall["library"] / wall["ours"],
        "library_cpu_s": cpu["library"],
        "ours_cpu_s": cpu["ours"],
        "max_abs_diff": diff,
        "compile_s": compile_s,
        "first_call_s": first_call,
    }


def compare_walks(model, windows: list[np.ndarray], names: list[str]) -> dict:
    """Tree walk only, on the encoded windows, interleaved per window: the estimator's
    ``predict_proba``, the packed walk and the machine code (same threads as in maps;
    LightGBM's at LLVM's -O0 and -O2, forests' at -O0 only: -O1 took 45 s for 30 trees)."""
    estimator = model.steps[-1][1]
    packed = _trees.compile_forest(estimator) or _trees.compile_lightgbm(estimator)
    if packed is None:
        return {}
    walkers = {"library": lambda X: estimator.predict_proba(X)[:, 1],
               "packed": packed.positive_proba}
    compiled = getattr(model, "_fast_trees", None)  # compiled by ``compare`` already
    row = {}
    for opt_level in (0, 2) if packed.combine == "sigmoid" else (0,):
        native = compiled if getattr(compiled, "opt_level", None) == opt_level else None
        native = native or _native.compile_native(packed, opt_level)
        if native is not None:
            walkers[f"native -O{opt_level}"] = native.positive_proba
            row[f"walk_native -O{opt_level}_compile_s"] = native.compile_seconds
    first = model[:-1].transform(pd.DataFrame(windows[0][:1000], columns=names))
    for walk in walkers.values():  # load numba's kernel from its cache, threads, ...
        walk(first)
    wall = dict.fromkeys(walkers, 0.0)
    cpu = dict.fromkeys(walkers, 0.0)
    diff = dict.fromkeys(walkers, 0.0)
    for cells in windows:
        encoded = model[:-1].transform(pd.DataFrame(cells, columns=names))
        expected = None
        for label, walk in walkers.items():
            t, c = time.perf_counter(), time.process_time()
            got = walk(encoded)
            wall[label] += time.perf_counter() - t
            cpu[label] += time.process_time() - c
            expected = got if expected is None else expected
            diff[label] = max(diff[label], float(np.abs(got - expected).max()))
    n = sum(len(w) for w in windows)
    for label in walkers:
        row[f"walk_{label}_cells_per_s"] = n / wall[label]
        row[f"walk_{label}_cells_per_cpu_s"] = n / cpu[label]
        row[f"walk_{label}_ratio"] = wall["library"] / wall[label]
        row[f"walk_{label}_cpu_ratio"] = cpu["library"] / cpu[label]
        row[f"walk_{label}_max_abs_diff"] = diff[label]
    return row


def compare_maps(model, factors: Path, names: list[str], tmp: Path, size: int) -> dict:
    """The whole map written both ways: seconds each and how far the rasters differ."""
    seconds, rasters = {}, {}
    for label, predictor in (("library", LibraryOnly(model)), ("ours", model)):
        out = tmp / f"map_{label}.tif"
        started = time.perf_counter()
        predict_raster(predictor, factors, out, feature_names=names, window_size=size)
        seconds[label] = time.perf_counter() - started
        with rasterio.open(out) as src:
            rasters[label] = src.read(1)
    a, b = rasters["library"], rasters["ours"]
    same_mask = bool(np.array_equal(np.isnan(a), np.isnan(b)))
    finite = np.isfinite(a)
    return {
        "map_library_s": seconds["library"],
        "map_ours_s": seconds["ours"],
        "map_ratio": seconds["library"] / seconds["ours"],
        "map_cells": int(finite.sum()),
        "map_array_equal": bool(np.array_equal(a, b, equal_nan=True)),
        "map_max_abs_diff": float(np.abs(a[finite] - b[finite]).max()) if same_mask else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="run directory with factors.tif, samples.csv")
    parser.add_argument("--config", type=Path, default=Path("examples/kaghan.toml"))
    parser.add_argument("--models", nargs="+",
                        default=["rf", "lightgbm", "fr-rf", "lr", "mlp", "fr"])
    parser.add_argument("--cells", type=int, default=500_000)
    parser.add_argument("--window-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=_trees.PREDICT_THREADS,
                        help="threads of the compiled traversal")
    parser.add_argument("--map", action="store_true", help="also write the whole map both ways")
    parser.add_argument("--plan-cells", type=int, default=FactorPipeline.OPTIMISE_MIN_CELLS,
                        help="compile ours as for a map of this many cells (default: the "
                             "size from which forests and optimised LightGBM code compile)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", type=Path, help="write the rows here as JSON too")
    args = parser.parse_args()
    _trees.PREDICT_THREADS = args.threads

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = args.run or build_inputs(args.config, tmp)
        factors = run / "factors.tif"
        with rasterio.open(factors) as src:
            names, class_names = stack_metadata(src)
        samples = pd.read_csv(run / "samples.csv")
        names = list(names)
        windows = read_cells(factors, names, args.cells, args.window_size)
        n = sum(len(w) for w in windows)
        print(f"{n:,} cells in {len(windows)} windows of {args.window_size}², "
              f"{len(samples):,} samples, {len(names)} factors", flush=True)
        rows = []
        for name in args.models:
            model = make_model(name, list(class_names), args.seed)
            model.fit(samples[names], samples["label"])
            library_threads = LIBRARY_THREADS.get(name, "1")
            row = {"model": name, "library_threads": library_threads}
            row.update(compare(model, windows, names, args.plan_cells))
            row["predictor"] = predictor = getattr(model, "predictor_", "library")
            row["ours_threads"] = library_threads if predictor == "library" else args.threads
            if name in LIBRARY_THREADS:
                row.update(compare_walks(model, windows, names))
            if args.map:
                row.update(compare_maps(model, factors, names, tmp, args.window_size))
            rows.append(row)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                              for k, v in row.items()}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print()
    print("| model | predictor | threads library / ours | library cells/s | ours cells/s | "
          "ratio (wall) | ratio (CPU s) | max abs diff | compile (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['predictor']} | {r['library_threads']} / "
              f"{r['ours_threads']} | {r['library_cells_per_s']:,.0f} | "
              f"{r['ours_cells_per_s']:,.0f} | {r['ratio']:.2f} | "
              f"{r['library_cpu_s'] / r['ours_cpu_s']:.2f} | {r['max_abs_diff']:.1e} | "
              f"{r['compile_s']:.2f} |")
    walks = [r for r in rows if "walk_library_cells_per_s" in r]
    if walks:
        print()
        print("| model | walk | cells/s | cells/CPU s | ratio (wall) | ratio (CPU s) | "
              "max abs diff |")
        print("|---|---|---|---|---|---|---|")
        for r in walks:
            for label in ("library", "packed", "native -O0", "native -O2"):
                if f"walk_{label}_cells_per_s" in r:
                    print(f"| {r['model']} | {label} | {r[f'walk_{label}_cells_per_s']:,.0f} | "
                          f"{r[f'walk_{label}_cells_per_cpu_s']:,.0f} | "
                          f"{r[f'walk_{label}_ratio']:.2f} | {r[f'walk_{label}_cpu_ratio']:.2f} | "
                          f"{r[f'walk_{label}_max_abs_diff']:.1e} |")
    if args.map:
        print()
        print("| model | map library (s) | map ours (s) | ratio | rasters array-equal | "
              "max abs diff |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['model']} | {r['map_library_s']:.2f} | {r['map_ours_s']:.2f} | "
                  f"{r['map_ratio']:.1f} | {r['map_array_equal']} | "
                  f"{r['map_max_abs_diff']:.1e} |")


if __name__ == "__main__":
    main()
