"""Compiled π²_K dense layer: the mean of the K earliest arrivals without the arrival tensor.

For sample b and neuron j the two arrival sets are (pi2-model.md, step 3)::

    z⁺_j = { t⁺_i + d⁺_ij , t⁻_i + d⁻_ij }_i        z⁻_j = { t⁺_i + d⁻_ij , t⁻_i + d⁺_ij }_i

Building them as a (batch, 2n, m) tensor and partitioning it (the straightforward numpy way)
moves 2·2n·m doubles per sample through memory. These kernels form each arrival in a register
and keep only what the neuron needs:

- K = 1: a running minimum per neuron. The loop over neurons j is innermost and contiguous, so
  it vectorises; blocks of `_SAMPLES` samples × `_NEURONS` neurons keep the minima in L1 while one
  row of delays is reused by every sample of the block.
- K > 1: per neuron a small buffer of candidates. An arrival is kept only if it is earlier than
  the threshold (the K-th earliest of the arrivals kept so far, +inf at first); when the buffer
  fills, a quickselect keeps its K earliest and lowers the threshold. For K = 30 of 1000 arrivals
  that is ~3 compactions per neuron, and keeping is branch-free, so most arrivals cost an add,
  a compare and a store.

Both run in float64 and add t + d exactly as the tensor would, so K = 1 outputs are bit-identical
to it and K > 1 outputs differ only in the order the K values are summed (last-ulp differences).
The mirror structure (t⁺ + d⁺ = A + x + w when nothing is clipped) is not used: hidden values above
T0 clip t⁻ at 0, and the rewritten sums round differently.

Lost packets are +inf: they are never kept (nor win a minimum), so a neuron averages the finite
arrivals among its K earliest and emits `timeout` when there are none. NaN arrivals are ignored too.
"""

from __future__ import annotations

import numba
import numpy as np

_SAMPLES = 8  # samples per block of the K = 1 kernel: each row of delays read serves 8 samples
_NEURONS = 128  # neurons per block: 2 sets × 8 samples × 128 minima × 8 B = 16 KiB, in L1


def _compile(fn):
    """njit, parallel, with an on-disk cache ($NUMBA_CACHE_DIR, else __pycache__ here, else ~/.cache/numba).

    Compiling takes ~10 s, loading the cache ~0.4 s. Where no cache location is writable (a
    read-only install and home), numba refuses `cache=True` outright: compile in each process then.
    """
    try:
        return numba.njit(fn, parallel=True, cache=True)
    except RuntimeError:
        return numba.njit(fn, parallel=True)


@_compile
def _first_arrival(t_plus, t_minus, d_plus, d_minus, timeout, out_plus, out_minus):
    batch, n = t_plus.shape
    m = d_plus.shape[1]
    for block in numba.prange((batch + _SAMPLES - 1) // _SAMPLES):
        b0 = block * _SAMPLES
        b1 = min(batch, b0 + _SAMPLES)
        zp = np.empty((_SAMPLES, _NEURONS))
        zm = np.empty((_SAMPLES, _NEURONS))
        for j0 in range(0, m, _NEURONS):
            width = min(m - j0, _NEURONS)
            zp[:] = np.inf
            zm[:] = np.inf
            for i in range(n):
                dp = d_plus[i, j0:j0 + width]
                dm = d_minus[i, j0:j0 + width]
                for b in range(b0, b1):
                    tp = t_plus[b, i]
                    tm = t_minus[b, i]
                    rp = zp[b - b0]
                    rm = zm[b - b0]
                    for j in range(width):  # vectorised: 8 neurons per AVX-512 instruction
                        # `v < z` is False for NaN and for inf against inf: lost packets never win
                        a = dp[j]
                        c = dm[j]
                        v = tp + a
                        z = rp[j]
                        z = v if v < z else z
                        v = tm + c
                        rp[j] = v if v < z else z
                        v = tp + c
                        z = rm[j]
                        z = v if v < z else z
                        v = tm + a
                        rm[j] = v if v < z else z
            for b in range(b0, b1):
                for j in range(width):
                    v = zp[b - b0, j]
                    out_plus[b, j0 + j] = v if v < np.inf else timeout
                    v = zm[b - b0, j]
                    out_minus[b, j0 + j] = v if v < np.inf else timeout


@numba.njit(inline="always")
def smallest_k(buf, count, k):
    """Reorder buf[:count] so that buf[:k] holds its k smallest values; returns the k-th smallest.

    Quickselect with Hoare partitioning around a median of three. buf holds finite values only.
    """
    lo, hi, target = 0, count - 1, k - 1
    while lo < hi:
        a, b, c = buf[lo], buf[(lo + hi) // 2], buf[hi]
        pivot = max(min(a, b), min(max(a, b), c))
        i, j = lo, hi
        while i <= j:
            while buf[i] < pivot:
                i += 1
            while buf[j] > pivot:
                j -= 1
            if i <= j:
                buf[i], buf[j] = buf[j], buf[i]
                i += 1
                j -= 1
        if target <= j:
            hi = j
        elif target >= i:
            lo = i
        else:
            break  # buf[j+1:i] all equal the pivot, and target is among them
    return buf[target]


@numba.njit(inline="always")
def _offer(buf, count, k, v, threshold):
    """Keep v if it is earlier than `threshold`; when buf fills, keep its k earliest and lower the threshold.

    Branch-free: v is always written past the kept ones and kept by advancing the count, so the
    data-dependent test costs no misprediction. +inf (lost) and NaN are never earlier.
    Returns (count, threshold).
    """
    buf[count] = v
    count += v < threshold
    if count == buf.shape[0]:
        return k, smallest_k(buf, count, k)
    return count, threshold


@numba.njit(inline="always")
def _mean_and_kth(buf, count, k, timeout):
    """(T, z_[K]) from the kept arrivals buf[:count]: their k smallest, or all if fewer (then z_[K] = inf)."""
    kth = np.inf
    if count > k:
        kth = smallest_k(buf, count, k)
        count = k
    elif count == k:
        kth = buf[:k].max()
    if count == 0:
        return timeout, kth
    total = 0.0
    for i in range(count):
        total += buf[i]
    return total / count, kth


@_compile
def _k_earliest(t_plus, t_minus, d_plus_t, d_minus_t, k, timeout, out_plus, out_minus, offset):
    batch, n = t_plus.shape
    m = d_plus_t.shape[0]
    capacity = 2 * k + 16  # > k; compactions are rare once the threshold is near the k-th earliest
    for b in numba.prange(batch):
        buf_p = np.empty(capacity)
        buf_m = np.empty(capacity)
        tp = t_plus[b]
        tm = t_minus[b]
        late = 0.0
        for j in range(m):
            dp = d_plus_t[j]
            dm = d_minus_t[j]
            count_p, count_m = 0, 0
            thr_p, thr_m = np.inf, np.inf
            for i in range(n):
                count_p, thr_p = _offer(buf_p, count_p, k, tp[i] + dp[i], thr_p)
                count_p, thr_p = _offer(buf_p, count_p, k, tm[i] + dm[i], thr_p)
                count_m, thr_m = _offer(buf_m, count_m, k, tp[i] + dm[i], thr_m)
                count_m, thr_m = _offer(buf_m, count_m, k, tm[i] + dp[i], thr_m)
            t_out, kth = _mean_and_kth(buf_p, count_p, k, timeout)
            out_plus[b, j] = t_out
            gap = kth - t_out  # z_[K] − T; inf or NaN when fewer than K arrived: no causal constraint
            if np.isfinite(gap) and gap > late:
                late = gap
            t_out, kth = _mean_and_kth(buf_m, count_m, k, timeout)
            out_minus[b, j] = t_out
            gap = kth - t_out
            if np.isfinite(gap) and gap > late:
                late = gap
        offset[b] = late


def earliest_times(t_plus: np.ndarray, t_minus: np.ndarray, d_plus: np.ndarray, d_minus: np.ndarray,
                   k: int, timeout: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T⁺, T⁻, offset) of a π²_K dense layer: times (batch, n), delays (n, m), 1 ≤ k ≤ 2n.

    T± is (batch, m); offset (batch,) is max over neurons and both sets of z_[K] − T, 0 where
    no neuron has K finite arrivals. K = 1 has T = z_[1], so its offset is 0.
    """
    t_plus = np.ascontiguousarray(t_plus, dtype=np.float64)
    t_minus = np.ascontiguousarray(t_minus, dtype=np.float64)
    batch, m = t_plus.shape[0], d_plus.shape[1]
    out_plus = np.empty((batch, m))
    out_minus = np.empty((batch, m))
    offset = np.zeros(batch)
    if k == 1:
        _first_arrival(t_plus, t_minus, np.ascontiguousarray(d_plus, dtype=np.float64),
                       np.ascontiguousarray(d_minus, dtype=np.float64), float(timeout), out_plus, out_minus)
    else:
        # neuron-major delays: the candidate loop walks one neuron's n delays contiguously
        _k_earliest(t_plus, t_minus, np.ascontiguousarray(d_plus.T, dtype=np.float64),
                    np.ascontiguousarray(d_minus.T, dtype=np.float64), int(k), float(timeout),
                    out_plus, out_minus, offset)
    return out_plus, out_minus, offset
