"""π²_K layers against brute-force references written with plain loops and sorted()."""

from __future__ import annotations

import numpy as np
import pytest

from testbed.errors import ModelError
from testbed.model.encoding import delays, encode
from testbed.model.layers import (arrivals, dense_times, im2col, kth_earliest, max_pool, mean_k_earliest,
                                  temp_solve)
from testbed.model.network import ConvLayer, Pi2Network

C = 3.0
T0 = 3.0


def reference_arrivals(tp, tm, dp, dm, b, j):
    """The two arrival lists of neuron j for sample b (pi2-model.md step 3), built element by element."""
    n = len(tp[b])
    z_plus = [tp[b][i] + dp[i][j] for i in range(n)] + [tm[b][i] + dm[i][j] for i in range(n)]
    z_minus = [tp[b][i] + dm[i][j] for i in range(n)] + [tm[b][i] + dp[i][j] for i in range(n)]
    return z_plus, z_minus


def reference_mean_k(z, k, timeout=np.inf):
    """Sort, keep the K earliest, average the ones that arrived (finite); none: the time-out."""
    earliest = [v for v in sorted(z)[:k] if np.isfinite(v)]
    return sum(earliest) / len(earliest) if earliest else timeout


def reference_temp(z, gamma):
    """Solve Σ[T − z]₊ = γ by bisection on the increasing function T ↦ Σ[T − z]₊."""
    lo, hi = min(z), min(z) + gamma  # f(lo) = 0 < γ ≤ f(hi)
    for _ in range(200):
        mid = (lo + hi) / 2
        if sum(max(mid - v, 0.0) for v in z) < gamma:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def reference_layer(x, w, k, timeout=np.inf):
    """(T⁺, T⁻) of a dense π²_K layer, neuron by neuron."""
    tp, tm = encode(x, T0)
    dp, dm = delays(w, C)
    out_p = np.empty((len(x), w.shape[1]))
    out_m = np.empty_like(out_p)
    for b in range(len(x)):
        for j in range(w.shape[1]):
            zp, zm = reference_arrivals(tp.tolist(), tm.tolist(), dp.tolist(), dm.tolist(), b, j)
            out_p[b, j] = reference_mean_k(zp, k, timeout)
            out_m[b, j] = reference_mean_k(zm, k, timeout)
    return out_p, out_m


def layer_times(x, w, k, **kwargs):
    tp, tm = encode(x, T0)
    dp, dm = delays(w, C)
    return dense_times(tp, tm, dp, dm, k, **kwargs)


@pytest.mark.parametrize("k", [1, 2, 7, 12])  # 12 = 2n: every arrival counts
def test_dense_matches_sorted_reference(k):
    rng = np.random.default_rng(k)
    x, w = rng.normal(0, 1.5, (4, 6)), rng.normal(0, 2, (6, 5))
    out_p, out_m = layer_times(x, w, k)
    ref_p, ref_m = reference_layer(x, w, k)
    np.testing.assert_allclose(out_p, ref_p, rtol=0, atol=1e-12)
    np.testing.assert_allclose(out_m, ref_m, rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [1, 3, 8])
def test_dense_with_ties(k):
    # integer inputs and weights make many arrival times equal; the K-mean must not care which tie wins
    rng = np.random.default_rng(10 + k)
    x, w = rng.integers(-2, 3, (5, 4)).astype(float), rng.integers(-3, 4, (4, 3)).astype(float)
    out_p, out_m = layer_times(x, w, k)
    ref_p, ref_m = reference_layer(x, w, k)
    np.testing.assert_array_equal(out_p, ref_p)
    np.testing.assert_array_equal(out_m, ref_m)


def test_arrival_sets_match_definition():
    rng = np.random.default_rng(1)
    tp, tm = rng.uniform(0, 6, (2, 3)), rng.uniform(0, 6, (2, 3))
    dp, dm = delays(rng.normal(0, 2, (3, 4)), C)
    zp, zm = arrivals(tp, tm, dp, dm)
    for b in range(2):
        for j in range(4):
            ref_p, ref_m = reference_arrivals(tp.tolist(), tm.tolist(), dp.tolist(), dm.tolist(), b, j)
            assert sorted(zp[b, :, j].tolist()) == pytest.approx(sorted(ref_p), abs=1e-12)
            assert sorted(zm[b, :, j].tolist()) == pytest.approx(sorted(ref_m), abs=1e-12)


def test_k1_is_first_arrival_and_kth_earliest():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(3, 9, 4))
    np.testing.assert_array_equal(mean_k_earliest(z, 1), z.min(axis=1))
    for k in (1, 4, 9):
        ref = [[sorted(z[b, :, j].tolist())[k - 1] for j in range(4)] for b in range(3)]
        np.testing.assert_array_equal(kth_earliest(z, k), ref)


def test_lost_packets_average_what_arrived_and_time_out():
    z = np.array([[[1.0, np.inf, np.inf], [np.inf, 2.0, np.inf], [3.0, np.inf, np.inf], [np.inf, 6.0, np.inf]]])
    out = mean_k_earliest(z, 3, timeout=50.0)
    for j in range(3):
        assert out[0, j] == reference_mean_k(z[0, :, j].tolist(), 3, 50.0)
    np.testing.assert_array_equal(out, [[2.0, 4.0, 50.0]])  # neuron 2 saw nothing: its deadline


def test_lost_inputs_in_a_layer_match_reference():
    rng = np.random.default_rng(3)
    x, w = rng.normal(size=(4, 5)), rng.normal(0, 2, (5, 3))
    tp, tm = encode(x, T0)
    tp[rng.random(tp.shape) < 0.5] = np.inf
    tm[rng.random(tm.shape) < 0.5] = np.inf
    tp[0] = tm[0] = np.inf  # sample 0 loses everything
    dp, dm = delays(w, C)
    out_p, out_m = dense_times(tp, tm, dp, dm, 4, timeout=99.0)
    for b in range(4):
        for j in range(3):
            zp, zm = reference_arrivals(tp.tolist(), tm.tolist(), dp.tolist(), dm.tolist(), b, j)
            assert out_p[b, j] == pytest.approx(reference_mean_k(zp, 4, 99.0), abs=1e-12)
            assert out_m[b, j] == pytest.approx(reference_mean_k(zm, 4, 99.0), abs=1e-12)
    np.testing.assert_array_equal(out_p[0], 99.0)


@pytest.mark.parametrize("gamma", [0.05, 1.0, 7.5, 100.0])
def test_temp_matches_bisection(gamma):
    rng = np.random.default_rng(int(gamma * 100))
    z = rng.uniform(0, 10, (3, 8, 4))
    z[0, :4, 0] = 2.0  # ties
    out = temp_solve(z, gamma)
    for b in range(3):
        for j in range(4):
            assert out[b, j] == pytest.approx(reference_temp(z[b, :, j].tolist(), gamma), abs=1e-9)


def test_temp_layer_uses_gamma():
    rng = np.random.default_rng(4)
    x, w = rng.normal(size=(2, 4)), rng.normal(0, 2, (4, 3))
    tp, tm = encode(x, T0)
    dp, dm = delays(w, C)
    out_p, _ = dense_times(tp, tm, dp, dm, 1, gamma=2.0)
    zp, _ = arrivals(tp, tm, dp, dm)
    for b in range(2):
        for j in range(3):
            assert out_p[b, j] == pytest.approx(reference_temp(zp[b, :, j].tolist(), 2.0), abs=1e-9)


def test_offset_is_latest_kth_arrival_after_output():
    rng = np.random.default_rng(5)
    x, w = rng.normal(size=(3, 5)), rng.normal(0, 2, (5, 4))
    out_p, out_m, offset = layer_times(x, w, 3, with_offset=True)
    tp, tm = encode(x, T0)
    dp, dm = delays(w, C)
    for b in range(3):
        late = []
        for j in range(4):
            zp, zm = reference_arrivals(tp.tolist(), tm.tolist(), dp.tolist(), dm.tolist(), b, j)
            late += [sorted(zp)[2] - out_p[b, j], sorted(zm)[2] - out_m[b, j]]
        assert offset[b] == pytest.approx(max(late), abs=1e-12)
        assert offset[b] >= 0  # the mean of the K earliest never exceeds the K-th


def test_chunking_does_not_change_results(monkeypatch):
    rng = np.random.default_rng(6)
    x, w = rng.normal(size=(9, 6)), rng.normal(0, 2, (6, 5))
    whole = layer_times(x, w, 4, with_offset=True)
    monkeypatch.setattr("testbed.model.layers._CHUNK_BYTES", 1)  # one sample per chunk
    for a, b in zip(whole, layer_times(x, w, 4, with_offset=True)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("k", [0, 13])
def test_k_out_of_range(k):
    with pytest.raises(ModelError, match="K must be in 1..12"):
        mean_k_earliest(np.zeros((1, 12, 2)), k)


def test_temp_needs_positive_gamma():
    with pytest.raises(ModelError, match="gamma"):
        temp_solve(np.zeros((1, 4, 1)), 0.0)


def reference_patches(x, kh, kw, stride, padding, pad_value):
    b, c, h, w = x.shape
    padded = np.full((b, c, h + 2 * padding, w + 2 * padding), pad_value)
    padded[:, :, padding:padding + h, padding:padding + w] = x
    ho, wo = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    out = np.empty((b, ho * wo, c * kh * kw))
    for s in range(b):
        for oy in range(ho):
            for ox in range(wo):
                out[s, oy * wo + ox] = [padded[s, ch, oy * stride + dy, ox * stride + dx]
                                        for ch in range(c) for dy in range(kh) for dx in range(kw)]
    return out


@pytest.mark.parametrize("stride,padding", [(1, 0), (1, 2), (2, 1)])
def test_im2col_matches_loops(stride, padding):
    x = np.random.default_rng(7).normal(size=(2, 3, 7, 6))
    np.testing.assert_array_equal(im2col(x, (3, 2), stride, padding, T0), reference_patches(x, 3, 2, stride, padding, T0))


def test_im2col_rejects_too_large_kernel():
    with pytest.raises(ModelError, match="does not fit"):
        im2col(np.zeros((1, 1, 3, 3)), (5, 5), 1, 0, T0)


def test_conv_layer_matches_loop_convolution_of_arrival_times():
    rng = np.random.default_rng(8)
    cin, cout, h, w, kh, k, pad = 2, 3, 6, 5, 3, 5, 1
    weight = rng.normal(0, 2, (cout, cin, kh, kh))
    x = rng.normal(size=(2, cin, h, w))
    net = Pi2Network((ConvLayer(weight, k, (cin, h, w), 1, pad, 1),), (cin, h, w))
    trace = net.trace(x)[0]
    tp, tm = encode(x, T0)
    dp, dm = delays(weight, C)
    ho, wo = h + 2 * pad - kh + 1, w + 2 * pad - kh + 1
    pad_t = lambda t: np.pad(t, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=T0)  # x = 0 ↦ (T0, T0)
    tpp, tmp = pad_t(tp), pad_t(tm)
    for b in range(2):
        for o in range(cout):
            for oy in range(ho):
                for ox in range(wo):
                    zp, zm = [], []
                    for ch in range(cin):
                        for dy in range(kh):
                            for dx in range(kh):
                                a_p, a_m = tpp[b, ch, oy + dy, ox + dx], tmp[b, ch, oy + dy, ox + dx]
                                zp += [a_p + dp[o, ch, dy, dx], a_m + dm[o, ch, dy, dx]]
                                zm += [a_p + dm[o, ch, dy, dx], a_m + dp[o, ch, dy, dx]]
                    assert trace.out_plus[b, o, oy, ox] == pytest.approx(reference_mean_k(zp, k), abs=1e-12)
                    assert trace.out_minus[b, o, oy, ox] == pytest.approx(reference_mean_k(zm, k), abs=1e-12)


def test_max_pool_matches_loops():
    x = np.random.default_rng(9).normal(size=(2, 3, 5, 4))
    out = max_pool(x, 2)
    assert out.shape == (2, 3, 2, 2)
    for idx in np.ndindex(out.shape):
        b, c, i, j = idx
        assert out[idx] == max(x[b, c, 2 * i + di, 2 * j + dj] for di in range(2) for dj in range(2))
