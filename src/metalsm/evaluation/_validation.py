"""Model validation: metrics, random and spatial folds, cross-validation, model comparison.

Spatial cross-validation holds out whole regions (k-means clusters of the sample
coordinates, or square grid blocks), so test samples are not neighbours of
training samples.  Because landslide factors are spatially autocorrelated, random
folds leak information and overstate accuracy; comparing both schemes shows how
much.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.cluster import KMeans
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)
from sklearn.model_selection import StratifiedKFold

from metalsm.errors import MetalsmInputError
from metalsm.models.classic import check_binary_target, check_samples, make_model

if TYPE_CHECKING:
    from metalsm.config import StudyAreaConfig
    from metalsm.samples import Samples

__all__ = [
    "METRICS",
    "SCHEMES",
    "CVResult",
    "Evaluation",
    "RateCurve",
    "RocPoints",
    "area_share_above",
    "classification_metrics",
    "cross_validate_model",
    "evaluate_models",
    "prediction_rate",
    "random_folds",
    "rate_curve",
    "rate_curve_from_counts",
    "roc_points",
    "spatial_folds",
    "validate",
    "validation_stage_name",
    "validation_tasks",
]

METRICS: tuple[str, ...] = ("accuracy", "precision", "recall", "f1", "auc", "kappa")
SCHEMES: tuple[str, ...] = ("random", "spatial")


# --------------------------------------------------------------------------- metrics


def _positive_proba(proba: Any) -> np.ndarray:
    """Positive-class probability from ``(n,)`` or ``(n, 2)`` input."""
    p = np.asarray(proba, dtype=float)
    if p.ndim == 2 and p.shape[1] == 2:
        p = p[:, 1]
    elif p.ndim == 2 and p.shape[1] == 1:
        p = p[:, 0]
    if p.ndim != 1:
        raise MetalsmInputError(
            f"probabilities must be shape (n,) or (n, 2), got shape {np.shape(proba)}"
        )
    if not np.isfinite(p).all():
        raise MetalsmInputError("probabilities contain NaN or infinite values")
    return p


def _binary_labels(y_true: Any, n: int) -> np.ndarray:
    y = np.asarray(y_true).ravel()
    if y.shape[0] != n:
        raise MetalsmInputError(f"y_true has {y.shape[0]} entries but proba has {n}")
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        raise MetalsmInputError(
            f"y_true must hold 0/1 labels, found {np.unique(y[bad])[:5].tolist()}"
        )
    return y.astype(int)


def classification_metrics(y_true: Any, proba: Any, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, precision, recall, F1, AUC and Cohen's kappa for 0/1 labels.

    ``proba`` is the landslide probability, ``(n,)`` or ``(n, 2)``; a sample is
    predicted landslide when ``proba >= threshold``.  Undefined precision/recall
    give 0; AUC is NaN when ``y_true`` holds one class only, and kappa is NaN when
    labels and predictions are all the same single class (kappa is 0/0 there).
    """
    p = _positive_proba(proba)
    y = _binary_labels(y_true, p.shape[0])
    pred = (p >= threshold).astype(int)
    auc = roc_auc_score(y, p) if np.unique(y).size == 2 else float("nan")
    if np.unique(np.concatenate([y, pred])).size < 2:
        kappa = float("nan")  # one value everywhere: chance agreement is 1, kappa is 0/0
    else:
        kappa = cohen_kappa_score(y, pred)
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "auc": float(auc),
        "kappa": float(kappa),
    }


def within_group_metrics(y_true: Any, proba: Any, groups: Any) -> dict[str, float]:
    """How well a map ranks cells *inside* each block, beside the pooled metrics.

    ``within_auc``: mean over groups holding both classes of the AUC inside the group
    (a model that only learnt each block's landslide share scores 0.5 here however good
    its pooled AUC); ``within_spread``: mean over groups of 2+ samples of the standard
    deviation of the predicted probability (near 0: a flat map inside blocks). NaN
    where no group qualifies.
    """
    p = _positive_proba(proba)
    y = _binary_labels(y_true, p.shape[0])
    g = np.asarray(groups).ravel()
    aucs, spreads = [], []
    for label in np.unique(g):  # one pass per block (tens), not per sample
        inside = g == label
        if inside.sum() >= 2:
            spreads.append(float(p[inside].std()))
        if np.unique(y[inside]).size == 2:
            aucs.append(float(roc_auc_score(y[inside], p[inside])))
    return {"within_auc": float(np.mean(aucs)) if aucs else float("nan"),
            "within_spread": float(np.mean(spreads)) if spreads else float("nan")}


class RocPoints(NamedTuple):
    """ROC curve; unpacks as ``fpr, tpr, thresholds, auc``."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    auc: float


def roc_points(y: Any, proba: Any) -> RocPoints:
    """ROC curve points and area for 0/1 labels and landslide probabilities."""
    p = _positive_proba(proba)
    labels = _binary_labels(y, p.shape[0])
    if np.unique(labels).size < 2:
        raise MetalsmInputError("ROC needs both classes in y; got a single class")
    fpr, tpr, thresholds = roc_curve(labels, p)
    return RocPoints(fpr, tpr, thresholds, float(roc_auc_score(labels, p)))


# ------------------------------------------------------------ success and prediction rates


class RateCurve(NamedTuple):
    """A success- or prediction-rate curve: with the map's cells ranked from the most
    susceptible down, the share of landslides (``landslide_share``) found within each
    share of the area (``area_share``); ``auc`` is the area under it (0.5 = random)."""

    area_share: np.ndarray
    landslide_share: np.ndarray
    auc: float


def rate_curve_from_counts(area_counts: Any, landslide_counts: Any) -> RateCurve:
    """The rate curve from cell counts per susceptibility class, classes ordered from
    low to high susceptibility (e.g. a fine histogram of a map window by window).

    Cells of one class share one susceptibility, so the curve is straight across a
    class; the AUC equals the mean, over landslide cells, of the share of the area
    less susceptible than it (ties counted half).
    """
    area = np.asarray(area_counts, dtype=np.float64)[::-1]
    slides = np.asarray(landslide_counts, dtype=np.float64)[::-1]
    if area.shape != slides.shape or area.sum() <= 0 or slides.sum() <= 0:
        raise MetalsmInputError(
            f"a rate curve needs area and landslide counts of one shape with cells in both "
            f"(got {area.shape} holding {area.sum():g} and {slides.shape} holding "
            f"{slides.sum():g})")
    keep = np.r_[True, (area > 0) | (slides > 0)]
    x = np.r_[0.0, np.cumsum(area) / area.sum()][keep]
    y = np.r_[0.0, np.cumsum(slides) / slides.sum()][keep]
    return RateCurve(x, y, float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2)))


def rate_curve(area_values: Any, landslide_values: Any) -> RateCurve:
    """The success-rate curve of ``landslide_values`` (the susceptibility at landslide
    cells) among ``area_values`` (at every mapped cell, landslides included)."""
    area = np.asarray(area_values, dtype=np.float64).ravel()
    slides = np.asarray(landslide_values, dtype=np.float64).ravel()
    area, slides = area[np.isfinite(area)], slides[np.isfinite(slides)]
    levels = np.unique(np.r_[area, slides])
    return rate_curve_from_counts(
        np.bincount(np.searchsorted(levels, area), minlength=levels.size),
        np.bincount(np.searchsorted(levels, slides), minlength=levels.size))


def area_share_above(area_proba: Any, proba: Any) -> np.ndarray:
    """For each of ``proba``, the share of ``area_proba`` (one model's scores over a
    sample of the mapped cells) more susceptible than it, ties counted half: where a
    landslide would rank on that model's map (0 = the most susceptible cell)."""
    area = np.sort(np.asarray(area_proba, dtype=np.float64))
    p = np.asarray(proba, dtype=np.float64)
    below = np.searchsorted(area, p, side="left")
    up_to = np.searchsorted(area, p, side="right")
    return (area.size - up_to + 0.5 * (up_to - below)) / area.size


def prediction_rate(shares: Any) -> RateCurve:
    """The rate curve of held-out landslides from their :func:`area_share_above`: the
    share of them within each share of the area; AUC = 1 - mean share."""
    q = np.sort(np.asarray(shares, dtype=np.float64))
    q = q[np.isfinite(q)]
    if not q.size:
        raise MetalsmInputError("no held-out landslide ranks to build a prediction-rate curve")
    n = q.size
    x = np.r_[0.0, np.repeat(q, 2), 1.0]
    y = np.r_[0.0, 0.0, np.repeat(np.arange(1, n) / n, 2), 1.0, 1.0]  # the empirical CDF
    return RateCurve(x, y, float(1.0 - q.mean()))


# --------------------------------------------------------------------------- folds


def _check_n_folds(n_folds: int, n: int) -> int:
    if int(n_folds) != n_folds or n_folds < 2:
        raise MetalsmInputError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    if n_folds > n:
        raise MetalsmInputError(f"n_folds={n_folds} exceeds the number of samples ({n})")
    return int(n_folds)


def random_folds(y: Any, n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Fold index (``0..n_folds-1``) per sample, stratified by label and shuffled with ``seed``."""
    y = np.asarray(y).ravel()
    n_folds = _check_n_folds(n_folds, y.shape[0])
    _, counts = np.unique(y, return_counts=True)
    if counts.min() < n_folds:
        raise MetalsmInputError(
            f"the rarest class has {counts.min()} samples, fewer than n_folds={n_folds}"
        )
    folds = np.empty(y.shape[0], dtype=int)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, test) in enumerate(splitter.split(np.zeros((y.shape[0], 1)), y)):
        folds[test] = k
    return folds


def spatial_folds(
    x: Any,
    y_coords: Any,
    n_folds: int = 5,
    seed: int = 0,
    method: str = "kmeans",
    block_size: float | None = None,
    random_origin: bool = False,
) -> np.ndarray:
    """Fold index per sample from its location, so each fold is a separate region.

    ``method="kmeans"``: k-means (``n_init=10``, seeded) on the raw coordinates --
    metres on both axes, so no rescaling -- one cluster per fold.  Cluster sizes
    follow the sample density and can be unequal.

    ``method="grid"``: square blocks of side ``block_size`` (default: the side
    giving about ``8 * n_folds`` blocks over the bounding box); blocks are shuffled
    with ``seed`` and dealt largest-first to the fold with the fewest samples so
    far, which balances fold sizes.  ``random_origin``: the grid is shifted by a
    seeded random offset (up to one block on each axis) so that another ``seed`` also
    moves the block edges -- without it only blocks of equal counts trade places, and
    repeated cross-validations would see nearly the same folds.
    """
    xs = np.asarray(x, dtype=float).ravel()
    ys = np.asarray(y_coords, dtype=float).ravel()
    if xs.shape != ys.shape:
        raise MetalsmInputError(f"x has {xs.size} coordinates but y_coords has {ys.size}")
    if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
        raise MetalsmInputError("coordinates contain NaN or infinite values")
    n_folds = _check_n_folds(n_folds, xs.size)
    coords = np.column_stack([xs, ys])
    if method == "kmeans":
        if np.unique(coords, axis=0).shape[0] < n_folds:
            raise MetalsmInputError(f"fewer distinct locations than n_folds={n_folds}")
        km = KMeans(n_clusters=n_folds, n_init=10, random_state=seed).fit(coords)
        return km.labels_.astype(int)
    if method == "grid":
        return _grid_folds(coords, n_folds, seed, block_size, random_origin)
    raise MetalsmInputError(f"unknown spatial fold method {method!r}; use 'kmeans' or 'grid'")


def _grid_folds(
    coords: np.ndarray, n_folds: int, seed: int, block_size: float | None,
    random_origin: bool = False,
) -> np.ndarray:
    lo = coords.min(axis=0)
    extent = coords.max(axis=0) - lo
    if block_size is None:
        area = max(extent[0], 1e-9) * max(extent[1], 1e-9)
        block_size = math.sqrt(area / (8 * n_folds))
    if not block_size > 0:
        raise MetalsmInputError(f"block_size must be > 0, got {block_size!r}")
    rng = np.random.default_rng(seed)
    if random_origin:
        lo = lo - rng.uniform(0.0, block_size, size=2)
    cell = np.floor((coords - lo) / block_size).astype(np.int64)
    _, block, counts = np.unique(cell, axis=0, return_inverse=True, return_counts=True)
    block = block.ravel()
    if counts.size < n_folds:
        raise MetalsmInputError(
            f"only {counts.size} occupied grid blocks for n_folds={n_folds}; "
            "use a smaller block_size"
        )
    order = rng.permutation(counts.size)
    order = order[np.argsort(-counts[order], kind="stable")]  # largest first, ties shuffled
    block_fold = np.empty(counts.size, dtype=int)
    load = np.zeros(n_folds, dtype=np.int64)
    for b in order:  # loop over blocks, not samples
        k = int(np.argmin(load))
        block_fold[b] = k
        load[k] += counts[b]
    return block_fold[block]


# --------------------------------------------------------------------------- cross-validation


@dataclass
class CVResult:
    """Outcome of :func:`cross_validate_model`.

    ``fold_metrics``: one row per fold (``fold``, ``n_train``, ``n_test``, the
    :data:`METRICS`, ``fit_seconds``, ``note``).  ``mean``/``std``: per metric over
    folds, ignoring NaN (std with ``ddof=0``).  ``oof_proba``: the landslide
    probability of every sample from the model that did not see it, for pooled
    ROC.  ``notes``: human-readable remarks, e.g. folds whose AUC was skipped.
    ``area_share_above``: with an ``area`` sample, for every landslide its
    :func:`area_share_above` on the map of the model that did not see it (NaN for
    non-landslides), from which :func:`prediction_rate` builds the curve.
    """

    fold_metrics: pd.DataFrame
    mean: dict[str, float]
    std: dict[str, float]
    oof_proba: np.ndarray
    notes: list[str] = field(default_factory=list)
    area_share_above: np.ndarray | None = None


def cross_validate_model(
    make_estimator: Callable[[], BaseEstimator],
    X: Any,
    y: Any,
    folds: Any,
    on_fold: Callable[[int], None] | None = None,
    area: Any = None,
    *,
    coords: Any = None,
    buffer_m: float = 0.0,
) -> CVResult:
    """Fit a fresh ``make_estimator()`` per fold, test on the held-out fold.

    ``folds`` gives the fold index of each sample.  A fold whose test part holds
    one class only gets AUC = NaN (and a note); a fold whose training part holds
    one class raises :class:`MetalsmInputError`.  ``on_fold(1)`` is called after
    each fold (progress hook).  ``area``: factors of a random sample of the mapped
    cells (columns as ``X``); each fold's model scores it, to rank its held-out
    landslides on its own map (the prediction rate).  ``buffer_m`` > 0 (with
    ``coords``, ``(n, 2)`` in metres): training samples closer than ``buffer_m`` to
    any test sample of the fold are left out of its training set (spatial
    leave-out with a buffer zone); ``n_buffered`` counts them per fold.
    """
    X = check_samples(X)
    y, classes = check_binary_target(y, X.shape[0])
    if not np.isin(classes, (0, 1)).all():
        raise MetalsmInputError(f"labels must be 0/1, got classes {classes.tolist()}")
    folds = np.asarray(folds).ravel()
    if folds.shape[0] != X.shape[0]:
        raise MetalsmInputError(
            f"folds has {folds.shape[0]} entries but the samples table has {X.shape[0]} rows"
        )
    fold_ids = np.unique(folds)
    if fold_ids.size < 2:
        raise MetalsmInputError("folds must define at least 2 distinct folds")
    if not buffer_m >= 0:
        raise MetalsmInputError(f"validation buffer_m must be >= 0 metres, got {buffer_m}")
    if buffer_m > 0:
        if coords is None:
            raise MetalsmInputError("a validation buffer needs the sample coordinates")
        coords = np.asarray(coords, dtype=np.float64)

    oof = np.full(X.shape[0], np.nan)
    ranks = np.full(X.shape[0], np.nan) if area is not None else None
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for k in fold_ids:
        test = folds == k
        train = ~test
        if buffer_m > 0:
            train &= ~_within(coords, test, buffer_m)
        y_train, y_test = y[train], y[test]
        if np.unique(y_train).size < 2:
            raise MetalsmInputError(
                f"fold {k}: the training part holds a single class ({y_train[0]}); "
                "cannot fit -- choose other folds"
            )
        estimator = make_estimator()
        start = time.perf_counter()
        estimator.fit(X.loc[train], y_train)
        fit_seconds = time.perf_counter() - start
        proba = estimator.predict_proba(X.loc[test])
        p = proba[:, list(estimator.classes_).index(1)]
        oof[test] = p
        if ranks is not None:
            area_p = estimator.predict_proba(area)[:, list(estimator.classes_).index(1)]
            held_out = test & (y == 1)
            ranks[held_out] = area_share_above(area_p, oof[held_out])
        metrics = classification_metrics(y_test, p)
        note = ""
        if np.unique(y_test).size < 2:
            note = f"test part holds class {y_test[0]} only; AUC skipped"
            notes.append(f"fold {k}: {note}")
        rows.append(
            {
                "fold": int(k),
                "n_train": int(train.sum()),
                "n_buffered": int((~test & ~train).sum()),
                "n_test": int(test.sum()),
                **metrics,
                "fit_seconds": fit_seconds,
                "note": note,
            }
        )
        if on_fold is not None:
            on_fold(1)
    table = pd.DataFrame(rows)
    numeric = table[[*METRICS, "fit_seconds"]]
    mean = {
        c: float(np.nanmean(numeric[c])) if numeric[c].notna().any() else float("nan")
        for c in numeric.columns
    }
    std = {
        c: float(np.nanstd(numeric[c])) if numeric[c].notna().any() else float("nan")
        for c in numeric.columns
    }
    return CVResult(table, mean, std, oof, notes, ranks)


def _within(coords: np.ndarray, test: np.ndarray, distance: float) -> np.ndarray:
    """Samples (outside ``test``) closer than ``distance`` to some sample of ``test``."""
    from scipy.spatial import cKDTree

    nearest, _ = cKDTree(coords[test]).query(coords[~test], distance_upper_bound=distance)
    out = np.zeros(test.size, dtype=bool)
    out[~test] = nearest < distance
    return out


# --------------------------------------------------------------------------- model comparison


@dataclass
class Evaluation:
    """Outcome of :func:`evaluate_models`.

    ``table``: one row per (model, scheme) with ``<metric>_mean`` and
    ``<metric>_std`` columns (plus ``fit_seconds``) and ``pooled_auc`` (AUC of the
    pooled out-of-fold probabilities).  With ``repeats`` > 1 the means and the fold
    std are over every fold of every repeat, ``pooled_auc`` and
    ``prediction_rate_auc`` are means over repeats, and each of them gets a
    ``<name>_repeat_std`` column: the standard deviation over repeats of the
    per-repeat value (how much the estimate depends on the fold draw).
    ``oof``: out-of-fold landslide probabilities, one per sample, keyed ``(model,
    scheme)``, of the first repeat.  ``results``: the full :class:`CVResult` per key
    (first repeat); ``repeat_results``: one per repeat.  ``folds``: the fold index per
    sample for each scheme (first repeat, shared by all models, so comparisons are
    paired); ``repeat_folds``: ``(repeats, n)`` per scheme, repeat ``r`` drawn with
    ``seed + r``.
    """

    table: pd.DataFrame
    oof: dict[tuple[str, str], np.ndarray]
    results: dict[tuple[str, str], CVResult]
    folds: dict[str, np.ndarray]
    repeat_results: dict[tuple[str, str], list[CVResult]] = field(default_factory=dict)
    repeat_folds: dict[str, np.ndarray] = field(default_factory=dict)

    def area_shares(self, model: str, scheme: str) -> np.ndarray | None:
        """Every repeat's :func:`area_share_above` of ``(model, scheme)`` end to end:
        each landslide ranked once per repeat, so the :func:`prediction_rate` of them
        has the mean of the per-repeat AUCs as its AUC."""
        runs = self.repeat_results.get((model, scheme))
        if not runs or runs[0].area_share_above is None:
            return None
        return np.concatenate([r.area_share_above for r in runs])


def _progress_hook(progress: Any, total: int) -> Callable[[int], None] | None:
    if progress is None:
        return None
    if hasattr(progress, "add_task") and hasattr(progress, "advance"):  # rich.progress.Progress
        task = progress.add_task("cross-validating", total=total)
        return lambda n: progress.advance(task, n)
    if callable(progress):
        return progress
    raise MetalsmInputError("progress must be a callable progress(advance: int) or a rich Progress")


def evaluate_models(
    names: Sequence[str],
    X: Any,
    y: Any,
    coords: Any,
    categorical: Sequence[Any] = (),
    n_folds: int = 5,
    seed: int = 0,
    *,
    schemes: Sequence[str] = SCHEMES,
    spatial_method: str = "kmeans",
    model_params: dict[str, dict[str, Any]] | None = None,
    progress: Any = None,
    area: Any = None,
    buffer_m: float = 0.0,
    repeats: int = 1,
) -> Evaluation:
    """Cross-validate each model under random and spatial folds.

    ``area`` (factors of a random sample of the mapped cells) adds the column
    ``prediction_rate_auc``: the area under the prediction-rate curve of the
    held-out landslides (see :func:`cross_validate_model`).  ``buffer_m`` > 0 leaves
    training samples within that distance of each test fold out (both schemes) and
    adds a ``buffer_m`` column.  ``repeats`` > 1 re-draws the folds of both schemes
    with ``seed + r`` for repeat ``r`` (models keep ``seed``; grid folds get a random
    origin per repeat) and adds the spread over repeats (see :class:`Evaluation`).
    K-means folds of the same coordinates change little between seeds (the clustering
    optimum is stable), so their spread over repeats is small.

    ``coords`` is ``(n, 2)`` (x, y) -- an array or a two-column DataFrame.
    ``model_params`` passes overrides to :func:`make_model` per model name
    (e.g. ``{"rf": {"n_estimators": 100}}``).  ``progress`` is ``None``, a callable
    receiving the number of folds just finished, or a ``rich.progress.Progress``
    (a task is added and advanced).
    """
    names = list(names)
    if not names:
        raise MetalsmInputError("no model names given")
    bad = [s for s in schemes if s not in SCHEMES]
    if bad or not schemes:
        raise MetalsmInputError(f"unknown scheme(s) {bad}; valid: {list(SCHEMES)}")
    if isinstance(repeats, bool) or int(repeats) != repeats or repeats < 1:
        raise MetalsmInputError(f"validation repeats must be an integer >= 1, got {repeats!r}")
    X = check_samples(X)
    y, _ = check_binary_target(y, X.shape[0])
    c = np.asarray(coords, dtype=float)
    if c.ndim != 2 or c.shape != (X.shape[0], 2):
        raise MetalsmInputError(
            f"coords must have shape ({X.shape[0]}, 2) (x, y per sample), got {c.shape}"
        )
    model_params = dict(model_params or {})
    unknown = sorted(set(model_params) - set(names))
    if unknown:
        raise MetalsmInputError(f"model_params given for model(s) not evaluated: {unknown}")
    for name in names:  # fail fast on a bad name before any fitting
        make_model(name, categorical, seed, **model_params.get(name, {}))

    repeat_folds: dict[str, np.ndarray] = {}
    for scheme in schemes:
        if scheme == "random":
            draws = [random_folds(y, n_folds, seed + r) for r in range(int(repeats))]
        else:
            # repeated grid folds also move the grid (a random origin per repeat)
            draws = [spatial_folds(c[:, 0], c[:, 1], n_folds, seed + r, method=spatial_method,
                                   random_origin=repeats > 1)
                     for r in range(int(repeats))]
        repeat_folds[scheme] = np.stack(draws)

    total = len(names) * sum(np.unique(draw).size for draws in repeat_folds.values()
                             for draw in draws)
    hook = _progress_hook(progress, total)
    rows: list[dict[str, Any]] = []
    repeat_results: dict[tuple[str, str], list[CVResult]] = {}
    for name in names:
        params = model_params.get(name, {})

        def factory(name: str = name, params: dict[str, Any] = params) -> BaseEstimator:
            return make_model(name, categorical, seed, **params)

        for scheme in schemes:
            runs = [cross_validate_model(factory, X, y, folds, on_fold=hook, area=area,
                                         coords=c, buffer_m=buffer_m)
                    for folds in repeat_folds[scheme]]
            repeat_results[(name, scheme)] = runs
            rows.append({"model": name, "scheme": scheme,
                         **_summary_row(runs, y, buffer_m)})
    return Evaluation(
        pd.DataFrame(rows),
        oof={key: runs[0].oof_proba for key, runs in repeat_results.items()},
        results={key: runs[0] for key, runs in repeat_results.items()},
        folds={scheme: draws[0] for scheme, draws in repeat_folds.items()},
        repeat_results=repeat_results,
        repeat_folds=repeat_folds,
    )


def _summary_row(runs: list[CVResult], y: np.ndarray, buffer_m: float) -> dict[str, Any]:
    """One table row from the cross-validations of one (model, scheme), one per repeat:
    mean and std over every fold, and with 2+ repeats the std over repeats."""
    folds = pd.concat([r.fold_metrics for r in runs], ignore_index=True)
    row: dict[str, Any] = {}
    for metric in (*METRICS, "fit_seconds"):
        values = folds[metric]
        finite = values.notna().any()
        row[f"{metric}_mean"] = float(np.nanmean(values)) if finite else float("nan")
        row[f"{metric}_std"] = float(np.nanstd(values)) if finite else float("nan")
    per_repeat: dict[str, list[float]] = {
        "pooled_auc": [roc_points(y, r.oof_proba).auc for r in runs]}
    if runs[0].area_share_above is not None:
        per_repeat["prediction_rate_auc"] = [prediction_rate(r.area_share_above).auc
                                             for r in runs]
    for key, values in per_repeat.items():
        row[key] = float(np.mean(values))
    if buffer_m > 0:
        row["buffer_m"] = buffer_m
        row["n_buffered_mean"] = float(folds["n_buffered"].mean())
    if len(runs) > 1:
        row["repeats"] = len(runs)
        for metric in METRICS:
            means = [r.mean[metric] for r in runs]
            row[f"{metric}_repeat_std"] = float(np.nanstd(means)) \
                if np.isfinite(means).any() else float("nan")
        for key, values in per_repeat.items():
            row[f"{key}_repeat_std"] = float(np.std(values))
    return row


def validation_tasks(config: StudyAreaConfig, names: Sequence[str]) -> int:
    """Model fits of the cross-validation (its progress bar's total)."""
    return 2 * len(names) * config.validation.n_folds * config.validation.repeats


def validation_stage_name(config: StudyAreaConfig) -> str:
    repeats = config.validation.repeats
    return "validation (random and spatial folds" + (
        f", {repeats} repeats)" if repeats > 1 else ")")


def validate(config: StudyAreaConfig, names: Sequence[str], samples: Samples,
             progress: Any = None, *, area: pd.DataFrame | None = None) -> Evaluation:
    """Cross-validate ``names`` on ``samples`` as ``[validation]`` says (folds, spatial
    method, buffer, repeats, seed): the one call of raster and table runs."""
    settings = config.validation
    return evaluate_models(
        names, samples.X, samples.y, samples.coords, categorical=samples.categorical,
        n_folds=settings.n_folds, seed=settings.seed,
        spatial_method=settings.spatial_method, progress=progress, area=area,
        buffer_m=settings.buffer_m, repeats=settings.repeats)
