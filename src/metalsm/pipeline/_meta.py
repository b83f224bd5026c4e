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

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from metalsm import mapping
from metalsm.atomic import atomic_path, write_csv, write_json
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
    MetaNet,
    flush_denormals,
    init_params,
    torch_threads,
)
from metalsm.models.pretrain import PretrainConfig, PretrainResult, pretrain_network
from metalsm.models.tuning import TuningResult, tune_learner
from metalsm.pipeline._blocks import BlockStage
from metalsm.progress import RunProgress

__all__ = [
    "FactorEncoder",
    "GLOBAL_BATCH",
    "GLOBAL_EPOCHS",
    "GLOBAL_LR",
    "META_MODEL",
    "METHODS",
    "MetaData",
    "MetaResult",
    "adapt_all_blocks",
    "adapt_step",
    "block_table",
    "fit_global_mlp",
    "fit_intermediate",
    "fit_plain_maml",
    "kshot_table",
    "load_pretrained",
    "make_learner",
    "meta_data",
    "meta_metrics",
    "metatrain_step",
    "prepare_models_dir",
    "prepare_stage",
    "pretrain_state",
    "pretrain_step",
    "run_meta_stage",
    "save_pretrained",
    "tune_settings",
    "unlabelled_cells",
    "unlabelled_features",
    "write_blockwise_map",
]

log = logging.getLogger(__name__)

META_MODEL = "meta-blockwise"
METHODS = ("proposed", "zero-shot", "maml", "mlp-ft")
#: Global-MLP baseline: Adam on all meta-train samples (fixed, not tuned on meta-test).
GLOBAL_EPOCHS = 60
GLOBAL_LR = 1e-3
GLOBAL_BATCH = 64


# --------------------------------------------------------------------------- encoding


@dataclass(frozen=True)
class FactorEncoder:
    """Raw factor values -> the network's feature matrix.

    ``categories[name]`` lists the class codes of a categorical factor (from the
    samples); each becomes a 0/1 column ``name=code``. A code not in the list (a map
    cell of a class no sample has) gets all zeros. A missing value stays NaN.
    """

    factor_names: tuple[str, ...]
    categories: dict[str, tuple[float, ...]] = field(default_factory=dict)

    @classmethod
    def from_samples(cls, frame: pd.DataFrame, factor_names: Sequence[str],
                     categorical: Sequence[str]) -> FactorEncoder:
        cats = {}
        for name in categorical:
            values = frame[name].to_numpy(dtype=np.float64)
            cats[name] = tuple(float(v) for v in np.unique(values[np.isfinite(values)]))
        return cls(tuple(factor_names), cats)

    @property
    def feature_names(self) -> list[str]:
        out: list[str] = []
        for name in self.factor_names:
            if name in self.categories:
                out += [f"{name}={_code(c)}" for c in self.categories[name]]
            else:
                out.append(name)
        return out

    def transform(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """``[n, n_factors]`` raw values (columns in ``factor_names`` order) -> features."""
        if isinstance(X, pd.DataFrame):
            missing = [n for n in self.factor_names if n not in X.columns]
            if missing:
                raise MetalsmInputError(f"factor column(s) {missing} missing from the table")
            X = X[list(self.factor_names)].to_numpy(dtype=np.float64)
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.factor_names):
            raise MetalsmInputError(
                f"expected {len(self.factor_names)} factor columns, got shape {X.shape}")
        parts = []
        for j, name in enumerate(self.factor_names):
            col = X[:, j]
            if name in self.categories:
                codes = np.asarray(self.categories[name], dtype=np.float64)
                onehot = (col[:, None] == codes[None, :]).astype(np.float64)
                onehot[~np.isfinite(col)] = np.nan
                parts.append(onehot)
            else:
                parts.append(col[:, None])
        return np.hstack(parts) if parts else np.zeros((X.shape[0], 0))

    def to_dict(self) -> dict[str, Any]:
        return {"factor_names": list(self.factor_names),
                "categories": {k: list(v) for k, v in self.categories.items()},
                "feature_names": self.feature_names}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FactorEncoder:
        return cls(tuple(raw["factor_names"]),
                   {k: tuple(float(c) for c in v) for k, v in raw["categories"].items()})

    def save(self, path: str | Path) -> Path:
        return write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> FactorEncoder:
        path = Path(path)
        if not path.exists():
            raise MetalsmInputError(f"no factor encoder at {path} (run `metalsm metatrain`)")
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


def _code(c: float) -> str:
    return str(int(c)) if float(c).is_integer() else f"{c:g}"


# --------------------------------------------------------------------------- data


@dataclass
class MetaData:
    """Encoded samples of a block stage and the meta-train / meta-test split."""

    encoder: FactorEncoder
    X: np.ndarray
    y: np.ndarray
    blocks: np.ndarray
    n_blocks: int
    train_blocks: np.ndarray
    test_blocks: np.ndarray
    centres: np.ndarray
    #: raw factor table (factor columns, as the samples hold them), for the classic models
    table: pd.DataFrame | None = None
    categorical: tuple[str, ...] = ()
    coords: np.ndarray | None = None
    #: results computed once per data value (e.g. pretraining per seed in the experiments)
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def train(self) -> np.ndarray:
        return np.isin(self.blocks, self.train_blocks)

    @property
    def test(self) -> np.ndarray:
        return np.isin(self.blocks, self.test_blocks)


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


def make_learner(meta: MetaConfig, *, plain: bool = False, seed: int | None = None
                 ) -> MetaLearner:
    """The :class:`MetaLearner` of ``[meta]`` (``plain``: the plain-MAML baseline)."""
    return MetaLearner(
        hidden=tuple(meta.hidden), activation=meta.activation,
        normalization=meta.normalization, inner_lr=meta.inner_lr,
        inner_steps=meta.inner_steps, inner_lr_mode=meta.inner_lr_mode,
        adapt_biases=meta.adapt_biases, meta_batch=meta.meta_batch, outer_lr=meta.meta_lr,
        iterations=meta.iterations, k_support=meta.k_support, k_query=meta.k_query,
        support_rule=meta.support_rule,
        task_weighting="uniform" if plain else meta.task_weighting,
        first_order=meta.first_order, balanced=meta.balanced, adapt_guard=meta.adapt_guard,
        guard_steps=tuple(meta.guard_steps),
        pretrain=False if plain else (_pretrain_config(meta) if meta.pretrain else False),
        seed=meta.seed if seed is None else seed,
    )


def _pretrain_config(meta: MetaConfig) -> PretrainConfig:
    return PretrainConfig(epochs=meta.pretrain_epochs, rbm_lr=meta.rbm_lr, dae_lr=meta.dae_lr)


def pretrain_state(meta: MetaConfig, data: MetaData, X_unlabelled: np.ndarray | None = None,
                   seed: int | None = None) -> PretrainResult:
    """Greedy RBM/RBM/DAE pretraining on every sample vector (labels unused) and the
    optional unlabelled cells, standardized with the meta-train mean/std -- exactly
    the start :meth:`MetaLearner.fit` would pretrain itself from the same seed."""
    seed = meta.seed if seed is None else seed
    Xtr = data.X[data.train]
    mean, std = Xtr.mean(0), Xtr.std(0)
    std = np.where(std > 0, std, 1.0)
    unl = data.X if X_unlabelled is None else np.vstack([data.X, X_unlabelled])
    unl = ((unl - mean) / std).astype(np.float32)
    gen = torch.Generator().manual_seed(int(seed))
    init_params(MetaNet(data.X.shape[1], meta.hidden), gen)  # same generator state as fit
    with flush_denormals():
        return pretrain_network(unl, meta.hidden, _pretrain_config(meta), gen)


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


#: Learner parameter names that ``[meta]`` spells differently.
_CONFIG_NAMES = {"outer_lr": "meta_lr"}


def tune_settings(meta: MetaConfig, data: MetaData, pretrained: PretrainResult | None
                  ) -> tuple[MetaConfig, TuningResult]:
    """``[meta] tune``: nested validation on the meta-train blocks only
    (:func:`metalsm.models.tuning.tune_learner`); returns ``meta`` with the chosen
    settings and the search."""
    train = data.train
    result = tune_learner(make_learner(meta), data.X[train], data.y[train],
                          data.blocks[train],
                          init_state=pretrained.state if pretrained is not None else None,
                          budget_s=meta.tune_budget_s, seed=meta.seed)
    chosen = {_CONFIG_NAMES.get(k, k): v for k, v in result.best.items()}
    return replace(meta, **chosen), result


def fit_plain_maml(meta: MetaConfig, data: MetaData, seed: int | None = None) -> MetaLearner:
    learner = make_learner(meta, plain=True, seed=seed)
    train = data.train
    return learner.fit(data.X[train], data.y[train], groups=data.blocks[train])


def fit_global_mlp(meta: MetaConfig, data: MetaData, seed: int | None = None,
                   init_state: dict[str, torch.Tensor] | None = None) -> MetaLearner:
    """The same network trained on all meta-train samples as one task (plain supervised
    Adam, ``GLOBAL_EPOCHS`` epochs), wrapped as a MetaLearner so it is fine-tuned per
    block with exactly the inner loop of the meta-learned models. ``init_state``
    (e.g. RBM/RBM/DAE pretrained hidden layers) replaces the seeded initialisation
    of those layers (the "RL-based" transfer baseline)."""
    seed = meta.seed if seed is None else seed
    train = data.train
    learner = make_learner(meta, plain=True, seed=seed).set_params(iterations=0)
    learner.fit(data.X[train], data.y[train], groups=np.zeros(int(train.sum())),
                init_state=init_state)
    Xs = torch.as_tensor(learner._standardize(data.X[train]))
    ys = torch.as_tensor(data.y[train].astype(np.float32))
    net = learner.net_
    params = {k: v.clone().requires_grad_(True) for k, v in learner.params_.items()}
    opt = torch.optim.Adam(params.values(), lr=GLOBAL_LR)
    gen = torch.Generator().manual_seed(int(seed) + 1)
    with flush_denormals(), torch_threads():
        _train_global(net, params, opt, Xs, ys, gen)
    learner.params_ = {k: v.detach().clone() for k, v in params.items()}
    net.load_state_dict(learner.params_)
    return learner


def _train_global(net, params, opt, Xs, ys, gen) -> None:
    for _ in range(GLOBAL_EPOCHS):
        order = torch.randperm(ys.numel(), generator=gen)
        for s in range(0, ys.numel(), GLOBAL_BATCH):
            idx = order[s:s + GLOBAL_BATCH]
            logits = torch.func.functional_call(net, params, (Xs[idx],))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, ys[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


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


def save_pretrained(result: PretrainResult, meta: MetaConfig, directory: Path) -> Path:
    pt = directory / "pretrained.pt"
    with atomic_path(pt) as tmp:
        torch.save({k: v.contiguous() for k, v in result.state.items()}, tmp)
    write_json(directory / "pretrained.json", {
        "hidden": list(meta.hidden), "seed": meta.seed, "epochs": meta.pretrain_epochs,
        "rbm_lr": meta.rbm_lr, "dae_lr": meta.dae_lr, "history": result.history})
    return pt


def load_pretrained(directory: Path) -> PretrainResult | None:
    pt, js = directory / "pretrained.pt", directory / "pretrained.json"
    if not pt.exists() or not js.exists():
        return None
    history = json.loads(js.read_text(encoding="utf-8")).get("history", {})
    return PretrainResult(torch.load(pt, weights_only=True), history)


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


def pretrain_step(config: StudyAreaConfig, out: str | Path, *, show_progress: bool = True
                  ) -> dict[str, Any]:
    """``metalsm pretrain``: blocks, then RBM/RBM/DAE weights into ``out/models``."""
    meta = _meta(config)
    out = Path(out)
    with RunProgress(enabled=show_progress) as progress:
        stage, stack = prepare_stage(config, out, progress)
        data = meta_data(stage)
        models = prepare_models_dir(out, data.encoder)
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
    with RunProgress(enabled=show_progress) as progress:
        stage, stack = prepare_stage(config, out, progress)
        data = meta_data(stage)
        models = prepare_models_dir(out, data.encoder)
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
