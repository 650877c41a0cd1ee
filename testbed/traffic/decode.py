"""From kernel-timestamped arrivals to π² quantities (pi2-model.md, steps 4–5).

Each neuron port (an interface, known by its ifindex) receives the arrival set z⁺_j or z⁻_j of
one neuron. Per sample, with t0 the sample's time origin and τ the model time unit::

    t = (t_ns − t0_ns) / τ                  arrival times in model units
    T±_j = mean of the K earliest t         (the gates passed only arrivals by the deadline)
    y_j = T⁺_j − T⁻_j,  scores = −s·y,  prediction = argmax(scores),  x'_j = ReLU(−s·y_j)

The time-out happens in the kernel: each neuron port's gate drops spikes received after the
layer's deadline (testbed.kernel.gate), so the decoder never filters by time. Missing arrivals
follow the model (`testbed.model.layers.mean_k_earliest`): a set with fewer than K arrivals
averages the ones it has, and a set with none times out at the deadline. Both cases are counted in the result so a run can report them. x' = 0 re-encodes as
both events at T0 in the next layer: the model's time-out. Pure numpy: no kernel here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from testbed.errors import PlanError
from testbed.model.layers import mean_k_earliest
from testbed.plan.fabric_plan import SIGN_MINUS, SIGN_PLUS
from testbed.plan.wire import KIND_SPIKE


@dataclass(frozen=True)
class PortRole:
    """What a receiving interface is: input set z⁺ (sign 0) or z⁻ (sign 1) of neuron `neuron`."""

    layer: int
    neuron: int
    sign: int

    def __post_init__(self) -> None:
        if self.sign not in (SIGN_PLUS, SIGN_MINUS) or self.neuron < 0 or self.layer < 0:
            raise PlanError(f"port role {self}: expected layer ≥ 0, neuron ≥ 0, sign 0 (z⁺) or 1 (z⁻)")


@dataclass(frozen=True, eq=False)
class LayerDecode:
    """One layer's decoded quantities; arrays are (samples, neurons), model units."""

    samples: np.ndarray  # (S,) sample ids, in the order asked for
    t_plus: np.ndarray  # T⁺
    t_minus: np.ndarray  # T⁻
    count_plus: np.ndarray  # arrivals used for T⁺ (≤ K; < K: short, 0: timed out)
    count_minus: np.ndarray
    k: int
    y: np.ndarray
    scores: np.ndarray  # −s·y (class scores when this is the output layer)
    prediction: np.ndarray  # (S,) argmax of scores
    x_next: np.ndarray  # ReLU(−s·y): the next layer's input values

    @property
    def short(self) -> np.ndarray:
        """Neurons with fewer than K arrivals on either input set by the deadline."""
        return (self.count_plus < self.k) | (self.count_minus < self.k)

    @property
    def timed_out(self) -> np.ndarray:
        """Neurons with an input set that received nothing by the deadline."""
        return (self.count_plus == 0) | (self.count_minus == 0)


def decode_layer(arrivals: np.ndarray, ports: Mapping[int, PortRole], *, samples: np.ndarray,
                 t0_ns: np.ndarray, tau_ns: float, k: int, deadline: float, s: float = 10.0) -> LayerDecode:
    """Decode one layer from `arrivals` (`testbed.traffic.capture.ARRIVAL_DTYPE`).

    `ports` maps ifindex → role and must cover z⁺ and z⁻ of neurons 0..m−1 of one layer.
    `t0_ns[i]` is sample `samples[i]`'s time origin on the arrivals' clock (CLOCK_REALTIME ns).
    `deadline` (model units after t0) is the T of a set that received nothing; the gates already
    dropped later arrivals. Primers and arrivals of other layers, samples or interfaces are ignored.
    """
    samples = np.asarray(samples, dtype=np.int64)
    t0_ns = np.asarray(t0_ns, dtype=np.int64)
    if samples.shape != t0_ns.shape or samples.ndim != 1 or samples.size == 0:
        raise PlanError(f"decode: {samples.size} sample ids for {t0_ns.size} time origins; expected one each (at least one)")
    if len(np.unique(samples)) != len(samples):
        raise PlanError("decode: sample ids must be distinct")
    if not tau_ns > 0:
        raise PlanError(f"decode: tau_ns must be > 0, got {tau_ns}")
    if not (isinstance(k, (int, np.integer)) and k >= 1):
        raise PlanError(f"decode: K must be an integer ≥ 1, got {k!r}")
    m = _neurons(ports)
    layer = next(iter(ports.values())).layer

    port_ids = np.array(sorted(ports), dtype=np.int64)
    neuron_of = np.array([ports[p].neuron for p in port_ids.tolist()], dtype=np.int64)
    sign_of = np.array([ports[p].sign for p in port_ids.tolist()], dtype=np.int64)

    a = arrivals[(arrivals["kind"] == KIND_SPIKE) & (arrivals["layer"] == layer)]
    port_at = np.searchsorted(port_ids, a["ifindex"])
    port_at = np.minimum(port_at, len(port_ids) - 1)
    order = np.argsort(samples, kind="stable")
    sample_at = np.minimum(np.searchsorted(samples[order], a["sample"]), len(samples) - 1)
    row = order[sample_at]
    known = (port_ids[port_at] == a["ifindex"]) & (samples[row] == a["sample"])
    t = (a["t_ns"][known] - t0_ns[row[known]]) / tau_ns
    row = row[known]
    neuron = neuron_of[port_at[known]]
    sign = sign_of[port_at[known]]

    # Keep the K earliest per (sample, neuron, sign): rank each arrival within its set.
    group = (row * m + neuron) * 2 + sign
    by_time = np.lexsort((t, group))
    group, t, row, neuron, sign = group[by_time], t[by_time], row[by_time], neuron[by_time], sign[by_time]
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    rank = np.arange(len(group)) - np.repeat(starts, np.diff(np.r_[starts, len(group)]))
    first_k = rank < k

    # z[sign]: (S, K, m) of the K earliest arrivals, +inf where none (lost, or dropped late by a gate).
    z = np.full((2, len(samples), k, m), np.inf)
    z[sign[first_k], row[first_k], rank[first_k], neuron[first_k]] = t[first_k]
    counts = np.isfinite(z).sum(axis=2)
    t_plus = mean_k_earliest(z[SIGN_PLUS], k, timeout=deadline)
    t_minus = mean_k_earliest(z[SIGN_MINUS], k, timeout=deadline)
    y = t_plus - t_minus
    scores = -s * y
    return LayerDecode(
        samples=samples, t_plus=t_plus, t_minus=t_minus,
        count_plus=counts[SIGN_PLUS], count_minus=counts[SIGN_MINUS], k=int(k),
        y=y, scores=scores, prediction=scores.argmax(axis=1), x_next=np.maximum(scores, 0.0),
    )


def _neurons(ports: Mapping[int, PortRole]) -> int:
    """Number of neurons m, checking the roles are z⁺ and z⁻ of neurons 0..m−1 of one layer."""
    if not ports:
        raise PlanError("decode: no ports given; expected ifindex → PortRole for z⁺ and z⁻ of every neuron")
    layers = {role.layer for role in ports.values()}
    if len(layers) != 1:
        raise PlanError(f"decode: ports span layers {sorted(layers)}; decode one layer at a time")
    roles = sorted((role.neuron, role.sign) for role in ports.values())
    m = roles[-1][0] + 1
    expected = [(j, sign) for j in range(m) for sign in (SIGN_PLUS, SIGN_MINUS)]
    if roles != expected:
        missing = sorted(set(expected) - set(roles))
        raise PlanError(f"decode: ports must give z⁺ and z⁻ of neurons 0..{m - 1} exactly once; "
                        f"missing or repeated (neuron, sign): {missing or 'repeats'}")
    return m
