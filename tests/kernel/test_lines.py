"""The shared-line programs' verdicts in the kernel (BPF_PROG_TEST_RUN): what each leaves alone, what it
drops, and how its map bounds it. That a line's copies reach exactly its members on a live fabric is
tests/fabric/test_shared_lines.py's."""

from __future__ import annotations

import pytest

from testbed.errors import KernelError
from testbed.kernel import bpf
from testbed.kernel.gate import GateCounters, NeuronState, load_first_k_gate
from testbed.kernel.lines import build_line_fanout, build_line_splitter, load_line_fanout, load_line_neurons, load_line_splitter
from testbed.plan import wire
from testbed.plan.wire import KIND_EVENT, KIND_PRIMER, KIND_SPIKE, SpikeHeader
from testbed.traffic.packets import spike_frame

PASS, DROP = bpf.TC_ACT_UNSPEC, bpf.TC_ACT_SHOT
EVENTS, LINES = 8, 3  # a layer of 4 inputs; at most 3 lines per event


def frame(layer: int = 0, source: int = 1, sign: int = 0, kind: int = KIND_SPIKE, line: int = 0,
          size: int = wire.SPIKE_FRAME_BYTES) -> bytes:
    header = SpikeHeader(layer, source, sign, 9, 0, kind, 1, line)  # sample 9
    return spike_frame("02:00:00:00:00:01", "ff:ff:ff:ff:ff:ff", "198.18.0.1", "198.18.0.255", header, size)


def verdict(program_fd: int, data: bytes) -> int:
    return bpf.prog_test_run(program_fd, data).retval


@pytest.mark.root
@pytest.mark.parametrize("data, expected", [
    (frame(layer=1), PASS),  # another layer's spike
    (frame(kind=KIND_EVENT), PASS),  # a neuron event is no spike to split
    (frame(source=4), PASS),  # event 8: beyond the layer's events
    (frame()[:40], PASS),  # not even a UDP header
    (frame(), DROP),  # event 2 has no line: nothing sent, the original dropped
    (frame(kind=KIND_PRIMER, size=1514), DROP),
])
def test_splitter_verdicts(data, expected):
    splitter = load_line_splitter(0, EVENTS, LINES, {5: [0x10001]}, "p2tsplit")
    try:
        assert verdict(splitter.fd, data) == expected
    finally:
        splitter.close()


@pytest.mark.root
@pytest.mark.parametrize("data, expected", [
    (frame(layer=1, line=1), PASS),
    (frame(kind=KIND_EVENT, line=1), PASS),
    (frame(kind=KIND_PRIMER, line=1, size=1514), DROP),  # a primer's work ends with its line's delay
    (frame(line=0), DROP),  # a spike that came down no line
    (frame(line=LINES + 1), DROP),  # beyond the layer's widest event
    (frame(line=2), DROP),  # a line with no members: the copy ends here
])
def test_fanout_verdicts(data, expected):
    with load_first_k_gate(2, slots=4, name="p2tfang") as gate:
        fanout = load_line_fanout(0, EVENTS, LINES, {2 * LINES + 0: [(1, 0)]}, [gate.state_fd], 2, 4, "p2tfan")
        try:
            assert verdict(fanout.fd, data) == expected
            assert fanout.counters() == {"copies_made": 0, "copies_skipped_after_k": 0}
        finally:
            fanout.close()


@pytest.mark.root
def test_fanout_makes_no_copy_for_a_member_whose_neuron_has_k_already():
    # Member 0's neuron (K = 1) counts one spike of sample 9; the line's copy for it is then skipped,
    # while member 1, whose neuron counted nothing, gets its copy (to ifindex 0: the clone fails,
    # which the counters cannot tell from a delivered one; the live fabric test sees deliveries).
    with load_first_k_gate(1, slots=4, name="p2tfang0") as full, load_first_k_gate(1, slots=4, name="p2tfang1") as empty:
        origin = 1_700_000_000_000_000_000
        spike = spike_frame("02:00:00:00:00:01", "ff:ff:ff:ff:ff:ff", "198.18.0.1", "198.18.0.255",
                            SpikeHeader(0, 1, 0, 9, 0, KIND_SPIKE, origin))
        assert bpf.prog_test_run(full.fd, spike, tstamp_ns=origin + 1000).retval == PASS  # its K-th: the event
        fanout = load_line_fanout(0, EVENTS, LINES, {2 * LINES + 0: [(0, 0), (0, 1)]}, [full.state_fd, empty.state_fd],
                                  1, 4, "p2tfan")
        try:
            assert verdict(fanout.fd, frame(line=1)) == DROP
            assert fanout.counters() == {"copies_made": 1, "copies_skipped_after_k": 1}
        finally:
            fanout.close()


def test_bad_widths_are_refused_before_the_kernel_sees_them():
    with pytest.raises(KernelError, match="lines per event"):
        build_line_splitter(0, EVENTS, 0, map_fd=3)
    with pytest.raises(KernelError, match="3 banks"):
        build_line_splitter(0, EVENTS, LINES, map_fd=3, banks=3)
    with pytest.raises(KernelError, match="members"):
        build_line_fanout(0, EVENTS, LINES, 513, map_fd=3, states_fd=4, k=1, slots=16, counter_fd=5)


ORIGIN = 1_700_000_000_000_000_000


def line_spike(line: int, sample: int = 9, origin: int = ORIGIN, kind: int = KIND_SPIKE) -> bytes:
    return spike_frame("02:00:00:00:00:01", "ff:ff:ff:ff:ff:ff", "198.18.0.1", "198.18.0.255",
                       SpikeHeader(0, 1, 0, sample, 0, kind, origin, line))


@pytest.fixture
def three_neurons():
    """Three ports' neurons (K = 2, window 5 ms) and a membership table where event 2's line 1 has
    members 0 and 2 and its line 2 member 1 (ifindex 0: an event's clone fails, which the counters
    cannot tell from a delivered one; tests/fabric sees deliveries)."""
    gates = [load_first_k_gate(2, slots=4, name=f"p2tmemg{q}", window_ns=5_000_000) for q in range(3)]
    table = load_line_neurons(0, EVENTS, LINES, {2 * LINES + 0: [(0, 0), (0, 2)], 2 * LINES + 1: [(0, 1)]}, gates,
                              "p2tmem")
    try:
        yield table, gates
    finally:
        table.close()
        for gate in gates:
            gate.close()


@pytest.mark.root
@pytest.mark.parametrize("data, expected", [
    (frame(layer=1, line=1), PASS),
    (frame(kind=KIND_EVENT, line=1), PASS),  # a neuron event passes on to the relay
    (frame()[:40], PASS),
    (frame(kind=KIND_PRIMER, line=1, size=1514), DROP),
    (frame(line=0), DROP),
    (frame(line=LINES + 1), DROP),
    (frame(line=3), DROP),  # a line with no members
])
def test_membership_table_verdicts(three_neurons, data, expected):
    table, gates = three_neurons
    assert bpf.prog_test_run(table.fd, data, tstamp_ns=ORIGIN + 1000).retval == expected
    assert all(g.counters().spikes_counted == 0 for g in gates)


@pytest.mark.root
def test_membership_table_counts_the_k_earliest_line_stamps_of_exactly_the_lines_members(three_neurons):
    table, gates = three_neurons
    stamps = [1_000_000, 1_250_000, 3_000_000]  # arrivals of three copies of line 1, ns after the origin
    for t in stamps:
        assert bpf.prog_test_run(table.fd, line_spike(1), tstamp_ns=ORIGIN + t).retval == DROP
    for q in (0, 2):  # line 1's members: the first K = 2 copies counted, their event sent, the third dropped
        assert gates[q].partial(9) == NeuronState(2, stamps[0] + stamps[1])
        c = gates[q].counters()
        assert (c.spikes_counted, c.events_passed, c.spikes_dropped_after_k) == (2, 1, 1)
    assert gates[1].partial(9) == NeuronState(0, 0)  # line 2's member saw none of them
    assert gates[1].counters() == GateCounters()
    assert bpf.prog_test_run(table.fd, line_spike(2), tstamp_ns=ORIGIN + 2_000_000).retval == DROP
    assert gates[1].partial(9) == NeuronState(1, 2_000_000)


@pytest.mark.root
def test_membership_table_drops_late_and_untimed_copies_for_every_member(three_neurons):
    table, gates = three_neurons
    assert bpf.prog_test_run(table.fd, line_spike(1), tstamp_ns=ORIGIN + 5_000_001).retval == DROP  # after 5 ms
    assert bpf.prog_test_run(table.fd, line_spike(1), tstamp_ns=0).retval == DROP  # no RX stamp
    assert bpf.prog_test_run(table.fd, line_spike(1, origin=0), tstamp_ns=ORIGIN).retval == DROP  # no origin
    for q in (0, 2):
        assert gates[q].partial(9) == NeuronState(0, 0)
        c = gates[q].counters()
        assert (c.spikes_dropped_late, c.spikes_dropped_untimed, c.spikes_counted) == (1, 2, 0)


@pytest.mark.root
def test_membership_table_loses_one_copy_in_n_per_member():
    gates = [load_first_k_gate(1000, slots=4, name=f"p2tmeml{q}", drop_one_in=2) for q in range(2)]
    try:
        with load_line_neurons(0, EVENTS, LINES, {2 * LINES: [(0, 0), (0, 1)]}, gates, "p2tmeml") as table:
            for n in range(400):
                bpf.prog_test_run(table.fd, line_spike(1), tstamp_ns=ORIGIN + 1000 + n)
        for gate in gates:
            c = gate.counters()
            assert c.spikes_dropped_lost + c.spikes_counted == 400
            assert 120 < c.spikes_dropped_lost < 280  # 1 in 2, members independently
        assert gates[0].counters() != gates[1].counters()
    finally:
        for gate in gates:
            gate.close()


def test_membership_table_refuses_members_whose_neurons_differ():
    class Gate:  # what the loader reads of a gate before touching the kernel
        def __init__(self, k):
            self.k, self.slots, self.drop_one_in, self.window_ns = k, 4, None, None
    with pytest.raises(KernelError, match="differ"):
        load_line_neurons(0, EVENTS, LINES, {}, [Gate(1), Gate(2)], "p2tmem")
