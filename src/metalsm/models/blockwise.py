"""Block-wise few-shot models: one adapted copy of the intermediate model per block.

:func:`adapt_blocks` takes a fitted :class:`~metalsm.models.meta.MetaLearner` (the
meta-learned intermediate model) and, for every block ``0..n_blocks-1``, adapts it with
K labelled samples of that block (``k`` = an int such as 1 or 5, ``"half"`` of the
block's labelled samples, or ``"all"``), drawn by the learner's ``support_rule``
(``random``: a uniform subset, so the shots carry the block's landslide share;
``stratified``: integer K alternates the classes, "half" takes half of each class),
``inner_steps`` steps of the learner's (meta-learned) step sizes -- all blocks at once
under ``vmap`` (padded support sets).

Adaptation that cannot make things worse (``learner.adapt_guard``): a block keeps the
intermediate model (``reason="guard"``) unless the model adapted without each fold of
its own support predicts that fold better than the intermediate model does
(:func:`adaptation_helps`; K = 1 cannot be checked, so it stays zero-shot).

Fallbacks, recorded per block in ``rule``/``reason``/``source_block``:

* no labelled sample in the block (``reason="no-samples"``), or a single class while the
  class-balanced loss is off (``reason="single-class"``; the paper's failure mode: an
  all-positive support set teaches "always positive"). Both are judged on all the
  labelled samples of the block, not on the K drawn (at K = 1 every support set holds
  one class by construction);
* then the block uses the adapted model of the most similar adapted block by centre
  features when ``centres`` are given (``rule="similar-block"``), otherwise the
  intermediate model (``rule="intermediate"``).

:class:`BlockModels` predicts a table of cells with their block ids (cells are grouped
by block; one forward pass per block model), and saves/loads everything needed to
re-make a map without retraining: ``intermediate.pt`` + ``intermediate.json``
(factor names, normalization mean/std, architecture, seed) and ``blocks.pt`` (stacked
block state dicts) + ``blocks.json`` (per block: id, rule, reason, source, K, shots).
Files are written atomically.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.func import functional_call

from metalsm.atomic import atomic_path, write_json
from metalsm.errors import MetalsmInputError
from metalsm.models.meta import (
    MetaLearner,
    MetaNet,
    Params,
    TaskIndex,
    adapt_batch,
    adapt_batch_path,
    batch_logits,
    init_step_sizes,
    support_query,
)

__all__ = ["BlockModels", "adapt_blocks", "draw_support", "load_intermediate",
           "save_intermediate"]

_FORMAT = "metalsm-blockwise-1"
_CHUNK = 65536
#: Step-size entries are saved beside the weights in ``intermediate.pt`` under this prefix.
_LR_PREFIX = "inner_lr:"
#: At most this many folds in the adaptation guard's cross-validation (leave-one-out
#: below it).
GUARD_FOLDS = 10


def _arch(learner: MetaLearner) -> dict[str, Any]:
    return {"n_inputs": int(learner.n_features_in_), "hidden": [int(h) for h in learner.hidden],
            "activation": learner.activation, "normalization": learner.normalization}


def _net(arch: dict[str, Any]) -> MetaNet:
    return MetaNet(arch["n_inputs"], arch["hidden"], arch["activation"], arch["normalization"])


def _learner_meta(learner: MetaLearner, factor_names: Sequence[str] | None) -> dict[str, Any]:
    names = list(factor_names) if factor_names is not None else [
        f"x{i}" for i in range(learner.n_features_in_)]
    if len(names) != learner.n_features_in_:
        raise MetalsmInputError(
            f"{len(names)} factor names for a model of {learner.n_features_in_} factors")
    params = {k: v for k, v in learner.get_params().items() if k != "pretrain"}
    params["hidden"] = [int(h) for h in params["hidden"]]
    params["pretrain"] = learner.pretrain is not False
    return {"format": _FORMAT, "factor_names": names, "mean": learner.mean_.tolist(),
            "std": learner.std_.tolist(), "arch": _arch(learner), "seed": int(learner.seed),
            "learner_params": params}


def save_intermediate(learner: MetaLearner, directory: str | Path,
                      factor_names: Sequence[str] | None = None) -> Path:
    """Write ``intermediate.pt`` (state dict) and ``intermediate.json``; returns the .pt path."""
    directory = Path(directory)
    pt = directory / "intermediate.pt"
    state = {k: v.contiguous() for k, v in learner.params_.items()}
    state.update({_LR_PREFIX + k: v.contiguous() for k, v in learner.step_sizes.items()})
    with atomic_path(pt) as tmp:
        torch.save(state, tmp)
    write_json(directory / "intermediate.json", _learner_meta(learner, factor_names))
    return pt


def load_intermediate(directory: str | Path) -> tuple[MetaLearner, list[str]]:
    """A fitted :class:`MetaLearner` (intermediate model) and its factor names."""
    directory = Path(directory)
    meta_path, pt = directory / "intermediate.json", directory / "intermediate.pt"
    if not meta_path.exists() or not pt.exists():
        raise MetalsmInputError(f"no saved intermediate model in {directory} "
                                "(expected intermediate.pt and intermediate.json)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != _FORMAT:
        raise MetalsmInputError(f"{meta_path} is not a metalsm block-wise model file")
    params = dict(meta["learner_params"])
    params["hidden"] = tuple(params["hidden"])
    learner = MetaLearner(**params)
    learner.n_features_in_ = meta["arch"]["n_inputs"]
    learner.classes_ = np.array([0, 1])
    learner.mean_ = np.asarray(meta["mean"], dtype=np.float64)
    learner.std_ = np.asarray(meta["std"], dtype=np.float64)
    learner.net_ = _net(meta["arch"])
    state = torch.load(pt, weights_only=True)
    lrs = {k[len(_LR_PREFIX):]: v for k, v in state.items() if k.startswith(_LR_PREFIX)}
    learner.net_.load_state_dict({k: v for k, v in state.items()
                                  if not k.startswith(_LR_PREFIX)})
    learner.params_ = {k: v.detach().clone() for k, v in learner.net_.named_parameters()}
    learner.inner_lrs_ = lrs or init_step_sizes(learner.params_, "fixed", learner.inner_lr)
    learner.adapted_ = {}
    learner.meta_loss_ = np.zeros(0)
    learner.pretrain_history_ = {}
    return learner, list(meta["factor_names"])


@dataclass
class BlockModels:
    """The intermediate model plus one model per block, with the rule each block used.

    ``model_index[b]`` is the row of ``stacked`` block b predicts with (-1: the
    intermediate model). ``support_samples`` (not saved) are the indices of the input
    samples used as shots, so evaluation can leave them out.
    """

    learner: MetaLearner
    factor_names: list[str]
    stacked: Params
    model_index: np.ndarray
    rule: list[str]
    reason: list[str]
    source_block: np.ndarray
    n_support: np.ndarray
    k: int | str
    seed: int
    support_samples: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    #: adaptation steps each block's own model took (0: zero-shot or a fallback)
    n_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        if self.n_steps.size != self.model_index.size:
            self.n_steps = np.zeros(self.model_index.size, dtype=np.int64)

    @property
    def n_blocks(self) -> int:
        return int(self.model_index.size)

    def block_table(self) -> list[dict[str, Any]]:
        """One record per block: id, rule, reason, source block, shots used."""
        return [{"block": b, "rule": self.rule[b], "reason": self.reason[b],
                 "source_block": int(self.source_block[b]), "n_support": int(self.n_support[b]),
                 "n_steps": int(self.n_steps[b])}
                for b in range(self.n_blocks)]

    def predict_proba(self, X: Any, block_ids: Any) -> np.ndarray:
        """P(landslide) per row by its block's model; NaN for block id -1 or non-finite rows."""
        X = np.asarray(X, dtype=np.float64)
        ids = np.asarray(block_ids, dtype=np.int64).ravel()
        if X.ndim != 2 or X.shape[0] != ids.size:
            raise MetalsmInputError(f"X {X.shape} and block ids ({ids.size}) must agree")
        if ids.size and ids.max() >= self.n_blocks:
            raise MetalsmInputError(f"block id {ids.max()} >= number of blocks {self.n_blocks}")
        out = np.full(ids.size, np.nan)
        ok = np.flatnonzero((ids >= 0) & np.isfinite(X).all(axis=1))
        if ok.size == 0:
            return out
        model = self.model_index[ids[ok]]
        order = np.argsort(model, kind="stable")
        rows, model = ok[order], model[order]
        cut = np.flatnonzero(np.r_[True, model[1:] != model[:-1], True])
        Xs = torch.as_tensor(self.learner._standardize(X[rows]))
        net = self.learner.net_
        logits = torch.empty(rows.size)
        with torch.no_grad():
            for a, b in zip(cut[:-1], cut[1:], strict=True):
                m = int(model[a])
                params = self.learner.params_ if m < 0 else {
                    k: v[m] for k, v in self.stacked.items()}
                # transductive batch norm: a block's rows are one batch (no chunks)
                chunk = b - a if net.transductive else _CHUNK
                for s in range(a, b, chunk):
                    e = min(b, s + chunk)
                    logits[s:e] = functional_call(net, params, (Xs[s:e],))
        out[rows] = torch.sigmoid(logits).double().numpy()
        return out

    def save(self, directory: str | Path) -> Path:
        """Write the intermediate model and all block models with metadata; returns the dir."""
        directory = Path(directory)
        save_intermediate(self.learner, directory, self.factor_names)
        with atomic_path(directory / "blocks.pt") as tmp:
            torch.save({"stacked": {k: v.contiguous() for k, v in self.stacked.items()},
                        "model_index": torch.as_tensor(self.model_index)}, tmp)
        meta = _learner_meta(self.learner, self.factor_names)
        meta.update(k=self.k, adapt_seed=self.seed, n_blocks=self.n_blocks,
                    blocks=self.block_table())
        write_json(directory / "blocks.json", meta)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> BlockModels:
        """Re-load what :meth:`save` wrote (predictions are identical)."""
        directory = Path(directory)
        learner, names = load_intermediate(directory)
        meta_path = directory / "blocks.json"
        if not meta_path.exists():
            raise MetalsmInputError(f"no block models in {directory} (blocks.json missing)")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        saved = torch.load(directory / "blocks.pt", weights_only=True)
        table = meta["blocks"]
        return cls(
            learner=learner, factor_names=names, stacked=saved["stacked"],
            model_index=saved["model_index"].numpy().astype(np.int64),
            rule=[r["rule"] for r in table], reason=[r["reason"] for r in table],
            source_block=np.array([r["source_block"] for r in table], dtype=np.int64),
            n_support=np.array([r["n_support"] for r in table], dtype=np.int64),
            k=meta["k"], seed=int(meta["adapt_seed"]),
            n_steps=np.array([r.get("n_steps", 0) for r in table], dtype=np.int64),
        )


def _is_share(k: int | str) -> bool:
    """K given as a share of the block ("half", "all"): drawn in proportion to the
    classes, so the rest of the block (its query) keeps both classes too."""
    return k in ("half", "all")


def _shots(k: int | str, n: np.ndarray) -> np.ndarray:
    if k == "all":
        return n.copy()
    if k == "half":
        return np.where(n > 0, np.maximum(1, n // 2), 0)
    if isinstance(k, str) or int(k) < 1:
        raise MetalsmInputError(f"k must be a positive int, 'half' or 'all', got {k!r}")
    return np.minimum(int(k), n)


def adapt_blocks(
    learner: MetaLearner,
    X: Any,
    y: Any,
    sample_blocks: Any,
    k: int | str = 5,
    *,
    n_blocks: int | None = None,
    centres: np.ndarray | None = None,
    factor_names: Sequence[str] | None = None,
    seed: int = 0,
    support: Any = None,
) -> BlockModels:
    """Adapt the intermediate model to every block from K labelled samples (vmap over blocks).

    ``sample_blocks`` is the block id of each labelled sample (-1: outside every block).
    ``centres`` [n_blocks, d] (e.g. ``Blocks.centres``) enables the similar-block fallback;
    columns are z-scored before distances are taken. ``support`` (optional boolean mask
    over the samples) gives the shots instead of drawing K: each block adapts from its
    samples in the mask, and a block with none falls back (``reason="no-support"``);
    :func:`draw_support` draws such a mask exactly as the K draw here does.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y).astype(np.float32).ravel()
    ids = np.asarray(sample_blocks, dtype=np.int64).ravel()
    if X.shape[0] != y.size or ids.size != y.size:
        raise MetalsmInputError(f"X {X.shape}, y ({y.size}) and block ids ({ids.size}) differ")
    n_blocks = int(n_blocks if n_blocks is not None else (ids.max(initial=-1) + 1))
    if ids.size and ids.max() >= n_blocks:
        raise MetalsmInputError(f"sample block id {ids.max()} >= number of blocks {n_blocks}")
    inside = ids >= 0
    Xs = learner._standardize(X)
    codes = np.where(inside, ids, n_blocks)  # outside samples go to a spare task, never used
    index = TaskIndex.build(codes, n_blocks + 1)
    n = index.counts[:n_blocks]
    pos = np.bincount(ids[inside & (y == 1)], minlength=n_blocks)
    single = (n > 0) & ((pos == 0) | (pos == n))
    usable = (n > 0) & (~single | learner.balanced)
    given = support is not None
    if given:
        chosen = np.asarray(support, dtype=bool).ravel() & inside
        if chosen.size != y.size:
            raise MetalsmInputError(f"support mask ({chosen.size}) and samples ({y.size}) differ")
        shots = np.bincount(ids[chosen], minlength=n_blocks)
        unsupported = usable & (shots == 0)
        usable &= shots > 0
    else:
        shots = _shots(k, n)
    blocks = np.flatnonzero(usable)

    rng = np.random.default_rng(seed)
    stacked: Params = {}
    support = np.zeros(0, dtype=np.int64)
    guarded = np.zeros(0, dtype=np.int64)
    n_steps = np.zeros(n_blocks, dtype=np.int64)
    if blocks.size:
        if given:
            idx, mask = _given_support(chosen & usable[np.where(inside, ids, 0)] & inside,
                                       ids, blocks)
        else:
            drawn = support_query(index, y, blocks, shots[blocks], 0, rng,
                                  proportional=_is_share(k), rule=learner.support_rule)
            idx, mask = drawn["support_idx"], drawn["support_mask"]
        xs = torch.as_tensor(np.where(mask[..., None], Xs[idx], 0.0).astype(np.float32))
        ys = torch.as_tensor(np.where(mask, y[idx], 0.0).astype(np.float32))
        ms = torch.as_tensor(mask)
        support = np.sort(idx[mask])
        if learner.adapt_guard:
            block_steps = choose_steps(learner, xs, ys, ms)
            stacked = _at_steps(learner, xs, ys, ms, block_steps)
            guarded = blocks[block_steps == 0]
        else:
            block_steps = np.full(blocks.size, learner.inner_steps)
            stacked = _adapt(learner, xs, ys, ms)
        n_steps[blocks] = block_steps

    model_index = np.full(n_blocks, -1, dtype=np.int64)
    model_index[blocks] = np.arange(blocks.size)
    source = np.full(n_blocks, -1, dtype=np.int64)
    source[blocks] = blocks
    rule = np.where(usable, "adapted", "intermediate").astype(object)
    reason = np.where(n == 0, "no-samples", np.where(usable, "", "single-class")).astype(object)
    if given:
        reason[unsupported] = "no-support"
    if guarded.size:  # adapted, but no better than zero-shot on its own support
        model_index[guarded] = -1
        rule[guarded], reason[guarded] = "intermediate", "guard"
    n_support = np.where(usable, shots, 0)
    fallback = np.flatnonzero(~usable)
    blocks = np.setdiff1d(blocks, guarded)
    if centres is not None and fallback.size and blocks.size:
        c = np.asarray(centres, dtype=np.float64)
        if c.shape[0] != n_blocks:
            raise MetalsmInputError(f"centres has {c.shape[0]} rows for {n_blocks} blocks")
        sd = np.nanstd(c, axis=0)
        c = np.nan_to_num((c - np.nanmean(c, axis=0)) / np.where(sd > 0, sd, 1.0))
        d = ((c[fallback, None, :] - c[None, blocks, :]) ** 2).sum(-1)
        nearest = blocks[np.argmin(d, axis=1)]
        model_index[fallback] = model_index[nearest]
        source[fallback] = nearest
        rule[fallback] = "similar-block"
    return BlockModels(
        learner=learner,
        factor_names=list(factor_names) if factor_names is not None else [
            f"x{i}" for i in range(learner.n_features_in_)],
        stacked=stacked, model_index=model_index, rule=list(rule), reason=list(reason),
        source_block=source, n_support=n_support.astype(np.int64), k=k, seed=int(seed),
        support_samples=support, n_steps=n_steps,
    )


def _adapt(learner: MetaLearner, xs: torch.Tensor, ys: torch.Tensor, ms: torch.Tensor
           ) -> Params:
    return adapt_batch(learner.net_, learner.params_, xs, ys, ms,
                       inner_lr=learner.step_sizes, steps=learner.inner_steps,
                       balanced=learner.balanced)


def _bce(logits: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, ys, reduction="none")


def step_choices(learner: MetaLearner) -> list[int]:
    """The step counts the guard compares with zero-shot (``guard_steps``, else
    ``inner_steps``), increasing."""
    return sorted({int(s) for s in (learner.guard_steps or (learner.inner_steps,))})


def choose_steps(learner: MetaLearner, xs: torch.Tensor, ys: torch.Tensor,
                 ms: torch.Tensor) -> np.ndarray:
    """Per support set, how many adaptation steps: 0 (keep the zero-shot model) or one of
    :func:`step_choices`, whichever predicts the support best by cross-validation.

    Cross-validation on the support set alone (leave-one-out, at most
    :data:`GUARD_FOLDS` folds): each fold is predicted by the model adapted on the
    other shots, and the summed log-loss of every step count is compared with the
    intermediate model's on the same shots. Adapting must be strictly better, so a
    one-shot set (nothing to check against) keeps the zero-shot model. All sets at
    once: one vmapped adaptation path per fold.
    """
    n = ms.sum(1)
    folds = torch.clamp(n, 1, GUARD_FOLDS)[:, None]
    fold = torch.arange(ms.shape[1])[None, :] % folds
    choices = step_choices(learner)
    zero_shot = batch_logits(learner.net_, {k: v.expand(ms.shape[0], *v.shape)
                                            for k, v in learner.params_.items()}, xs, ms)
    losses = torch.zeros(len(choices) + 1, ms.shape[0])
    losses[0] = (_bce(zero_shot, ys) * ms).sum(1)
    for f in range(int(folds.max())):
        held = ms & (fold == f)
        path = adapt_batch_path(learner.net_, learner.params_, xs, ys, ms & ~held, choices,
                                inner_lr=learner.step_sizes, balanced=learner.balanced)
        for c, adapted in enumerate(path, start=1):
            losses[c] += (_bce(batch_logits(learner.net_, adapted, xs, ms), ys) * held).sum(1)
    best = losses.argmin(0).numpy()  # ties keep the earlier: zero-shot, then fewer steps
    steps = np.r_[0, choices][best]
    return np.where(n.numpy() >= 2, steps, 0)


def _at_steps(learner: MetaLearner, xs: torch.Tensor, ys: torch.Tensor, ms: torch.Tensor,
              steps: np.ndarray) -> Params:
    """Each set adapted for its own step count (0: the intermediate params)."""
    choices = step_choices(learner)
    path = adapt_batch_path(learner.net_, learner.params_, xs, ys, ms, choices,
                            inner_lr=learner.step_sizes, balanced=learner.balanced)
    pick = torch.as_tensor(np.searchsorted(choices, np.maximum(steps, choices[0])))
    rows = torch.arange(steps.size)
    return {k: torch.stack([p[k] for p in path])[pick, rows] for k in path[0]}


def _given_support(chosen: np.ndarray, ids: np.ndarray, blocks: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Padded ``[len(blocks), width]`` index/mask arrays of the chosen samples per block."""
    members = np.flatnonzero(chosen)
    slot = np.searchsorted(blocks, ids[members])
    order = np.lexsort((members, slot))
    members, slot = members[order], slot[order]
    counts = np.bincount(slot, minlength=blocks.size)
    pos = np.arange(members.size) - np.repeat(np.cumsum(counts) - counts, counts)
    width = int(max(counts.max(initial=0), 1))
    idx = np.zeros((blocks.size, width), dtype=np.int64)
    mask = np.zeros((blocks.size, width), dtype=bool)
    idx[slot, pos], mask[slot, pos] = members, True
    return idx, mask


def draw_support(y: Any, sample_blocks: Any, k: int | str, seed: int,
                 blocks: Any = None, rule: str = "stratified") -> np.ndarray:
    """Boolean mask of K stratified shots per block (the draw :func:`adapt_blocks` makes).

    Every block of ``blocks`` (default: all with samples) that holds labelled samples
    gets ``min(K, n)`` shots (``"half"``: half of its samples, at least one), drawn
    with the same stratified rule and random stream as :func:`adapt_blocks` when all
    its blocks are usable. Samples with block id -1 are never drawn. ``rule``: the
    learner's ``support_rule`` (:data:`metalsm.models.meta.SUPPORT_RULES`).
    """
    y = np.asarray(y).astype(np.float32).ravel()
    ids = np.asarray(sample_blocks, dtype=np.int64).ravel()
    inside = ids >= 0
    n_blocks = int(ids.max(initial=-1) + 1)
    codes = np.where(inside, ids, n_blocks)
    index = TaskIndex.build(codes, n_blocks + 1)
    n = index.counts[:n_blocks]
    chosen = np.arange(n_blocks) if blocks is None else np.unique(
        np.asarray(blocks, dtype=np.int64))
    chosen = chosen[(chosen < n_blocks) & (chosen >= 0)]
    chosen = chosen[n[chosen] > 0]
    out = np.zeros(y.size, dtype=bool)
    if chosen.size == 0:
        return out
    drawn = support_query(index, y, chosen, _shots(k, n)[chosen], 0,
                          np.random.default_rng(seed), proportional=_is_share(k), rule=rule)
    out[drawn["support_idx"][drawn["support_mask"]]] = True
    return out
