"""The netns backend on a real kernel: objects, real primer + spike frames, gates, order, teardown.

The plan is 3 inputs × 2 neurons, K = 1, shaper profile (htb-primer delays, eBPF first-K gates).
Every port's six synapse delays are 0.5 … 5.5 ms, 1 ms apart (conftest.WEIGHTS); the order check runs them
at τ = 4 ms (2 … 22 ms, 4 ms apart), so it holds with 4 ms of slack; precision belongs to bench/primitives.py.
"""

from __future__ import annotations

import os
import socket
import time

import numpy as np
import pytest

from testbed.errors import KernelError
from testbed.fabric.live import bring_up, build_fabric
from testbed.kernel import cleanup, netns
from testbed.model.network import DenseLayer, Pi2Network
from testbed.plan.compiler import Realisation, compile_network
from testbed.plan.profiles import load_profile
from testbed.plan.wire import FRAME_LINE_OFFSET, KIND_EVENT, KIND_PRIMER, KIND_SPIKE
from testbed.traffic.capture import Receiver
from testbed.traffic.sockets import packet_socket
from testbed.traffic.inject import Schedule
from testbed.kernel.tc import parse_handle
from testbed.plan.tc import CLSACT_INGRESS

EVENTS = [(i, s) for i in range(3) for s in (0, 1)]
WEIGHTS = np.array([[0.5, -1.5], [1.5, 2.5], [2.5, 0.5]])  # conftest's: delays 0.5 … 5.5 ms per port
ETH_P_ALL = 0x0003  # linux/if_ether.h: every frame, seen before tc ingress


def _plan_delays(port) -> dict[tuple[int, int], float]:
    return {(s.source, s.sign): s.delay_us for s in port.synapses}


@pytest.mark.root
def test_objects_exist_with_the_plans_class_counts(tiny_plan, spikes):
    with build_fabric(tiny_plan) as fab:
        run = fab.run_id
        host, fabric_ns = f"p2{run}h", f"p2{run}f"
        assert fab.backend == "netns" and fab.host_netns == host
        assert set(netns.list_names()) >= {host, fabric_ns}
        fab_links = {name for _, name in netns.run_in(fabric_ns, socket.if_nameindex)}
        host_links = {name for _, name in netns.run_in(host, socket.if_nameindex)}
        layer = tiny_plan.layers[0]
        assert f"p2{run}{layer.switch}" in fab_links
        assert {f"p2{run}{p.switch_if}" for p in layer.ports} <= fab_links
        assert {f"p2{run}{p.host_if}" for p in layer.ports} | {fab.inject_ifs[0]} <= host_links
        assert [p.ifname for p in fab.ports[0]] == [f"p2{run}{p.host_if}" for p in layer.ports]
        with netns.iproute(fabric_ns) as ipr:
            bridge = ipr.link_lookup(ifname=f"p2{run}{layer.switch}")[0]
            for port in layer.ports:
                index = ipr.link_lookup(ifname=f"p2{run}{port.switch_if}")[0]
                assert ipr.get_links(index)[0].get_attr("IFLA_MASTER") == bridge
                htb_classes = [c for c in ipr.get_classes(index) if c.get_attr("TCA_KIND") == "htb"]
                assert len(htb_classes) == len(port.delay_tc.classes) == 6
                kinds = {f.get_attr("TCA_KIND") for f in ipr.get_filters(index, parent=0x10000)} - {None}
                assert kinds == {"bpf"}  # one synapse classifier per port, not a filter per synapse
            info = ipr.get_links(bridge)[0].get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
            assert info.get_attr("IFLA_BR_STP_STATE") == 0 and info.get_attr("IFLA_BR_AGEING_TIME") == 0
        assert all(c["events_passed"] == 0 for c in fab.gate_counters()[0])
    assert spikes.leftovers(run) == []


@pytest.mark.root
def test_gate_passes_k_spikes_per_port_and_order_follows_the_delays(wide_tiny_plan, spikes):
    plan = wide_tiny_plan
    layer = plan.layers[0]
    with build_fabric(plan, fabric_cpus=[max(os.sched_getaffinity(0))]) as fab:
        run = fab.run_id
        port_of = {p.ifindex: i for i, p in enumerate(fab.ports[0])}
        # Sample 100: all six events at once. K = 1: each port passes exactly its earliest synapse.
        # Samples 101..106: one event each, 40 ms apart (the longest delay is 22 ms), so every port sees
        # every synapse's own delay (ids only grow: the gate treats an id older than one holding its slot as stale).
        pairs = [(0, f) for f in spikes.event_frames(plan, 100, EVENTS)]
        for n, event in enumerate(EVENTS):
            t = 40_000_000 * (n + 1)
            pairs += [(t, f) for f in spikes.event_frames(plan, 101 + n, [event], seq0=n)]
        expected = len(fab.ports[0]) * (1 + len(EVENTS))
        report, capture = spikes.inject(fab.host_netns, fab.inject_ifs[0], Schedule.from_pairs(pairs), expected)
        got = capture.arrivals
        assert capture.dropped == 0
        assert not np.any(got["kind"] == KIND_PRIMER)  # primers never reach a neuron port
        assert set(got["ifindex"].tolist()) == set(port_of)
        for ifindex, i in port_of.items():
            mine = got[got["ifindex"] == ifindex]
            samples = mine["sample"].tolist()
            assert sorted(samples) == [100, 101, 102, 103, 104, 105, 106]  # exactly K = 1 spike per sample
            delays = _plan_delays(layer.ports[i])
            first = mine[mine["sample"] == 100][0]
            assert (int(first["source"]), int(first["sign"])) == min(delays, key=delays.get)
            singles = mine[mine["sample"] != 100]
            arrival_order = [(int(r["source"]), int(r["sign"])) for r in singles[np.argsort(singles["t_ns"])]]
            # latency = RX stamp − the spike's TX stamp (frames sorted by time: sample 100's twelve
            # first, then primer and spike of samples 101..106): its order is the plan's delay order
            tx = {101 + n: int(report.tx_real_ns[2 * len(EVENTS) + 2 * n + 1]) for n in range(len(EVENTS))}
            latency = {(int(r["source"]), int(r["sign"])): int(r["t_ns"]) - tx[int(r["sample"])] for r in singles}
            assert sorted(latency, key=latency.get) == sorted(delays, key=delays.get)
            assert arrival_order == [EVENTS[s - 101] for s in sorted(tx, key=lambda s: tx[s])]
        counters = fab.gate_counters()[0]
        for c in counters:
            assert c["events_passed"] == c["spikes_counted"] == 7 and c["spikes_dropped_after_k"] == len(EVENTS) - 1
            assert c["primers_dropped"] == 2 * len(EVENTS)
        fab.reset_gates()
        assert all(c["events_passed"] == 0 for c in fab.gate_counters()[0])
    assert got["kind"].tolist().count(KIND_EVENT) == expected  # K = 1: each counted spike is its port's event
    assert spikes.leftovers(run) == []


@pytest.mark.root
def test_the_kernel_deadline_drops_late_spikes(tiny_plan, spikes):
    # Sample 200's origin lies a second ahead, so its spikes are early and the first-K gate alone
    # decides; sample 201's lies a second back, tens of windows, so every one of its spikes is late.
    layer = tiny_plan.layers[0]
    assert layer.window_us < 100_000
    with build_fabric(tiny_plan, fabric_cpus=[max(os.sched_getaffinity(0))]) as fab:
        run = fab.run_id
        now = time.clock_gettime_ns(time.CLOCK_REALTIME)
        frames = (spikes.event_frames(tiny_plan, 200, EVENTS, origin_ns=now + 10**9)
                  + spikes.event_frames(tiny_plan, 201, EVENTS, origin_ns=now - 10**9))
        _, capture = spikes.inject(fab.host_netns, fab.inject_ifs[0], Schedule.from_pairs([(0, f) for f in frames]),
                                   len(layer.ports))
        got = capture.arrivals
        for live in fab.ports[0]:
            assert got[got["ifindex"] == live.ifindex]["sample"].tolist() == [200]
        for c in fab.gate_counters()[0]:
            assert (c["events_passed"], c["spikes_dropped_after_k"]) == (1, len(EVENTS) - 1)
            assert c["spikes_dropped_late"] == len(EVENTS) and c["spikes_dropped_untimed"] == 0
    assert spikes.leftovers(run) == []


@pytest.mark.root
@pytest.mark.parametrize("delay_lines", ["per-synapse", "shared-clone", "shared"])
def test_each_port_passes_one_event_whose_t_is_the_mean_of_its_k_earliest_kernel_stamps(delay_lines, spikes):
    # K = 3 of each port's six synapses (delays 0.5 … 5.5 ms). A tap in the host namespace sees
    # every spike with its kernel RX stamp before any program: at the ports' host ends (per
    # synapse, shared-clone) or, where the membership table counts them (shared), the line copies
    # at the injector end, each standing for its line's members. The relay's socket sees only
    # what the neurons pass: one event per port carrying K and the exact sum of the three
    # earliest stamps after the origin.
    k = 3
    plan = compile_network(Pi2Network((DenseLayer(WEIGHTS, k),), (3,)), Realisation.from_profile(load_profile("shaper")),
                           1000.0, np.zeros((1, 3)), prune_margin=None, delay_lines=delay_lines)
    with build_fabric(plan, fabric_cpus=[max(os.sched_getaffinity(0))]) as fab:
        run = fab.run_id
        inject_index = netns.run_in(fab.host_netns, socket.if_nametoindex, fab.inject_ifs[0])
        origin = time.clock_gettime_ns(time.CLOCK_REALTIME) + 10**9  # every arrival early: never late
        frames = spikes.event_frames(plan, 300, EVENTS, origin_ns=origin)
        tap_sock = packet_socket(fab.host_netns, ETH_P_ALL)
        try:
            tap = Receiver(tap_sock)
            tap.discard()
            _, capture = spikes.inject(fab.host_netns, fab.inject_ifs[0], Schedule.from_pairs([(0, f) for f in frames]),
                                       len(fab.ports[0]))
            tapped = tap.collect(time.monotonic_ns() + 200_000_000, keep_frames=True)
        finally:
            tap_sock.close()
        counters = fab.gate_counters()[0]
    got = capture.arrivals
    line_copies = [(row, frame[FRAME_LINE_OFFSET]) for row, frame in zip(tapped.arrivals, tapped.frames)
                   if row["ifindex"] == inject_index and row["kind"] == KIND_SPIKE and frame[FRAME_LINE_OFFSET]]
    for q, (live, c) in enumerate(zip(fab.ports[0], counters)):
        events = got[got["ifindex"] == live.ifindex]
        assert events["kind"].tolist() == [KIND_EVENT] and events["seq"].tolist() == [k]
        at_port = tapped.arrivals[(tapped.arrivals["ifindex"] == live.ifindex)
                                  & (tapped.arrivals["kind"] == KIND_SPIKE)]["t_ns"]
        if delay_lines == "shared":
            assert len(at_port) == 0  # no spike reaches a port: only its event
            lines = {(ln.source, ln.sign, ln.line) for ln in plan.layers[0].lines if q in ln.members}
            seen = np.array([row["t_ns"] for row, line in line_copies if (row["source"], row["sign"], line) in lines])
            assert len(seen) == len(EVENTS)  # one line of each event feeds the port...
            assert len(line_copies) == len(plan.layers[0].lines)  # ...and every line was delayed once
        else:
            seen = at_port
            # Every synapse's spike reached the port (shared-clone: all but those the fan-out no
            # longer copied once the neuron had K); the neuron kept three.
            assert len(seen) == len(EVENTS) if delay_lines == "per-synapse" else k <= len(seen) <= len(EVENTS)
        earliest = np.sort(seen - origin)[:k]
        assert int(events["time_ns"][0]) == int(earliest.sum())
        assert (c["spikes_counted"], c["events_passed"], c["spikes_dropped_after_k"]) == (k, 1, len(seen) - k)
    assert spikes.leftovers(run) == []


@pytest.mark.root
def test_pruned_synapses_are_dropped_before_the_shaper(pruned_tiny_plan, spikes):
    plan = pruned_tiny_plan
    layer = plan.layers[0]
    assert all(len(port.synapses) == 1 for port in layer.ports)
    with build_fabric(plan, fabric_cpus=[max(os.sched_getaffinity(0))]) as fab:
        run = fab.run_id
        with netns.iproute(f"p2{run}f") as ipr:
            index = ipr.link_lookup(ifname=f"p2{run}{layer.ports[0].switch_if}")[0]
            egress = {f.get_attr("TCA_KIND") for f in ipr.get_filters(index, parent=0xFFFFFFF3)} - {None}
            assert egress == {"bpf"}
        pairs = [(0, f) for f in spikes.event_frames(plan, 100, EVENTS)]
        _, capture = spikes.inject(fab.host_netns, fab.inject_ifs[0], Schedule.from_pairs(pairs), len(layer.ports))
        got = capture.arrivals
        for port, live in zip(layer.ports, fab.ports[0]):
            mine = got[got["ifindex"] == live.ifindex]
            kept = port.synapses[0]
            assert [(int(r["source"]), int(r["sign"])) for r in mine] == [(kept.source, kept.sign)]
        # Only the kept synapse's primer and spike reached each gate: the filter dropped the rest.
        for c in fab.gate_counters()[0]:
            assert c["events_passed"] == 1 and c["spikes_dropped_after_k"] == 0 and c["primers_dropped"] == 1
    assert spikes.leftovers(run) == []


@pytest.mark.root
def test_interrupt_while_running_tears_everything_down(tiny_plan, spikes):
    run = None
    with pytest.raises(KeyboardInterrupt):
        with build_fabric(tiny_plan) as fab:
            run = fab.run_id
            raise KeyboardInterrupt
    assert run is not None and spikes.leftovers(run) == []


@pytest.mark.root
def test_bring_up_leaves_it_up_until_down(tiny_plan, spikes):
    run = bring_up(tiny_plan)
    try:
        assert {f"p2{run}h", f"p2{run}f"} <= set(netns.list_names())
        # the gate stays attached with no fd of ours open
        with netns.iproute(f"p2{run}h") as ipr:
            index = ipr.link_lookup(ifname=f"p2{run}{tiny_plan.layers[0].ports[0].host_if}")[0]
            assert any(f.get_attr("TCA_KIND") == "bpf" for f in ipr.get_filters(index, parent=parse_handle(CLSACT_INGRESS, 'clsact ingress')))
    finally:
        cleanup.down(run)
    assert spikes.leftovers(run) == []


@pytest.mark.root
def test_bad_backend_and_cpus_are_one_line_errors_leaving_nothing(tiny_plan):
    with pytest.raises(KernelError, match="backend 'ovs'"):
        with build_fabric(tiny_plan, backend="ovs"):
            pass
    before = set(netns.list_names())
    with pytest.raises(KernelError, match="fabric_cpus"):
        with build_fabric(tiny_plan, fabric_cpus=[4096]):
            pass
    assert not set(netns.list_names()) - before
