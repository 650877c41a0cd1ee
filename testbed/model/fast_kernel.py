"""Compiled π²_K dense layer: the mean of the K earliest arrivals without the arrival tensor.

For sample b and neuron j the two arrival sets are (pi2-model.md, step 3)::

    z⁺_j = { t⁺_i + d⁺_ij , t⁻_i + d⁻_ij }_i        z⁻_j = { t⁺_i + d⁻_ij , t⁻_i + d⁺_ij }_i

Building them as a (batch, 2n, m) tensor and partitioning it (the straightforward numpy way)
moves 2·2n·m doubles per sample through memory. These kernels form each arrival in a register
and keep only what the neuron needs:

- K = 1: a running minimum per neuron. The loop over neurons j is innermost and contiguous, so
  it vectorises; blocks of `_SAMPLES` samples × `_NEURONS` neurons keep the minima in L1 while one
  row of delays is reused by every sample of the block.
- K > 1: per neuron a max-heap of the K earliest arrivals so far. An arrival later than the
  heap's top (the current K-th earliest) is rejected with one comparison, which is the common
  case once the heap holds early arrivals.

Both run in float64 and add t + d exactly as the tensor would, so K = 1 outputs are bit-identical
to it and K > 1 outputs differ only in the order the K values are summed (last-ulp differences).
The mirror structure (t⁺ + d⁺ = A + x + w when nothing is clipped) is not used: hidden values above
T0 clip t⁻ at 0, and the rewritten sums round differently.

Lost packets are +inf: they never enter a heap (nor win a minimum), so a neuron averages the finite
arrivals among its K earliest and emits `timeout` when there are none. NaN arrivals are ignored too.
"""

from __future__ import annotations

import numba
import numpy as np

_SAMPLES = 8  # samples per block of the K = 1 kernel: 8 rows of delays per L1 load
_NEURONS = 128  # neurons per block: 2 sets × 8 samples × 128 minima × 8 B = 16 KiB of L1


def _compile(fn):
    """njit with an on-disk cache: next to this file, else $NUMBA_CACHE_DIR or ~/.cache (read-only installs).

    If no cache location is writable numba refuses `cache=True` outright; compile per process then.
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
                    for j in range(width):
                        # `v < r` is False for NaN and for inf against inf: lost packets never win
                        v = tp + dp[j]
                        rp[j] = v if v < rp[j] else rp[j]
                        v = tm + dm[j]
                        rp[j] = v if v < rp[j] else rp[j]
                        v = tp + dm[j]
                        rm[j] = v if v < rm[j] else rm[j]
                        v = tm + dp[j]
                        rm[j] = v if v < rm[j] else rm[j]
            for b in range(b0, b1):
                for j in range(width):
                    v = zp[b - b0, j]
                    out_plus[b, j0 + j] = v if v < np.inf else timeout
                    v = zm[b - b0, j]
                    out_minus[b, j0 + j] = v if v < np.inf else timeout


@numba.njit(inline="always")
def _replace_top(heap, v):
    """Put v in place of the max-heap's top and sift it down; returns the new top."""
    k = heap.shape[0]
    pos = 0
    while True:
        child = 2 * pos + 1
        if child >= k:
            break
        if child + 1 < k and heap[child + 1] > heap[child]:
            child += 1
        if heap[child] <= v:
            break
        heap[pos] = heap[child]
        pos = child
    heap[pos] = v
    return heap[0]


@numba.njit(inline="always")
def _mean_of_heap(heap, timeout):
    """Mean of the finite entries (the arrivals among the K earliest), `timeout` if none."""
    total = 0.0
    count = 0
    for v in heap:
        if v < np.inf:
            total += v
            count += 1
    return total / count if count > 0 else timeout


@_compile
def _k_earliest(t_plus, t_minus, d_plus_t, d_minus_t, k, timeout, out_plus, out_minus, offset):
    batch, n = t_plus.shape
    m = d_plus_t.shape[0]
    for b in numba.prange(batch):
        hp = np.empty(k)
        hm = np.empty(k)
        tp = t_plus[b]
        tm = t_minus[b]
        late = 0.0
        for j in range(m):
            dp = d_plus_t[j]
            dm = d_minus_t[j]
            hp[:] = np.inf
            hm[:] = np.inf
            top_p = np.inf
            top_m = np.inf
            for i in range(n):
                v = tp[i] + dp[i]
                if v < top_p:
                    top_p = _replace_top(hp, v)
                v = tm[i] + dm[i]
                if v < top_p:
                    top_p = _replace_top(hp, v)
                v = tp[i] + dm[i]
                if v < top_m:
                    top_m = _replace_top(hm, v)
                v = tm[i] + dp[i]
                if v < top_m:
                    top_m = _replace_top(hm, v)
            t_out = _mean_of_heap(hp, timeout)
            out_plus[b, j] = t_out
            gap = top_p - t_out  # z_[K] − T; inf or NaN when fewer than K arrived: not a causal constraint
            if np.isfinite(gap) and gap > late:
                late = gap
            t_out = _mean_of_heap(hm, timeout)
            out_minus[b, j] = t_out
            gap = top_m - t_out
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
        # neuron-major delays: the heap loop walks one neuron's n delays contiguously
        _k_earliest(t_plus, t_minus, np.ascontiguousarray(d_plus.T, dtype=np.float64),
                    np.ascontiguousarray(d_minus.T, dtype=np.float64), int(k), float(timeout),
                    out_plus, out_minus, offset)
    return out_plus, out_minus, offset
