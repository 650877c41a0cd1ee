"""Shared delay lines on a real kernel: each line's delayed copy reaches exactly its member neurons.

The layer is 3 inputs × 2 neurons with weights that repeat across the neurons (so each event
meets two delays over the four ports, 0.5 … 5.5 ms, 1 ms apart), K = 2, pruned on all-zero
calibration inputs: each port keeps its two earliest synapses, so every line has one or two
members and most ports are in no line of a given event. One event is sent per sample; with K = 2
no neuron fires, and each port's neuron state says how many copies it counted and when.
"""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

from testbed.fabric.live import build_fabric
from testbed.kernel import netns
from testbed.model.network import DenseLayer, Pi2Network
from testbed.plan.compiler import Realisation, compile_network
from testbed.plan.profiles import load_profile
from testbed.traffic.inject import Schedule

WEIGHTS = np.array([[0.5, 0.5], [1.5, -1.5], [2.5, 2.5]])
EVENTS = [(i, s) for s in (0, 1) for i in range(3)]


@pytest.fixture(scope="module")
def plan():
    net = Pi2Network((DenseLayer(WEIGHTS, 2),), (3,))
    return compile_network(net, Realisation.from_profile(load_profile("shaper")), 1000.0, np.zeros((1, 3)),
                           prune_margin=0.0, lead=0.0, delay_lines="shared")


@pytest.mark.root
def test_a_shared_line_feeds_exactly_its_member_neurons(plan, spikes):
    layer = plan.layers[0]
    member_of = {(ln.source, ln.sign, q): ln for ln in layer.lines for q in ln.members}
    assert any(len(ln.members) == 2 for ln in layer.lines)  # lines are shared...
    assert len(member_of) < len(EVENTS) * len(layer.ports)  # ...and some ports are in no line of an event
    origin = time.clock_gettime_ns(time.CLOCK_REALTIME) + 3600 * 10**9  # every copy early: none is late
    with build_fabric(plan) as fab:
        run = fab.run_id
        fabric_ns = f"p2{run}f"
        with netns.iproute(fabric_ns) as ipr:
            line_end = ipr.link_lookup(ifname=f"p2{run}fin0")[0]
            assert len([c for c in ipr.get_classes(line_end) if c.get_attr("TCA_KIND") == "htb"]) == len(layer.lines)
            for port in layer.ports:
                index = ipr.link_lookup(ifname=f"p2{run}{port.switch_if}")[0]
                assert not [c for c in ipr.get_classes(index) if c.get_attr("TCA_KIND") == "htb"]
        fab_links = {name for _, name in netns.run_in(fabric_ns, socket.if_nameindex)}
        assert f"p2{run}fin0" in fab_links
        states = spikes.one_event_per_sample(fab, plan, EVENTS, origin)
        stamps: dict[tuple[int, int], list[tuple[int, int]]] = {}  # event → (RX − TX ns, port)
        for (event, q), (count, latency_ns) in states.items():
            line = member_of.get((*event, q))
            assert count == (0 if line is None else 1), (event, q)
            if line is not None:
                stamps.setdefault(event, []).append((latency_ns, q))
        counters = fab.gate_counters()[0]
    for q, c in enumerate(counters):
        assert c["spikes_counted"] == sum(1 for event in EVENTS if (*event, q) in member_of)
        assert c["primers_dropped"] == 0 and c["events_passed"] == 0  # primers end at the fan-out
    for event, seen in stamps.items():
        by_line: dict[int, set[int]] = {}
        for latency, q in seen:
            by_line.setdefault(member_of[(*event, q)].line, set()).add(latency)
        # Members of one line carry the one stamp their line's delayed copy got; lines keep the plan's order.
        assert all(len(latencies) == 1 for latencies in by_line.values()), (event, by_line)
        order = sorted(by_line, key=lambda r: next(iter(by_line[r])))
        assert order == sorted(by_line)  # lines are numbered by rising delay
    assert spikes.leftovers(run) == []


def _class_packets(ipr, index: int) -> dict[str, int]:
    """Packets each htb class on link `index` sent, by classid (e.g. '1:a')."""
    out = {}
    for c in ipr.get_classes(index):
        if c.get_attr("TCA_KIND") == "htb":
            handle = c["handle"]
            out[f"{handle >> 16:x}:{handle & 0xFFFF:x}"] = c.get_attr("TCA_STATS")["packets"]
    return out


@pytest.mark.root
def test_each_sample_waits_in_the_classes_of_its_bank(spikes):
    # Two banks: samples 300 and 302 (bank 0) and 301 (bank 1) each send event (t⁺ of input 2);
    # each goes down its bank's classes of the event's two lines (primer and spike each), no other
    # class holds anything, and each line's members count each sample's copy.
    net = Pi2Network((DenseLayer(WEIGHTS, 2),), (3,))
    plan = compile_network(net, Realisation.from_profile(load_profile("shaper")), 1000.0, np.zeros((1, 3)),
                           prune_margin=None, lead=0.0, delay_lines="shared", banks=2)
    layer = plan.layers[0]
    event = (2, 0)
    lines = [ln for ln in layer.lines if (ln.source, ln.sign) == event]
    assert len(lines) == 2 and all(len(ln.classids) == 2 for ln in lines)
    with build_fabric(plan) as fab:
        run = fab.run_id
        pairs = [(20_000_000 * n, f) for n, sample in enumerate((300, 301, 302))
                 for f in spikes.event_frames(plan, sample, [event], seq0=n)]
        spikes.inject(fab.host_netns, fab.inject_ifs[0], Schedule.from_pairs(pairs), 0, wait_s=0.1)
        with netns.iproute(f"p2{run}f") as ipr:
            sent = _class_packets(ipr, ipr.link_lookup(ifname=f"p2{run}fin0")[0])
        states = {(q, sample): live.gate.partial(sample) for q, live in enumerate(fab.ports[0])
                  for sample in (300, 301, 302)}
    mine = {c for ln in lines for c in ln.classids}
    assert {c for c, n in sent.items() if n} == mine  # only this event's lines' classes held anything
    for ln in lines:
        assert [sent[c] for c in ln.classids] == [4, 2]  # bank 0: samples 300 and 302; bank 1: 301
        for q in ln.members:
            assert [states[(q, sample)].count for sample in (300, 301, 302)] == [1, 1, 1]
    assert spikes.leftovers(run) == []
