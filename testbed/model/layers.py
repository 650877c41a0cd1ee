"""π²_K layers in numpy: arrival sets, the mean-of-K-earliest neuron, TEMP, im2col convolution.

A layer with n inputs and m neurons (weights W ∈ R^{n×m}) sees, for neuron j, two arrival sets
of 2n times each (pi2-model.md, step 3)::

    z⁺_j = { t⁺_i + d⁺_ij , t⁻_i + d⁻_ij }_i        z⁻_j = { t⁺_i + d⁻_ij , t⁻_i + d⁺_ij }_i

and the π²_K neuron emits T = mean of the K earliest elements of each set (step 4). The TEMP
variant instead solves Σ_i [T − z_i]₊ = γ, i.e. T = (γ + Σ_{i∈S} z_i)/|S| over the |S| earliest
arrivals that come before T.

Times that never arrive (lost packets) are +inf. A neuron that sees fewer than K finite arrivals
averages the ones it has (its deadline passed); with none at all it times out at `timeout`.
"""

from __future__ import annotations

import numpy as np

from testbed.errors import ModelError

# TEMP's arrival tensors are (batch, 2n, m) float64: bound one chunk's size to keep memory flat.
_CHUNK_BYTES = 64 * 2**20


def arrivals(t_plus: np.ndarray, t_minus: np.ndarray, d_plus: np.ndarray, d_minus: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """The arrival sets (z⁺, z⁻), each of shape (batch, 2n, m), for times (batch, n) and delays (n, m)."""
    zp = np.concatenate([t_plus[:, :, None] + d_plus[None], t_minus[:, :, None] + d_minus[None]], axis=1)
    zm = np.concatenate([t_plus[:, :, None] + d_minus[None], t_minus[:, :, None] + d_plus[None]], axis=1)
    return zp, zm


def mean_k_earliest(z: np.ndarray, k: int, timeout: float = np.inf) -> np.ndarray:
    """Mean of the k smallest values along axis 1 of `z` (batch, arrivals, neurons).

    Infinite entries are lost packets: a neuron averages the finite values among its k
    earliest, and emits `timeout` if it has none.
    """
    n = z.shape[1]
    if not 1 <= k <= n:
        raise ModelError(f"K must be in 1..{n} (the number of arrivals per neuron), got {k}")
    earliest = np.partition(z, k - 1, axis=1)[:, :k] if k < n else z
    finite = np.isfinite(earliest)
    if finite.all():
        return earliest.mean(axis=1)
    count = finite.sum(axis=1)
    total = np.where(finite, earliest, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), timeout)


def temp_solve(z: np.ndarray, gamma: float) -> np.ndarray:
    """TEMP neuron: the T solving Σ_i [T − z_i]₊ = γ along axis 1 (γ > 0)."""
    if not gamma > 0:
        raise ModelError(f"TEMP gamma must be > 0, got {gamma}")
    zs = np.sort(z, axis=1)
    sizes = np.arange(1, zs.shape[1] + 1, dtype=np.float64)[None, :, None]
    candidates = (gamma + np.cumsum(zs, axis=1)) / sizes
    # |S| is the number of arrivals before T: the largest k with z_(k) < T_k.
    valid = zs < candidates
    k_star = zs.shape[1] - 1 - np.argmax(valid[:, ::-1], axis=1)
    return np.take_along_axis(candidates, k_star[:, None], axis=1)[:, 0]


def kth_earliest(z: np.ndarray, k: int) -> np.ndarray:
    """The k-th smallest value along axis 1 (z_[K], used for the causal offset M_K)."""
    return np.partition(z, k - 1, axis=1)[:, k - 1]


def dense_times(t_plus: np.ndarray, t_minus: np.ndarray, d_plus: np.ndarray, d_minus: np.ndarray,
                k: int, gamma: float | None = None, timeout: float = np.inf,
                with_offset: bool = False) -> tuple[np.ndarray, ...]:
    """Output times (T⁺, T⁻), each (batch, m), of a π²_K (or TEMP, if `gamma`) dense layer.

    With `with_offset`, also returns the per-sample causal offset max_j (z_[K] − T) over both
    sets, of shape (batch,): the layer's M_K is its maximum over data.

    π²_K runs the compiled kernel of `fast_kernel`, which never builds the arrival tensor; TEMP
    builds it chunk by chunk and solves each set with `temp_solve`.
    """
    n = t_plus.shape[1]
    if not 1 <= k <= 2 * n:
        raise ModelError(f"K must be in 1..{2 * n} (the number of arrivals per neuron), got {k}")
    if gamma is None:
        from testbed.model.fast_kernel import earliest_times  # numba's import costs ~0.2 s: pay it on first use

        out_p, out_m, offset = earliest_times(t_plus, t_minus, d_plus, d_minus, k, timeout)
    else:
        out_p, out_m, offset = _temp_times(t_plus, t_minus, d_plus, d_minus, k, gamma, with_offset)
    return (out_p, out_m, offset) if with_offset else (out_p, out_m)


def _temp_times(t_plus: np.ndarray, t_minus: np.ndarray, d_plus: np.ndarray, d_minus: np.ndarray,
                k: int, gamma: float, with_offset: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    batch, n = t_plus.shape
    m = d_plus.shape[1]
    rows = max(1, _CHUNK_BYTES // (2 * n * m * 8 * 2))
    out_p = np.empty((batch, m))
    out_m = np.empty((batch, m))
    offset = np.zeros(batch)
    for lo in range(0, batch, rows):
        hi = min(batch, lo + rows)
        zp, zm = arrivals(t_plus[lo:hi], t_minus[lo:hi], d_plus, d_minus)
        for z, out in ((zp, out_p), (zm, out_m)):
            out[lo:hi] = temp_solve(z, gamma)
            if with_offset:
                late = np.nan_to_num(kth_earliest(z, k) - out[lo:hi], nan=0.0, posinf=0.0, neginf=0.0)
                offset[lo:hi] = np.maximum(offset[lo:hi], late.max(axis=1))
    return out_p, out_m, offset


def im2col(x: np.ndarray, kernel: tuple[int, int], stride: int, padding: int, pad_value: float) -> np.ndarray:
    """Receptive fields of x (batch, C, H, W) as (batch, Ho·Wo, C·kh·kw), channel-major like torch."""
    kh, kw = kernel
    if padding:
        x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)), constant_values=pad_value)
    b, c, h, w = x.shape
    ho, wo = (h - kh) // stride + 1, (w - kw) // stride + 1
    if ho < 1 or wo < 1:
        raise ModelError(f"convolution kernel {kh}×{kw} does not fit an input of {h}×{w} (after padding)")
    s = x.strides
    windows = np.lib.stride_tricks.as_strided(
        x, shape=(b, ho, wo, c, kh, kw), strides=(s[0], s[2] * stride, s[3] * stride, s[1], s[2], s[3]))
    return windows.reshape(b, ho * wo, c * kh * kw)


def max_pool(x: np.ndarray, size: int) -> np.ndarray:
    """Non-overlapping size×size max pooling of (batch, C, H, W); in time, the first arrival wins."""
    b, c, h, w = x.shape
    ho, wo = h // size, w // size
    return x[:, :, : ho * size, : wo * size].reshape(b, c, ho, size, wo, size).max(axis=(3, 5))
