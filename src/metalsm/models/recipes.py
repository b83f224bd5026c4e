"""Learners built from the ``[meta]`` settings and the factor encoding they share: the
meta-learned network (pretrained and tuned when asked), the plain-MAML and global-MLP
baselines, and pretrained weights saved beside a run."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from metalsm.atomic import atomic_path, write_json
from metalsm.config import MetaConfig
from metalsm.errors import MetalsmInputError
from metalsm.models.meta import (
    MetaLearner,
    MetaNet,
    flush_denormals,
    init_params,
    torch_threads,
)
from metalsm.models.pretrain import PretrainConfig, PretrainResult, pretrain_network
from metalsm.models.tuning import TuningResult, tune_learner

__all__ = [
    "FactorEncoder",
    "GLOBAL_BATCH",
    "GLOBAL_EPOCHS",
    "GLOBAL_LR",
    "MetaData",
    "fit_global_mlp",
    "fit_plain_maml",
    "load_pretrained",
    "make_learner",
    "pretrain_state",
    "save_pretrained",
    "tune_settings",
]


#: Global-MLP baseline: Adam on all meta-train samples (fixed, not tuned on meta-test).
GLOBAL_EPOCHS = 60
GLOBAL_LR = 1e-3
GLOBAL_BATCH = 64


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
