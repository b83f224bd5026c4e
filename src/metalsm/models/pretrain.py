"""Greedy layer-wise unsupervised pretraining of the base network (RBM, RBM, DAE).

The paper initialises the meta-learner's network ``n_factors -> 32 -> 32 -> 16 -> 1``
from unlabelled sample vectors, one hidden layer at a time:

1. a Gaussian-Bernoulli RBM on the standardized factors (continuous inputs with unit
   variance, binary hidden units), trained by contrastive divergence CD-k;
2. a Bernoulli-Bernoulli RBM on the first layer's hidden probabilities, CD-k;
3. a denoising autoencoder (additive Gaussian noise) for the 16-unit layer.

CD-k is implemented as the free-energy difference ``F(v0) - F(vk)`` with ``vk``
detached: its gradient is exactly the CD-k estimate of the log-likelihood gradient, so
any torch optimizer can drive it (the paper uses Adam, lr 1e-3 for the RBMs, 1e-5 for
the DAE, 20 epochs each). Every layer records its reconstruction error on the whole
training set before training and after each epoch (the RBMs: mean squared error of the
mean-field reconstruction; the DAE: denoising error on one fixed noise draw, so epochs
are comparable).

The output layer is not pretrained; :func:`pretrain_network` returns the hidden layers
under the parameter names of :class:`metalsm.models.meta.MetaNet`
(``hidden.{i}.weight``/``hidden.{i}.bias``), which meta-learning loads as its start.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from metalsm.errors import MetalsmInputError

__all__ = [
    "PretrainConfig",
    "PretrainResult",
    "rbm_reconstruction_error",
    "dae_denoising_error",
    "pretrain_network",
    "train_dae",
    "train_rbm",
    "torch_threads",
]

#: torch intra-op threads for training the small networks (pretraining, meta-training,
#: adaptation). Their matrices are tiny (a 64 x 28 batch, 16 tasks of 20 samples), so a
#: second thread gains nothing, and it is fragile: every op ends in an OpenMP barrier, and
#: when anything else wants a core (another process, sklearn or numba threads) the
#: barrier waits on a descheduled thread. Measured on Kaghan on 2 cores under such load:
#: pretraining 3.9 s with 1 thread vs 57-157 s with 2; one meta-iteration 16-20 ms vs
#: 341 ms. See docs/benchmarks.md.
TRAIN_THREADS = 1


@contextlib.contextmanager
def torch_threads(n: int | None = TRAIN_THREADS) -> Iterator[None]:
    """Temporarily set torch's intra-op threads (``None``: leave them as they are)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    if before != int(n):
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of greedy layer-wise pretraining (defaults: the paper's).

    ``dae_lr`` = 1e-5 for 20 epochs barely moves the DAE (its denoising error changes
    in the third or fourth digit); kept as the paper's default, raise it to actually
    train that layer.
    """

    epochs: int = 20
    rbm_lr: float = 1e-3
    dae_lr: float = 1e-5
    dae_epochs: int | None = None  # None: same as ``epochs``
    batch_size: int = 64
    cd_k: int = 1
    dae_noise: float = 0.1
    init_std: float = 0.01
    n_threads: int | None = TRAIN_THREADS  # torch intra-op threads (see TRAIN_THREADS)


@dataclass
class PretrainResult:
    """Pretrained hidden layers (MetaNet names) and per-layer error history.

    ``history[layer]`` = [error before training, error after epoch 1, ...].
    """

    state: dict[str, torch.Tensor]
    history: dict[str, list[float]] = field(default_factory=dict)


# --------------------------------------------------------------------------- RBMs


def _free_energy(v: torch.Tensor, W: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
                 gaussian: bool) -> torch.Tensor:
    """Free energy per sample; unit-variance Gaussian or Bernoulli visible units."""
    hidden_term = F.softplus(v @ W + c).sum(-1)
    visible_term = 0.5 * ((v - b) ** 2).sum(-1) if gaussian else -(v @ b)
    return visible_term - hidden_term


def _visible_mean(h: torch.Tensor, W: torch.Tensor, b: torch.Tensor,
                  gaussian: bool) -> torch.Tensor:
    act = h @ W.T + b
    return act if gaussian else torch.sigmoid(act)


def rbm_reconstruction_error(v: torch.Tensor, W: torch.Tensor, b: torch.Tensor,
                             c: torch.Tensor, gaussian: bool) -> float:
    """Mean squared error of the mean-field reconstruction v -> p(h|v) -> E[v|h]."""
    with torch.no_grad():
        h = torch.sigmoid(v @ W + c)
        return float(((v - _visible_mean(h, W, b, gaussian)) ** 2).mean())


def train_rbm(
    data: torch.Tensor,
    n_hidden: int,
    *,
    gaussian: bool,
    epochs: int = 20,
    lr: float = 1e-3,
    batch_size: int = 64,
    cd_k: int = 1,
    init_std: float = 0.01,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[float]]:
    """Train one RBM by CD-k with Adam; returns (W [n_vis, n_hid], b_vis, c_hid, history).

    ``gaussian`` selects unit-variance Gaussian visible units (standardized continuous
    inputs) instead of Bernoulli ones. Negative-phase visibles are the conditional
    means (standard practice for Gaussian units; lowers CD variance).
    """
    if data.ndim != 2 or data.shape[0] == 0:
        raise MetalsmInputError(
            f"RBM training needs a non-empty 2-D table, got {tuple(data.shape)}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    n, n_vis = data.shape
    W = (torch.randn(n_vis, n_hidden, generator=g, dtype=data.dtype) * init_std).requires_grad_()
    b = torch.zeros(n_vis, dtype=data.dtype)
    if not gaussian:  # visible bias at the log-odds of the mean activity (Hinton's guide)
        p = data.mean(0).clamp(1e-3, 1 - 1e-3)
        b = torch.log(p / (1 - p))
    b = b.clone().requires_grad_()
    c = torch.zeros(n_hidden, dtype=data.dtype, requires_grad=True)
    opt = torch.optim.Adam([W, b, c], lr=lr)
    history = [rbm_reconstruction_error(data, W, b, c, gaussian)]
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for start in range(0, n, batch_size):
            v0 = data[perm[start:start + batch_size]]
            with torch.no_grad():
                vk = v0
                for _step in range(cd_k):
                    ph = torch.sigmoid(vk @ W + c)
                    h = torch.bernoulli(ph, generator=g)
                    vk = _visible_mean(h, W, b, gaussian)
            loss = (_free_energy(v0, W, b, c, gaussian)
                    - _free_energy(vk, W, b, c, gaussian)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        history.append(rbm_reconstruction_error(data, W, b, c, gaussian))
    return W.detach(), b.detach(), c.detach(), history


# --------------------------------------------------------------------------- DAE


def dae_denoising_error(clean: torch.Tensor, noisy: torch.Tensor, W_enc: torch.Tensor,
                        c_enc: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor) -> float:
    """Mean squared error between the clean input and the reconstruction of its noisy copy."""
    with torch.no_grad():
        h = torch.sigmoid(noisy @ W_enc + c_enc)
        return float(((torch.sigmoid(h @ W_dec + b_dec) - clean) ** 2).mean())


def train_dae(
    data: torch.Tensor,
    n_hidden: int,
    *,
    epochs: int = 20,
    lr: float = 1e-5,
    noise_std: float = 0.1,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Train a denoising autoencoder (sigmoid encoder and decoder, untied) with Adam.

    ``data`` are hidden probabilities in [0, 1] of the layer below. Returns the encoder
    (W [n_in, n_hidden], c [n_hidden]) and the denoising-error history, measured on one
    fixed noise draw of the whole set.
    """
    if data.ndim != 2 or data.shape[0] == 0:
        raise MetalsmInputError(
            f"DAE training needs a non-empty 2-D table, got {tuple(data.shape)}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    n, n_in = data.shape
    bound_enc = (6.0 / (n_in + n_hidden)) ** 0.5
    W_enc = ((torch.rand(n_in, n_hidden, generator=g, dtype=data.dtype) * 2 - 1) * bound_enc)
    W_dec = ((torch.rand(n_hidden, n_in, generator=g, dtype=data.dtype) * 2 - 1) * bound_enc)
    W_enc.requires_grad_()
    W_dec.requires_grad_()
    c_enc = torch.zeros(n_hidden, dtype=data.dtype, requires_grad=True)
    p = data.mean(0).clamp(1e-3, 1 - 1e-3)
    b_dec = torch.log(p / (1 - p)).requires_grad_()
    opt = torch.optim.Adam([W_enc, c_enc, W_dec, b_dec], lr=lr)
    eval_noisy = data + noise_std * torch.randn(data.shape, generator=g, dtype=data.dtype)
    history = [dae_denoising_error(data, eval_noisy, W_enc, c_enc, W_dec, b_dec)]
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for start in range(0, n, batch_size):
            clean = data[perm[start:start + batch_size]]
            noisy = clean + noise_std * torch.randn(clean.shape, generator=g, dtype=data.dtype)
            h = torch.sigmoid(noisy @ W_enc + c_enc)
            loss = ((torch.sigmoid(h @ W_dec + b_dec) - clean) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        history.append(dae_denoising_error(data, eval_noisy, W_enc, c_enc, W_dec, b_dec))
    return W_enc.detach(), c_enc.detach(), history


# --------------------------------------------------------------------------- greedy stack


def pretrain_network(
    X: np.ndarray | torch.Tensor,
    hidden: Sequence[int] = (32, 32, 16),
    config: PretrainConfig | None = None,
    generator: torch.Generator | None = None,
) -> PretrainResult:
    """Greedy layer-wise pretraining of the hidden layers on standardized inputs ``X``.

    Layer 1 is a Gaussian-Bernoulli RBM, the middle layers Bernoulli-Bernoulli RBMs, the
    last hidden layer a DAE (for the paper's 32-32-16 stack: RBM, RBM, DAE). Each layer
    is trained on the hidden probabilities of the (frozen) layer below. Returns the
    weights as ``hidden.{i}.weight`` [out, in] / ``hidden.{i}.bias``, float32.
    """
    cfg = config or PretrainConfig()
    hidden = [int(h) for h in hidden]
    if not hidden:
        raise MetalsmInputError("pretraining needs at least one hidden layer")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    data = torch.as_tensor(np.asarray(X, dtype=np.float32))
    if data.ndim != 2 or not torch.isfinite(data).all():
        raise MetalsmInputError("pretraining input must be a finite 2-D table of factors")
    with torch_threads(cfg.n_threads):
        return _pretrain_stack(data, hidden, cfg, g)


def _pretrain_stack(data: torch.Tensor, hidden: list[int], cfg: PretrainConfig,
                    g: torch.Generator) -> PretrainResult:
    state: dict[str, torch.Tensor] = {}
    history: dict[str, list[float]] = {}
    for i, n_hid in enumerate(hidden):
        last = i == len(hidden) - 1 and len(hidden) > 1
        if last:
            W, c, hist = train_dae(
                data, n_hid, epochs=cfg.dae_epochs if cfg.dae_epochs is not None else cfg.epochs,
                lr=cfg.dae_lr, noise_std=cfg.dae_noise, batch_size=cfg.batch_size, generator=g,
            )
            history[f"dae{i + 1}"] = hist
        else:
            W, _b, c, hist = train_rbm(
                data, n_hid, gaussian=(i == 0), epochs=cfg.epochs, lr=cfg.rbm_lr,
                batch_size=cfg.batch_size, cd_k=cfg.cd_k, init_std=cfg.init_std, generator=g,
            )
            history[f"rbm{i + 1}"] = hist
        state[f"hidden.{i}.weight"] = W.T.contiguous().float()
        state[f"hidden.{i}.bias"] = c.clone().float()
        with torch.no_grad():
            data = torch.sigmoid(data @ W + c)
    return PretrainResult(state=state, history=history)
