"""The uncertainty map: how much the susceptibility moves when the map model is refitted.

The map model is refitted on bootstrap resamples of its samples and every refit maps
the area; the per-cell standard deviation of their probabilities is
``uncertainty.tif``. This is the resampling check of Guzzetti et al. (2006,
*Nat. Hazards Earth Syst. Sci.* 6, 115-131), who mapped the spread of the probability
over repeated fits against its mean: where it is large, the zone a cell falls in
depends on which landslides happened to be sampled.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metalsm.models.classic import make_model
from metalsm.raster import iter_windows, open_raster
from metalsm.samples import Samples

__all__ = [
    "bootstrap_refits",
    "spread_statistics",
]


def bootstrap_refits(name: str, samples: Samples, refits: int, seed: int,
                     model_seed: int) -> list[Any]:
    """``refits`` fitted copies of model ``name``, each on a bootstrap resample of
    ``samples`` (landslides and non-landslides each resampled with replacement to their
    own count, so every refit keeps the class balance); refit ``i`` has model seed
    ``model_seed + i``."""
    rng = np.random.default_rng(seed)
    y = samples.y
    by_class = [np.flatnonzero(y == label) for label in (0, 1)]
    X = samples.X  # noqa: N806 - the scikit-learn name
    models = []
    for i in range(refits):
        pick = np.concatenate([rng.choice(rows, rows.size, replace=True) for rows in by_class])
        model = make_model(name, samples.categorical, model_seed + i)
        model.fit(X.iloc[pick].reset_index(drop=True), y[pick])
        models.append(model)
    return models


def spread_statistics(uncertainty_path: str | Path, zones_path: str | Path,
                      labels: Sequence[str], *, window_size: int = 512) -> dict[str, Any]:
    """Mean, 95th percentile and maximum of the spread over the map, and its mean and
    maximum per zone (windowed; zone ``i`` is value ``i`` of ``zones.tif``)."""
    levels = len(labels)
    total = np.zeros(levels + 1)
    count = np.zeros(levels + 1, dtype=np.int64)
    peak = np.zeros(levels + 1)
    step = 0.0005  # percentiles from a histogram of the spread (<= 0.71: std of [0, 1])
    histogram = np.zeros(1501, dtype=np.int64)
    with open_raster(uncertainty_path) as spread_src, open_raster(zones_path) as zone_src:
        for win in iter_windows(spread_src.shape, window_size):
            spread = spread_src.read(1, window=win).ravel()
            zone = zone_src.read(1, window=win).ravel().astype(np.int64)
            keep = np.isfinite(spread) & (zone >= 1) & (zone <= levels)
            spread, zone = spread[keep].astype(np.float64), zone[keep]
            total += np.bincount(zone, weights=spread, minlength=levels + 1)
            count += np.bincount(zone, minlength=levels + 1)
            np.maximum.at(peak, zone, spread)
            histogram += np.bincount(np.minimum(np.round(spread / step), 1500).astype(int),
                                     minlength=1501)
    n = int(count.sum())
    if not n:
        return {"cells": 0}
    cumulative = np.cumsum(histogram) / n
    return {
        "cells": n,
        "mean_std": float(total.sum() / n),
        "p95_std": float(np.searchsorted(cumulative, 0.95) * step),
        "p99_std": float(np.searchsorted(cumulative, 0.99) * step),
        "max_std": float(peak.max()),
        "by_zone": pd.DataFrame({
            "level": np.arange(1, levels + 1), "label": list(labels),
            "cells": count[1:],
            "mean_std": np.where(count[1:] > 0, total[1:] / np.maximum(count[1:], 1), np.nan),
            "max_std": peak[1:],
        }).to_dict("records"),
    }
