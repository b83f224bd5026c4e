"""Deflate or ZSTD for the files the windowed writer makes before they become outputs
(terrain layers, the COG copy's source): terrain derivation of a mirror-tiled Kaghan DEM
with both, interleaved in one run, the layers compared cell by cell.

    python benchmarks/work_compression.py --size 4000 --out /tmp/wc
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import rasterio
from _support import mirror_tile

from metalsm.datasets import study_area
from metalsm.raster import Grid, _cog
from metalsm.terrain import write_terrain_factors

SETTINGS = {"deflate": {"compress": "deflate"},
            "zstd-1": {"compress": "zstd", "zstd_level": 1}}
FACTORS = ["elevation", "slope", "aspect_sin", "aspect_cos", "plan_curvature",
           "profile_curvature", "twi", "spi", "distance_to_drainage"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4000, help="cells per side")
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    dem = mirror_tile(study_area("kaghan") / "AW3D30.tif", args.out / "dem.tif",
                      args.size, args.size)
    grid = Grid.from_raster(dem)
    seconds: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for _ in range(args.rounds):
        for name, compression in SETTINGS.items():
            _cog.WORK_COMPRESSION = compression
            folder = args.out / name
            shutil.rmtree(folder, ignore_errors=True)
            start = time.perf_counter()
            write_terrain_factors(dem, grid, FACTORS, folder, chunk_size=args.chunk_size,
                                  drainage_threshold_cells=555)
            seconds[name].append(time.perf_counter() - start)
    for factor in FACTORS:
        with rasterio.open(args.out / "deflate" / f"{factor}.tif") as a, \
                rasterio.open(args.out / "zstd-1" / f"{factor}.tif") as b:
            assert np.array_equal(a.read(), b.read(), equal_nan=True), factor
    sizes = {name: sum(p.stat().st_size for p in (args.out / name).glob("*.tif")) / 1e6
             for name in SETTINGS}
    print(f"{args.size}x{args.size} cells, chunk {args.chunk_size}, {len(FACTORS)} factors, "
          f"{args.rounds} interleaved rounds; layers equal cell for cell")
    for name in SETTINGS:
        print(f"  {name:8s} min {min(seconds[name]):7.1f} s  all {seconds[name]}  "
              f"layers {sizes[name]:.0f} MB")
    print(f"  deflate / zstd-1 (min): {min(seconds['deflate']) / min(seconds['zstd-1']):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
