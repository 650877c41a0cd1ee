"""The fabric CPU as one queue: how late a busy kernel stamps each arrival, from a per-packet cost.

The closed-form simulator (testbed.sim.executor) assumes the kernel handles every packet the
instant it is due. It is not: the fabric's packet work runs on one CPU (RPS steers every injector
link's fabric end there, testbed.fabric.ports), one packet after another, in softirq context.
When a spike's class releases it while that CPU is still copying or releasing other packets, it
waits, and the RX stamp its neuron counts is taken late by that wait. This module replays a
stream of samples through a first-come-first-served single server to predict those waits, so a
plan's accuracy on a given machine can be estimated before anything is built
(`simulate_busy`, `pi2 simulate --packet-cost-us`).

The jobs, all on one clock (the session's slots, testbed.infer.session: slot q starts q·period
after the first; sample s's layer l starts in slot s + layer_slots·l, its events sent at
origin_l + t·τ − lead; which bank's classes hold a copy does not matter to the one CPU):

- an **injected event** costs one packet per copy the fabric end makes of it: with shared lines
  one per line and one per shaped line's primer (the splitter's clones); with a class per
  synapse, a primer and a spike per port that keeps the synapse (the bridge's flood);
- a **release**, when a shaped copy's delay has passed, costs one packet (the class's dequeue,
  the veth transmit, the RX stamp). Its due time moves with its event's copying: a shaped delay
  counts from the primer's enqueue.

A release's wait is its start − its due time; an unshaped copy's is its event's wait. The waits
are what the model adds to the closed-form arrivals. What it leaves out, on purpose: the gate CPU
(the fan-out and the neurons run after the stamp is taken, on another CPU), the injector's own
timing, timer slack, and stalls from outside the fabric (other processes' softirqs). It models one
cost `packet_us` for every packet touch: fit it on a run (a bench's kernel CPU per shaped packet)
and predict others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from testbed.errors import PlanError
from testbed.plan.fabric_plan import FabricPlan
from testbed.sim.executor import LayerResult, SimResult, simulate



@dataclass(frozen=True)
class _Jobs:
    """One layer's jobs for a batch of samples, in the layout the waits are read back from."""

    inject_due: np.ndarray  # (batch, events) µs on the stream's clock
    inject_cost: np.ndarray  # (events,) µs
    release_event: np.ndarray  # (releases,) which event each shaped copy belongs to
    release_delay: np.ndarray  # (releases,) its realised delay, µs


def _layer_jobs(plan: FabricPlan, li: int, x: np.ndarray,
                packet_us: float) -> tuple[_Jobs, list[tuple[int, np.ndarray, int]]]:
    """The jobs of layer `li` for inputs x (batch, n), and its deliveries: (event index, the ports
    a copy reaches, the release that carries it or −1 for an unshaped copy)."""
    layer = plan.layers[li]
    tau, period = plan.timing.tau_us, plan.timing.period_us
    events = layer.inject_us(x, plan.constants["t0"], tau).reshape(len(x), -1)  # event 2·source + sign
    slot = (np.arange(len(x)) + plan.timing.layer_slots * li) * period + layer.origin_us
    copies = np.zeros(2 * layer.n_inputs)
    release_event, release_delay, targets = [], [], []
    if layer.lines:
        for line in layer.lines:
            e = 2 * line.source + line.sign
            copies[e] += 1 + bool(line.classids)
            members = np.asarray(line.members)
            if not line.classids:
                targets.append((e, members, -1))
            else:
                targets.append((e, members, len(release_event)))
                release_event.append(e)
                release_delay.append(line.delay_us)
    else:
        for q, port in enumerate(layer.ports):
            for syn in port.synapses:
                e = 2 * syn.source + syn.sign
                copies[e] += 2
                if syn.classid is None:
                    targets.append((e, np.array([q]), -1))
                else:
                    targets.append((e, np.array([q]), len(release_event)))
                    release_event.append(e)
                    release_delay.append(syn.delay_us)
    jobs = _Jobs(slot[:, None] + events, copies * packet_us, np.asarray(release_event, dtype=np.int64),
                 np.asarray(release_delay, dtype=np.float64))
    return jobs, targets


def _serve(due: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Start times of jobs served first come, first served by one server (ties: listed order).

    finish_i = max(due_i, finish_{i−1}) + cost_i unrolls to C_i + max_{j≤i}(due_j − C_{j−1}),
    C the running sum of costs: one sort and two cumulative passes instead of a loop."""
    order = np.argsort(due, kind="stable")
    d, c = due[order], cost[order]
    total = np.cumsum(c)
    finish = total + np.maximum.accumulate(d - (total - c))
    start = np.empty_like(due)
    start[order] = finish - c
    return start


def fabric_waits(plan: FabricPlan, layer_inputs: Sequence[np.ndarray], packet_us: float) -> list[np.ndarray]:
    """Per layer, (batch, ports, F) laid out as `LayerPlan.port_events_us`: how long after its
    closed-form time each arrival is stamped, for the inputs each layer sees (`layer_inputs`, one
    (batch, n_l) array per layer, the same samples in order) streamed through the plan's slots on
    one fabric CPU spending `packet_us` µs per packet (module docstring). 0 where nothing waited;
    arrivals that never happen keep 0 (the simulator's inf stays inf)."""
    if not packet_us >= 0:
        raise PlanError(f"packet cost must be ≥ 0 µs, got {packet_us}")
    if len(layer_inputs) != len(plan.layers):
        raise PlanError(f"{len(layer_inputs)} layers' inputs for a plan of {len(plan.layers)} layers")
    built = [_layer_jobs(plan, li, np.asarray(x, dtype=np.float64), packet_us) for li, x in enumerate(layer_inputs)]
    # Pass 1 serves the injected events alone to find how late each is copied; pass 2 serves
    # them with the releases their copying made due.
    inject_due = np.concatenate([j.inject_due.ravel() for j, _ in built])
    inject_cost = np.concatenate([np.broadcast_to(j.inject_cost, j.inject_due.shape).ravel() for j, _ in built])
    inject_wait = _serve(inject_due, inject_cost) - inject_due
    release_due, offset = [], 0
    for jobs, _ in built:
        size = jobs.inject_due.size
        wait = inject_wait[offset:offset + size].reshape(jobs.inject_due.shape)
        offset += size
        release_due.append((jobs.inject_due[:, jobs.release_event] + wait[:, jobs.release_event]
                            + jobs.release_delay[None]).ravel())
    due = np.concatenate([inject_due, *release_due])
    cost = np.concatenate([inject_cost, np.full(due.size - inject_due.size, packet_us)])
    start = _serve(due, cost)
    inject_wait = start[:inject_due.size] - inject_due
    out, i_off, r_off = [], 0, inject_due.size
    for layer, (jobs, targets) in zip(plan.layers, built):
        batch, size = jobs.inject_due.shape[0], jobs.inject_due.size
        event_wait = inject_wait[i_off:i_off + size].reshape(batch, -1)
        i_off += size
        n_release = batch * len(jobs.release_event)
        release_start = start[r_off:r_off + n_release].reshape(batch, -1)
        # The release was due when its delay had passed since its event was due (not since it
        # was copied): its whole lateness, copying included, is start − (event due + delay).
        release_wait = release_start - (jobs.inject_due[:, jobs.release_event] + jobs.release_delay[None])
        r_off += n_release
        port_events, port_delays = layer.port_events_us()  # (ports, F); a short row ends in (0, inf)
        column = [{int(e): f for f, (e, d) in enumerate(zip(row, row_delays)) if np.isfinite(d)}
                  for row, row_delays in zip(port_events, port_delays)]
        waits = np.zeros((batch,) + port_events.shape)
        for e, ports, r in targets:
            waits[:, ports, [column[q][e] for q in ports]] = (event_wait[:, e] if r < 0 else release_wait[:, r])[:, None]
        out.append(waits)
    return out


def simulate_busy(plan: FabricPlan, x: np.ndarray, closed: SimResult, packet_us: float) -> SimResult:
    """`x` through `plan` on a fabric CPU of `packet_us` µs a packet: the closed form with each
    arrival's predicted wait, for the inputs each layer got in `closed` (`simulate(plan, x)`)."""
    return simulate(plan, x, waits_us=fabric_waits(plan, closed.inputs, packet_us))


def kth_lateness_p99(busy: Sequence[LayerResult], closed: Sequence[LayerResult]) -> list[float]:
    """Per layer, p99 over (sample, port) of how much later a busy fabric CPU makes the K-th
    counted spike than the closed form (ports that counted nothing in either left out): the
    figure the inference report measures on the kernel (`kth_late_us_p99`)."""
    out = []
    for b, c in zip(busy, closed):
        late = np.fmax.reduce(b.passed_us, axis=2) - np.fmax.reduce(c.passed_us, axis=2)  # fmax skips nan
        late = late[np.isfinite(late)]
        out.append(float(np.percentile(late, 99)) if late.size else float("nan"))
    return out
