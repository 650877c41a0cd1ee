"""Inter-host latency folded into the simulation: each part's ports get its path's latency, and
a latency shared by both ports of a neuron cancels in y (unless it pushes spikes past the deadline)."""

from __future__ import annotations

import numpy as np
import pytest

from testbed.cluster.timing import ClusterLayout, ClusterTiming, HostLatency, needed_pairs, part_offset_us
from testbed.model.network import DenseLayer, Pi2Network
from testbed.plan.compiler import Realisation, compile_network
from testbed.plan.placement import Part, Placement
from testbed.plan.profiles import load_profile
from testbed.sim.executor import simulate

HOSTS = ("localhost", "e1", "e2")
TIMING = ClusterTiming((HostLatency("localhost", "e1", 40.0, 8.0), HostLatency("localhost", "e2", 60.0, 6.0),
                        HostLatency("e1", "e2", 30.0, 8.0)))


@pytest.fixture(scope="module")
def plan():
    rng = np.random.default_rng(7)
    net = Pi2Network((DenseLayer(rng.uniform(-2, 2, (6, 4)), 1), DenseLayer(rng.uniform(-2, 2, (4, 3)), 1)), (6,))
    return compile_network(net, Realisation.from_profile(load_profile("shaper")), 1000.0, rng.uniform(0, 1, (20, 6)),
                           prune_margin=None, lead=0.0)


@pytest.fixture(scope="module")
def placement():
    """Layer 0 split: neurons 0..1 on e1 (part 0), 2..3 on e2 (fed through the e1 → e2 trunk); layer 1 local."""
    return Placement(HOSTS, (Part(0, "e1", 0, 2), Part(0, "e2", 2, 4), Part(1, "localhost", 0, 3)))


def test_each_part_adds_its_paths_one_way_latencies(placement):
    assert part_offset_us(TIMING, placement, 0, 0) == (pytest.approx(40.0), pytest.approx(np.sqrt(2) * 4.0))
    assert part_offset_us(TIMING, placement, 0, 1)[0] == pytest.approx(20 + 15 + 30)  # relay→e1→e2→relay
    assert part_offset_us(TIMING, placement, 1, 0) == (0.0, 0.0)
    assert needed_pairs(placement) == [("localhost", "e1"), ("e1", "e2"), ("localhost", "e2")]


def test_port_offsets_follow_the_placement(plan, placement):
    layout = ClusterLayout.of(plan, placement, TIMING)
    offsets = layout.port_offsets_us[0]
    for port, offset in zip(plan.layers[0].ports, offsets):
        assert offset == pytest.approx(40.0 if port.neuron < 2 else 65.0)
    assert not layout.port_offsets_us[1].any()
    assert [p["latency_us"] for p in layout.to_dict()["part_offsets_us"]] == [40.0, 65.0, 0.0]


def test_a_latency_shared_by_a_neurons_two_ports_cancels_in_y(plan, placement):
    x = np.random.default_rng(8).uniform(0, 1, (50, 6))
    layout = ClusterLayout.of(plan, placement, TIMING)
    plain, placed = simulate(plan, x), simulate(plan, x, port_offsets_us=layout.port_offsets_us)
    shifted = placed.layers[0].t_plus - plain.layers[0].t_plus
    assert np.allclose(shifted[:, :2], 40.0 / 1000) and np.allclose(shifted[:, 2:], 65.0 / 1000)
    assert np.allclose(placed.layers[0].y, plain.layers[0].y) and (placed.predictions == plain.predictions).all()


def test_a_latency_past_the_deadline_is_lost_in_the_simulation_too(plan, placement):
    x = np.random.default_rng(9).uniform(0, 1, (10, 6))
    late = [np.full(len(layer.ports), layer.window_us + 1.0) for layer in plan.layers]
    result = simulate(plan, x, port_offsets_us=late)
    assert (result.layers[0].timed_out == plan.layers[0].k).all()
