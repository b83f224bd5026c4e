"""Weighted MAML (models/meta.py): meta-gradients, vmap vs loop, task weights, sampling."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import HK_FACTORS, hongkong_table
from sklearn.base import clone

from metalsm.models.meta import (
    BatchStatsNorm,
    MetaLearner,
    MetaNet,
    TaskBatch,
    init_params,
    init_step_sizes,
    inner_sample_weights,
    make_task_batch,
    meta_objective,
    sample_meta_batch,
    task_weights,
)

torch.set_num_threads(1)

FACTORS = HK_FACTORS


@pytest.fixture(scope="module")
def hk() -> pd.DataFrame:
    """Hong Kong samples with 40 stand-in tasks: a coarse grid on X/Y (every 4th row)."""
    df = hongkong_table()
    df = df.iloc[::4].reset_index(drop=True)
    gx = pd.qcut(df["X"], 8, labels=False)
    gy = pd.qcut(df["Y"], 5, labels=False)
    df["block"] = (gx * 5 + gy).astype(int)
    return df


# --------------------------------------------------------------------------- weights


def test_task_weights_known_values() -> None:
    n = np.array([10, 30, 60])
    w = task_weights(n, 200, "softmax")
    e = [math.exp(0.05), math.exp(0.15), math.exp(0.30)]
    expected = [v / sum(e) for v in e]
    assert torch.allclose(w, torch.tensor(expected, dtype=torch.float64), atol=1e-12)
    assert w.sum().item() == pytest.approx(1.0)
    # 0.3226, 0.3565, 0.4812 / ... : bigger tasks weigh more, but gently
    assert w[2] > w[1] > w[0]
    assert torch.allclose(task_weights(n, 200, "uniform"), torch.full((3,), 1 / 3,
                                                                      dtype=torch.float64))


def test_inner_sample_weights_balanced_and_masked() -> None:
    y = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0, 0.0]])
    m = torch.tensor([[True, True, True, True, False], [True, True, False, False, False]])
    plain = inner_sample_weights(y, m, balanced=False)
    assert torch.allclose(plain[0], torch.tensor([0.25, 0.25, 0.25, 0.25, 0.0]))
    bal = inner_sample_weights(y, m, balanced=True)
    # task 0: 3 positives share 1/2, the one negative gets 1/2; padding 0
    assert torch.allclose(bal[0], torch.tensor([1 / 6, 1 / 6, 1 / 6, 0.5, 0.0]))
    # task 1: one class only -> plain average
    assert torch.allclose(bal[1], torch.tensor([0.5, 0.5, 0.0, 0.0, 0.0]))


# --------------------------------------------------------------------------- gradients


def _tiny_problem(seed: int = 0, normalization: str = "none"):
    """Three tasks of unequal size, padded, float64; padding rows hold garbage (finite)."""
    g = torch.Generator().manual_seed(seed)
    net = MetaNet(3, hidden=(4, 3), normalization=normalization).double()
    init_params(net, g)
    sizes_s, sizes_q = [2, 4, 3], [3, 5, 1]
    S, Q = max(sizes_s), max(sizes_q)
    xs = torch.randn(3, S, 3, generator=g, dtype=torch.float64) * 3
    xq = torch.randn(3, Q, 3, generator=g, dtype=torch.float64) * 3
    ys = (torch.rand(3, S, generator=g) > 0.5).double()
    yq = (torch.rand(3, Q, generator=g) > 0.5).double()
    ms = torch.arange(S)[None] < torch.tensor(sizes_s)[:, None]
    mq = torch.arange(Q)[None] < torch.tensor(sizes_q)[:, None]
    batch = TaskBatch(xs, ys, ms, xq, yq, mq)
    return net, batch, sizes_s, sizes_q


def _forward(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Hand-written forward of MetaNet(3, (4, 3)): independent of functional_call."""
    h = torch.sigmoid(x @ p["hidden.0.weight"].T + p["hidden.0.bias"])
    h = torch.sigmoid(h @ p["hidden.1.weight"].T + p["hidden.1.bias"])
    return (h @ p["out.weight"].T + p["out.bias"]).squeeze(-1)


def _reference_meta_grad(net, batch, sizes_s, sizes_q, weights, alpha, steps, first_order):
    """Explicit Python loop over unpadded tasks with nested torch.autograd.grad."""
    names = [n for n, _ in net.named_parameters()]
    theta = [p.detach().clone().requires_grad_() for _, p in net.named_parameters()]
    total = 0.0
    for k in range(3):
        xs, ys = batch.xs[k, :sizes_s[k]], batch.ys[k, :sizes_s[k]]
        xq, yq = batch.xq[k, :sizes_q[k]], batch.yq[k, :sizes_q[k]]
        fast = list(theta)
        for _ in range(steps):
            loss = F.binary_cross_entropy_with_logits(_forward(dict(zip(names, fast,
                                                                         strict=True)), xs), ys)
            grads = torch.autograd.grad(loss, fast, create_graph=not first_order)
            fast = [p - alpha * g for p, g in zip(fast, grads, strict=True)]
        q = F.binary_cross_entropy_with_logits(_forward(dict(zip(names, fast, strict=True)), xq),
                                               yq)
        total = total + weights[k] * q
    return total, torch.autograd.grad(total, theta)


@pytest.mark.parametrize("mode", ["softmax", "uniform"])
@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_matches_nested_autograd(mode: str, first_order: bool) -> None:
    net, batch, sizes_s, sizes_q = _tiny_problem()
    w = task_weights(np.array([10, 40, 25]), 120, mode)
    params = {n: p.detach().clone().requires_grad_() for n, p in net.named_parameters()}
    loss = meta_objective(net, params, batch, w, inner_lr=0.1, steps=3,
                          first_order=first_order)
    grads = torch.autograd.grad(loss, list(params.values()))
    ref_loss, ref_grads = _reference_meta_grad(net, batch, sizes_s, sizes_q, w, 0.1, 3,
                                               first_order)
    assert loss.item() == pytest.approx(ref_loss.item(), abs=1e-12)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, atol=1e-10, rtol=1e-9)


def test_second_order_gradient_differs_from_first_order_and_matches_finite_differences() -> None:
    net, batch, *_ = _tiny_problem(seed=3)
    w = task_weights(np.array([5, 9, 7]), 40, "softmax")
    params = {n: p.detach().clone().requires_grad_() for n, p in net.named_parameters()}

    def objective(p, first_order=False):
        return meta_objective(net, p, batch, w, inner_lr=0.5, steps=2, first_order=first_order)

    g2 = torch.autograd.grad(objective(params), list(params.values()))
    g1 = torch.autograd.grad(objective(params, True), list(params.values()))
    assert max((a - b).abs().max().item() for a, b in zip(g2, g1, strict=True)) > 1e-4
    # central finite differences along a random direction
    gen = torch.Generator().manual_seed(1)
    direction = {n: torch.randn(p.shape, generator=gen, dtype=p.dtype) for n, p in params.items()}
    eps = 1e-5
    with torch.no_grad():
        plus = {n: p + eps * direction[n] for n, p in params.items()}
        minus = {n: p - eps * direction[n] for n, p in params.items()}
    fd = (objective(plus) - objective(minus)).item() / (2 * eps)
    analytic = sum((g * direction[n]).sum() for g, n in zip(g2, params, strict=True)).item()
    assert analytic == pytest.approx(fd, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("normalization", ["none", "batchnorm"])
def test_padding_does_not_change_gradient(normalization: str) -> None:
    net, batch, *_ = _tiny_problem(seed=5, normalization=normalization)
    w = task_weights(np.array([5, 9, 7]), 40, "softmax")
    params = {n: p.detach().clone().requires_grad_() for n, p in net.named_parameters()}
    g_a = torch.autograd.grad(meta_objective(net, params, batch, w), list(params.values()))
    # wider padding with different garbage in the padded rows
    pad = 3
    big = TaskBatch(
        torch.cat([batch.xs, 50 * torch.ones(3, pad, 3, dtype=torch.float64)], 1),
        torch.cat([batch.ys, torch.ones(3, pad, dtype=torch.float64)], 1),
        torch.cat([batch.ms, torch.zeros(3, pad, dtype=torch.bool)], 1),
        torch.cat([batch.xq, -7 * torch.ones(3, pad, 3, dtype=torch.float64)], 1),
        torch.cat([batch.yq, torch.zeros(3, pad, dtype=torch.float64)], 1),
        torch.cat([batch.mq, torch.zeros(3, pad, dtype=torch.bool)], 1),
    )
    g_b = torch.autograd.grad(meta_objective(net, params, big, w), list(params.values()))
    for a, b in zip(g_a, g_b, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("balanced", [False, True])
def test_vmap_equals_python_loop(hk: pd.DataFrame, balanced: bool) -> None:
    X = ((hk[FACTORS] - hk[FACTORS].mean()) / hk[FACTORS].std()).to_numpy(np.float32)
    y = hk["label"].to_numpy(np.float32)
    rng = np.random.default_rng(0)
    sampled = sample_meta_batch(hk["block"].to_numpy(), y, 8, 5, 10, rng)
    batch = make_task_batch(X, y, sampled)
    net = MetaNet(len(FACTORS))
    init_params(net, torch.Generator().manual_seed(0))
    params = dict(net.named_parameters())
    w = task_weights(np.bincount(hk["block"])[sampled["tasks"]], len(hk))
    out = []
    for vectorize in (True, False):
        loss = meta_objective(net, params, batch, w, balanced=balanced, vectorize=vectorize)
        out.append((loss.detach(), torch.autograd.grad(loss, list(params.values()))))
    torch.testing.assert_close(out[0][0], out[1][0], atol=1e-6, rtol=1e-6)
    for a, b in zip(out[0][1], out[1][1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------- sampling


def test_sampler_is_stratified_disjoint_and_padded(hk: pd.DataFrame) -> None:
    codes = hk["block"].to_numpy()
    y = hk["label"].to_numpy()
    # make task 0 tiny (3 samples) to exercise padding
    small = np.flatnonzero(codes == 0)[3:]
    codes = codes.copy()
    codes[small] = 1
    out = sample_meta_batch(codes, y, 40, 6, 12, np.random.default_rng(1))
    assert out["support_idx"].shape == (40, 6) and out["query_idx"].shape == (40, 12)
    assert sorted(out["tasks"].tolist()) == list(range(40))  # without replacement
    for t, task in enumerate(out["tasks"]):
        s = out["support_idx"][t][out["support_mask"][t]]
        q = out["query_idx"][t][out["query_mask"][t]]
        assert np.all(codes[s] == task) and np.all(codes[q] == task)
        assert not set(s) & set(q)
        n = int((codes == task).sum())
        if task == 0:
            assert (s.size, q.size) == (2, 1)  # keeps one sample for the query
        else:
            assert s.size == min(6, max(n - 1, 1), n) and q.size == min(12, n - s.size)
            n_pos = int((y[codes == task] == 1).sum())
            if min(n_pos, n - n_pos) >= 3 and n > 6:
                assert int(y[s].sum()) == 3  # balanced support when both classes allow
        # mask is a prefix
        assert not np.any(np.diff(out["support_mask"][t].astype(int)) > 0)


# --------------------------------------------------------------------------- estimator


def test_same_seed_bit_identical_and_different_seed_differs(hk: pd.DataFrame) -> None:
    X, y, g = hk[FACTORS].to_numpy(), hk["label"].to_numpy(), hk["block"].to_numpy()
    kw = dict(iterations=15, outer_lr=1e-2,
              pretrain=__import__("metalsm.models.pretrain", fromlist=["x"]).PretrainConfig(
                  epochs=1, batch_size=256), n_threads=1)
    a = MetaLearner(seed=3, **kw).fit(X, y, groups=g)
    b = clone(a).fit(X, y, groups=g)
    c = MetaLearner(seed=4, **kw).fit(X, y, groups=g)
    pa, pb = a.predict_proba(X), b.predict_proba(X)
    assert np.array_equal(pa, pb)
    assert not np.array_equal(pa, c.predict_proba(X))
    assert np.array_equal(a.meta_loss_, b.meta_loss_)
    a.adapt_groups(X[:300], y[:300], g[:300])
    b.adapt_groups(X[:300], y[:300], g[:300])
    assert np.array_equal(a.predict_proba(X, groups=g), b.predict_proba(X, groups=g))
    assert a.get_params()["seed"] == 3 and a.get_params()["inner_lr"] == 0.01


def test_adapt_groups_uses_group_models_else_intermediate(hk: pd.DataFrame) -> None:
    X, y, g = hk[FACTORS].to_numpy(), hk["label"].to_numpy(), hk["block"].to_numpy()
    m = MetaLearner(iterations=5, pretrain=False, n_threads=1, inner_lr_mode="fixed",
                    inner_lr=0.1).fit(X, y, groups=g)  # steps large enough to see
    base = m.predict_proba(X)
    one = g == 7
    m.adapt_groups(X[one][:5], y[one][:5], g[one][:5])
    p = m.predict_proba(X, groups=g)
    np.testing.assert_allclose(p[~one], base[~one], rtol=1e-6)  # float32 batch sizes differ
    assert not np.allclose(p[one], base[one])
    params = m.adapt(X[one][:5], y[one][:5])
    direct = m.logits(X[one], params)
    np.testing.assert_allclose(1 / (1 + np.exp(-direct)), p[one][:, 1], rtol=1e-6)
    assert p.shape == (len(X), 2) and np.allclose(p.sum(1), 1)


def test_training_runs_on_one_torch_thread_and_restores_the_setting():
    """Tiny-matrix training uses 1 intra-op thread (2 threads stall under CPU contention:
    57-157 s vs 4 s of Kaghan pretraining) and leaves the process setting as it was."""
    from metalsm.models.meta import torch_threads

    seen = []
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch_threads():
            seen.append(torch.get_num_threads())
        assert seen == [1] and torch.get_num_threads() == 2
        rng = np.random.default_rng(0)
        X, y = rng.standard_normal((40, 3)), np.tile([0, 1], 20)
        m = MetaLearner(iterations=2, pretrain=False, seed=0).fit(X, y, groups=np.arange(40) % 4)
        assert m.n_threads == 1 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- Meta-SGD


def test_meta_sgd_step_size_gradient_matches_nested_autograd() -> None:
    """d(meta loss)/d(per-weight step sizes) equals an explicit nested-autograd loop."""
    net, batch, sizes_s, sizes_q = _tiny_problem(seed=5)
    w = task_weights(np.array([10, 40, 25]), 120, "uniform")
    params = {n: p.detach().clone() for n, p in net.named_parameters()}
    g = torch.Generator().manual_seed(2)
    lrs = {n: (0.02 + 0.1 * torch.rand(p.shape, generator=g, dtype=torch.float64)
               ).requires_grad_() for n, p in params.items()}
    loss = meta_objective(net, params, batch, w, inner_lr=lrs, steps=2)
    grads = torch.autograd.grad(loss, list(lrs.values()))

    names = list(params)
    total = 0.0
    for k in range(3):
        xs, ys = batch.xs[k, :sizes_s[k]], batch.ys[k, :sizes_s[k]]
        xq, yq = batch.xq[k, :sizes_q[k]], batch.yq[k, :sizes_q[k]]
        fast = [params[n].clone().requires_grad_() for n in names]
        for _ in range(2):
            inner = F.binary_cross_entropy_with_logits(_forward(dict(zip(names, fast,
                                                                          strict=True)), xs), ys)
            step = torch.autograd.grad(inner, fast, create_graph=True)
            fast = [p - lrs[n] * d for n, p, d in zip(names, fast, step, strict=True)]
        total = total + w[k] * F.binary_cross_entropy_with_logits(
            _forward(dict(zip(names, fast, strict=True)), xq), yq)
    ref = torch.autograd.grad(total, [lrs[n] for n in names])
    assert loss.item() == pytest.approx(total.item(), abs=1e-12)
    for a, b in zip(grads, ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)
        assert a.abs().max() > 0


def test_step_size_modes_shapes_sharing_and_frozen_biases() -> None:
    net = MetaNet(3, hidden=(4, 3))
    params = dict(net.named_parameters())
    fixed = init_step_sizes(params, "fixed", 0.1)
    assert all(not v.requires_grad and v.item() == pytest.approx(0.1) for v in fixed.values())
    scalar = init_step_sizes(params, "scalar", 0.01)
    assert len({id(v) for v in scalar.values()}) == 1 and scalar["out.bias"].requires_grad
    tensor = init_step_sizes(params, "per-tensor", 0.01)
    assert len({id(v) for v in tensor.values()}) == len(params)
    assert all(v.shape == () for v in tensor.values())
    element = init_step_sizes(params, "per-element", 0.01, adapt_biases=False)
    assert element["hidden.0.weight"].shape == (4, 3) and element["hidden.0.weight"].requires_grad
    assert element["hidden.0.bias"].item() == 0 and not element["hidden.0.bias"].requires_grad
    with pytest.raises(Exception, match="inner_lr_mode"):
        init_step_sizes(params, "adam", 0.01)


def test_fit_learns_step_sizes_and_frozen_biases_do_not_move(hk: pd.DataFrame) -> None:
    X, y, g = hk[FACTORS].to_numpy(), hk["label"].to_numpy(), hk["block"].to_numpy()
    kw = dict(iterations=20, pretrain=False, n_threads=1, seed=0)
    learned = MetaLearner(**kw).fit(X, y, groups=g)
    w = learned.step_sizes["hidden.0.weight"]
    assert w.shape == learned.params_["hidden.0.weight"].shape
    assert not torch.allclose(w, torch.full_like(w, 0.01))  # trained with the weights
    fixed = MetaLearner(inner_lr_mode="fixed", inner_lr=0.05, **kw).fit(X, y, groups=g)
    assert all(v.item() == pytest.approx(0.05) for v in fixed.step_sizes.values())
    frozen = MetaLearner(adapt_biases=False, **kw).fit(X, y, groups=g)
    adapted = frozen.adapt(X[:5], y[:5])
    for name, value in adapted.items():
        if name.endswith("bias"):
            torch.testing.assert_close(value, frozen.params_[name], rtol=0, atol=0)
        else:
            assert not torch.equal(value, frozen.params_[name])


def test_random_support_keeps_the_block_prevalence_stratified_balances() -> None:
    """Two blocks with 80 % and 20 % landslides: random 4-shot supports carry those shares
    on average, stratified ones always two of each."""
    y = np.r_[np.ones(80), np.zeros(20), np.ones(20), np.zeros(80)]
    codes = np.repeat([0, 1], 100)
    shares = {"random": [[], []], "stratified": [[], []]}
    rng = np.random.default_rng(0)
    for rule, out in shares.items():
        for _ in range(400):
            draw = sample_meta_batch(codes, y, 2, 4, 4, rng, rule=rule)
            for slot, task in enumerate(draw["tasks"]):
                s = draw["support_idx"][slot][draw["support_mask"][slot]]
                q = draw["query_idx"][slot][draw["query_mask"][slot]]
                assert not set(s) & set(q) and np.all(codes[s] == task)
                out[task].append(y[s].mean())
    assert np.mean(shares["random"][0]) == pytest.approx(0.8, abs=0.03)
    assert np.mean(shares["random"][1]) == pytest.approx(0.2, abs=0.03)
    assert np.all(np.array(shares["stratified"]) == 0.5)


# --------------------------------------------------------------------------- batch norm


def test_transductive_batch_norm_uses_the_set_statistics_and_skips_padding() -> None:
    """Hand-checked: with weight 1 and bias 0, each hidden unit of a set is z-scored by
    the set's own mean and (biased) variance; padding rows change nothing."""
    norm = BatchStatsNorm(2)
    x = torch.tensor([[1.0, 10.0], [3.0, 10.0], [5.0, 16.0]], dtype=torch.float64)
    r = math.sqrt(1.5)  # column 0: deviations -2, 0, 2 over a standard deviation sqrt(8/3)
    expected = torch.tensor([[-r, -1 / math.sqrt(2)], [0.0, -1 / math.sqrt(2)],
                             [r, math.sqrt(2)]], dtype=torch.float64)
    var = torch.tensor([8 / 3, 8.0], dtype=torch.float64)  # biased variances
    scale = torch.sqrt(var / (var + BatchStatsNorm.eps))  # epsilon shrinks slightly
    torch.testing.assert_close(norm(x.float()).double(), expected * scale, rtol=1e-5,
                               atol=1e-6)
    padded = torch.cat([x, torch.full((2, 2), 99.0, dtype=torch.float64)])
    mask = torch.tensor([True, True, True, False, False])
    torch.testing.assert_close(norm(padded, mask)[:3], norm(x), rtol=0, atol=1e-12)


def test_transductive_predictions_depend_on_the_set_plain_ones_do_not(hk: pd.DataFrame
                                                                      ) -> None:
    X, y, g = hk[FACTORS].to_numpy(), hk["label"].to_numpy(), hk["block"].to_numpy()
    kw = dict(iterations=30, pretrain=False, n_threads=1, seed=0)
    for normalization, depends in (("none", False), ("batchnorm", True)):
        learner = MetaLearner(normalization=normalization, **kw).fit(X, y, groups=g)
        whole = learner.predict_proba(X[:200])[:, 1]
        halves = np.r_[learner.predict_proba(X[:100])[:, 1],
                       learner.predict_proba(X[100:200])[:, 1]]
        assert bool(np.abs(whole - halves).max() > 1e-4) == depends
        # grouped prediction = each group predicted as its own set
        by_group = learner.predict_proba(X[:200], g[:200])[:, 1]
        first = g[:200] == g[0]
        np.testing.assert_allclose(by_group[first],
                                   learner.predict_proba(X[:200][first])[:, 1], rtol=1e-6)


def test_batch_norm_one_shot_moves_no_hidden_weight(hk: pd.DataFrame) -> None:
    """One sample has zero variance: every hidden unit outputs its batch-norm bias, so
    the hidden weights get no gradient (as in the authors' code at K = 1)."""
    X, y, g = hk[FACTORS].to_numpy(), hk["label"].to_numpy(), hk["block"].to_numpy()
    learner = MetaLearner(normalization="batchnorm", iterations=20, pretrain=False,
                          n_threads=1, seed=0).fit(X, y, groups=g)
    one = learner.adapt(X[:1], y[:1])
    for name, value in one.items():
        moved = not torch.equal(value, learner.params_[name])
        assert moved == (name.startswith("out.") or name == "norms.2.bias"), name
    five = learner.adapt(X[:5], y[:5])
    assert not torch.equal(five["hidden.0.weight"], learner.params_["hidden.0.weight"])
