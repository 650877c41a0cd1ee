"""Evaluate a FabricPlan in closed form: what the kernel fabric should do, computed in numpy.

What this is, and is not: every arrival is computed as a formula over the plan (injection time
+ the realised delay of the port's synapse or shared line + a fixed per-port flood offset), then
sorted per port. It is not an event-by-event simulation: there is no queue, no CPU, no per-packet
cost, no timer slack, no contention between packets in one qdisc or on one CPU. So it predicts
the kernel exactly only when the kernel is idle enough to release every packet on time; the
report's kernel − simulation errors measure how far a real kernel falls short. (`--tau auto`
draws measured neuron errors onto it, `noise_us`, to predict decisions on a loaded machine; that
is a statistical correction, not a model of the kernel's costs. `waits_us` carries one: the fabric
CPU as a first-come-first-served queue with a per-packet cost, testbed.sim.fabric_cpu, whose
waits are added to the arrivals.)

The simulator reads only the plan, the same description the kernel builder reads, with the
realisations' semantics:

- injection: event (i, sign) of a sample enters layer l's fabric at its lead a before origin_l + t·τ
  (origin_l: the layer's model time zero, which all times below count from);
- broadcast: per-synapse plans: the bridge floods the port attached last first: of P ports
  attached in plan order, port q's copy leaves (P − 1 − q)·flood_copy_us after the first
  (`LayerPlan.flood_offsets_us`); shared delay lines: every member counts the stamp of the
  line's delayed copy (the membership table where it arrives, or the fan-out's copies, which
  keep it), so no offset;
- delay: per-synapse plans: each port's class for (i, sign) holds the event its realised
  `delay_us` (the model's delay plus the event's lead; primer arithmetic and rate granularity
  already folded in by the compiler); shared delay lines: each line holds its event its realised
  `delay_us` and every member port gets it then (`LayerPlan.port_delays_us` reads the lines);
  unshaped events pass at once; an event the port has no synapse for (pruned by the compiler,
  or a port in no line of the event) never arrives;
- loss: where a port's gate tree has a random-drop filter (probability 1/N, testbed.plan.tc
  `drop_probability`), each arriving spike is dropped with that probability before the gate,
  independently (the kernel draws its own random numbers, so only the statistics agree);
- time-out: a port's neuron drops a spike that arrives more than the layer's window after the
  layer's origin (the kernel: RX stamp − the origin the injector stamped into the spike > window,
  testbed.kernel.gate); a late spike never counts;
- neuron: of the spikes on time, the port's neuron counts the first K of a sample and emits their
  mean arrival time as one event (the kernel sums the K RX stamps); later spikes are dropped. A
  port that counted fewer than K by the deadline emits the mean of those it counted, none: the
  deadline (the relay reads the kernel's count and sum then);
- relay: T± = the ports' events (model units from the layer's origin), by the model's time-out
  rule (`testbed.model.layers.mean_k_earliest`; `testbed.traffic.decode` reads the kernel's);
  y = T⁺ − T⁻, and the next layer's inputs are the layer's re-encoding, pool(ReLU(−s·y)) with its
  own s and pooling (`LayerPlan.relay`, which the kernel's relay applies too); the scores are
  −s·y of the last layer, rectified if the plan says so (`FabricPlan.scores`);
- overlapping samples (`Timing.banks`, `layer_slots`): a sample goes down its bank's classes,
  whose delays are every bank's, and a neuron keeps each sample's count and sum apart, so a
  sample's arrivals do not depend on its bank or on the samples in flight beside it: each sample
  is evaluated alone. What more samples in flight cost a real kernel (more packets per second
  on its CPUs) is outside this closed form, as above.

A port's arrivals are gathered from its own synapses (`LayerPlan.port_events_us`), so a
convolution's port costs its receptive field, not the layer's inputs.

With no quantisation and zero flood cost the simulation equals the golden model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from testbed.errors import PlanError
from testbed.model.layers import mean_k_earliest
from testbed.plan.fabric_plan import SIGN_PLUS, FabricPlan, LayerPlan
from testbed.plan.tc import drop_probability

CHUNK_VALUES = 1 << 22  # arrival times held at once (32 MiB): LeNet-5's conv1 has 6912 ports of 50


@dataclass(frozen=True)
class LayerResult:
    """One layer's simulated behaviour for a batch of samples."""

    inject_us: np.ndarray  # (batch, n, 2) injection time of event (i, sign) after the layer's origin
    passed_us: np.ndarray  # (batch, ports, K) arrival times of the spikes the neuron counted (nan: none)
    t_us: np.ndarray  # (batch, ports) the port's neuron event: mean of the counted arrivals, µs (nan: none)
    t_plus: np.ndarray  # (batch, m) T⁺ in model units
    t_minus: np.ndarray  # (batch, m)
    y: np.ndarray  # (batch, m)
    timed_out: np.ndarray  # (batch, ports) number of the K spikes that missed the deadline


@dataclass(frozen=True)
class SimResult:
    layers: tuple[LayerResult, ...]
    inputs: tuple[np.ndarray, ...]  # per layer, (batch, n_l): the values it was given (layer 0's: x)
    scores: np.ndarray  # (batch, classes): the plan's scores of the last layer (FabricPlan.scores)
    predictions: np.ndarray


def simulate_layer(plan: FabricPlan, layer: LayerPlan, x: np.ndarray, rng: np.random.Generator | None = None,
                   noise_us: np.ndarray | None = None, noise_rng: np.random.Generator | None = None,
                   port_offsets_us: np.ndarray | None = None, waits_us: np.ndarray | None = None) -> LayerResult:
    """Simulate one layer for inputs x (batch, n) in model value units; `rng` draws the losses
    (default: seeded with 0, so a simulation is repeatable). `noise_us`: measured errors of
    neuron outputs (kernel y − simulated y per (sample, neuron), µs), one drawn by `noise_rng`
    (its own generator, so the losses stay those of the noiseless simulation) onto every neuron's
    y (its T⁺), to predict what a kernel that errs so does to the decisions (`pi2 infer --tau auto`).
    y, not each port's T: a late burst delays a neuron's z⁺ and z⁻ alike, which cancels in y.
    `port_offsets_us` (ports,): a latency added to every arrival at each port, before its
    deadline (a fabric spread over hosts: testbed.cluster.timing). `waits_us` (batch, ports, F), laid
    out as `LayerPlan.port_events_us`: how late a busy fabric CPU stamps each arrival
    (testbed.sim.fabric_cpu), added likewise."""
    tau = plan.timing.tau_us
    inject = layer.inject_us(x, plan.constants["t0"], tau)  # (batch, n, 2)
    events, delays_us = layer.port_events_us()  # (ports, F): each port's own synapses only
    delays_us = delays_us + layer.flood_offsets_us(plan.timing.flood_copy_us)[:, None]
    if port_offsets_us is not None:
        delays_us = delays_us + np.asarray(port_offsets_us, dtype=np.float64)[:, None]
    loss = np.array([drop_probability(p.gate_tc) for p in layer.ports])
    if loss.any():
        rng = np.random.default_rng(0) if rng is None else rng
    k = layer.k
    flat = inject.reshape(len(x), -1)  # event 2·source + sign
    earliest = np.empty((len(x), len(layer.ports), k))
    rows = max(1, CHUNK_VALUES // delays_us.size)  # samples at a time: a conv layer has many ports
    for lo in range(0, len(x), rows):
        arrive = flat[lo:lo + rows][:, events] + delays_us[None]  # (b, ports, F)
        if waits_us is not None:
            arrive = arrive + waits_us[lo:lo + rows]
        if loss.any():
            arrive = np.where(rng.random(arrive.shape) < loss[None, :, None], np.inf, arrive)
        earliest[lo:lo + rows] = np.sort(arrive, axis=2)[:, :, :k]
    # The gates drop late spikes before counting, so the first K on time are the K earliest that
    # made the deadline (arrivals are sorted): the same spikes pass.
    late = earliest > layer.window_us
    passed = np.where(late, np.nan, earliest)
    # The relay's rule (the model's): average the spikes that passed; none → the deadline.
    times = mean_k_earliest(np.where(late, np.inf, earliest / tau).swapaxes(1, 2), k, timeout=layer.window_us / tau)
    signs = np.array([p.sign for p in layer.ports])
    neurons = np.array([p.neuron for p in layer.ports])
    t_p = np.empty((len(x), layer.n_neurons))
    t_m = np.empty((len(x), layer.n_neurons))
    t_p[:, neurons[signs == SIGN_PLUS]] = times[:, signs == SIGN_PLUS]
    t_m[:, neurons[signs != SIGN_PLUS]] = times[:, signs != SIGN_PLUS]
    if noise_us is not None and len(noise_us):
        noise_rng = np.random.default_rng(1) if noise_rng is None else noise_rng
        t_p = t_p + noise_rng.choice(np.asarray(noise_us, dtype=np.float64), size=t_p.shape) / tau
        times[:, signs == SIGN_PLUS] = t_p[:, neurons[signs == SIGN_PLUS]]
    t_us = np.where(np.isfinite(passed).any(axis=2), times * tau, np.nan)
    return LayerResult(inject, passed, t_us, t_p, t_m, t_p - t_m, late.sum(axis=2))


def simulate(plan: FabricPlan, x: np.ndarray, seed: int = 0, noise_us: Sequence[np.ndarray] | None = None,
             noise_seed: int = 1, port_offsets_us: Sequence[np.ndarray] | None = None,
             waits_us: Sequence[np.ndarray] | None = None) -> SimResult:
    """Simulate a batch of network inputs (batch, n_inputs of layer 0) through the plan; `seed`
    fixes the random losses of a plan compiled with loss, `noise_seed` the draws of `noise_us`
    (per layer, measured errors of the neurons' y to add, `simulate_layer`); `port_offsets_us`
    per layer, each port's added latency; `waits_us` per layer, each arrival's wait for a busy
    fabric CPU (`simulate_layer`; testbed.sim.fabric_cpu predicts them)."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    if x.shape[1] != plan.layers[0].n_inputs:
        raise PlanError(f"inputs have {x.shape[1]} values per sample; the plan's first layer takes {plan.layers[0].n_inputs}")
    if noise_us is not None and len(noise_us) != len(plan.layers):
        raise PlanError(f"noise_us has {len(noise_us)} layers' errors; the plan has {len(plan.layers)} layers")
    results, inputs = [], []
    rng, noise_rng = np.random.default_rng(seed), np.random.default_rng(noise_seed)
    for li, layer in enumerate(plan.layers):
        inputs.append(x)
        results.append(simulate_layer(plan, layer, x, rng, None if noise_us is None else noise_us[li], noise_rng,
                                      None if port_offsets_us is None else port_offsets_us[li],
                                      None if waits_us is None else waits_us[li]))
        x = layer.relay(results[-1].y)
    scores = plan.scores(results[-1].y)
    return SimResult(tuple(results), tuple(inputs), scores, scores.argmax(axis=1))
