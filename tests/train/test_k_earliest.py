"""The compiled K-earliest op against a plain torch reference: same forward, same gradients, ties included."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from testbed.errors import TrainingError  # noqa: E402
from testbed.train.k_earliest import k_earliest_mean  # noqa: E402

pytestmark = pytest.mark.torch


def reference(t, d, k, timeout):
    """Build every arrival, stable-sort each neuron's, average the finite ones among the first K.

    The stable sort makes the selection among equal arrivals the lowest indices, the rule the op
    documents, so gradients are comparable on ties too.
    """
    z = t[:, None, :] + d.T[None]                                   # (rows, m, A)
    order = torch.sort(z.detach(), dim=2, stable=True).indices[:, :, :k]
    earliest = torch.gather(z, 2, order)
    finite = torch.isfinite(earliest)
    count = finite.sum(dim=2)
    total = torch.where(finite, earliest, torch.zeros_like(earliest)).sum(dim=2)
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, timeout))


def case(seed, rows, arrivals, m, ties, lost, dtype):
    rng = np.random.default_rng(seed)
    if ties:  # few distinct values: many equal arrivals, also at the K-th earliest
        t, d = rng.integers(0, 4, (rows, arrivals)) / 2.0, rng.integers(0, 3, (arrivals, m)) / 2.0
    else:
        t, d = rng.uniform(0, 6, (rows, arrivals)), rng.uniform(0, 6, (arrivals, m))
    if lost:
        t[rng.random(t.shape) < lost] = np.inf
        t[0] = np.inf  # a row with no arrival at all: every neuron times out
    return (torch.tensor(t, dtype=dtype, requires_grad=True), torch.tensor(d, dtype=dtype, requires_grad=True))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("lost", [0.0, 0.6], ids=["all-arrive", "lost"])
@pytest.mark.parametrize("rows, arrivals, m, k", [(300, 50, 6, 12), (40, 300, 16, 50), (32, 24, 5, 1),
                                                  (32, 24, 5, 24), (64, 168, 10, 75)])
def test_forward_and_gradients_equal_the_reference(rows, arrivals, m, k, ties, lost, dtype):
    t, d = case(rows + k, rows, arrivals, m, ties, lost, dtype)
    ours = k_earliest_mean(t, d, k, timeout=99.0)
    tr, dr = (x.detach().clone().requires_grad_(True) for x in (t, d))
    want = reference(tr, dr, k, timeout=99.0)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    np.testing.assert_allclose(ours.detach().numpy(), want.detach().numpy(), rtol=0, atol=tol)
    upstream = torch.tensor(np.random.default_rng(1).normal(0, 1, want.shape), dtype=dtype)
    (ours * upstream).sum().backward()
    (want * upstream).sum().backward()
    # finite gradients: the reference's autograd also reaches lost arrivals with 0·inf = nan, which
    # the op (whose lost events get nothing) leaves 0
    np.testing.assert_allclose(t.grad.numpy(), torch.nan_to_num(tr.grad, nan=0.0).numpy(), rtol=0, atol=tol * 10)
    np.testing.assert_allclose(d.grad.numpy(), torch.nan_to_num(dr.grad, nan=0.0).numpy(), rtol=0, atol=tol * 100)
    if lost:
        assert (ours.detach()[0] == 99.0).all()


def test_ties_at_the_kth_go_to_the_lowest_indices():
    # one neuron, arrivals 1, 2, 2, 2, 5 (delays 0): K = 3 takes 1 and the first two 2s
    t = torch.tensor([[1.0, 2.0, 2.0, 2.0, 5.0]], requires_grad=True)
    out = k_earliest_mean(t, torch.zeros(5, 1), 3, timeout=9.0)
    out.sum().backward()
    assert out.item() == pytest.approx(5 / 3)
    assert t.grad.flatten().tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0.0, 0.0])


def test_bad_k_is_refused():
    with pytest.raises(TrainingError, match="K must be in 1..5"):
        k_earliest_mean(torch.zeros(2, 5), torch.zeros(5, 3), 6, timeout=1.0)
