from types import SimpleNamespace

import numpy as np
import pytest

from testbed.errors import PlanError
from testbed.model.network import DenseLayer, Pi2Network
from testbed.plan.compiler import Realisation, compile_network
from testbed.sim.executor import simulate
from testbed.sim.fabric_cpu import _serve, fabric_waits, kth_lateness_p99, simulate_busy

IDEAL = Realisation("netem", "netem", min_delay_us=0.0, flood_copy_us=0.0, max_delay_us=1e9)


def one_layer_plan(delay_lines: str):
    """Whole weights: every delay a whole number of τ = 1 ms, the zero ones unshaped."""
    rng = np.random.default_rng(3)
    net = Pi2Network((DenseLayer(rng.integers(-3, 4, size=(6, 3)).astype(float), 2),), (6,))
    real = Realisation("netem", "netem", min_delay_us=1.0, flood_copy_us=0.0, max_delay_us=1e9)
    return compile_network(net, real, 1000.0, rng.random((8, 6)), margin=50.0, prune_margin=None, lead=0.0,
                           delay_lines=delay_lines)


def test_serving_is_first_come_first_served_in_listed_order_on_ties():
    rng = np.random.default_rng(0)
    due = rng.integers(0, 50, 400).astype(float)  # many ties
    cost = rng.random(400) * 3
    start, free = np.empty(400), -np.inf
    for i in np.argsort(due, kind="stable"):
        start[i] = max(due[i], free)
        free = start[i] + cost[i]
    np.testing.assert_allclose(_serve(due, cost), start)


@pytest.mark.parametrize("delay_lines", ["shared", "per-synapse"])
def test_a_burst_of_events_waits_its_turn_copy_by_copy(delay_lines):
    plan = one_layer_plan(delay_lines)
    layer = plan.layers[0]
    x = np.zeros((1, 6))  # every input fires both events at T0 at once (no leads)
    copies = np.zeros(12)  # what the fabric CPU copies per event, in event order (2·source + sign)
    if layer.lines:
        for line in layer.lines:
            copies[2 * line.source + line.sign] += 1 + bool(line.classids)
    else:
        for port in layer.ports:
            for syn in port.synapses:
                copies[2 * syn.source + syn.sign] += 2
    events, delays = layer.port_events_us()  # (ports, F)
    waits = fabric_waits(plan, [x], 2.0)[0][0]  # (ports, F)
    before = np.concatenate([[0.0], np.cumsum(copies)[:-1]]) * 2.0  # copies served ahead of each event
    for e in range(12):
        held = (events == e) & np.isfinite(delays)
        for d in np.unique(delays[held]):
            group = np.sort(waits[held & (delays == d)])
            # Releases of one delay are due as far apart as their events' copying, and ≥ 1 ms after
            # the burst, so they never queue behind another event's: a copy is late by its event's
            # turn in the burst, and with a class per synapse, by the ports of the same delay
            # released before it (one line serves them all at once).
            behind = 2.0 * np.arange(len(group)) if d > 0 and not layer.lines else 0.0
            np.testing.assert_allclose(group, before[e] + behind, atol=1e-9)
    assert not waits[~np.isfinite(delays)].any()


def test_an_idle_cpu_changes_nothing_and_a_slow_one_costs_decisions():
    rng = np.random.default_rng(4)
    net = Pi2Network((DenseLayer(rng.normal(size=(40, 12)), 6), DenseLayer(rng.normal(size=(12, 5)), 3)), (40,))
    x = rng.random((60, 40)) * 2
    plan = compile_network(net, IDEAL, 200.0, x, prune_margin=None)
    closed = simulate(plan, x)
    idle = simulate_busy(plan, x, closed, 0.0)
    np.testing.assert_array_equal(idle.scores, closed.scores)
    slow = simulate_busy(plan, x, closed, 20.0)  # 40 inputs × 12 neurons' copies at 20 µs each: ≫ τ
    assert (slow.predictions != closed.predictions).any()
    assert sum(layer.timed_out.sum() for layer in slow.layers) > 0


def test_bad_costs_and_layer_counts_are_refused():
    plan = one_layer_plan("shared")
    with pytest.raises(PlanError, match="packet cost must be ≥ 0"):
        fabric_waits(plan, [np.zeros((1, 6))], -1.0)
    with pytest.raises(PlanError, match="2 layers' inputs for a plan of 1"):
        fabric_waits(plan, [np.zeros((1, 6))] * 2, 1.0)


def test_kth_lateness_compares_the_last_counted_spikes_and_skips_silent_ports():
    closed = np.array([[[1.0, 2.0], [3.0, np.nan]], [[np.nan, np.nan], [5.0, 6.0]]])  # (batch, ports, K)
    busy = closed + np.array([[[0.0, 7.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 2.0]]])
    silent = SimpleNamespace(passed_us=np.full((2, 2, 2), np.nan))
    got = kth_lateness_p99([SimpleNamespace(passed_us=busy), silent], [SimpleNamespace(passed_us=closed), silent])
    assert got[0] == pytest.approx(np.percentile([7.0, 1.0, 2.0], 99)) and np.isnan(got[1])
