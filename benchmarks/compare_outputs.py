"""Compare two run folders file by file: rasters array-equal, CSV and JSON equal apart
from timings, vectors equal, text equal; pictures and pickled models listed, not compared.

    python benchmarks/compare_outputs.py BEFORE AFTER [--checkouts SRC_BEFORE SRC_AFTER]

Used to show that a refactor leaves every output of a command as it was. Exit status 1
when anything differs."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio

#: JSON keys whose values are wall-clock measurements or the run's own folder.
TIMING_KEYS = {"timings_s", "seconds", "fit_seconds", "fit_seconds_mean", "fit_seconds_std",
               "created", "started", "elapsed_s", "wall_s", "timings"}
NOT_COMPARED = {".png", ".html", ".pt", ".pkl", ".joblib"}


def _strip(value, roots: tuple[str, str]):
    """``value`` without timing keys, with the run folder's own path made neutral."""
    if isinstance(value, dict):
        return {k: _strip(v, roots) for k, v in value.items() if k not in TIMING_KEYS
                and "seconds" not in k}
    if isinstance(value, list):
        return [_strip(v, roots) for v in value]
    if isinstance(value, str):
        for root in roots:
            value = value.replace(root, "<run>")
        return value
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value


def _same_raster(a: Path, b: Path) -> str | None:
    with rasterio.open(a) as x, rasterio.open(b) as y:
        if (x.crs, x.transform, x.shape, x.count) != (y.crs, y.transform, y.shape, y.count):
            return "grid or band count differs"
        if x.descriptions != y.descriptions:
            return f"band descriptions differ: {x.descriptions} vs {y.descriptions}"
        if not np.array_equal(x.read(), y.read(), equal_nan=True):
            return "values differ"
    return None


def _same_table(a: Path, b: Path) -> str | None:
    x, y = pd.read_csv(a), pd.read_csv(b)
    x = x.drop(columns=[c for c in x.columns if "seconds" in c], errors="ignore")
    y = y.drop(columns=[c for c in y.columns if "seconds" in c], errors="ignore")
    try:
        pd.testing.assert_frame_equal(x, y, check_exact=True)
    except AssertionError as exc:
        return str(exc).splitlines()[0]
    return None


def _same_vector(a: Path, b: Path) -> str | None:
    import pyogrio

    layers = [name for name, _ in pyogrio.list_layers(a)]
    if layers != [name for name, _ in pyogrio.list_layers(b)]:
        return "layers differ"
    for layer in layers:
        x, y = gpd.read_file(a, layer=layer), gpd.read_file(b, layer=layer)
        if x.crs != y.crs or not x.geometry.geom_equals_exact(y.geometry, 0).all():
            return f"layer {layer}: CRS or geometries differ"
        try:
            pd.testing.assert_frame_equal(x.drop(columns="geometry"), y.drop(columns="geometry"),
                                          check_exact=True)
        except AssertionError as exc:
            return f"layer {layer}: {str(exc).splitlines()[0]}"
    return None


def compare(before: Path, after: Path, checkouts: tuple[str, ...] = ()
            ) -> tuple[list[str], dict[str, int]]:
    roots = (str(before.resolve()), str(after.resolve()), *checkouts)
    differences, counts = [], {"raster": 0, "table": 0, "json": 0, "vector": 0, "text": 0,
                               "not compared": 0}
    names_a = {p.relative_to(before) for p in before.rglob("*") if p.is_file()}
    names_b = {p.relative_to(after) for p in after.rglob("*") if p.is_file()}
    for missing in sorted(names_a ^ names_b):
        differences.append(f"{missing}: only in {'before' if missing in names_a else 'after'}")
    for name in sorted(names_a & names_b):
        a, b = before / name, after / name
        suffix = name.suffix.lower()
        if suffix in (".tif", ".tiff"):
            kind, problem = "raster", _same_raster(a, b)
        elif suffix == ".csv":
            kind, problem = "table", _same_table(a, b)
        elif suffix == ".json":
            kind = "json"
            problem = None if _strip(json.loads(a.read_text()), roots) == _strip(
                json.loads(b.read_text()), roots) else "differs apart from timings"
        elif suffix in (".gpkg", ".shp"):
            kind, problem = "vector", _same_vector(a, b)
        elif suffix in NOT_COMPARED:
            counts["not compared"] += 1
            continue
        else:
            kind = "text"
            problem = None if _strip(a.read_text(errors="replace"), roots) == _strip(
                b.read_text(errors="replace"), roots) else "text differs"
        counts[kind] += 1
        if problem:
            differences.append(f"{name}: {problem}")
    return differences, counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--checkouts", nargs=2, default=(), metavar=("BEFORE_SRC", "AFTER_SRC"),
                        help="the source folders the two runs were made from (their paths "
                        "in manifests, e.g. the config's, are not a difference)")
    args = parser.parse_args()
    differences, counts = compare(args.before, args.after, tuple(args.checkouts))
    print(", ".join(f"{n} {k}" for k, n in counts.items()), "compared")
    print("\n".join(differences) if differences else "no differences")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
