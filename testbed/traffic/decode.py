"""From the kernel's neuron events to π² quantities (pi2-model.md, steps 4–5).

Each neuron port (an interface, known by its ifindex) is the input set z⁺_j or z⁻_j of one
neuron, and its gate program is that input set's π²_K neuron (testbed.kernel.gate): it counts the
first K spikes of a sample that arrive by the layer's deadline, sums their kernel RX stamps after
the sample's origin, and passes one *neuron event* carrying count c and sum Σ. So, per sample::

    T±_j = Σ / (c · τ)                      the mean of the K earliest arrivals, in model units
    y_j = T⁺_j − T⁻_j,  scores = −s·y,  prediction = argmax(scores),  x'_j = ReLU(−s·y_j)

A set with fewer than K spikes by the deadline emits no event; the relay reads its count and sum
from the kernel at the deadline and hands them in as an event of the same form. Missing arrivals
thus follow the model (`testbed.model.layers.mean_k_earliest`): fewer than K average the ones
that came, and a set with none times out at the deadline. x' = 0 re-encodes as both events at T0
in the next layer: the model's time-out. Pure numpy: no kernel here, and no time filtering (the
kernel dropped late spikes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from testbed.errors import PlanError
from testbed.plan.fabric_plan import SIGN_MINUS, SIGN_PLUS
from testbed.plan.wire import KIND_EVENT


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
    count_plus: np.ndarray  # arrivals the neuron counted for T⁺ (≤ K; < K: short, 0: timed out)
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


def decode_layer(events: np.ndarray, ports: Mapping[int, PortRole], *, samples: np.ndarray, tau_ns: float,
                 k: int, deadline: float, s: float = 10.0) -> LayerDecode:
    """Decode one layer from its neuron events (`testbed.traffic.capture.ARRIVAL_DTYPE` rows of kind
    `KIND_EVENT`: seq = the count, time_ns = the sum of the counted arrivals after the origin, ns).

    `ports` maps ifindex → role and must cover z⁺ and z⁻ of neurons 0..m−1 of one layer.
    `deadline` (model units after the origin) is the T of a set that counted nothing. Spikes,
    primers and events of other layers, samples or interfaces are ignored; if a (sample, port)
    has several events, the one with the largest count is the neuron's (a deadline read never
    outnumbers the K-th spike's event).
    """
    samples = np.asarray(samples, dtype=np.int64)
    if samples.ndim != 1 or samples.size == 0:
        raise PlanError(f"decode: {samples.size} sample ids; expected a 1-D array of at least one")
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

    e = events[(events["kind"] == KIND_EVENT) & (events["layer"] == layer) & (events["seq"] > 0)]
    port_at = np.minimum(np.searchsorted(port_ids, e["ifindex"]), len(port_ids) - 1)
    order = np.argsort(samples, kind="stable")
    sample_at = np.minimum(np.searchsorted(samples[order], e["sample"]), len(samples) - 1)
    row = order[sample_at]
    known = (port_ids[port_at] == e["ifindex"]) & (samples[row] == e["sample"])
    e, row, port_at = e[known], row[known], port_at[known]
    # Ascending count, so where a (sample, port) has several events the largest count is written last.
    by_count = np.argsort(e["seq"], kind="stable")
    e, row, port_at = e[by_count], row[by_count], port_at[by_count]
    count = np.zeros((2, len(samples), m), dtype=np.int64)
    total = np.zeros((2, len(samples), m))
    count[sign_of[port_at], row, neuron_of[port_at]] = np.minimum(e["seq"], k)
    total[sign_of[port_at], row, neuron_of[port_at]] = e["time_ns"] / tau_ns
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(count > 0, total / np.maximum(count, 1), deadline)
    t_plus, t_minus = t[SIGN_PLUS], t[SIGN_MINUS]
    y = t_plus - t_minus
    scores = -s * y
    return LayerDecode(
        samples=samples, t_plus=t_plus, t_minus=t_minus,
        count_plus=count[SIGN_PLUS], count_minus=count[SIGN_MINUS], k=int(k),
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
