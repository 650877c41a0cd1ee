"""Decoding neuron events: the decoder must reproduce the model's π²_K layer from what the kernel's neurons emit.

The events are built from the model's own arrival sets (z⁺, z⁻ of a random layer) the way a
port's neuron builds them (testbed.kernel.gate): of the arrivals it keeps (not lost, not after the
deadline) it counts the K earliest and sums their times after the origin in whole ns. They are
shuffled and mixed with rows the decoder must ignore (spikes, primers, other samples, other
interfaces, other layers); then T±, y, scores, prediction and x' must equal the model's.
"""

from __future__ import annotations

import numpy as np
import pytest

from testbed.errors import PlanError
from testbed.model.encoding import delays, encode
from testbed.model.layers import arrivals as model_arrivals
from testbed.model.layers import mean_k_earliest
from testbed.plan.wire import KIND_EVENT, KIND_PRIMER, KIND_SPIKE
from testbed.traffic.capture import ARRIVAL_DTYPE
from testbed.traffic.decode import PortRole, decode_layer

TAU_NS = 1_000_000  # 1 ms per model unit
N_IN, M, S = 6, 4, 5
LAYER = 1
T0, C, SCALE = 3.0, 3.0, 10.0
PORTS = {10 + 2 * j + sign: PortRole(LAYER, j, sign) for j in range(M) for sign in (0, 1)}
DEADLINE = 30.0  # model units: later than any arrival of this layer


def _layer(seed: int):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 2.5, (S, N_IN))
    w = rng.uniform(-3, 3, (N_IN, M))
    t_plus, t_minus = encode(x, T0)
    d_plus, d_minus = delays(w, C)
    zp, zm = model_arrivals(t_plus, t_minus, d_plus, d_minus)  # (S, 2n, m)
    return rng, zp, zm


def _events(rng, zp, zm, samples, k, deadline=DEADLINE, lose=None):
    """One event per (sample, port) that counted anything: count and whole-ns sum of its K earliest kept arrivals."""
    rows = []
    for sign, z in ((0, zp), (1, zm)):
        for s_i in range(S):
            for j in range(M):
                kept = [t for a, t in enumerate(z[s_i, :, j]) if t <= deadline and not (lose and lose(s_i, a, j, sign))]
                counted = sorted(kept)[:k]
                if counted:
                    total = sum(int(round(t * TAU_NS)) for t in counted)
                    rows.append((10 + 2 * j + sign, LAYER, 0, 0, samples[s_i], len(counted), KIND_EVENT, total, 0))
    # Rows the decoder must ignore: a spike and a primer on a real port, an event of another
    # sample, of an unknown port, of another layer, and one with count 0.
    rows.append((10, LAYER, 0, 0, samples[0], 1, KIND_SPIKE, 5, 0))
    rows.append((10, LAYER, 0, 0, samples[0], 1, KIND_PRIMER, 5, 0))
    rows.append((10, LAYER, 0, 0, 999_999, 1, KIND_EVENT, 5, 0))
    rows.append((99, LAYER, 0, 0, samples[0], 1, KIND_EVENT, 5, 0))
    rows.append((10, LAYER + 1, 0, 0, samples[0], 1, KIND_EVENT, 5, 0))
    table = np.array(rows, dtype=ARRIVAL_DTYPE)
    return table[rng.permutation(len(table))]


@pytest.mark.parametrize("k", [1, 3, 8])
def test_decode_matches_model_mean_of_k_earliest(k):
    rng, zp, zm = _layer(seed=k)
    samples = np.array([7, 3, 100, 4_000_000_000, 5], dtype=np.int64)
    got = decode_layer(_events(rng, zp, zm, samples, k), PORTS, samples=samples, tau_ns=TAU_NS, k=k,
                       deadline=DEADLINE, s=SCALE)
    want_p, want_m = mean_k_earliest(zp, k), mean_k_earliest(zm, k)
    # sums of whole ns: 1 ns = 1e-6 model units at τ = 1 ms
    np.testing.assert_allclose(got.t_plus, want_p, atol=1e-6)
    np.testing.assert_allclose(got.t_minus, want_m, atol=1e-6)
    np.testing.assert_allclose(got.y, want_p - want_m, atol=2e-6)
    np.testing.assert_allclose(got.scores, -SCALE * (want_p - want_m), atol=2e-5)
    np.testing.assert_allclose(got.x_next, np.maximum(-SCALE * (want_p - want_m), 0), atol=2e-5)
    want_scores = -SCALE * (want_p - want_m)
    top2 = np.sort(want_scores, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-3  # ns rounding cannot flip these
    assert clear.sum() >= 3
    assert np.array_equal(got.prediction[clear], want_scores.argmax(axis=1)[clear])
    assert np.all(got.count_plus == k) and np.all(got.count_minus == k)
    assert not got.short.any() and not got.timed_out.any()


def test_late_and_lost_arrivals_follow_the_model():
    k = 4
    rng, zp, zm = _layer(seed=11)
    samples = np.arange(S, dtype=np.int64)
    # Sample 0, neuron 0, z⁺: every arrival lost (timed out). Sample 1, neuron 1, z⁻: all but the
    # latest two lost, so fewer than K remain (short: the relay's deadline read). The neurons dropped
    # every arrival after the deadline.
    latest = np.argsort(zm[1, :, 1])[-2:]
    deadline = float(np.quantile(np.concatenate([zp.ravel(), zm.ravel()]), 0.9))

    def lose(s_i, a, j, sign):
        return (s_i, j, sign) == (0, 0, 0) or ((s_i, j, sign) == (1, 1, 1) and a not in latest)
    got = decode_layer(_events(rng, zp, zm, samples, k, deadline, lose), PORTS, samples=samples, tau_ns=TAU_NS,
                       k=k, deadline=deadline, s=SCALE)

    def model(z):  # the model's treatment: lost or late = never arrives (+inf), empty set = deadline
        return mean_k_earliest(np.where(z <= deadline, z, np.inf), k, timeout=deadline)
    zp_lost, zm_lost = zp.copy(), zm.copy()
    zp_lost[0, :, 0] = np.inf
    keep = np.zeros(zm.shape[1], bool)
    keep[latest] = True
    zm_lost[1, ~keep, 1] = np.inf
    np.testing.assert_allclose(got.t_plus, model(zp_lost), atol=1e-6)
    np.testing.assert_allclose(got.t_minus, model(zm_lost), atol=1e-6)
    assert got.t_plus[0, 0] == deadline
    assert got.count_plus[0, 0] == 0 and got.timed_out[0, 0]
    assert got.count_minus[1, 1] == np.count_nonzero(zm[1, latest, 1] <= deadline) < k and got.short[1, 1]


def test_the_event_with_the_largest_count_is_the_neurons():
    # A deadline read taken while the K-th spike's event was in flight holds fewer spikes: it must not win.
    rows = [(10, LAYER, 0, 0, 1, 2, KIND_EVENT, 2 * 3 * TAU_NS, 0), (10, LAYER, 0, 0, 1, 1, KIND_EVENT, 2 * TAU_NS, 0)]
    for table in (rows, rows[::-1]):
        got = decode_layer(np.array(table, dtype=ARRIVAL_DTYPE), PORTS, samples=np.array([1]), tau_ns=TAU_NS, k=2,
                           deadline=DEADLINE)
        assert got.t_plus[0, 0] == 3.0 and got.count_plus[0, 0] == 2


def test_missing_samples_time_out_everywhere():
    got = decode_layer(np.zeros(0, dtype=ARRIVAL_DTYPE), PORTS, samples=np.array([1, 2]), tau_ns=TAU_NS, k=2,
                       deadline=DEADLINE)
    assert np.all(got.t_plus == DEADLINE) and np.all(got.y == 0) and np.all(got.x_next == 0)
    assert got.timed_out.all()


@pytest.mark.parametrize("ports, match", [
    ({}, "no ports"),
    ({1: PortRole(0, 0, 0), 2: PortRole(1, 0, 1)}, "span layers"),
    ({1: PortRole(0, 0, 0), 2: PortRole(0, 1, 0), 3: PortRole(0, 1, 1)}, r"\(0, 1\)"),
])
def test_bad_port_maps_are_rejected(ports, match):
    with pytest.raises(PlanError, match=match):
        decode_layer(np.zeros(0, dtype=ARRIVAL_DTYPE), ports, samples=np.array([0]), tau_ns=TAU_NS, k=1, deadline=1.0)


def test_repeated_samples_are_rejected():
    with pytest.raises(PlanError, match="distinct"):
        decode_layer(np.zeros(0, dtype=ARRIVAL_DTYPE), PORTS, samples=np.array([1, 1]), tau_ns=TAU_NS, k=1,
                     deadline=1.0)
