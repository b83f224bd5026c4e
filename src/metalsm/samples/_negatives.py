"""Negative (non-landslide) samples and the sample table.

Negative sampling methods are registered by name in :data:`NEGATIVE_SAMPLERS`;
each takes a :class:`NegativeRequest` and a seed and returns cells. The
credibility-based sampler plugs in here.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from metalsm.errors import MetalsmInputError
from metalsm.terrain import squared_edt

if TYPE_CHECKING:
    from metalsm.config import StudyAreaConfig
    from metalsm.samples._table import Samples
    from metalsm.stack import FactorStack

__all__ = [
    "CredibilityBandWarning",
    "NEGATIVE_SAMPLERS",
    "NegativeRequest",
    "band_mask",
    "credibility_negatives",
    "draw_negatives",
    "draw_samples",
    "random_negatives",
    "sample_table",
]

log = logging.getLogger(__name__)


class CredibilityBandWarning(UserWarning):
    """A credibility band holds fewer candidate cells than negatives were asked for."""


@dataclass(frozen=True)
class NegativeRequest:
    """What every negative sampler knows: where negatives may go and how many."""

    valid: np.ndarray
    landslide_mask: np.ndarray
    n: int
    cell_size: float
    buffer_m: float = 0.0
    slope: np.ndarray | None = None
    min_slope_deg: float | None = None
    credibility: np.ndarray | None = None
    credibility_band: tuple[float, float] = (0.7, 1.0)
    strict: bool = False

    def candidates(self) -> np.ndarray:
        """Valid cells farther than the buffer from landslides (and steep enough, if asked)."""
        allowed = self.valid & ~self.landslide_mask
        if self.buffer_m > 0 and self.landslide_mask.any():
            # squared distance in cells, 4 bytes a cell (scipy's EDT takes 16)
            allowed &= squared_edt(self.landslide_mask) > (self.buffer_m / self.cell_size) ** 2
        if self.min_slope_deg is not None:
            if self.slope is None:
                raise MetalsmInputError(
                    "sampling.min_slope_deg is set but 'slope' is not among the terrain factors"
                )
            allowed &= np.nan_to_num(self.slope, nan=-1.0) >= self.min_slope_deg
        return allowed


NegativeSampler = Callable[[NegativeRequest, int], tuple[np.ndarray, np.ndarray]]


def random_negatives(request: NegativeRequest, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniformly random candidate cells, without replacement."""
    allowed = request.candidates()
    flat = np.flatnonzero(allowed)
    if flat.size < request.n:
        raise MetalsmInputError(
            f"only {flat.size} cells are eligible as negatives but {request.n} are needed; "
            "lower sampling.ratio or sampling.buffer_m"
        )
    chosen = np.sort(np.random.default_rng(seed).choice(flat, size=request.n, replace=False))
    return np.unravel_index(chosen, allowed.shape)


def band_mask(credibility: np.ndarray, band: tuple[float, float]) -> np.ndarray:
    """Cells whose credibility lies in ``[lo, hi)``; ``hi = 1`` includes 1 (NaN: never)."""
    lo, hi = float(band[0]), float(band[1])
    c = np.nan_to_num(credibility, nan=-1.0)
    upper = c <= hi if hi >= 1.0 else c < hi
    return (c >= lo) & upper


def credibility_negatives(request: NegativeRequest, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random candidate cells whose credibility lies in ``request.credibility_band``.

    Candidates are those of :meth:`NegativeRequest.candidates` (valid, outside
    landslides and the buffer, steep enough when asked) inside the band. A band
    with fewer candidates than ``request.n`` fails when ``request.strict``, else
    warns (:class:`CredibilityBandWarning`, with the number available) and
    returns every candidate.
    """
    if request.credibility is None:
        raise MetalsmInputError(
            "negative sampling method 'credibility' needs a credibility map "
            "(NegativeRequest.credibility)"
        )
    if request.credibility.shape != request.valid.shape:
        raise MetalsmInputError(
            f"credibility map has shape {request.credibility.shape}, the grid "
            f"{request.valid.shape}"
        )
    lo, hi = request.credibility_band
    allowed = request.candidates() & band_mask(request.credibility, (lo, hi))
    flat = np.flatnonzero(allowed)
    closing = "]" if hi >= 1.0 else ")"
    if flat.size < request.n:
        message = (
            f"credibility band [{lo:g}, {hi:g}{closing} has only {flat.size} candidate cell(s) "
            f"outside landslides but {request.n} negatives are needed"
        )
        if request.strict or flat.size == 0:
            raise MetalsmInputError(
                message + "; widen sampling.credibility_band, lower sampling.ratio or "
                "sampling.buffer_m"
            )
        log.warning("%s; drawing all %d", message, flat.size)
        warnings.warn(f"{message}; drawing all {flat.size}", CredibilityBandWarning,
                      stacklevel=2)
        chosen = flat
    else:
        chosen = np.sort(np.random.default_rng(seed).choice(flat, size=request.n, replace=False))
    return np.unravel_index(chosen, allowed.shape)


NEGATIVE_SAMPLERS: dict[str, NegativeSampler] = {
    "random": random_negatives,
    "credibility": credibility_negatives,
}


def draw_negatives(
    method: str, request: NegativeRequest, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    if method not in NEGATIVE_SAMPLERS:
        raise MetalsmInputError(
            f"unknown negative sampling method '{method}'; "
            f"available: {', '.join(NEGATIVE_SAMPLERS)}"
        )
    return NEGATIVE_SAMPLERS[method](request, seed)


def sample_table(
    stack: FactorStack,
    positives: tuple[np.ndarray, np.ndarray],
    negatives: tuple[np.ndarray, np.ndarray],
) -> pd.DataFrame:
    """One row per sample: row, col, x, y, label (1 = landslide) and every factor."""
    rows = np.concatenate([positives[0], negatives[0]])
    cols = np.concatenate([positives[1], negatives[1]])
    label = np.r_[np.ones(positives[0].size, np.int8), np.zeros(negatives[0].size, np.int8)]
    x, y = stack.grid.xy(rows, cols)
    table = pd.DataFrame({"row": rows, "col": cols, "x": x, "y": y, "label": label})
    return pd.concat([table, stack.sample(rows, cols)], axis=1)


# --------------------------------------------------------------------------- a study area's samples


def draw_samples(
    config: StudyAreaConfig, stack, inventory, mask: np.ndarray, *, compute=None,
    chunk_size: int | None = None, credibility_path: Path | None = None,
) -> Samples:
    """Positives from the inventory by the configured rule; negatives by the configured sampler.

    ``stack`` is a :class:`metalsm.stack.FactorStack` or ``FileFactorStack``.
    ``sampling.method = "credibility"``: the credibility map is fitted on these
    positives (all inventory cells of the run) as ``[credibility]`` says, window by
    window (``compute``, ``chunk_size``; None: one window), and written to
    ``credibility_path`` when given; negatives come from ``sampling.credibility_band``.
    The cross-validation of a run then sees negatives chosen with knowledge of every
    landslide; the honest band comparison with held-out landslides is ``metalsm
    experiment credibility``.
    """
    from metalsm.inputs import positive_cells
    from metalsm.samples._table import Samples, warn_constant_factors

    valid = stack.valid
    dem = stack.layer("elevation") if "elevation" in stack.names else None
    pos = positive_cells(
        inventory,
        stack.grid,
        valid,
        rule=config.inventory.rule,
        dem=dem,
        cells_per_polygon=config.inventory.cells_per_polygon,
        seed=config.sampling.seed,
        on_invalid=lambda rows, cols: _warn_positives_on_no_data(stack, rows, cols),
    )
    credibility = None
    if config.sampling.method == "credibility":
        from metalsm.samples._credibility import credibility_map, write_credibility

        credibility, _ = credibility_map(stack, pos, config.credibility,
                                         config.factor_selection, compute=compute,
                                         chunk_size=chunk_size)
        if credibility_path is not None:
            write_credibility(credibility, stack.grid, credibility_path)
    request = NegativeRequest(
        valid=valid,
        landslide_mask=mask,
        n=int(round(pos[0].size * config.sampling.ratio)),
        cell_size=stack.grid.cell_size,
        buffer_m=config.sampling.buffer_m,
        slope=stack.layer("slope") if "slope" in stack.names else None,
        min_slope_deg=config.sampling.min_slope_deg,
        credibility=credibility,
        credibility_band=tuple(config.sampling.credibility_band),
        strict=config.sampling.strict,
    )
    neg = draw_negatives(config.sampling.method, request, config.sampling.seed)
    table = sample_table(stack, pos, neg)
    samples = Samples(table, stack.names, stack.categorical)
    warn_constant_factors(samples)
    return samples


def _warn_positives_on_no_data(stack, rows: np.ndarray, cols: np.ndarray) -> None:
    missing = stack.sample(rows, cols).isna().sum()
    per_layer = ", ".join(f"{name} {int(n)}" for name, n in missing.items() if n)
    log.warning("%d landslide cell(s) fall where a factor has no data and are not used as "
                "positives (cells without data, per layer: %s)", rows.size, per_layer)
