"""Pi2Network: shapes, the causal offset M_K, a LeNet-shaped forward pass, validation."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from testbed.errors import ModelError
from testbed.model.encoding import delays, encode
from testbed.model.layers import arrivals, kth_earliest, max_pool, mean_k_earliest
from testbed.model.network import Affine, ConvLayer, DenseLayer, Perturbation, Pi2Network


def mlp(seed=0, sizes=(12, 8, 5), k=(3, 4)):
    rng = np.random.default_rng(seed)
    layers = tuple(DenseLayer(rng.normal(0, 1.5, (n, m)), kk) for n, m, kk in zip(sizes, sizes[1:], k))
    return Pi2Network(layers, (sizes[0],))


def lenet(seed=0, k=(12, 50, 85, 25, 7)):
    rng = np.random.default_rng(seed)
    c1 = ConvLayer(rng.normal(0, 1, (6, 1, 5, 5)), k[0], (1, 28, 28), 1, 2, 2)
    c2 = ConvLayer(rng.normal(0, 1, (16, 6, 5, 5)), k[1], c1.out_shape, 1, 0, 2)
    dense = [DenseLayer(rng.normal(0, 1, (n, m)), kk) for (n, m), kk in zip(((400, 120), (120, 84), (84, 10)), k[2:])]
    return Pi2Network((c1, c2, *dense), (1, 28, 28))


def test_dense_shapes():
    net = mlp()
    x = np.random.default_rng(1).normal(size=(7, 12))
    traces = net.trace(x)
    assert [t.out_plus.shape for t in traces] == [(7, 8), (7, 5)]
    assert net.scores(x).shape == (7, 5)
    assert net.predict(x).shape == (7,)
    assert net.k == (3, 4) and net.n_classes == 5


def test_forward_is_the_documented_equations():
    net = mlp(2)
    x = np.random.default_rng(3).normal(size=(4, 12))
    c = net.constants
    h = x
    for i, layer in enumerate(net.layers):
        tp, tm = encode(h, c.t0)
        zp, zm = arrivals(tp, tm, *delays(layer.weight, c.c))
        y = mean_k_earliest(zp, layer.k) - mean_k_earliest(zm, layer.k)
        h = np.maximum(-c.s * y, 0.0)
    np.testing.assert_allclose(net.scores(x), -c.s * y, rtol=0, atol=1e-12)


def test_causal_offsets_bound_every_kth_arrival():
    net = mlp(4)
    x = np.random.default_rng(5).normal(0, 2, (20, 12))
    offsets = net.causal_offsets(x)
    assert len(offsets) == 2 and min(offsets) >= 0
    for layer, trace, m_k in zip(net.layers, net.trace(x), offsets):
        zp, zm = arrivals(trace.t_plus, trace.t_minus, *delays(layer.weight, net.constants.c))
        assert np.all(kth_earliest(zp, layer.k) - trace.out_plus <= m_k + 1e-12)
        assert np.all(kth_earliest(zm, layer.k) - trace.out_minus <= m_k + 1e-12)
        # and it is tight: some neuron of some sample reaches it
        late = max((kth_earliest(zp, layer.k) - trace.out_plus).max(), (kth_earliest(zm, layer.k) - trace.out_minus).max())
        assert late == pytest.approx(m_k, abs=1e-12)


def test_lenet_forward():
    net = lenet()
    x = np.random.default_rng(6).uniform(0, 1, (2, 1, 28, 28))
    traces = net.trace(x)
    assert [t.out_plus.shape for t in traces] == [(2, 6, 28, 28), (2, 16, 10, 10), (2, 120), (2, 84), (2, 10)]
    scores = net.scores(x)
    assert scores.shape == (2, 10) and np.isfinite(scores).all()
    # layer 2 sees conv2's rectified, pooled, flattened output (channel-major, like torch)
    s = net.constants.s
    h = max_pool(np.maximum(-s * traces[1].y, 0.0), 2).reshape(2, -1)
    np.testing.assert_allclose(encode(h, net.constants.t0)[0], traces[2].t_plus, rtol=0, atol=1e-12)
    assert len(net.causal_offsets(x)) == 5


def test_dense_first_layer_takes_image_shaped_input():
    rng = np.random.default_rng(7)
    flat = Pi2Network((DenseLayer(rng.normal(size=(16, 3)), 2),), (16,))
    image = Pi2Network(flat.layers, (1, 4, 4))
    x = rng.normal(size=(3, 1, 4, 4))
    np.testing.assert_array_equal(image.scores(x), flat.scores(x.reshape(3, 16)))


def test_perturbation_is_seeded_and_finite():
    net = mlp(8)
    x = np.random.default_rng(9).normal(size=(10, 12))
    p = Perturbation(jitter=0.1, keep=0.3, seed=4)
    a, b = net.scores(x, p), net.scores(x, p)
    np.testing.assert_array_equal(a, b)
    assert np.isfinite(a).all()
    assert not np.array_equal(a, net.scores(x))


def test_with_bits_quantises_delays():
    net = mlp(10)
    x = np.random.default_rng(11).normal(size=(5, 12))
    q = net.with_bits(3)
    assert q.bits == 3 and net.bits is None
    layers = tuple(DenseLayer(delays(layer.weight, 3.0, 3)[0] - 3.0, layer.k) for layer in net.layers)
    np.testing.assert_allclose(q.scores(x), Pi2Network(layers, (12,)).scores(x), atol=1e-12)


@pytest.mark.parametrize("build,match", [
    (lambda: Pi2Network((), (4,)), "at least one layer"),
    (lambda: Pi2Network((DenseLayer(np.zeros((4, 3)), 1), DenseLayer(np.zeros((2, 2)), 1)), (4,)),
     "layer 1: dense expects 2 inputs, gets 3"),
    (lambda: DenseLayer(np.zeros((4, 3)), 9), r"K must be an integer in 1..8"),
    (lambda: DenseLayer(np.zeros(4), 1), "must be 2-D"),
    (lambda: ConvLayer(np.zeros((2, 3, 3, 3)), 1, (1, 5, 5)), "3 input channels but the input has 1"),
    (lambda: ConvLayer(np.zeros((2, 1, 3, 3)), 1, (1, 5, 5), stride=0), "stride ≥ 1"),
    (lambda: Pi2Network((ConvLayer(np.zeros((2, 1, 3, 3)), 1, (1, 5, 5)),), (1, 6, 6)), "conv expects input shape"),
    (lambda: DenseLayer(np.zeros((4, 3)), 1, s=0.0), "dense layer s must be a finite number > 0"),
    (lambda: DenseLayer(np.zeros((4, 3)), 1, s=np.inf), "dense layer s must be a finite number > 0"),
    (lambda: DenseLayer(np.zeros((4, 3)), 1, affine=Affine(np.ones(2), np.zeros(2))), "affine has 2 channels; the layer has 3"),
    (lambda: DenseLayer(np.zeros((4, 3)), 1, residual=-1), "residual must be a layer index ≥ 0"),
    (lambda: Affine(np.ones(2), np.zeros(3)), "affine scale has 2 channels but shift has 3"),
    (lambda: Affine(np.ones((2, 2)), np.zeros((2, 2))), "affine scale must be a non-empty 1-D array"),
    (lambda: Pi2Network((DenseLayer(np.zeros((4, 3)), 1),), (4,), rectified="yes"), "rectified must be True or False"),
    (lambda: Perturbation(keep=0.0), "keep fraction"),
    (lambda: Perturbation(jitter=-1.0), "jitter"),
])
def test_validation_errors(build, match):
    with pytest.raises(ModelError, match=match):
        build()


def test_wrong_input_shape():
    with pytest.raises(ModelError, match=r"sample shape \(5,\), the network expects \(12,\)"):
        mlp().scores(np.zeros((2, 5)))


def test_per_layer_constants_are_the_documented_equations():
    # x' = pool(ReLU(affine(−s_l·y)) + input of layer r); scores ReLU(affine(−s·y)) when rectified
    rng = np.random.default_rng(6)
    affine = Affine(rng.normal(size=2), rng.normal(size=2))
    c0 = ConvLayer(rng.normal(size=(2, 2, 3, 3)), 5, (2, 6, 6), 1, 1, 1, s=1.0, affine=affine)
    c1 = ConvLayer(rng.normal(size=(2, 2, 3, 3)), 7, (2, 6, 6), 1, 1, 3, residual=1)  # its own input
    d = DenseLayer(rng.normal(size=(8, 3)), 4, s=2.0, affine=Affine(np.array([1.0, -1.0, 2.0]), np.zeros(3)))
    net = Pi2Network((c0, c1, d), (2, 6, 6), rectified=True)
    x = rng.normal(size=(4, 2, 6, 6))
    plain = lambda layer: Pi2Network((replace(layer, s=None, affine=None, residual=None, pool=1)
                                      if isinstance(layer, ConvLayer) else replace(layer, s=None, affine=None),),
                                     layer.in_shape if isinstance(layer, ConvLayer) else (layer.n_inputs,))
    y0 = plain(c0).trace(x)[0].y
    x1 = np.maximum(-1.0 * y0 * affine.scale[None, :, None, None] + affine.shift[None, :, None, None], 0)
    y1 = plain(c1).trace(x1)[0].y
    x2 = max_pool(np.maximum(-10.0 * y1, 0) + x1, 3).reshape(4, -1)
    y2 = plain(d).trace(x2)[0].y
    expected = np.maximum(-2.0 * y2 * np.array([1.0, -1.0, 2.0]), 0)
    np.testing.assert_allclose(net.scores(x), expected, rtol=0, atol=1e-12)
    assert net.scales == (1.0, 10.0, 2.0) and not net.uniform


def test_rectified_ties_go_to_the_first_class():
    # negative weights make every score < 0, so all are 0 after the rectifier: argmax picks class 0, as torch's does
    rng = np.random.default_rng(0)
    net = Pi2Network((DenseLayer(rng.uniform(-3, -1, (6, 4)), 5),), (6,))
    x = rng.uniform(0, 1, (5, 6))
    assert (net.scores(x) < 0).all() and net.predict(x).tolist() == [2, 0, 1, 2, 1]
    rect = replace(net, rectified=True)
    assert (rect.scores(x) == 0).all() and rect.predict(x).tolist() == [0] * 5


@pytest.mark.parametrize("layers, match", [
    (lambda: (DenseLayer(np.zeros((4, 4)), 1, residual=1), DenseLayer(np.zeros((4, 2)), 1)),
     r"layer 0: residual = 1; expected the index of this or an earlier layer"),
    (lambda: (DenseLayer(np.zeros((4, 3)), 1, residual=0), DenseLayer(np.zeros((3, 2)), 1)),
     r"layer 0: residual adds the input of layer 0, shape \(4,\), to an output of shape \(3,\)"),
])
def test_residual_validation(layers, match):
    with pytest.raises(ModelError, match=match):
        Pi2Network(layers(), (4,))
