"""The torch π² layers compute exactly the numpy model, and their gradients are the spec'd ones."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from testbed.model.layers import mean_k_earliest as np_mean_k_earliest
from testbed.model.network import ConvLayer, DenseLayer, Pi2Network

torch = pytest.importorskip("torch")
from testbed.train.k_earliest import k_earliest_mean  # noqa: E402
from testbed.train.pi2_torch import Pi2TorchNetwork, delays, dense_times  # noqa: E402

pytestmark = pytest.mark.torch


def mlp(seed=1, k=(3, 2)):
    rng = np.random.default_rng(seed)
    return Pi2Network((DenseLayer(rng.normal(0, 1.5, (20, 8)), k[0]), DenseLayer(rng.normal(0, 1.5, (8, 5)), k[1])),
                      (20,))


def convnet(seed=2):
    rng = np.random.default_rng(seed)
    return Pi2Network((ConvLayer(rng.normal(0, 1, (3, 1, 3, 3)), 4, (1, 8, 8), 1, 1, 2),
                       ConvLayer(rng.normal(0, 1, (4, 3, 3, 3)), 5, (3, 4, 4), 1, 0, 1),
                       DenseLayer(rng.normal(0, 1, (16, 3)), 2)), (1, 8, 8))


@pytest.mark.parametrize("bits", [None, 4, 3])
@pytest.mark.parametrize("make, shape", [(mlp, (64, 20)), (convnet, (16, 1, 8, 8))], ids=["dense", "conv"])
def test_torch_scores_equal_numpy_scores(make, shape, bits):
    net = make().with_bits(bits)
    # inputs beyond ±T0 exercise the [·]₊ clipping of the encoding, weights beyond ±c the clamp
    x = np.random.default_rng(3).normal(0, 2, shape)
    scores = Pi2TorchNetwork(net, torch.float64)(torch.tensor(x)).detach().numpy()
    np.testing.assert_allclose(scores, net.scores(x), rtol=0, atol=1e-6)
    assert (scores.argmax(1) == net.predict(x)).all()


def authors_constants(net):
    """Per-layer s (1 on the first layer) and rectified scores, as the authors' LeNet-5 has."""
    return replace(net, layers=(replace(net.layers[0], s=1.0), *net.layers[1:]), rectified=True)


@pytest.mark.parametrize("make, shape", [(mlp, (64, 20)), (convnet, (16, 1, 8, 8))], ids=["dense", "conv"])
def test_torch_honours_per_layer_s_and_rectified_scores(make, shape):
    net = authors_constants(make())
    x = np.random.default_rng(5).normal(0, 2, shape)
    scores = Pi2TorchNetwork(net, torch.float64)(torch.tensor(x)).detach().numpy()
    np.testing.assert_allclose(scores, net.scores(x), rtol=0, atol=1e-6)
    assert (scores == 0).any() and (scores >= 0).all()  # rectified, with zeros to tie on
    assert not np.allclose(scores, np.maximum(make().scores(x), 0))  # the first layer's own s counts


def test_float32_training_precision_stays_close_to_numpy():
    net = mlp()
    x = np.random.default_rng(4).uniform(0, 1, (32, 20))
    scores = Pi2TorchNetwork(net)(torch.tensor(x)).detach().numpy()
    np.testing.assert_allclose(scores, net.scores(x), atol=1e-3)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_selection_gradient_is_one_over_k_on_exactly_the_k_earliest(k):
    rng = np.random.default_rng(k)
    t = torch.tensor(rng.permutation(4 * 12).reshape(4, 12) / 7.0, requires_grad=True)
    d = torch.tensor(rng.permutation(12 * 5).reshape(12, 5) / 70.0, requires_grad=True)
    k_earliest_mean(t, d, k, timeout=100.0).sum().backward()
    z = (t[:, None, :] + d.T[None]).detach()  # (rows, neurons, arrivals)
    ranks = z.argsort(dim=2).argsort(dim=2)  # 0 = earliest arrival of its neuron
    np.testing.assert_allclose(t.grad.numpy(), (ranks < k).sum(dim=1).numpy() / k, rtol=1e-15)
    np.testing.assert_allclose(d.grad.numpy(), (ranks < k).sum(dim=0).T.numpy() / k, rtol=1e-15)


@pytest.mark.parametrize("k", [1, 4, 19])
def test_layer_gradient_reaches_only_the_events_of_the_k_earliest_arrivals(k):
    """One neuron: dT⁺/dt is 1/K for the event behind each of its K earliest arrivals, else 0."""
    rng = np.random.default_rng(k)
    t_plus, t_minus = (torch.tensor(rng.uniform(0, 6, (3, 10)), requires_grad=True) for _ in range(2))
    d_plus = torch.tensor(rng.uniform(0, 6, (10, 1)))
    out_plus, _ = dense_times(t_plus, t_minus, d_plus, 6 - d_plus, k, timeout=99.0)
    out_plus.sum().backward()
    z_plus = torch.cat([t_plus + d_plus[:, 0], t_minus + (6 - d_plus[:, 0])], dim=1).detach()
    ranks = z_plus.argsort(dim=1).argsort(dim=1)
    grads = torch.cat([t_plus.grad, t_minus.grad], dim=1)
    assert torch.equal(grads != 0, ranks < k)
    np.testing.assert_allclose(grads[ranks < k].numpy(), 1.0 / k, rtol=1e-15)


def test_lost_events_match_numpy():
    rng = np.random.default_rng(5)
    t, d = rng.normal(6, 1, (3, 10)), rng.normal(1, 0.5, (10, 4))
    t[rng.random(t.shape) < 0.5] = np.inf
    t[0] = np.inf  # a row with no arrival at all times out
    z = t[:, :, None] + d[None]
    for k in (1, 3, 10):
        ours = k_earliest_mean(torch.tensor(t), torch.tensor(d), k, timeout=42.0).numpy()
        np.testing.assert_allclose(ours, np_mean_k_earliest(z, k, timeout=42.0), atol=1e-12)
    assert (ours[0] == 42.0).all()


def test_lost_events_pass_finite_gradients():
    t = torch.tensor([[1.0, np.inf, 2.0, np.inf]], requires_grad=True)
    k_earliest_mean(t, torch.zeros(4, 1, dtype=torch.float64), 3, timeout=9.0).sum().backward()
    assert t.grad.flatten().tolist() == [0.5, 0.0, 0.5, 0.0]


def test_quantised_delays_are_straight_through():
    w = torch.tensor([-4.0, -1.1, 0.05, 2.9, 3.5], dtype=torch.float64, requires_grad=True)
    d_plus, d_minus = delays(w, 3.0, 2)  # 4 levels on [0, 6]: 0, 2, 4, 6
    assert d_plus.tolist() == [0.0, 2.0, 4.0, 6.0, 6.0]
    assert (d_plus + d_minus).tolist() == [6.0] * 5
    d_plus.sum().backward()
    assert w.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]  # the clamp stops gradients outside [−c, c]


def test_perturbations_change_scores_only_when_on():
    net = mlp()
    x = torch.tensor(np.random.default_rng(6).uniform(0, 1, (16, 20)))
    module = Pi2TorchNetwork(net, torch.float64)
    clean = module(x)
    module.jitter, module.keep = 0.1, 0.8
    torch.manual_seed(0)
    noisy = module(x)
    assert torch.isfinite(noisy).all() and not torch.allclose(noisy, clean)
    module.jitter, module.keep = 0.0, 1.0
    assert torch.equal(module(x), clean)


def test_to_numpy_keeps_weights_topology_and_bits():
    net = convnet()
    module = Pi2TorchNetwork(net.with_bits(4), torch.float64)
    back = module.to_numpy(net, {"seed": 1})
    assert back.bits == 4 and back.k == net.k and back.provenance == {"seed": 1}
    for a, b in zip(back.layers, net.layers):
        np.testing.assert_array_equal(a.weight, b.weight)
        assert type(a) is type(b)
