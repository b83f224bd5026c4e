"""The meta-learned intermediate model: functional network and weighted MAML.

Network (:class:`MetaNet`): ``n_factors -> 32 -> 32 -> 16 -> 1`` fully connected,
sigmoid hidden units (the units the RBM/DAE pretraining of
:mod:`metalsm.models.pretrain` defines, so pretrained weights mean the same thing
here), one logit out.

Normalization: **none inside the network; inputs are z-scored** with the mean/std of the
meta-training table (stored with the model). The published code used batch norm, but
a support set has 1-10 samples: with one sample batch norm's variance is 0 (output =
bias whatever the input), with a few samples its statistics are noise, and the
support-set statistics differ from the query/map statistics the adapted model is then
applied to. Fixed input standardization gives every sample the same transform at
adaptation and at mapping time, and the sigmoid units are bounded, so activations stay
tame without it. ``normalization="layernorm"`` (per-sample, batch-size free) is offered
as an alternative, but it discards each sample's overall activation magnitude and does
not match the pretrained RBM units, so it is not the default.
``normalization="batchnorm"`` is the fidelity option: **transductive** batch norm as in
the authors' code -- every hidden layer is normalized with the statistics of the set
being adapted or predicted (a support set, a block's query samples, the cells of one
block in one map window), never with stored running statistics. Its caveat: a
prediction depends on what it is predicted with. With one shot the variance is 0 and
the hidden gradients vanish (K = 1 barely moves the model, as in the authors' runs),
and a map's values change with the window size, because each window's cells of a
block form their own batch.

MAML, vectorized (:func:`meta_objective`): for each task k of a meta-batch,
``theta'_k = theta - alpha * grad L_k(support)`` for ``steps`` steps (binary
cross-entropy on the logit; masked mean, or class-balanced), then the outer loss
``sum_k w_k L_k(theta'_k; query)``. The inner loop is ``torch.func.grad`` over
``functional_call`` and the tasks run under ``torch.func.vmap``; tasks of unequal size
are padded, with per-sample weights that are 0 on padding. Second-order by default
(the outer backward differentiates through the inner gradients); ``first_order=True``
detaches them (FOMAML). Task weights (:func:`task_weights`):
``w_k = softmax_k(n_k / n_total)``, or uniform ``1/T`` (plain MAML).

:class:`MetaLearner` is the scikit-learn shell: ``fit(X, y, groups=block_ids)``
meta-trains on the groups as tasks, ``adapt`` returns adapted parameters for one
support set, ``adapt_groups`` stores one adapted model per group and
``predict_proba(X, groups=...)`` uses them where present, else the intermediate model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted
from torch import nn
from torch.func import functional_call, grad, vmap

from metalsm.errors import MetalsmInputError
from metalsm.models.pretrain import (
    TRAIN_THREADS,
    PretrainConfig,
    pretrain_network,
    torch_threads,
)

__all__ = [
    "INNER_LR_MODES",
    "SUPPORT_RULES",
    "MetaLearner",
    "NORMALIZATIONS",
    "BatchStatsNorm",
    "MetaNet",
    "TaskBatch",
    "TaskIndex",
    "adapt_batch",
    "adapt_batch_path",
    "adapt_params",
    "batch_logits",
    "flush_denormals",
    "init_params",
    "init_step_sizes",
    "inner_sample_weights",
    "make_task_batch",
    "meta_objective",
    "sample_meta_batch",
    "support_query",
    "task_weights",
    "torch_threads",
]

Params = dict[str, torch.Tensor]


# --------------------------------------------------------------------------- network


#: Hidden-layer normalizations of :class:`MetaNet` (see the module docstring).
NORMALIZATIONS = ("none", "layernorm", "batchnorm")


class BatchStatsNorm(nn.Module):
    """Batch norm that always uses the statistics of the rows it is given (transductive).

    ``mask`` (bool per row) leaves padding rows out of the mean and variance; no running
    statistics are kept, so the module is a pure function of its parameters and works
    under ``vmap``. Epsilon 1e-3, as TensorFlow's batch norm in the authors' code.
    """

    eps = 1e-3

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n_features))
        self.bias = nn.Parameter(torch.zeros(n_features))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        m = (torch.ones_like(x[..., :1]) if mask is None
             else mask.to(x.dtype).unsqueeze(-1))
        count = m.sum(-2, keepdim=True).clamp_min(1.0)
        mean = (m * x).sum(-2, keepdim=True) / count
        var = (m * (x - mean) ** 2).sum(-2, keepdim=True) / count
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


class MetaNet(nn.Module):
    """Plain MLP ``n_inputs -> hidden... -> 1`` returning one logit per row.

    Parameter names: ``hidden.{i}.weight``/``bias``, ``norms.{i}.weight``/``bias``
    (layernorm, batchnorm) and ``out.weight``/``bias`` -- the names pretraining fills
    in. ``forward(x, mask)``: ``mask`` marks the real rows of a padded set (batch norm's
    statistics skip the rest); the other normalizations ignore it.
    """

    def __init__(self, n_inputs: int, hidden: Sequence[int] = (32, 32, 16),
                 activation: str = "sigmoid", normalization: str = "none") -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise MetalsmInputError(
                f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        if normalization not in NORMALIZATIONS:
            raise MetalsmInputError(f"normalization must be one of "
                                    f"{', '.join(NORMALIZATIONS)}, got {normalization!r}")
        sizes = [int(n_inputs), *[int(h) for h in hidden]]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:],
                                                                      strict=True))
        norm = {"layernorm": nn.LayerNorm, "batchnorm": BatchStatsNorm}.get(normalization)
        self.norms = None if norm is None else nn.ModuleList(norm(h) for h in sizes[1:])
        self.transductive = normalization == "batchnorm"
        self.out = nn.Linear(sizes[-1], 1)
        self.act = _ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for i, layer in enumerate(self.hidden):
            x = layer(x)
            if self.transductive:
                x = self.norms[i](x, mask)
            elif self.norms is not None:
                x = self.norms[i](x)
            x = self.act(x)
        return self.out(x).squeeze(-1)


_ACTIVATIONS = {"sigmoid": torch.sigmoid, "relu": torch.relu, "tanh": torch.tanh}


def init_params(net: MetaNet, generator: torch.Generator) -> None:
    """Seeded default init (uniform +-1/sqrt(fan_in), as nn.Linear) of every Linear layer."""
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.Linear):
                bound = 1.0 / module.in_features ** 0.5
                module.weight.uniform_(-bound, bound, generator=generator)
                module.bias.uniform_(-bound, bound, generator=generator)


# --------------------------------------------------------------------------- losses


def inner_sample_weights(y: torch.Tensor, mask: torch.Tensor, balanced: bool) -> torch.Tensor:
    """Per-sample loss weights (last axis = samples) summing to 1 per task (0 if empty).

    Plain: masked mean. Balanced: each class present gets total weight 1/(classes
    present), so a 4-positive/1-negative support set counts both classes equally; a
    single-class set is simply averaged. Padding (mask False) always weighs 0.
    """
    m = mask.to(y.dtype)
    if not balanced:
        return m / m.sum(-1, keepdim=True).clamp_min(1.0)
    n_pos = (m * y).sum(-1, keepdim=True)
    n_neg = (m * (1 - y)).sum(-1, keepdim=True)
    present = (n_pos > 0).to(y.dtype) + (n_neg > 0).to(y.dtype)
    w = m * (y / n_pos.clamp_min(1.0) + (1 - y) / n_neg.clamp_min(1.0))
    return w / present.clamp_min(1.0)


def _weighted_bce(net: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor,
                  w: torch.Tensor) -> torch.Tensor:
    logits = functional_call(net, params, (x, w > 0))
    return (w * F.binary_cross_entropy_with_logits(logits, y, reduction="none")).sum()


StepSizes = float | Mapping[str, torch.Tensor]


def adapt_params(net: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor,
                 w: torch.Tensor, inner_lr: StepSizes = 0.1, steps: int = 5,
                 first_order: bool = False) -> Params:
    """``steps`` gradient steps on one (padded, weighted) support set.

    ``inner_lr`` is one step size, or one per parameter tensor (a scalar or a tensor of
    the parameter's shape: Meta-SGD's learned rates, see :func:`init_step_sizes`).
    Works unbatched or under ``vmap``; differentiable w.r.t. ``params`` and the step
    sizes unless ``first_order`` (then the inner gradients are detached).
    """
    g = grad(lambda p: _weighted_bce(net, p, x, y, w))
    for _ in range(steps):
        grads = g(params)
        if first_order:
            grads = {k: v.detach() for k, v in grads.items()}
        params = {k: params[k] - _step(inner_lr, k) * grads[k] for k in params}
    return params


def _step(inner_lr: StepSizes, name: str) -> torch.Tensor | float:
    return inner_lr[name] if isinstance(inner_lr, Mapping) else inner_lr


#: How the inner-loop step sizes are set: one fixed value (MAML), or learned with the
#: weights (Meta-SGD, Li et al. 2017): one for the network, one per tensor, one per weight.
INNER_LR_MODES = ("fixed", "scalar", "per-tensor", "per-element")


def init_step_sizes(params: Params, mode: str, value: float, adapt_biases: bool = True
                    ) -> Params:
    """Inner step sizes, all ``value`` (``0`` for biases unless ``adapt_biases``).

    ``scalar`` shares one tensor between all adapted parameters, ``per-tensor`` gives
    each its own scalar, ``per-element`` one rate per weight. Learned modes return
    tensors that require grad (the outer optimizer trains them); frozen biases stay 0.
    """
    if mode not in INNER_LR_MODES:
        raise MetalsmInputError(
            f"inner_lr_mode must be one of {', '.join(INNER_LR_MODES)}, got {mode!r}")
    learned = mode != "fixed"
    shared = torch.tensor(float(value), requires_grad=learned)
    out: Params = {}
    for name, p in params.items():
        if not adapt_biases and name.endswith("bias"):
            out[name] = torch.zeros(())
        elif mode in ("fixed", "scalar"):
            out[name] = shared
        else:
            shape = p.shape if mode == "per-element" else ()
            out[name] = torch.full(shape, float(value), requires_grad=learned)
    return out


def learnable_step_sizes(step_sizes: Params) -> list[torch.Tensor]:
    """The distinct step-size tensors the outer optimizer trains (none when fixed)."""
    seen: dict[int, torch.Tensor] = {}
    for t in step_sizes.values():
        if t.requires_grad:
            seen.setdefault(id(t), t)
    return list(seen.values())


def task_weights(n_samples: np.ndarray | torch.Tensor, n_total: float,
                 mode: str = "softmax") -> torch.Tensor:
    """Meta-batch task weights: ``softmax(n_k / n_total)`` or uniform ``1/T`` (plain MAML)."""
    n = torch.as_tensor(np.asarray(n_samples, dtype=np.float64))
    if mode == "uniform":
        return torch.full_like(n, 1.0 / n.numel())
    if mode != "softmax":
        raise MetalsmInputError(f"task weighting must be 'softmax' or 'uniform', got {mode!r}")
    if n_total <= 0:
        raise MetalsmInputError(f"n_total must be positive, got {n_total}")
    return torch.softmax(n / float(n_total), dim=0)


@dataclass(frozen=True)
class TaskBatch:
    """A padded meta-batch: support/query inputs [T, S, F], labels and masks [T, S]."""

    xs: torch.Tensor
    ys: torch.Tensor
    ms: torch.Tensor
    xq: torch.Tensor
    yq: torch.Tensor
    mq: torch.Tensor

    def to(self, dtype: torch.dtype) -> TaskBatch:
        return TaskBatch(self.xs.to(dtype), self.ys.to(dtype), self.ms, self.xq.to(dtype),
                         self.yq.to(dtype), self.mq)


def make_task_batch(X: np.ndarray, y: np.ndarray, sampled: Mapping[str, np.ndarray],
                    dtype: torch.dtype = torch.float32) -> TaskBatch:
    """Gather padded support/query arrays; padding rows are zeros (finite, weight 0)."""
    def take(idx: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, ...]:
        xb = np.where(mask[..., None], X[idx], 0.0)
        yb = np.where(mask, y[idx], 0.0)
        return (torch.as_tensor(xb, dtype=dtype), torch.as_tensor(yb, dtype=dtype),
                torch.as_tensor(mask))

    xs, ys, ms = take(sampled["support_idx"], sampled["support_mask"])
    xq, yq, mq = take(sampled["query_idx"], sampled["query_mask"])
    return TaskBatch(xs, ys, ms, xq, yq, mq)


def meta_objective(net: nn.Module, params: Params, batch: TaskBatch, weights: torch.Tensor,
                   *, inner_lr: StepSizes = 0.1, steps: int = 5, first_order: bool = False,
                   balanced: bool = False, vectorize: bool = True) -> torch.Tensor:
    """``sum_k w_k L_k(theta'_k; query)`` for a padded meta-batch (differentiable).

    ``vectorize=False`` runs the same computation as a Python loop over tasks (the
    reference for tests and the vmap speed-up benchmark).
    """
    ws = inner_sample_weights(batch.ys, batch.ms, balanced)
    wq = inner_sample_weights(batch.yq, batch.mq, False)

    def task_loss(p: Params, xs: torch.Tensor, ys: torch.Tensor, ws_: torch.Tensor,
                  xq: torch.Tensor, yq: torch.Tensor, wq_: torch.Tensor) -> torch.Tensor:
        adapted = adapt_params(net, p, xs, ys, ws_, inner_lr, steps, first_order)
        return _weighted_bce(net, adapted, xq, yq, wq_)

    args = (batch.xs, batch.ys, ws, batch.xq, batch.yq, wq)
    if vectorize:
        losses = vmap(task_loss, in_dims=(None, 0, 0, 0, 0, 0, 0))(params, *args)
    else:
        losses = torch.stack([task_loss(params, *(a[k] for a in args))
                              for k in range(batch.xs.shape[0])])
    return (weights.to(losses.dtype) * losses).sum()


def adapt_batch(net: nn.Module, params: Params, xs: torch.Tensor, ys: torch.Tensor,
                ms: torch.Tensor, *, inner_lr: StepSizes = 0.1, steps: int = 5,
                balanced: bool = False) -> Params:
    """Adapt ``params`` to many padded support sets at once; returns stacked params [B, ...].

    A support set with no valid sample keeps ``params`` unchanged (its weights are 0).
    """
    w = inner_sample_weights(ys, ms, balanced)
    if isinstance(inner_lr, Mapping):
        inner_lr = {k: v.detach() for k, v in inner_lr.items()}
    with torch.no_grad(), torch_threads():  # tiny ops: 1 thread (see TRAIN_THREADS)
        fn = vmap(lambda x, y_, w_: adapt_params(net, params, x, y_, w_, inner_lr, steps, True))
        return {k: v.detach() for k, v in fn(xs, ys, w).items()}


def adapt_batch_path(net: nn.Module, params: Params, xs: torch.Tensor, ys: torch.Tensor,
                     ms: torch.Tensor, checkpoints: Sequence[int], *,
                     inner_lr: StepSizes = 0.1, balanced: bool = False) -> list[Params]:
    """:func:`adapt_batch` recording the stacked params after each of ``checkpoints``
    (increasing step counts) in one pass, so step counts can be compared cheaply."""
    w = inner_sample_weights(ys, ms, balanced)
    if isinstance(inner_lr, Mapping):
        inner_lr = {k: v.detach() for k, v in inner_lr.items()}
    steps = np.diff(np.r_[0, np.asarray(checkpoints, dtype=np.int64)])
    if (steps <= 0).any():
        raise MetalsmInputError(f"checkpoints must increase from 1, got {list(checkpoints)}")

    def path(x: torch.Tensor, y_: torch.Tensor, w_: torch.Tensor) -> tuple[Params, ...]:
        out, p = [], params
        for n in steps.tolist():
            p = adapt_params(net, p, x, y_, w_, inner_lr, n, True)
            out.append(p)
        return tuple(out)

    with torch.no_grad(), torch_threads():
        return [{k: v.detach() for k, v in p.items()} for p in vmap(path)(xs, ys, w)]


def batch_logits(net: nn.Module, stacked: Params, x: torch.Tensor,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """Logits ``[B, n]`` of ``x`` ``[B, n, F]`` under stacked per-task params ``[B, ...]``;
    ``mask`` ``[B, n]`` marks real rows (only transductive batch norm looks at it)."""
    if mask is None:
        mask = torch.ones(x.shape[:2], dtype=torch.bool)
    with torch.no_grad(), torch_threads():
        return vmap(lambda p, xb, mb: functional_call(net, p, (xb, mb)))(stacked, x, mask)


# --------------------------------------------------------------------------- sampling


def _position_in_group(group: np.ndarray, cls: np.ndarray, key: np.ndarray,
                       flip: np.ndarray, proportional: bool = False) -> np.ndarray:
    """Draw position of each sample within its group: classes interleaved, random order.

    Within (group, class) samples are ranked by ``key``; the group's sequence then takes
    rank 0 of both classes, rank 1 of both, ... (class order ``cls ^ flip``), so a prefix
    of length k is as balanced as the group allows -- right for K-shot draws. With
    ``proportional`` the classes interleave by their *fractional* rank instead, so a
    prefix takes the same share of each class: a "half" support then leaves half of
    every class for the query rather than all of the majority class.
    Vectorized with ``np.lexsort``.
    """
    n = group.size
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    idx = np.arange(n)
    order = np.lexsort((key, cls, group))
    g, c = group[order], cls[order]
    start = np.r_[True, (g[1:] != g[:-1]) | (c[1:] != c[:-1])]
    rank = np.empty(n, dtype=np.int64)
    rank[order] = idx - np.maximum.accumulate(np.where(start, idx, 0))
    if proportional:
        size = np.bincount(group * 2 + cls, minlength=2 * (int(group.max()) + 1))
        rank = (rank + 0.5) / size[group * 2 + cls]
    order = np.lexsort((cls ^ flip, rank, group))
    g = group[order]
    start = np.r_[True, g[1:] != g[:-1]]
    pos = np.empty(n, dtype=np.int64)
    pos[order] = idx - np.maximum.accumulate(np.where(start, idx, 0))
    return pos


@dataclass(frozen=True)
class TaskIndex:
    """Samples sorted by task: ``order[starts[t]:starts[t] + counts[t]]`` are task t's."""

    order: np.ndarray
    starts: np.ndarray
    counts: np.ndarray

    @classmethod
    def build(cls, codes: np.ndarray, n_tasks: int) -> TaskIndex:
        order = np.argsort(codes, kind="stable")
        counts = np.bincount(codes, minlength=n_tasks)
        starts = np.cumsum(counts) - counts
        return cls(order, starts, counts)

    def members(self, tasks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(slot in ``tasks``, sample index) of every sample of the given tasks."""
        counts = self.counts[tasks]
        slot = np.repeat(np.arange(tasks.size), counts)
        local = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return slot, self.order[self.starts[tasks][slot] + local]


#: How a support set is drawn from a block: classes interleaved (``stratified``: K = 2
#: gives one of each whatever the block holds), or a uniform random subset (``random``:
#: the block's own landslide share, as in the authors' code, so the shots tell the
#: model how landslide-prone the block is).
SUPPORT_RULES = ("stratified", "random")


def check_support_rule(rule: str) -> str:
    if rule not in SUPPORT_RULES:
        raise MetalsmInputError(
            f"support_rule must be one of {', '.join(SUPPORT_RULES)}, got {rule!r}")
    return rule


def support_query(index: TaskIndex, y: np.ndarray, tasks: np.ndarray,
                  k_support: np.ndarray | int, k_query: int,
                  rng: np.random.Generator, proportional: bool = False,
                  rule: str = "stratified") -> dict[str, np.ndarray]:
    """Padded support/query index arrays + masks for ``tasks`` (slots): the one draw of
    meta-training, K-shot evaluation and block adaptation.

    ``k_support`` may differ per task; a task keeps at least one sample for its query
    when ``k_query`` > 0 and it has two or more samples. ``rule``: see
    :data:`SUPPORT_RULES`; ``proportional`` (stratified only): see
    :func:`_position_in_group`. Support positions fill each row from the left.
    """
    slot, sample = index.members(tasks)
    n = index.counts[tasks]
    ks = np.broadcast_to(np.asarray(k_support, dtype=np.int64), tasks.shape)
    if k_query > 0:
        ks = np.minimum(ks, np.maximum(n - 1, 1))
    cls = (y[sample] == 1).astype(np.int64)
    if check_support_rule(rule) == "random":
        cls = np.zeros_like(cls)  # one class: positions are a random permutation
    flip = rng.integers(0, 2, size=tasks.size)[slot]
    pos = _position_in_group(slot, cls, rng.random(sample.size), flip, proportional)
    width_s = int(max(ks.max(initial=0), 1))
    out: dict[str, np.ndarray] = {}
    for name, chosen, p, width in (
        ("support", pos < ks[slot], pos, width_s),
        ("query", (pos >= ks[slot]) & (pos < ks[slot] + k_query), pos - ks[slot],
         max(k_query, 1)),
    ):
        idx = np.zeros((tasks.size, width), dtype=np.int64)
        mask = np.zeros((tasks.size, width), dtype=bool)
        idx[slot[chosen], p[chosen]] = sample[chosen]
        mask[slot[chosen], p[chosen]] = True
        out[f"{name}_idx"], out[f"{name}_mask"] = idx, mask
    return out


def sample_meta_batch(task_codes: np.ndarray, y: np.ndarray, meta_batch: int,
                      k_support: int, k_query: int, rng: np.random.Generator,
                      _index: TaskIndex | None = None, rule: str = "stratified"
                      ) -> dict[str, np.ndarray]:
    """Draw ``meta_batch`` tasks (without replacement when there are enough) and their
    support/query sets (``rule``: :data:`SUPPORT_RULES`), as padded
    ``support_idx``/``query_idx`` + masks, plus ``tasks`` (the task codes drawn).
    ``task_codes`` are 0..T-1 per sample.
    """
    codes = np.asarray(task_codes, dtype=np.int64)
    n_tasks = int(codes.max()) + 1 if codes.size else 0
    if n_tasks == 0:
        raise MetalsmInputError("no tasks to sample from")
    index = _index or TaskIndex.build(codes, n_tasks)
    tasks = rng.choice(n_tasks, size=meta_batch, replace=n_tasks < meta_batch)
    out = support_query(index, np.asarray(y), tasks, k_support, k_query, rng, rule=rule)
    out["tasks"] = tasks
    return out


# --------------------------------------------------------------------------- estimator


_threads = torch_threads  # old private name


@contextlib.contextmanager
def flush_denormals() -> Iterator[None]:
    """Treat denormal floats as zero while training (restored to torch's default after).

    After pretraining, sigmoid units and second-order meta-gradients produce many
    denormal numbers; on x86 CPUs each costs ~100x a normal flop. Flushing them made
    2,000 Kaghan meta-iterations ~8x faster (see docs/benchmarks.md); the change in
    values is below float32 resolution of anything that matters, and deterministic.
    """
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


class MetaLearner(ClassifierMixin, BaseEstimator):
    """Weighted-MAML intermediate model over block tasks (scikit-learn estimator).

    ``fit(X, y, groups=block_ids)`` standardizes X, optionally pretrains the hidden
    layers (RBM, RBM, DAE; ``pretrain=True`` or a :class:`PretrainConfig`), then runs
    ``iterations`` outer Adam steps on meta-batches of ``meta_batch`` tasks with
    ``k_support``/``k_query`` samples drawn by ``support_rule``. Groups with fewer than
    2 samples are not tasks. ``task_weighting="uniform"`` and ``pretrain=False`` give
    plain MAML. ``inner_lr_mode`` other than ``"fixed"`` learns the inner step sizes with
    the weights (Meta-SGD), starting from ``inner_lr``; ``adapt_biases=False`` leaves
    biases at their meta-learned values during adaptation. ``adapt_guard``: a block
    keeps the intermediate model unless adapting wins a cross-validation on its own
    support, choosing among 0 and ``guard_steps`` (default: ``inner_steps``) adaptation
    steps per block (:mod:`metalsm.models.blockwise`). ``normalization="batchnorm"``:
    transductive batch norm (the authors' fidelity option, see the module docstring).
    Same ``seed`` (and thread count) gives bit-identical results on one machine.
    ``n_threads``: torch intra-op threads while training and adapting (default 1: the
    matrices are tiny and a second thread only adds OpenMP barriers that stall under
    CPU contention, see :data:`metalsm.models.pretrain.TRAIN_THREADS`); ``None`` keeps
    the process setting.
    """

    def __init__(self, hidden: Sequence[int] = (32, 32, 16), activation: str = "sigmoid",
                 normalization: str = "none", inner_lr: float = 0.01, inner_steps: int = 5,
                 inner_lr_mode: str = "per-element", adapt_biases: bool = True,
                 meta_batch: int = 16, outer_lr: float = 1e-3, iterations: int = 1000,
                 k_support: int = 5, k_query: int = 50, support_rule: str = "random",
                 task_weighting: str = "softmax", first_order: bool = False,
                 balanced: bool = False, adapt_guard: bool = True,
                 guard_steps: Sequence[int] = (),
                 pretrain: bool | PretrainConfig = True, seed: int = 0,
                 n_threads: int | None = TRAIN_THREADS) -> None:
        self.hidden = hidden
        self.activation = activation
        self.normalization = normalization
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.inner_lr_mode = inner_lr_mode
        self.adapt_biases = adapt_biases
        self.support_rule = support_rule
        self.meta_batch = meta_batch
        self.outer_lr = outer_lr
        self.iterations = iterations
        self.k_support = k_support
        self.k_query = k_query
        self.task_weighting = task_weighting
        self.first_order = first_order
        self.balanced = balanced
        self.adapt_guard = adapt_guard
        self.guard_steps = guard_steps
        self.pretrain = pretrain
        self.seed = seed
        self.n_threads = n_threads

    # -- helpers
    def _standardize(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "params_")
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise MetalsmInputError(
                f"expected a table with {self.n_features_in_} factor columns, got {X.shape}")
        return ((X - self.mean_) / self.std_).astype(np.float32)

    def build_net(self) -> MetaNet:
        """The (unparametrized) network module of this configuration."""
        return MetaNet(self.n_features_in_, self.hidden, self.activation, self.normalization)

    @property
    def step_sizes(self) -> Params:
        """The inner step size of every parameter (meta-learned unless ``"fixed"``)."""
        check_is_fitted(self, "params_")
        return self.inner_lrs_

    # -- training
    def fit(self, X: Any, y: Any, groups: Any = None,
            X_unlabelled: Any = None, init_state: Mapping[str, torch.Tensor] | None = None,
            ) -> MetaLearner:
        """Meta-train on the tasks given by ``groups``; ``X_unlabelled`` (optional,
        e.g. a random subsample of map cells) is added to the pretraining data only.
        ``init_state`` (e.g. hidden layers pretrained beforehand, MetaNet names) replaces
        pretraining: it is loaded over the seeded initialisation, then meta-training runs.
        """
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y).astype(np.float64).ravel()
        if groups is None:
            raise MetalsmInputError("MetaLearner.fit needs groups= (the block id of each sample)")
        groups = np.asarray(groups).ravel()
        if X.ndim != 2 or X.shape[0] != y.size or groups.size != y.size:
            raise MetalsmInputError(
                f"X {X.shape}, y ({y.size}) and groups ({groups.size}) must agree in length")
        if not np.isfinite(X).all():
            raise MetalsmInputError("X holds NaN or inf; drop or fill those samples first")
        if not np.isin(y, (0.0, 1.0)).all():
            raise MetalsmInputError("labels must be 0/1 (1 = landslide)")
        self.n_features_in_ = X.shape[1]
        self.classes_ = np.array([0, 1])
        self.mean_ = X.mean(0)
        std = X.std(0)
        self.std_ = np.where(std > 0, std, 1.0)
        Xs = ((X - self.mean_) / self.std_).astype(np.float32)

        _, codes = np.unique(groups, return_inverse=True)
        counts = np.bincount(codes)
        keep = counts[codes] >= 2
        if not keep.any():
            raise MetalsmInputError("no group has 2 or more samples; nothing to meta-train on")
        _, codes_k = np.unique(codes[keep], return_inverse=True)
        Xk, yk = Xs[keep], y[keep]
        index = TaskIndex.build(codes_k, int(codes_k.max()) + 1)
        n_total = float(yk.size)

        check_support_rule(self.support_rule)
        rng = np.random.default_rng(self.seed)
        gen = torch.Generator().manual_seed(int(self.seed))
        with _threads(self.n_threads), flush_denormals():
            net = self.build_net()
            init_params(net, gen)
            self.pretrain_history_: dict[str, list[float]] = {}
            if init_state is not None:
                net.load_state_dict(dict(init_state), strict=False)
            elif self.pretrain is not False:
                cfg = self.pretrain if isinstance(self.pretrain, PretrainConfig) else None
                unl = Xs if X_unlabelled is None else np.vstack(
                    [Xs, self._standardize_raw(X_unlabelled)])
                result = pretrain_network(unl, self.hidden, cfg, gen)
                net.load_state_dict(result.state, strict=False)
                self.pretrain_history_ = result.history
            params = dict(net.named_parameters())
            lrs = init_step_sizes(params, self.inner_lr_mode, self.inner_lr, self.adapt_biases)
            opt = torch.optim.Adam([*params.values(), *learnable_step_sizes(lrs)],
                                   lr=self.outer_lr)
            losses = np.empty(self.iterations)
            for it in range(self.iterations):
                sampled = sample_meta_batch(codes_k, yk, self.meta_batch, self.k_support,
                                            self.k_query, rng, index, rule=self.support_rule)
                batch = make_task_batch(Xk, yk, sampled)
                w = task_weights(index.counts[sampled["tasks"]], n_total, self.task_weighting)
                loss = meta_objective(net, params, batch, w, inner_lr=lrs,
                                      steps=self.inner_steps, first_order=self.first_order,
                                      balanced=self.balanced)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses[it] = float(loss.detach())
        self.net_ = net
        self.params_ = {k: v.detach().clone() for k, v in net.named_parameters()}
        self.inner_lrs_ = {k: v.detach().clone() for k, v in lrs.items()}
        self.meta_loss_ = losses
        self.adapted_: dict[Any, Params] = {}
        return self

    def _standardize_raw(self, X: Any) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_ or not np.isfinite(X).all():
            raise MetalsmInputError("X_unlabelled must be a finite table with the same columns")
        return ((X - self.mean_) / self.std_).astype(np.float32)

    # -- adaptation
    def adapt(self, X_support: Any, y_support: Any, steps: int | None = None) -> Params:
        """Intermediate params adapted to one support set (``inner_steps`` steps of the
        step sizes, balanced loss if set); an empty support set returns them unchanged."""
        Xs = torch.as_tensor(self._standardize(np.asarray(X_support).reshape(
            -1, self.n_features_in_)))
        ys = torch.as_tensor(np.asarray(y_support, dtype=np.float32).ravel())
        out = adapt_batch(self.net_, self.params_, Xs[None], ys[None],
                          torch.ones(1, ys.numel(), dtype=torch.bool),
                          inner_lr=self.step_sizes,
                          steps=self.inner_steps if steps is None else steps,
                          balanced=self.balanced)
        return {k: v[0] for k, v in out.items()}

    def adapt_groups(self, X: Any, y: Any, groups: Any) -> MetaLearner:
        """Adapt one model per group on all of that group's given samples (vmap over groups)."""
        Xs = self._standardize(X)
        y = np.asarray(y, dtype=np.float32).ravel()
        groups = np.asarray(groups).ravel()
        names, codes = np.unique(groups, return_inverse=True)
        index = TaskIndex.build(codes, names.size)
        slot, sample = index.members(np.arange(names.size))
        pos = np.arange(sample.size) - np.repeat(index.starts, index.counts)
        width = int(index.counts.max())
        xs = np.zeros((names.size, width, Xs.shape[1]), dtype=np.float32)
        ys = np.zeros((names.size, width), dtype=np.float32)
        ms = np.zeros((names.size, width), dtype=bool)
        xs[slot, pos], ys[slot, pos], ms[slot, pos] = Xs[sample], y[sample], True
        stacked = adapt_batch(self.net_, self.params_, torch.as_tensor(xs),
                              torch.as_tensor(ys), torch.as_tensor(ms),
                              inner_lr=self.step_sizes, steps=self.inner_steps,
                              balanced=self.balanced)
        self.adapted_ = {name.item() if hasattr(name, "item") else name:
                         {k: v[i] for k, v in stacked.items()} for i, name in enumerate(names)}
        return self

    # -- prediction
    def logits(self, X: Any, params: Params | None = None) -> np.ndarray:
        """Logits of standardized-on-the-fly ``X`` under ``params`` (default: intermediate)."""
        Xs = torch.as_tensor(self._standardize(X))
        with torch.no_grad():
            return functional_call(self.net_, params or self.params_, (Xs,)).numpy()

    def predict_proba(self, X: Any, groups: Any = None) -> np.ndarray:
        """[n, 2] probabilities; rows of a group with an adapted model use it. With
        ``groups``, each group is predicted as one set (transductive batch norm's batch)."""
        X = np.asarray(X, dtype=np.float64)
        logit = np.empty(X.shape[0], dtype=np.float32)
        if groups is None:
            logit[:] = self.logits(X)
        else:
            groups = np.asarray(groups).ravel()
            adapted = getattr(self, "adapted_", {})
            for g in np.unique(groups).tolist():
                rows = groups == g
                logit[rows] = self.logits(X[rows], adapted.get(g))
        p1 = 1.0 / (1.0 + np.exp(-logit.astype(np.float64)))
        return np.column_stack([1.0 - p1, p1])

    def predict(self, X: Any, groups: Any = None) -> np.ndarray:
        return (self.predict_proba(X, groups)[:, 1] >= 0.5).astype(int)
