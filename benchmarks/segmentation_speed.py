"""Timing of the scene segmentation (SLIC blocks) on the real Kaghan stack and tiled copies.

Usage::

    .venv/bin/python benchmarks/segmentation_speed.py                  # Kaghan, K=64
    .venv/bin/python benchmarks/segmentation_speed.py --size 5000      # + a 5000^2 tiled stack
    .venv/bin/python benchmarks/segmentation_speed.py --size 10000 --factors 16 --skimage

The Kaghan stack is built from the real DEM, geology and land cover plus simple NumPy
terrain derivatives (slope, aspect sin/cos, curvature, roughness, relief), so the
benchmark does not depend on the terrain module. The large case tiles that stack
(mirrored, so no seams) to ``--size`` x ``--size`` cells and repeats continuous factors
with small offsets to reach ``--factors`` factors. Peak memory is the process's
``ru_maxrss`` (so it includes every previous case run in the same process).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np
from affine import Affine

from metalsm.blocks import _segmentation as segmentation
from metalsm.datasets import study_area
from metalsm.raster import Grid, read_aligned
from metalsm.stack import FactorStack


def kaghan_stack(window=None) -> FactorStack:
    """The real Kaghan rasters + NumPy terrain derivatives as a 10-factor stack."""
    root = study_area("kaghan")
    grid = Grid.from_raster(root / "AW3D30.tif")
    dem = read_aligned(root / "AW3D30.tif", grid, name="elevation", categorical=False).values
    geo = read_aligned(root / "Geology.tif", grid, name="geology", categorical=True)
    lc = read_aligned(root / "Landcover.tif", grid, name="landcover", categorical=True)
    if window is not None:
        rows, cols = window
        grid = Grid(grid.crs, grid.transform @ Affine.translation(cols.start, rows.start),
                    rows.stop - rows.start, cols.stop - cols.start)
        dem, g, lcv = dem[rows, cols], geo.values[rows, cols], lc.values[rows, cols]
    else:
        g, lcv = geo.values, lc.values
    layers = terrain_layers(dem, grid.cell_size)
    layers["geology"] = g
    layers["landcover"] = lcv
    names = tuple(layers)
    values = np.stack([layers[n].astype(np.float32) for n in names])
    return FactorStack(grid, names, values, {"geology": geo.class_names,
                                             "landcover": lc.class_names})


def terrain_layers(dem: np.ndarray, cell: float) -> dict[str, np.ndarray]:
    """Simple finite-difference terrain factors (NaN propagates from the DEM)."""
    dz_dr, dz_dc = np.gradient(dem.astype(np.float64), cell)
    slope = np.degrees(np.arctan(np.hypot(dz_dr, dz_dc)))
    asp = np.arctan2(-dz_dc, dz_dr)
    d2r = np.gradient(dz_dr, cell, axis=0)
    d2c = np.gradient(dz_dc, cell, axis=1)
    pad = np.pad(dem.astype(np.float64), 1, mode="edge")
    win = np.stack([pad[i:i + dem.shape[0], j:j + dem.shape[1]]
                    for i in range(3) for j in range(3)])
    return {
        "elevation": dem,
        "slope": slope,
        "aspect_sin": np.sin(asp),
        "aspect_cos": np.cos(asp),
        "curvature": d2r + d2c,
        "roughness": win.max(axis=0) - win.min(axis=0),
        "tpi": dem - win.mean(axis=0),
        "relief_dir": d2r - d2c,
    }


def tiled_stack(base: FactorStack, size: int, n_factors: int) -> FactorStack:
    """``base`` mirrored to ``size`` x ``size`` with continuous factors repeated to n_factors."""
    from affine import Affine

    height, width = base.grid.shape
    reps = (int(np.ceil(size / height)), int(np.ceil(size / width)))
    cont = [i for i, n in enumerate(base.names) if n not in base.class_names]
    order = list(range(len(base.names)))
    j = 0
    while len(order) < n_factors:
        order.append(cont[j % len(cont)])
        j += 1
    values = np.empty((len(order), size, size), dtype=np.float32)
    names = []
    for out_i, src_i in enumerate(order):
        layer = base.values[src_i]
        block = np.concatenate([layer, layer[::-1]], axis=0)
        block = np.concatenate([block, block[:, ::-1]], axis=1)
        tiled = np.tile(block, ((reps[0] + 1) // 2, (reps[1] + 1) // 2))[:size, :size]
        values[out_i] = tiled
        if out_i >= len(base.names):
            values[out_i] += np.float32(0.01 * out_i)
        name = base.names[src_i]
        names.append(name if out_i < len(base.names) else f"{name}_{out_i}")
    t = base.grid.transform
    grid = Grid(base.grid.crs, Affine(t.a, t.b, t.c, t.d, t.e, t.f), size, size)
    return FactorStack(grid, tuple(names), values, dict(base.class_names))


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def time_segmentation(stack: FactorStack, k: int, m: float, iterations: int, repeat: int):
    best = np.inf
    blocks = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        blocks = segmentation.segment_raster(stack, k, m, iterations=iterations)
        best = min(best, time.perf_counter() - t0)
    return best, blocks


def time_skimage(stack: FactorStack, k: int, m: float, iterations: int):
    try:
        from skimage.segmentation import slic
    except ImportError:
        return None
    norm = segmentation.normalize_factors(stack)
    valid = np.isfinite(norm).all(axis=0)
    image = np.moveaxis(np.nan_to_num(norm), 0, -1)
    t0 = time.perf_counter()
    slic(image, n_segments=k, compactness=m, max_num_iter=iterations, mask=valid,
         channel_axis=-1, convert2lab=False, enforce_connectivity=True, start_label=0)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=64, help="number of blocks")
    parser.add_argument("--compactness", type=float, default=0.5)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--size", type=int, nargs="*", default=[],
                        help="edge length(s) of tiled square stacks to time as well")
    parser.add_argument("--factors", type=int, default=16, help="factors in tiled stacks")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skimage", action="store_true",
                        help="also time skimage.segmentation.slic on the same input")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    base = kaghan_stack()
    t_build = time.perf_counter() - t0
    print(f"Kaghan stack: {len(base.names)} factors, {base.grid.shape}, "
          f"{int(base.valid.sum())} valid cells (built in {t_build:.1f} s)")
    small = kaghan_stack((slice(0, 64), slice(0, 64)))
    t0 = time.perf_counter()
    segmentation.segment_raster(small, 4, args.compactness, iterations=1)
    compile_s = time.perf_counter() - t0
    print(f"first call (numba compile or cache load + tiny run): {compile_s:.2f} s")

    rows = []
    cases = [("kaghan", base)] + [(f"tiled {s}x{s}", None) for s in args.size]
    for (name, stack), size in zip(cases, [None, *args.size], strict=True):
        if stack is None:
            stack = tiled_stack(base, size, args.factors)
        seconds, blocks = time_segmentation(stack, args.k, args.compactness, args.iterations,
                                            args.repeat if size is None else 1)
        sizes = blocks.sizes()
        sk = time_skimage(stack, args.k, args.compactness, args.iterations) if args.skimage \
            else None
        rows.append((name, stack.values.shape, seconds, blocks.n_blocks, sizes.min(),
                     int(np.median(sizes)), sizes.max(), sk, peak_rss_gb()))
        del stack, blocks

    header = (f"{'case':<16}{'factors x H x W':>22}{'seconds':>9}{'blocks':>8}{'min':>9}"
              f"{'median':>9}{'max':>9}{'skimage s':>11}{'ratio':>7}{'peak GB':>9}")
    print(header)
    print("-" * len(header))
    for name, shape, sec, nb, mn, med, mx, sk, rss in rows:
        sk_s = f"{sk:11.2f}" if sk is not None else f"{'-':>11}"
        ratio = f"{sk / sec:7.1f}" if sk is not None else f"{'-':>7}"
        print(f"{name:<16}{' x '.join(map(str, shape)):>22}{sec:9.2f}{nb:8d}{mn:9d}{med:9d}"
              f"{mx:9d}{sk_s}{ratio}{rss:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
