"""The mean of the K earliest arrivals as one autograd op with compiled forward and backward.

For event times t (rows, A) and delays d (A, m), neuron j of row r sees the A arrivals
z[r, j, a] = t[r, a] + d[a, j] and emits T[r, j] = the mean of the finite ones among its K
earliest (`timeout` if none is finite), as testbed.model.layers.mean_k_earliest does.

Doing this with torch ops (build z, `torch.topk`, gather, autograd through the gather) made
LeNet-5 training on one thread spend 60 % of its time in topk and most of the rest building and
indexing z (bench/k_earliest.py). Here neither z nor a (rows, m, A) gradient ever exists:

- forward, per (r, j): one branch-free pass splits the arrivals into those earlier than a
  window [centre − width, centre + width) (all taken) and the few inside it, among which a
  quickselect (testbed.model.fast_kernel.smallest_k) finds the rest of the K earliest. Each neuron
  keeps its window from row to row, centred on the last K-th earliest: neighbouring positions of
  a convolution, and samples of a batch, have K-th earliest arrivals close to each other. When
  the K-th earliest falls outside the window, every arrival is ranked once to find it and the
  window is widened. Among arrivals equal to the K-th earliest the lowest indices are taken
  until there are K, so the selection (the first K of a stable sort) and its gradient are
  defined on ties. Arrivals are added in the tensor's own dtype, exactly as t + d in torch, so
  the selection is the one any exact K-smallest of the same z makes; the mean is accumulated in
  float64 (the K values are the same, their sum may differ in the last ulp).
- backward: dT[r, j] reaches each selected finite arrival with weight 1/(its count) and no other,
  the selection gradient of pi2-model.md (training step 3); both t and d get it, from the stored
  indices (rows, m, K) alone.

The kernels are serial (deterministic, and training runs on the threads it is given: torch's).
A LeNet5_K forward + backward of 32 Fashion-MNIST images takes ≈2× less time than with the
topk formulation, an MNIST 784-50-10 one of 128 images 1.3× (bench/results/k_earliest.json).
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from testbed.errors import TrainingError
from testbed.model.fast_kernel import smallest_k


MIN_WIDTH = 0.125  # model time units: a window after a miss is at least ±this wide


@numba.njit(cache=True)
def _split(tr, dj, low, high, picked, cand, cand_at):
    """One pass over a neuron's arrivals: the indices of those earlier than `low` into picked (in
    order), and the values and indices of those in [low, high) into cand/cand_at (in order).

    Branch-free: every arrival is written to both, and kept by advancing a count. Returns the
    two counts and the sum of the arrivals earlier than `low` (all finite: +inf is never earlier).
    """
    below, between, total = 0, 0, 0.0
    for a in range(tr.shape[0]):
        v = tr[a] + dj[a]
        picked[below] = a
        cand[between] = v
        cand_at[between] = a
        early = v < low
        below += early
        total += v if early else 0.0
        between += (not early) & (v < high)
    return below, between, total


@numba.njit(cache=True)
def _forward(t, d_t, k, timeout, out, chosen, weight):
    """out (rows, m), chosen (rows, m, k) (−1: a lost arrival), weight (rows, m) = 1/finite count or 0.

    Per neuron a window [centre − width, centre + width) is kept from row to row (the next row's
    K-th earliest is usually near this one's): one pass splits the arrivals into those before the
    window (all taken) and the few inside it, among which the rest of the K earliest are selected.
    When the K-th earliest falls outside the window, every arrival is ranked once (quickselect) to
    find it, and the window is re-centred on it and widened.
    """
    rows, arrivals = t.shape
    m = d_t.shape[0]
    picked = np.empty(arrivals + 1, dtype=chosen.dtype)
    cand_at = np.empty(arrivals + 1, dtype=chosen.dtype)
    cand = np.empty(arrivals + 1)
    work = np.empty(arrivals + 1)
    centre = np.full(m, -np.inf)  # an empty window: the first row misses and places it
    width = np.zeros(m)
    for r in range(rows):
        tr = t[r]
        for j in range(m):
            dj = d_t[j]
            low, high = centre[j] - width[j], centre[j] + width[j]
            below, between, total = _split(tr, dj, low, high, picked, cand, cand_at)
            if not (below <= k and (below + between >= k or low == np.inf)):
                # missed: the exact K-th earliest, then the window [z_[K], z_[K]] (its ties) around it
                for a in range(arrivals):
                    work[a] = tr[a] + dj[a]
                kth = smallest_k(work, arrivals, k)
                high = np.nextafter(kth, np.inf) if kth < np.inf else np.inf
                below, between, total = _split(tr, dj, kth, high, picked, cand, cand_at)
                centre[j] = kth
                width[j] = max(2 * width[j], MIN_WIDTH)
            need = k - below  # taken from the window: its `need` earliest, the lowest indices among equals
            if need > 0 and between > 0:
                work[:between] = cand[:between]
                kth = smallest_k(work, between, need) if between > need else work[:between].max()
                ties = need
                for i in range(between):
                    ties -= cand[i] < kth
                for i in range(between):  # branch-free, in index order
                    v = cand[i]
                    tie = v == kth
                    take = (v < kth) | (tie & (ties > 0))
                    ties -= take & tie
                    picked[below] = cand_at[i]
                    below += take
                    total += v if take else 0.0
                centre[j] = kth
                # keep a few dozen in the window: more makes the quickselect dearer, fewer the misses likelier
                if between > 24:
                    width[j] *= 0.5
                elif between < 6:
                    width[j] *= 1.5
            # every arrival picked is finite; fewer than K: the rest of the K earliest are lost (+inf)
            chosen[r, j, :below] = picked[:below]
            chosen[r, j, below:] = -1
            finite = below
            if finite > 0:
                out[r, j] = total / finite
                weight[r, j] = 1.0 / finite
            else:
                out[r, j] = timeout
                weight[r, j] = 0.0


@numba.njit(cache=True)
def _backward(chosen, weight, grad_out, grad_t, grad_d_t):
    """grad_t (rows, A) and grad_d_t (m, A) += grad_out · weight on every selected finite arrival."""
    rows, m, k = chosen.shape
    for r in range(rows):
        for j in range(m):
            g = grad_out[r, j] * weight[r, j]
            if g == 0.0:
                continue
            for i in range(k):
                a = chosen[r, j, i]
                if a >= 0:
                    grad_t[r, a] += g
                    grad_d_t[j, a] += g


class KEarliestMean(torch.autograd.Function):
    """T = mean of the finite ones among the K earliest of t[:, None, :] + d.T[None] (module doc)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, d: torch.Tensor, k: int, timeout: float) -> torch.Tensor:
        rows, arrivals = t.shape
        m = d.shape[1]
        t_np = t.detach().contiguous().numpy()
        d_t = d.detach().T.contiguous().numpy().astype(t_np.dtype, copy=False)
        out = np.empty((rows, m), dtype=t_np.dtype)
        chosen = np.empty((rows, m, k), dtype=np.int32 if arrivals < 2**31 else np.int64)
        weight = np.empty((rows, m))
        _forward(t_np, d_t, int(k), float(timeout), out, chosen, weight)
        ctx.save_for_backward(torch.from_numpy(chosen), torch.from_numpy(weight))
        ctx.arrivals, ctx.t_dtype, ctx.d_dtype = arrivals, t.dtype, d.dtype
        return torch.from_numpy(out)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        chosen, weight = ctx.saved_tensors
        rows, m, _ = chosen.shape
        grad_t = np.zeros((rows, ctx.arrivals))
        grad_d_t = np.zeros((m, ctx.arrivals))
        _backward(chosen.numpy(), weight.numpy(), grad_out.detach().double().contiguous().numpy(), grad_t, grad_d_t)
        return (torch.from_numpy(grad_t).to(ctx.t_dtype), torch.from_numpy(grad_d_t).T.to(ctx.d_dtype), None, None)


def k_earliest_mean(t: torch.Tensor, d: torch.Tensor, k: int, timeout: float) -> torch.Tensor:
    """π²_K output times (rows, m) of event times t (rows, A) through delays d (A, m), 1 ≤ k ≤ A."""
    if not 1 <= k <= t.shape[1]:
        raise TrainingError(f"K must be in 1..{t.shape[1]} (the arrivals per neuron), got {k}")
    return KEarliestMean.apply(t, d, k, timeout)
