"""The block-wise meta-learning stage of a study area: intermediate model, K-shot table, map.

One sample's path: its factor values are encoded (:class:`FactorEncoder`: categorical
factors one-hot over the categories seen in the samples, continuous factors as they
are; the network standardizes) -> its block is a task -> the meta-train blocks train
the intermediate model (:func:`fit_intermediate`: RBM/RBM/DAE pretraining on all
sample vectors, labels unused, plus optional unlabelled raster cells, then weighted
MAML) -> the meta-test blocks score the few-shot adaptation (:func:`kshot_table`) ->
every block is adapted with ``map_k`` of its samples (:func:`adapt_all_blocks`) and
each map cell is predicted by its block's model
(:func:`metalsm.mapping.predict_blockwise_raster`).

Honest K-shot numbers: every setting comes from the config; the meta-test blocks'
labels are used only as the K shots of each block and as the query it is scored on
(shots excluded), never to choose anything. The baselines get the same shots:
plain MAML (no pretraining, uniform task weights) and a global MLP (the same network
trained on all meta-train samples, then fine-tuned per block with the same inner loop).

Saved state (``models/`` of a run directory): ``encoder.json``, ``pretrained.pt`` +
``pretrained.json`` (``metalsm pretrain``), ``intermediate.pt/json``
(``metalsm metatrain``), ``blocks.pt/json`` (``metalsm adapt``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metalsm import mapping
from metalsm.atomic import write_csv
from metalsm.config import MetaConfig, StudyAreaConfig
from metalsm.errors import MetalsmInputError
from metalsm.evaluation import (
    KSHOT_METRICS,
    METHOD_LABELS,
    AdaptedBlocks,
    Method,
    ZeroShot,
    compare_methods,
    summarize,
)
from metalsm.models.blockwise import BlockModels, adapt_blocks, load_intermediate
from metalsm.models.meta import (
    MetaLearner,
)
from metalsm.models.pretrain import PretrainResult
from metalsm.models.recipes import (
    FactorEncoder,
    MetaData,
    fit_global_mlp,
    fit_plain_maml,
    load_pretrained,
    make_learner,
    pretrain_state,
    save_pretrained,
    tune_settings,
)
from metalsm.pipeline._blocks import BlockStage
from metalsm.progress import RunProgress

__all__ = [
    "META_MODEL",
    "METHODS",
    "MetaResult",
    "adapt_all_blocks",
    "adapt_step",
    "block_table",
    "fit_intermediate",
    "kshot_table",
    "meta_data",
    "meta_metrics",
    "metatrain_step",
    "prepare_models_dir",
    "prepare_stage",
    "pretrain_step",
    "run_meta_stage",
    "unlabelled_cells",
    "unlabelled_features",
    "write_blockwise_map",
]

log = logging.getLogger(__name__)

META_MODEL = "meta-blockwise"
METHODS = ("proposed", "zero-shot", "maml", "mlp-ft")


# --------------------------------------------------------------------------- encoding


# --------------------------------------------------------------------------- data


def meta_data(stage: BlockStage, encoder: FactorEncoder | None = None) -> MetaData:
    """Encode the samples of ``stage`` and split them by the meta-train/test blocks."""
    samples = stage.samples
    encoder = encoder or FactorEncoder.from_samples(samples.table, samples.factor_names,
                                                    samples.categorical)
    X = encoder.transform(samples.table)
    blocks = np.asarray(stage.sample_blocks, dtype=np.int64)
    tasks = stage.tasks
    n_blocks = int(stage.blocks.n_blocks if stage.blocks is not None else len(tasks))
    train = tasks.loc[tasks["split"] == "meta-train", "block"].to_numpy(np.int64)
    test = tasks.loc[tasks["split"] == "meta-test", "block"].to_numpy(np.int64)
    if stage.blocks is not None:
        centres = np.asarray(stage.blocks.centres, dtype=np.float64)
    else:  # point blocks: mean coordinates and mean encoded features of the block
        feats = np.column_stack([samples.coords, X])
        centres = np.full((n_blocks, feats.shape[1]), np.nan)
        inside = blocks >= 0
        counts = np.bincount(blocks[inside], minlength=n_blocks)
        for j in range(feats.shape[1]):
            sums = np.bincount(blocks[inside], weights=feats[inside, j], minlength=n_blocks)
            centres[:, j] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return MetaData(encoder, X, np.asarray(samples.y, dtype=np.int64), blocks, n_blocks,
                    train, test, centres,
                    table=samples.table[list(samples.factor_names)].reset_index(drop=True),
                    categorical=tuple(samples.categorical),
                    coords=np.asarray(samples.coords, dtype=np.float64))


def unlabelled_cells(stack: Any, n: int, seed: int) -> pd.DataFrame | None:
    """A seeded random subsample of ``n`` valid cells of a factor stack (raw values)."""
    if stack is None or n <= 0:
        return None
    flat = np.flatnonzero(stack.valid.ravel())
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(flat, size=min(n, flat.size), replace=False))
    rows, cols = np.unravel_index(pick, stack.grid.shape)
    return stack.sample(rows, cols)


def unlabelled_features(stack: Any, meta: MetaConfig, encoder: FactorEncoder
                        ) -> np.ndarray | None:
    """``[meta] unlabelled_cells`` random valid cells, encoded for the network (or None)."""
    if meta.unlabelled_cells <= 0:
        return None
    cells = unlabelled_cells(stack, meta.unlabelled_cells, meta.seed)
    if cells is None:
        log.warning("meta.unlabelled_cells is set but a table study area has no cells")
        return None
    return encoder.transform(cells)


def prepare_models_dir(out: Path, encoder: FactorEncoder) -> Path:
    """``out/models``, holding the encoder every saved model needs."""
    models = out / "models"
    models.mkdir(parents=True, exist_ok=True)
    encoder.save(models / "encoder.json")
    return models


# --------------------------------------------------------------------------- training


def fit_intermediate(config: StudyAreaConfig, stage: BlockStage | MetaData,
                     X_unlabelled: np.ndarray | None = None,
                     pretrained: PretrainResult | None = None,
                     seed: int | None = None) -> MetaLearner:
    """The intermediate model: weighted MAML on the meta-train blocks (groups = block ids),
    started from pretrained hidden layers when ``[meta] pretrain`` (computed here
    unless ``pretrained`` is given)."""
    meta = _meta(config)
    data = stage if isinstance(stage, MetaData) else meta_data(stage)
    learner = make_learner(meta, seed=seed)
    if meta.pretrain and pretrained is None:
        pretrained = pretrain_state(meta, data, X_unlabelled, seed)
    train = data.train
    learner.fit(data.X[train], data.y[train], groups=data.blocks[train],
                init_state=pretrained.state if meta.pretrain else None)
    if meta.pretrain:
        learner.pretrain_history_ = pretrained.history
    return learner


# --------------------------------------------------------------------------- evaluation


def _k_value(k: str | int) -> int | str:
    return int(k) if str(k).isdigit() else str(k)


def _given_method(name: str, learner: MetaLearner) -> Method:
    """A K-shot protocol method around an already-fitted learner (every repeat reuses it;
    the repeats differ in their shots)."""
    fitted = ZeroShot(learner) if name == "zero-shot" else AdaptedBlocks(learner)
    return Method(name, "meta", METHOD_LABELS.get(name, name),
                  lambda data, meta, seed: fitted)


def kshot_table(models: dict[str, MetaLearner], data: MetaData,
                meta: MetaConfig) -> pd.DataFrame:
    """Accuracy, F1, AUC, within-block AUC and spread on the meta-test queries at each
    ``[meta] k_shots``, mean ± std over ``[meta] repeats`` shot draws: the protocol of
    :func:`metalsm.evaluation.compare_methods` (the experiments' own).

    One row per (method, K). ``models`` maps a method name (``"zero-shot"``: the
    learner is not adapted) to a fitted learner.
    """
    raw = compare_methods(data, meta, [_given_method(n, m) for n, m in models.items()],
                          meta.k_shots, meta.repeats, meta.seed)
    return summarize(raw, KSHOT_METRICS)


# --------------------------------------------------------------------------- stage


@dataclass
class MetaResult:
    """What the block-wise stage produced (for metrics.json and the report)."""

    learner: MetaLearner
    block_models: BlockModels | None
    kshot: pd.DataFrame
    metrics: dict
    timings: dict[str, float]
    paths: dict[str, Path]


def _meta(config: StudyAreaConfig) -> MetaConfig:
    if config.meta is None:
        raise MetalsmInputError(f"{config.source}: the block-wise model needs a [meta] section")
    return config.meta


def adapt_all_blocks(learner: MetaLearner, data: MetaData, k: str | int, seed: int
                     ) -> BlockModels:
    """Adapt every block with K of its samples (fallbacks as :func:`adapt_blocks`)."""
    return adapt_blocks(learner, data.X, data.y, data.blocks, k=_k_value(k),
                        n_blocks=data.n_blocks, centres=data.centres,
                        factor_names=data.encoder.feature_names, seed=seed)


def run_meta_stage(config: StudyAreaConfig, stage: BlockStage, out: Path,
                   progress: RunProgress, *, stack: Any = None,
                   factors_path: Path | None = None, compute: Any = None,
                   window_size: int | None = None) -> MetaResult:
    """Intermediate model, baselines, K-shot table, block models (and the map for rasters).

    Writes ``kshot.csv``, ``block_models.csv`` and ``models/`` into ``out``; with a
    ``factors_path`` (rasters) also ``susceptibility.tif`` from ``out/blocks.tif``
    (over Dask with a ``compute`` from :func:`metalsm.scale.compute_context`).
    """
    meta = _meta(config)
    timings: dict[str, float] = {}
    data = meta_data(stage)
    models_dir = prepare_models_dir(out, data.encoder)

    t = time.perf_counter()
    unl = unlabelled_features(stack, meta, data.encoder)
    pretrained = None
    if meta.pretrain:
        with progress.stage("pretraining (RBM, RBM, DAE)"):
            pretrained = pretrain_state(meta, data, unl)
            save_pretrained(pretrained, meta, models_dir)
    timings["pretrain"] = _since(t)

    tuning = None
    if meta.tune:
        t = time.perf_counter()
        with progress.stage(f"tuning on meta-train blocks (budget {meta.tune_budget_s:g} s)"):
            meta, tuning = tune_settings(meta, data, pretrained)
            config = replace(config, meta=meta)
            write_csv(out / "tuning.csv", tuning.table)
        timings["tune"] = _since(t)

    t = time.perf_counter()
    with progress.stage(f"meta-training ({meta.iterations} iterations)"):
        learner = fit_intermediate(config, data, unl, pretrained)
    timings["metatrain"] = _since(t)

    t = time.perf_counter()
    with progress.stage("baselines: plain MAML, global MLP", total=2) as advance:
        maml = fit_plain_maml(meta, data)
        advance()
        mlp = fit_global_mlp(meta, data)
        advance()
    timings["baselines"] = _since(t)

    t = time.perf_counter()
    with progress.stage("K-shot evaluation on meta-test blocks"):
        kshot = kshot_table({"proposed": learner, "zero-shot": learner, "maml": maml,
                             "mlp-ft": mlp}, data, meta)
        write_csv(out / "kshot.csv", kshot)
    timings["kshot"] = _since(t)

    t = time.perf_counter()
    with progress.stage(f"adapting every block (K = {meta.map_k})"):
        block_models = adapt_all_blocks(learner, data, meta.map_k, meta.seed)
        block_models.save(models_dir)
        write_csv(out / "block_models.csv", block_table(block_models, stage))
    timings["adapt"] = _since(t)

    paths = {"models": models_dir, "kshot": out / "kshot.csv"}
    if factors_path is not None:
        t = time.perf_counter()
        n_valid = int((stage.blocks.labels >= 0).sum())
        with progress.stage("block-wise susceptibility map", total=n_valid) as advance:
            paths["susceptibility"] = mapping.predict_blockwise_raster(
                block_models, data.encoder, factors_path, out / "blocks.tif",
                out / "susceptibility.tif",
                window_size=window_size or config.output.window_size,
                overviews=config.output.overviews, progress=lambda new, _d: advance(new),
                compute=compute)
        timings["map"] = _since(t)
    metrics = meta_metrics(config, data, learner, block_models, kshot, timings)
    if tuning is not None:
        metrics["tuning"] = {
            "chosen": tuning.best_name, "settings": tuning.best,
            "inner_train_blocks": tuning.inner_train_blocks.tolist(),
            "inner_validation_blocks": tuning.inner_validation_blocks.tolist(),
            "seconds": tuning.seconds, "search": tuning.table.to_dict("records")}
        paths["tuning"] = out / "tuning.csv"
    return MetaResult(learner, block_models, kshot, metrics, timings, paths)


def block_table(models: BlockModels, stage: BlockStage) -> pd.DataFrame:
    """Per block: the rule used (adapted / intermediate / similar-block), why, shots, split."""
    table = pd.DataFrame(models.block_table())
    split = stage.tasks.set_index("block")["split"]
    table["split"] = table["block"].map(split)
    return table


def meta_metrics(config: StudyAreaConfig, data: MetaData, learner: MetaLearner,
                 block_models: BlockModels | None, kshot: pd.DataFrame,
                 timings: dict[str, float]) -> dict:
    meta = _meta(config)
    out = {
        "model": META_MODEL,
        "settings": {k: (list(v) if isinstance(v, tuple) else v)
                     for k, v in meta.__dict__.items()},
        "features": data.encoder.feature_names,
        "blocks": {"total": data.n_blocks, "meta_train": int(data.train_blocks.size),
                   "meta_test": int(data.test_blocks.size),
                   "meta_train_samples": int(data.train.sum()),
                   "meta_test_samples": int(data.test.sum())},
        "kshot": kshot.to_dict("records"),
        "meta_loss": {"first": _finite(learner.meta_loss_[:50].mean()),
                      "last": _finite(learner.meta_loss_[-50:].mean())}
        if learner.meta_loss_.size else {},
        "pretrain_history": learner.pretrain_history_,
        "step_sizes": {k: {"mean": float(v.mean()), "min": float(v.min()),
                           "max": float(v.max())} for k, v in learner.step_sizes.items()},
        "timings_s": timings,
    }
    if block_models is not None:
        rules = pd.Series(block_models.rule).value_counts()
        out["block_rules"] = {str(k): int(v) for k, v in rules.items()}
        out["map_k"] = str(block_models.k)
    return out


def _finite(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


# --------------------------------------------------------------------------- CLI steps


def prepare_stage(config: StudyAreaConfig, out: Path, progress: RunProgress
                  ) -> tuple[BlockStage, Any]:
    """Blocks of ``config`` (and, for rasters, the factor stack written to factors.tif)."""
    from metalsm.pipeline._blocks import prepare_blocks

    _meta(config)
    out.mkdir(parents=True, exist_ok=True)
    return prepare_blocks(config, out, progress)


@contextmanager
def _step_stage(config: StudyAreaConfig, out: Path, show_progress: bool
                ) -> Iterator[tuple[RunProgress, Any, MetaData, Path]]:
    """(progress, factor stack, encoded samples, models folder) of a CLI step: the
    blocks prepared in ``out``, the encoder saved in ``out/models``."""
    with RunProgress(enabled=show_progress) as progress:
        stage, stack = prepare_stage(config, out, progress)
        data = meta_data(stage)
        yield progress, stack, data, prepare_models_dir(out, data.encoder)


def pretrain_step(config: StudyAreaConfig, out: str | Path, *, show_progress: bool = True
                  ) -> dict[str, Any]:
    """``metalsm pretrain``: blocks, then RBM/RBM/DAE weights into ``out/models``."""
    meta = _meta(config)
    out = Path(out)
    with _step_stage(config, out, show_progress) as (progress, stack, data, models):
        unl = unlabelled_features(stack, meta, data.encoder)
        t = time.perf_counter()
        with progress.stage("pretraining (RBM, RBM, DAE)"):
            result = pretrain_state(meta, data, unl)
        seconds = _since(t)
        path = save_pretrained(result, meta, models)
    return {"path": path, "seconds": seconds,
            "errors": {k: (v[0], v[-1]) for k, v in result.history.items()}}


def metatrain_step(config: StudyAreaConfig, out: str | Path, *, show_progress: bool = True
                   ) -> dict[str, Any]:
    """``metalsm metatrain``: the intermediate model into ``out/models`` (uses
    ``pretrained.pt`` there when present, else pretrains first if ``[meta] pretrain``)."""
    from metalsm.models.blockwise import save_intermediate

    meta = _meta(config)
    out = Path(out)
    with _step_stage(config, out, show_progress) as (progress, stack, data, models):
        pretrained = load_pretrained(models) if meta.pretrain else None
        needs_pretraining = meta.pretrain and pretrained is None
        unl = unlabelled_features(stack, meta, data.encoder) if needs_pretraining else None
        t = time.perf_counter()
        with progress.stage(f"meta-training ({meta.iterations} iterations)"):
            learner = fit_intermediate(config, data, unl, pretrained)
        seconds = _since(t)
        path = save_intermediate(learner, models, data.encoder.feature_names)
    return {"path": path, "seconds": seconds, "used_saved_pretraining": pretrained is not None,
            "meta_loss": (float(learner.meta_loss_[:50].mean()),
                          float(learner.meta_loss_[-50:].mean()))
            if learner.meta_loss_.size else None}


def adapt_step(config: StudyAreaConfig, out: str | Path, k: str | None = None, *,
               show_progress: bool = True) -> dict[str, Any]:
    """``metalsm adapt``: load ``out/models`` intermediate model, adapt every block with K
    samples, save the block models, and (rasters) write susceptibility.tif and zones."""
    meta = _meta(config)
    out = Path(out)
    k = k or meta.map_k
    if not (str(k).isdigit() and int(k) >= 1) and k not in ("half", "all"):
        raise MetalsmInputError(f"--k must be a positive integer, 'half' or 'all', got {k!r}")
    models = out / "models"
    learner, names = load_intermediate(models)
    encoder = FactorEncoder.load(models / "encoder.json")
    if names != encoder.feature_names:
        raise MetalsmInputError(f"{models}: intermediate model and encoder.json disagree")
    paths: dict[str, Path] = {}
    with RunProgress(enabled=show_progress) as progress:
        stage, _ = prepare_stage(config, out, progress)
        data = meta_data(stage, encoder)
        t = time.perf_counter()
        with progress.stage(f"adapting every block (K = {k})"):
            block_models = adapt_all_blocks(learner, data, k, meta.seed)
            block_models.save(models)
            write_csv(out / "block_models.csv", block_table(block_models, stage))
        seconds = {"adapt": _since(t)}
        paths["models"] = models
        if config.table is None:
            t = time.perf_counter()
            paths.update(write_blockwise_map(config, block_models, encoder, out))
            seconds["map"] = _since(t)
    rules = pd.Series(block_models.rule).value_counts().to_dict()
    return {"paths": paths, "seconds": seconds, "rules": rules}


def write_blockwise_map(config: StudyAreaConfig, block_models: BlockModels,
                        encoder: FactorEncoder, out: Path,
                        progress: Callable[[int, int], Any] | None = None,
                        compute: Any = None) -> dict[str, Path]:
    """susceptibility.tif from out/factors.tif + out/blocks.tif, then zones.tif/zones.csv.

    ``compute`` (:func:`metalsm.scale.compute_context`): predict the windows over Dask.
    """
    sus = mapping.predict_blockwise_raster(
        block_models, encoder, out / "factors.tif", out / "blocks.tif",
        out / "susceptibility.tif", window_size=config.output.window_size,
        overviews=config.output.overviews, progress=progress, compute=compute)
    edges = mapping.zone_breaks(sus, method=config.zones.method, levels=config.zones.levels,
                                seed=config.model.seed)
    zones = mapping.classify_raster(sus, out / "zones.tif", edges)
    return {"susceptibility": sus, "zones": zones}


def _since(t: float) -> float:
    return round(time.perf_counter() - t, 3)
