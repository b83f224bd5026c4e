"""From a fitted model to a susceptibility map (global or block-wise) and the map of
its spread over refits.

Everything here works window by window over ``factors.tif`` so that memory
stays bounded by the window size, not by the size of the study area.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rasterio.windows import Window

from metalsm.errors import MetalsmInputError
from metalsm.raster import (
    Grid,
    gdal_cache,
    iter_windows,
    open_raster,
    read_window,
    windowed_geotiff,
)
from metalsm.scale import Compute
from metalsm.stack import stack_metadata

__all__ = [
    "GDAL_WRITE_THREADS",
    "predict_blockwise_raster",
    "predict_raster",
    "predict_spread_raster",
]


#: Threads GDAL uses to deflate the probability raster's tiles (NUM_THREADS creation option).
GDAL_WRITE_THREADS = 2


def _band_indexes(src: Any, factors_path: str | Path, feature_names: Sequence[str],
                  user: str) -> list[int]:
    """1-based band numbers of ``feature_names`` in an open ``factors.tif``."""
    names, _ = stack_metadata(src)
    missing = [n for n in feature_names if n not in names]
    if missing:
        raise MetalsmInputError(
            f"factor '{missing[0]}' used by {user} is not a band of {factors_path} "
            f"(bands: {', '.join(names)})"
        )
    return [names.index(n) + 1 for n in feature_names]


def _write_probability_raster(
    path: str | Path,
    indexes: Sequence[int],
    out_path: str | Path,
    predict_window: Callable[[np.ndarray, Window], tuple[np.ndarray, np.ndarray]],
    *,
    description: str,
    window_size: int,
    overviews: Sequence[int],
    progress: Callable[[int, int], Any] | None,
    compute: Compute | None = None,
) -> Path:
    """Read the ``indexes`` bands of ``path`` window by window and write probabilities.

    ``predict_window(values, window)`` gets the window's bands (float64, NaN = no
    data) and returns the mask of cells it predicted and their probabilities.
    Output: float32 Cloud-Optimized GeoTIFF on the source grid, NaN nodata, average
    overviews, written atomically (a failure leaves no output behind).

    ``compute`` (a :class:`metalsm.scale.Compute`; default serial, here) runs the
    windows (each task opens ``path`` itself) and this process writes them.
    """
    compute = compute or Compute()
    path = os.path.abspath(path)  # the workers may run in another folder
    grid = Grid.from_raster(path)

    def task(win: Window) -> tuple[np.ndarray, int]:
        """One window: the float32 probabilities (NaN where not predicted) and their count."""
        with open_raster(path) as src:
            # float64: unscaled factors (elevation in m) lose digits in float32
            values = read_window(src, win, indexes, np.float64)
        valid, proba = predict_window(values, win)
        out = np.full(valid.shape, np.nan, dtype=np.float32)
        out[valid] = proba
        return out, int(valid.sum())

    done = 0
    # GDAL compresses the tiles on GDAL_WRITE_THREADS threads: same pixels, half the write time
    with windowed_geotiff(out_path, grid, descriptions=[description], overviews=overviews,
                          lock=compute.lock(str(out_path)), predictor=3,
                          num_threads=GDAL_WRITE_THREADS) as dst:
        # models need not be thread-safe (PyTorch's functional_call is not): a copy per thread
        for win, (out, n_new) in compute.map_windows(task, iter_windows(grid.shape, window_size),
                                                     private=True):
            dst.write(out, win)
            done += n_new
            if progress is not None:
                progress(n_new, done)
    return Path(out_path)


def _cell_proba(model: Any, cells: np.ndarray, feature_names: list[str]) -> np.ndarray:
    """P(landslide) of ``cells`` [n, factors]: ``predict_cells`` for the registry models
    (NumPy in, no DataFrame per window), else ``predict_proba`` on a float64 DataFrame
    with the training column names (any scikit-learn estimator or pipeline)."""
    predict_cells = getattr(model, "predict_cells", None)
    if predict_cells is not None:
        return predict_cells(cells, feature_names)
    n = cells.shape[0]
    proba = np.asarray(model.predict_proba(pd.DataFrame(cells, columns=feature_names)))
    if proba.ndim != 2 or proba.shape[0] != n or proba.shape[1] < 2:
        raise MetalsmInputError(
            f"model.predict_proba returned shape {proba.shape} for {n} cells; "
            f"expected ({n}, 2)"
        )
    return proba[:, 1]


def _prepare_prediction(model: Any, n_cells: int) -> None:
    """Let a registry model compile its trees for a map of ``n_cells`` cells once, before
    the windows (and before Dask ships it to workers: the compiled code travels with it)."""
    prepare = getattr(model, "prepare_prediction", None)
    if prepare is not None:
        prepare(n_cells)


@gdal_cache()
def predict_raster(
    model: Any,
    factors_path: str | Path,
    out_path: str | Path,
    *,
    feature_names: Sequence[str],
    window_size: int = 512,
    overviews: Sequence[int] = (2, 4, 8, 16),
    progress: Callable[[int, int], Any] | None = None,
    compute: Any = None,
) -> Path:
    """Write ``model``'s landslide probability for every valid cell of ``factors.tif``.

    The stack is read one window at a time so memory does not grow with the
    raster; only cells where every selected factor is finite are predicted, as a
    float64 DataFrame with the training column names (so any scikit-learn
    estimator or pipeline works), or as a NumPy array for a model with
    ``predict_cells(values, feature_names)`` (the registry models: same numbers,
    no DataFrame per window). Output as :func:`_write_probability_raster`.

    ``progress(n_new, n_done)`` is called after each window with the number of
    cells just predicted and the running total, both counting valid cells only
    (``n_new`` plugs straight into a rich progress ``advance``). ``compute``: run the
    windows on Dask (see :func:`_write_probability_raster`); the result is the same.
    """
    if not list(feature_names):
        raise MetalsmInputError("predict_raster needs at least one feature name")
    return _write_model_map(
        [model], lambda probabilities: probabilities[0], factors_path, out_path,
        feature_names, "the model", description="landslide susceptibility (probability)",
        window_size=window_size, overviews=overviews, progress=progress, compute=compute,
    )


@gdal_cache()
def predict_spread_raster(
    models: Sequence[Any],
    factors_path: str | Path,
    out_path: str | Path,
    *,
    feature_names: Sequence[str],
    window_size: int = 512,
    overviews: Sequence[int] = (2, 4, 8, 16),
    progress: Callable[[int, int], Any] | None = None,
    compute: Any = None,
    description: str = "standard deviation of the landslide susceptibility over models",
) -> Path:
    """Per valid cell of ``factors.tif``, the standard deviation (``ddof=1``) of the
    landslide probabilities of ``models`` (e.g. bootstrap refits of the map model):
    how much the susceptibility moves when the model is refitted.

    Window by window like :func:`predict_raster` (each window's factors read once and
    predicted by every model; ``len(models)`` probabilities per cell held at once),
    into a float32 Cloud-Optimized GeoTIFF with NaN nodata.
    """
    if len(models) < 2:
        raise MetalsmInputError(f"a spread needs at least 2 models, got {len(models)}")
    return _write_model_map(
        models, lambda probabilities: np.stack(probabilities).std(axis=0, ddof=1),
        factors_path, out_path, feature_names, "the models", description=description,
        window_size=window_size, overviews=overviews, progress=progress, compute=compute)


def _write_model_map(models: Sequence[Any], combine: Callable[[list[np.ndarray]], np.ndarray],
                     factors_path: str | Path, out_path: str | Path,
                     feature_names: Sequence[str], who: str, **write: Any) -> Path:
    """The map of :func:`predict_raster` and :func:`predict_spread_raster`: per window,
    every model's probability of the cells with all factors finite, ``combine``d into
    one value per cell, written by :func:`_write_probability_raster`."""
    feature_names = list(feature_names)

    def window_values(values: np.ndarray, _win: Window) -> tuple[np.ndarray, np.ndarray]:
        valid = np.isfinite(values).all(axis=0)
        if not valid.any():
            return valid, np.empty(0)
        cells = values[:, valid].T
        return valid, combine([_cell_proba(m, cells, feature_names) for m in models])

    with open_raster(factors_path) as src:
        indexes = _band_indexes(src, factors_path, feature_names, who)
        for model in models:
            _prepare_prediction(model, src.height * src.width)
    return _write_probability_raster(factors_path, indexes, out_path, window_values, **write)


@gdal_cache()
def predict_blockwise_raster(
    block_models: Any,
    encoder: Any,
    factors_path: str | Path,
    blocks_path: str | Path,
    out_path: str | Path,
    *,
    window_size: int = 512,
    overviews: Sequence[int] = (2, 4, 8, 16),
    progress: Callable[[int, int], Any] | None = None,
    compute: Any = None,
) -> Path:
    """Write the block-wise susceptibility: every cell predicted by its own block's model.

    ``factors.tif`` and ``blocks.tif`` (int32 block id, -1 outside) are read window by
    window together, so memory does not grow with the raster. ``encoder.factor_names``
    are the raw bands the models need and ``encoder.transform(cells)`` turns a
    ``[n, n_factors]`` array into the model's feature matrix (one-hot categories);
    ``block_models.predict_proba(features, block_ids)`` gives P(landslide). Cells
    with a missing factor or outside every block are NaN. Output as :func:`predict_raster`.
    """
    feature_names = list(encoder.factor_names)
    with open_raster(factors_path) as src, open_raster(blocks_path) as bsrc:
        indexes = _band_indexes(src, factors_path, feature_names, "the block models")
        if bsrc.shape != src.shape or not bsrc.transform.almost_equals(src.transform):
            raise MetalsmInputError(
                f"block raster {blocks_path} {bsrc.shape} is not on the grid of "
                f"{factors_path} {src.shape}"
            )
    blocks_file = os.path.abspath(blocks_path)

    def predict_window(values: np.ndarray, win: Window) -> tuple[np.ndarray, np.ndarray]:
        with open_raster(blocks_file) as own:  # a task: its own file handle
            ids = own.read(1, window=win).astype(np.int64)
        valid = np.isfinite(values).all(axis=0) & (ids >= 0)
        if not valid.any():
            return valid, np.empty(0)
        features = encoder.transform(values[:, valid].T)
        return valid, block_models.predict_proba(features, ids[valid])

    return _write_probability_raster(
        factors_path, indexes, out_path, predict_window,
        description="landslide susceptibility (probability, block-wise)",
        window_size=window_size, overviews=overviews, progress=progress, compute=compute,
    )
