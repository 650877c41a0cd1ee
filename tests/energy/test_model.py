"""Identities and limits of the energy model (docs/energy.md), not merely that it runs."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from testbed.energy.model import (FRAME_BITS, aer_bits, brain_workload, chips_reached, conventional_energy,
                                  events_from_traces, fabric, pi2_energy, tree_links, workload_from_arch,
                                  workload_from_network, workload_from_shapes)
from testbed.energy.platforms import load_platforms
from testbed.errors import ModelError
from testbed.model.network import DenseLayer, Perturbation, Pi2Network
from testbed.plan.wire import SPIKE_FRAME_BYTES

TABLE = load_platforms()


def ideal(fab):
    """No per-packet switching, no fixed power, minimal packets: only moving bits remains."""
    return replace(fab, packet="aer", switch_pj_per_packet=0.0, static_w_per_port=0.0)


def test_dense_layer_counts_follow_the_pi2_layer():
    wl = workload_from_shapes("t", [(64, 16, 3), (16, 10, 1)])
    first, second = wl.layers
    assert (first.events, first.fanout_ports, first.arrivals) == (128, 32, 4 * 64 * 16)
    assert first.kept_arrivals == 2 * 16 * 3 and second.kept_arrivals == 2 * 10 * 1
    assert wl.arrivals == 4 * 64 * 16 + 4 * 16 * 10


def test_frame_bits_come_from_the_wire_format():
    assert FRAME_BITS == 8 * SPIKE_FRAME_BYTES == 496


def test_aer_bits_are_address_plus_header():
    wl = workload_from_shapes("t", [(64, 16, 1), (16, 10, 1)])  # 80 sources × 2 signs = 160 addresses
    assert aer_bits(wl, 8) == math.ceil(math.log2(160)) + 8 == 16


@pytest.mark.parametrize("fanout, radix, links", [(1, 64, 2), (64, 64, 65), (65, 64, 65 + 2 + 1), (10_000, 64, 10_000 + 157 + 3 + 1)])
def test_multicast_tree_links(fanout, radix, links):
    assert tree_links(fanout, radix) == links


def test_pi2_energy_by_hand_in_joules():
    fab = replace(fabric(TABLE, "chiplet-aer"), pj_per_bit=2.0, bandwidth_gbps=1.0, utilisation=1.0,
                  static_w_per_port=1.0, switch_pj_per_packet=5.0)
    wl = workload_from_shapes("one", [(1, 1, 1)])  # 2 events, each to 2 ports: 3 links, 2 copies
    bits = aer_bits(wl, fab.aer_header_bits)  # ⌈log2 2⌉ + 8 = 9
    e = pi2_energy(wl, fab)
    assert bits == 9 and fab.static_pj_per_bit == pytest.approx(1000.0)  # 1 W / 1 Gb/s = 1 nJ/bit
    assert e.link_j == pytest.approx(2 * 3 * 9 * 2.0e-12)
    assert e.switch_j == pytest.approx(2 * 2 * 5.0e-12)
    assert e.static_j == pytest.approx(2 * 3 * 9 * 1000e-12)
    assert e.total_j == pytest.approx(e.link_j + e.switch_j + e.static_j)


@pytest.mark.parametrize("generation", list(TABLE.generations))
def test_energy_is_linear_in_events(generation):
    fab = fabric(TABLE, generation)
    wl = workload_from_shapes("t", [(784, 500, 1), (500, 10, 30)])
    doubled = wl.with_measured({0: 2 * wl.layers[0].events, 1: 2 * wl.layers[1].events})
    halved = wl.with_measured({0: wl.layers[0].events / 2, 1: wl.layers[1].events / 2})
    for system in (lambda w: pi2_energy(w, fab), lambda w: conventional_energy(w, TABLE.neuromorphic[4], fab)):
        base = system(wl).total_j
        assert system(doubled).total_j == pytest.approx(2 * base)
        assert system(halved).total_j == pytest.approx(base / 2)


def test_eta_tends_to_one_as_switching_overhead_vanishes():
    fab = replace(fabric(TABLE, "chiplet-aer"), static_w_per_port=0.0)
    wl = workload_from_shapes("t", [(64, 16, 1), (16, 10, 1)])
    etas = [pi2_energy(wl, replace(fab, switch_pj_per_packet=e)).eta for e in (100.0, 10.0, 1.0, 0.1, 0.01, 0.0)]
    assert all(a < b for a, b in zip(etas, etas[1:]))
    assert etas[-2] > 0.99 and etas[-1] == pytest.approx(1.0)


def test_frame_overhead_caps_eta_at_aer_over_frame_bits():
    wl = workload_from_shapes("t", [(64, 16, 1)])
    fab = replace(ideal(fabric(TABLE, "chiplet-aer")), packet="frame")
    assert pi2_energy(wl, fab).eta == pytest.approx(aer_bits(wl, fab.aer_header_bits) / FRAME_BITS)


def test_eta_rises_with_bandwidth_and_reaches_its_limit():
    wl = workload_from_shapes("t", [(784, 500, 1), (500, 10, 1)])
    fab = fabric(TABLE, "ethernet-serdes")
    etas = [pi2_energy(wl, replace(fab, bandwidth_gbps=b)).eta for b in (10, 100, 1000, 1e4, 1e9)]
    assert all(a < b for a, b in zip(etas, etas[1:]))
    no_static = pi2_energy(wl, replace(fab, static_w_per_port=0.0)).eta
    assert etas[-1] == pytest.approx(no_static, rel=1e-6)


def test_pi2_energy_is_linear_in_pj_per_bit_when_link_energy_dominates():
    wl = workload_from_shapes("t", [(64, 16, 1)])
    fab = ideal(fabric(TABLE, "chiplet-aer"))
    assert pi2_energy(wl, replace(fab, pj_per_bit=3.0)).total_j == pytest.approx(3 * pi2_energy(wl, replace(fab, pj_per_bit=1.0)).total_j)


def test_conventional_chip_pays_sops_and_routes_only_off_chip():
    wl = workload_from_shapes("t", [(64, 16, 1), (16, 10, 1)])
    fab = fabric(TABLE, "chiplet-aer")
    truenorth = next(p for p in TABLE.neuromorphic if p.name == "TrueNorth")
    e = conventional_energy(wl, truenorth, fab)  # 170 neurons fit on one chip
    assert e.compute_j == pytest.approx(wl.arrivals * 2.5e-12)
    assert e.link_j == e.switch_j == e.static_j == 0.0 and e.eta == 1.0
    odin = next(p for p in TABLE.neuromorphic if p.name == "ODIN")
    big = workload_from_shapes("mnist", [(784, 500, 1), (500, 10, 1)])
    routed = conventional_energy(big, odin, fab)
    assert routed.link_j > 0 and 0 < routed.eta < 1


def test_chips_reached_limits():
    assert chips_reached(1, 1000) == 0.0
    assert chips_reached(2, 1) == pytest.approx(0.5)
    assert chips_reached(10**6, 100) == pytest.approx(100, rel=1e-3)  # sparse targets: one chip each
    assert chips_reached(11, 10**6) == pytest.approx(10)  # dense targets: every other chip


def test_brain_workload_counts_synaptic_events():
    brain = brain_workload(TABLE.brain, neurons=1e6, synapses_per_neuron=100, rate_hz=2.0)
    assert brain.arrivals == pytest.approx(1e6 * 100 * 2.0) and brain.per == "second"
    differential = brain_workload(TABLE.brain, neurons=1e6, synapses_per_neuron=100, rate_hz=2.0, differential=True)
    assert differential.arrivals == pytest.approx(4 * brain.arrivals)


def test_workload_from_network_and_measured_traces():
    rng = np.random.default_rng(0)
    net = Pi2Network(layers=(DenseLayer(rng.normal(size=(12, 6)), k=2), DenseLayer(rng.normal(size=(6, 3)), k=1)),
                     input_shape=(12,))
    wl = workload_from_network(net, "random")
    assert [layer.arrivals for layer in wl.layers] == [4 * 12 * 6, 4 * 6 * 3]
    x = rng.uniform(0, 1, size=(20, 12))
    assert events_from_traces(net.trace(x)) == {0: 24.0, 1: 12.0}  # dense: every event is sent
    lossy = events_from_traces(net.trace(x, Perturbation(keep=0.5, seed=1)))
    assert 0 < lossy[0] < 24
    measured = wl.with_measured(lossy)
    assert measured.layers[0].arrivals == pytest.approx(lossy[0] * 12)


@pytest.mark.parametrize("bad", [{5: 1.0}, {-1: 1.0}, {0: -3.0}])
def test_measured_events_are_checked(bad):
    with pytest.raises(ModelError):
        workload_from_shapes("t", [(4, 2, 1)]).with_measured(bad)


@pytest.mark.parametrize("arch, ks", [("mlp:784", [1]), ("cnn:1-2", [1]), ("mlp:4-x", [1]), ("mlp:4-2", [1, 1]), ("mlp:4-2", [9])])
def test_bad_architectures_are_refused(arch, ks):
    with pytest.raises(ModelError):
        workload_from_arch(arch, ks)


def test_unknown_generation_and_link_name_what_is_accepted():
    with pytest.raises(ModelError, match="chiplet-aer"):
        fabric(TABLE, "warp-drive")
    with pytest.raises(ModelError, match="serdes"):
        fabric(TABLE, "chiplet-aer", link="tin-can")
