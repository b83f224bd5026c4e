"""Greedy layer-wise pretraining (models/pretrain.py) on real Hong Kong sample vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import HK_FACTORS, hongkong_table

from metalsm.models.meta import MetaNet
from metalsm.models.pretrain import PretrainConfig, pretrain_network, train_dae, train_rbm

torch.set_num_threads(1)

FACTORS = HK_FACTORS


@pytest.fixture(scope="module")
def vectors() -> torch.Tensor:
    """3,000 standardized real sample vectors (every 5th row of the Hong Kong table)."""
    df = hongkong_table()
    X = df[FACTORS].to_numpy(np.float64)[::5][:3000]
    X = (X - X.mean(0)) / X.std(0)
    return torch.as_tensor(X, dtype=torch.float32)


def test_cd1_lowers_gaussian_rbm_reconstruction_error(vectors: torch.Tensor) -> None:
    # lr 1e-2 (paper: 1e-3 over 20 epochs of the full table) to fit the test budget
    W, b, c, hist = train_rbm(vectors, 32, gaussian=True, epochs=5, lr=1e-2, cd_k=1,
                              generator=torch.Generator().manual_seed(0))
    assert len(hist) == 6 and W.shape == (len(FACTORS), 32)
    # untrained (tiny weights) reconstruction error is ~ the input variance, 1.0
    assert hist[0] == pytest.approx(1.0, abs=0.05)
    assert hist[-1] < 0.5 * hist[0]  # observed 0.999 -> 0.233
    assert hist[-1] < hist[1]


def test_cd1_lowers_bernoulli_rbm_reconstruction_error(vectors: torch.Tensor) -> None:
    g = torch.Generator().manual_seed(1)
    W1, _, c1, _ = train_rbm(vectors, 32, gaussian=True, epochs=5, lr=1e-2, generator=g)
    hidden = torch.sigmoid(vectors @ W1 + c1)
    _, _, _, hist = train_rbm(hidden, 32, gaussian=False, epochs=5, lr=1e-2, generator=g)
    assert hist[-1] < 0.7 * hist[0]  # observed 0.051 -> 0.021


def test_dae_denoising_error_falls(vectors: torch.Tensor) -> None:
    data = torch.sigmoid(vectors[:, :14] @ torch.randn(14, 32, generator=torch.Generator()
                                                       .manual_seed(2)) * 0.5)
    # a larger learning rate than the paper's 1e-5, which barely moves the DAE in a test budget
    _, _, hist = train_dae(data, 16, epochs=5, lr=1e-3, noise_std=0.1,
                           generator=torch.Generator().manual_seed(0))
    assert hist[-1] < 0.7 * hist[0]
    assert all(b <= a + 1e-4 for a, b in zip(hist, hist[1:], strict=False))


def test_pretrained_state_initialises_the_meta_network(vectors: torch.Tensor) -> None:
    cfg = PretrainConfig(epochs=1, batch_size=256)
    result = pretrain_network(vectors.numpy(), (32, 32, 16), cfg,
                              torch.Generator().manual_seed(0))
    assert set(result.history) == {"rbm1", "rbm2", "dae3"}
    assert all(len(h) == 2 for h in result.history.values())
    net = MetaNet(len(FACTORS), (32, 32, 16))
    missing, unexpected = net.load_state_dict(result.state, strict=False)
    assert not unexpected and set(missing) == {"out.weight", "out.bias"}
    assert torch.equal(net.hidden[1].weight, result.state["hidden.1.weight"])
    again = pretrain_network(vectors.numpy(), (32, 32, 16), cfg, torch.Generator().manual_seed(0))
    assert all(torch.equal(result.state[k], again.state[k]) for k in result.state)
