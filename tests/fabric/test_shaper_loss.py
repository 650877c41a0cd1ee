"""Random spike loss on the `shaper` profile, built for real: the first-K gate itself drops each spike
with probability 1/N before counting it (its bpf-drop loss kind), so kernels without netem or gact
can run `--loss` experiments.

The plan is conftest's 3 inputs × 2 neurons, K = 1, unpruned; every sample carries one event (input
0's t⁺: a primer, then the spike), so every port receives exactly one spike per sample and passes it
unless the gate lost it.
"""

from __future__ import annotations

import numpy as np
import pytest

from testbed.fabric.live import build_fabric
from testbed.kernel import netns
from testbed.model.network import DenseLayer, Pi2Network
from testbed.plan.compiler import Realisation, compile_network
from testbed.plan.profiles import load_profile
from testbed.plan.tc import drop_probability
from testbed.traffic.inject import Schedule
from testbed.kernel.tc import parse_handle
from testbed.plan.tc import CLSACT_INGRESS

pytestmark = pytest.mark.root
SAMPLES = 100
GAP_NS = 8_000_000  # longer than the largest delay (5.5 ms): a sample's spike leaves its class before the next primer
WEIGHTS = np.array([[0.5, -1.5], [1.5, 2.5], [2.5, 0.5]])  # conftest's


@pytest.mark.parametrize("backend, delay_lines", [("netns", "per-synapse"), ("mininet", "per-synapse"),
                                                 ("netns", "shared"), ("netns", "shared-clone")])
def test_the_gate_loses_half_the_spikes_before_counting(backend, delay_lines, spikes):
    if backend == "mininet":
        pytest.importorskip("mininet")
    net = Pi2Network((DenseLayer(WEIGHTS, 1),), (3,))
    plan = compile_network(net, Realisation.from_profile(load_profile("shaper")), 1000.0, np.zeros((1, 3)), loss=0.5,
                           prune_margin=None, lead=0.0, delay_lines=delay_lines)
    assert {drop_probability(p.gate_tc) for p in plan.layers[0].ports} == {0.5}
    frames = [f for s in range(SAMPLES) for f in spikes.event_frames(plan, 1 + s, [(0, 0)], seq0=s)]
    offsets = np.repeat(np.arange(SAMPLES, dtype=np.int64) * GAP_NS, 2)  # primer and spike back to back
    with build_fabric(plan, backend=backend) as fab:
        with netns.iproute(fab.host_netns) as ipr:
            kinds = [{f.get_attr("TCA_KIND") for f in ipr.get_filters(port.ifindex, parent=parse_handle(CLSACT_INGRESS, 'clsact ingress'))} - {None}
                     for port in fab.ports[0]]
        expected = len(fab.ports[0]) * SAMPLES
        _, capture = spikes.inject(fab.host_netns, fab.inject_ifs[0], Schedule(offsets, frames), expected, wait_s=2.0)
        counters, run = fab.gate_counters()[0], fab.run_id
    assert kinds == [{"bpf"}] * len(plan.layers[0].ports)  # no gact: the gate program drops
    assert capture.dropped == 0
    got = capture.arrivals
    # 400 spikes each kept with probability 1/2: 200 ± 10 (sd); 130..270 is 7 sd either way.
    assert 130 < len(got) < 270
    assert [c["spikes_counted"] + c["spikes_dropped_lost"] for c in counters] == [SAMPLES] * len(counters)
    assert sum(c["events_passed"] for c in counters) == len(got)  # K = 1: each counted spike is an event
    assert all(10 < c["spikes_dropped_lost"] < SAMPLES - 10 for c in counters), counters
    # Shared lines: primers end at the fan-out and never reach a neuron.
    primers = SAMPLES if delay_lines == "per-synapse" else 0
    assert all(c["spikes_dropped_after_k"] == 0 and c["primers_dropped"] == primers for c in counters)
    assert spikes.leftovers(run) == []
