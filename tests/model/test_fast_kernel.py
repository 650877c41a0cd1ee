"""The compiled π²_K dense layer against a brute-force sort and against the numpy arrival tensor."""

from __future__ import annotations

import numpy as np
import pytest

from testbed.errors import ModelError
from testbed.model.encoding import delays, encode
from testbed.model.fast_kernel import earliest_times
from testbed.model.layers import arrivals, dense_times, mean_k_earliest
from testbed.model.network import DenseLayer, Pi2Network

C = 3.0
T0 = 3.0


def brute_force(tp, tm, dp, dm, k, timeout):
    """(T⁺, T⁻, offset) neuron by neuron: build both arrival lists, sort, average the finite K earliest."""
    batch, n = tp.shape
    m = dp.shape[1]
    out_p, out_m, offset = np.empty((batch, m)), np.empty((batch, m)), np.zeros(batch)
    for b in range(batch):
        for j in range(m):
            z_plus = [tp[b, i] + dp[i, j] for i in range(n)] + [tm[b, i] + dm[i, j] for i in range(n)]
            z_minus = [tp[b, i] + dm[i, j] for i in range(n)] + [tm[b, i] + dp[i, j] for i in range(n)]
            for z, out in ((z_plus, out_p), (z_minus, out_m)):
                earliest = sorted(z)[:k]
                arrived = [v for v in earliest if np.isfinite(v)]
                out[b, j] = sum(arrived) / len(arrived) if arrived else timeout
                if np.isfinite(earliest[-1]) and np.isfinite(out[b, j]):  # else no causal constraint
                    offset[b] = max(offset[b], earliest[-1] - out[b, j])
    return out_p, out_m, offset


def random_times(rng, batch, n, m, ties=False):
    if ties:  # integer values: many equal arrival times
        x, w = rng.integers(-4, 5, (batch, n)).astype(float), rng.integers(-3, 4, (n, m)).astype(float)
    else:  # hidden-layer-like values: some above T0, so t⁻ clips at 0
        x, w = rng.normal(0, 2.5, (batch, n)), rng.normal(0, 2, (n, m))
    return (*encode(x, T0), *delays(w, C))


def assert_matches(got, want, k):
    for a, b in zip(got, want):
        if k == 1:  # the first arrival is one sum t + d, computed as the reference computes it
            np.testing.assert_array_equal(a, b)
        else:  # the K values are summed in another order
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


# sizes straddle the K = 1 kernel's blocks (8 samples × 128 neurons) and the K > 1 buffer (2K + 16)
@pytest.mark.parametrize("batch,n,m,k", [(3, 5, 4, 1), (11, 9, 130, 1), (9, 6, 5, 2), (5, 20, 7, 3),
                                         (4, 40, 3, 11), (6, 7, 9, 14), (2, 60, 3, 120)])
@pytest.mark.parametrize("ties", [False, True])
def test_matches_brute_force(batch, n, m, k, ties):
    rng = np.random.default_rng(batch * 1000 + n * 10 + k + ties)
    tp, tm, dp, dm = random_times(rng, batch, n, m, ties)
    got = dense_times(tp, tm, dp, dm, k, timeout=77.0, with_offset=True)
    assert_matches(got, brute_force(tp, tm, dp, dm, k, 77.0), k)


@pytest.mark.parametrize("k", [1, 2, 5, 16])
def test_lost_packets_and_timeout(k):
    rng = np.random.default_rng(20 + k)
    tp, tm, dp, dm = random_times(rng, 7, 8, 6)
    tp[rng.random(tp.shape) < 0.6] = np.inf
    tm[rng.random(tm.shape) < 0.6] = np.inf
    tp[0] = tm[0] = np.inf  # sample 0 loses every packet: all its neurons time out
    tp[1, 1:] = tm[1] = np.inf  # sample 1 keeps one input event: fewer than K arrivals for K > 1
    for timeout in (41.0, np.inf):
        got = earliest_times(tp, tm, dp, dm, k, timeout)
        assert_matches(got, brute_force(tp, tm, dp, dm, k, timeout), k)
        np.testing.assert_array_equal(got[0][0], timeout)
        np.testing.assert_array_equal(got[2][:2], 0.0)  # no neuron saw K arrivals: no causal offset


def test_k1_equals_the_arrival_tensor_minimum_bit_for_bit():
    rng = np.random.default_rng(30)
    tp, tm, dp, dm = random_times(rng, 13, 50, 260)
    out_p, out_m, offset = earliest_times(tp, tm, dp, dm, 1, np.inf)
    zp, zm = arrivals(tp, tm, dp, dm)
    np.testing.assert_array_equal(out_p, zp.min(axis=1))
    np.testing.assert_array_equal(out_m, zm.min(axis=1))
    np.testing.assert_array_equal(offset, 0.0)  # T = z_[1]


def test_k_equal_2n_averages_every_arrival():
    rng = np.random.default_rng(31)
    tp, tm, dp, dm = random_times(rng, 4, 6, 5)
    out_p, out_m, offset = earliest_times(tp, tm, dp, dm, 12, np.inf)
    zp, zm = arrivals(tp, tm, dp, dm)
    np.testing.assert_allclose(out_p, zp.mean(axis=1), rtol=0, atol=1e-12)
    np.testing.assert_allclose(out_m, zm.mean(axis=1), rtol=0, atol=1e-12)
    np.testing.assert_allclose(offset, np.maximum(zp.max(axis=1) - out_p, zm.max(axis=1) - out_m).max(axis=1),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("order", ["descending", "equal"])
def test_many_compactions(order):
    # arrivals that get earlier and earlier refill the buffer again and again; all-equal ones stress the select's ties
    n, k = 300, 4
    tp = np.linspace(50, 1, n)[None, :] if order == "descending" else np.full((1, n), 2.0)
    tm = tp[:, ::-1].copy()
    dp, dm = np.full((n, 2), 1.5), np.full((n, 2), 0.5)
    got = earliest_times(tp, tm, dp, dm, k, np.inf)
    assert_matches(got, brute_force(tp, tm, dp, dm, k, np.inf), k)


def test_non_contiguous_and_float32_inputs():
    rng = np.random.default_rng(32)
    tp, tm, dp, dm = random_times(rng, 6, 9, 5)
    want = earliest_times(tp, tm, dp, dm, 3, np.inf)
    got = earliest_times(np.asfortranarray(tp), tm[:, ::-1][:, ::-1], np.asfortranarray(dp), dm.T.copy().T, 3, np.inf)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    tp32, dp32 = tp.astype(np.float32), dp.astype(np.float32)
    got32 = earliest_times(tp32, tm, dp32, dm, 3, np.inf)
    want32 = earliest_times(tp32.astype(np.float64), tm, dp32.astype(np.float64), dm, 3, np.inf)
    for a, b in zip(got32, want32):
        np.testing.assert_array_equal(a, b)


def test_empty_batch():
    out_p, out_m, offset = earliest_times(np.empty((0, 4)), np.empty((0, 4)), np.ones((4, 3)), np.ones((4, 3)), 2, np.inf)
    assert out_p.shape == out_m.shape == (0, 3) and offset.shape == (0,)


@pytest.mark.parametrize("k", [0, 9])
def test_k_out_of_range(k):
    with pytest.raises(ModelError, match="K must be in 1..8"):
        dense_times(np.zeros((1, 4)), np.zeros((1, 4)), np.ones((4, 2)), np.ones((4, 2)), k)


def test_network_predictions_equal_the_arrival_tensor_reference():
    """A 784-500-10 π² network with K = [1, 30], weights like a trained MLP's, inputs like MNIST pixels."""
    rng = np.random.default_rng(33)
    w1 = np.clip(rng.normal(0, 3 / np.sqrt(784), (784, 500)), -C, C)
    w2 = np.clip(rng.normal(0, 3 / np.sqrt(500), (500, 10)), -C, C)
    net = Pi2Network((DenseLayer(w1, 1), DenseLayer(w2, 30)), (784,))
    x = rng.random((6, 784)) * (rng.random((6, 784)) < 0.2)  # sparse, in [0, 1)
    traces = net.trace(x)
    h = x
    for layer, trace in zip(net.layers, traces):
        zp, zm = arrivals(*encode(h, T0), *delays(layer.weight, C))
        y = mean_k_earliest(zp, layer.k) - mean_k_earliest(zm, layer.k)
        if layer.k == 1:
            np.testing.assert_array_equal(trace.y, y)  # the hidden layer is bit-identical
            h = np.maximum(-net.constants.s * y, 0.0)
            assert (h > T0).any()  # some hidden values exceed T0: t⁻ clips at 0 in layer 2
        else:
            np.testing.assert_allclose(trace.y, y, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(net.predict(x), (-net.constants.s * y).argmax(axis=1))
