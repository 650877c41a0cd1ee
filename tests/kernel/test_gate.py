"""The in-kernel neuron (first-K gate): its verdicts and events run in the kernel (BPF_PROG_TEST_RUN) and on a real
veth with real UDP spikes, where a tap checks its sums against the kernel's own RX stamps."""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from typing import Iterator

import numpy as np
import pytest

from testbed.errors import KernelError
from testbed.kernel import bpf, names, netns
from testbed.kernel.gate import GateCounters, GateProgram, NeuronState, load_first_k_gate
from testbed.kernel.netlink import NetlinkBatch
from testbed.kernel.tc import queue_tree
from testbed.plan import wire
from testbed.plan.tc import CLSACT_INGRESS, FilterSpec, QdiscSpec, TcTree
from testbed.plan.wire import KIND_EVENT, KIND_PRIMER, KIND_SPIKE, SPIKE_PORT, SpikeHeader
from testbed.traffic.capture import Receiver
from testbed.traffic.sockets import packet_socket

PASS, DROP = bpf.TC_ACT_UNSPEC, bpf.TC_ACT_SHOT
OTHER_PORT = SPIKE_PORT + 1
SO_ZEROCOPY = 60  # asm-generic/socket.h
MSG_ZEROCOPY = 0x4000000  # linux/socket.h
ETH_P_ALL = 0x0003  # linux/if_ether.h: every frame, seen before tc ingress


def frame(sample: int, kind: int = KIND_SPIKE, seq: int = 0, dport: int = SPIKE_PORT,
          payload_bytes: int = wire.PAYLOAD_BYTES, ihl: int = 5, fragment: int = 0x4000, time_ns: int = 0) -> bytes:
    """Ethernet + IPv4 + UDP + spike payload, as a veth would receive it (checksums are not checked)."""
    header = SpikeHeader(layer=1, source=7, sign=0, sample=sample, seq=seq, kind=kind, time_ns=time_ns)
    payload = header.pack(payload_bytes)[:payload_bytes]
    udp = struct.pack("!HHHH", SPIKE_PORT, dport, wire.UDP_HEADER_BYTES + len(payload), 0)
    options = bytes(4 * (ihl - 5))
    ip = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 4 * ihl + len(udp) + len(payload), 0, fragment, 64, 17, 0,
                     bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2])) + options
    return bytes.fromhex("020000000002" "020000000001" "0800") + ip + udp + payload


ORIGIN_NS = 1_700_000_000_000_000_000  # a CLOCK_REALTIME origin (2023), as the injector stamps it
WINDOW_NS = 5_000_000
EVENT = (PASS, KIND_EVENT)


def verdicts(gate: GateProgram, frames: list[bytes], rx_ns: int = ORIGIN_NS + 1_000) -> list[int]:
    """The gate's verdict on each frame, received `rx_ns` (kernel RX stamp)."""
    return [bpf.prog_test_run(gate.fd, f, tstamp_ns=rx_ns).retval for f in frames]


def spike(sample: int, **kwargs) -> bytes:
    return frame(sample, time_ns=kwargs.pop("time_ns", ORIGIN_NS), **kwargs)


def run_spike(gate: GateProgram, sample: int, rx_ns: int, origin_ns: int = ORIGIN_NS) -> tuple[int, SpikeHeader]:
    """(verdict, the header as the program left it) for one spike of `sample` received at `rx_ns`."""
    out = bpf.prog_test_run(gate.fd, frame(sample, time_ns=origin_ns), tstamp_ns=rx_ns)
    return out.retval, SpikeHeader.unpack(out.frame[wire.FRAME_PAYLOAD_OFFSET:])


@pytest.fixture
def gate() -> Iterator[GateProgram]:
    with load_first_k_gate(2, slots=4) as g:
        yield g


def test_payload_offsets_match_the_wire_format() -> None:
    raw = frame(0xA1B2C3D4, kind=KIND_PRIMER, payload_bytes=100, time_ns=0x0102030405060708)
    assert raw[wire.FRAME_SAMPLE_OFFSET:wire.FRAME_SAMPLE_OFFSET + 4] == bytes.fromhex("a1b2c3d4")
    assert raw[wire.FRAME_KIND_OFFSET] == KIND_PRIMER
    assert raw[wire.FRAME_TIME_OFFSET:wire.FRAME_TIME_OFFSET + 8] == bytes.fromhex("0102030405060708")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"k": 0}, "k=0"), ({"k": 1 << 16}, "k=65536"), ({"k": 1, "slots": 3}, "slots=3"),
    ({"k": 1, "slots": 1 << 17}, "slots=131072"), ({"k": 1, "name": "gate"}, "object name"),
    ({"k": 1, "drop_one_in": 0}, "drop_one_in=0"), ({"k": 1, "window_ns": 0}, "window_ns=0"),
])
def test_bad_parameters_are_refused_before_touching_the_kernel(kwargs: dict, match: str) -> None:
    with pytest.raises(KernelError, match=match):
        load_first_k_gate(**kwargs)


@pytest.mark.root
def test_the_kth_spike_of_each_sample_passes_as_its_event(gate: GateProgram) -> None:
    # K = 2, ring of 4 slots: samples 7 and 11 share slot 3, 8 and 12 share slot 0. The first
    # spike of a sample is counted and dropped, the second passes (the event), later ones drop.
    samples = [7, 7, 7, 8, 7, 8, 8, 11, 7, 11, 11, 12, 8]
    expected = [DROP, PASS, DROP, DROP, DROP, PASS, DROP, DROP, DROP, PASS, DROP, DROP, DROP]
    assert verdicts(gate, [spike(s) for s in samples]) == expected
    # 7 after 11 took its slot, 8 after 12 took its slot: stale, and 11/12 keep their counts.
    assert gate.counters() == GateCounters(spikes_counted=7, events_passed=3, spikes_dropped_after_k=4,
                                           spikes_dropped_stale=2)
    assert verdicts(gate, [spike(12), spike(12)]) == [PASS, DROP]


@pytest.mark.root
def test_the_event_carries_the_count_and_the_sum_of_the_k_earliest_kernel_stamps() -> None:
    # Three samples interleaved, K = 5, arrivals in random order on the kernel's clock: each
    # event is the 5th spike, rewritten to seq = 5, kind = event, time_ns = Σ (RX stamp − origin)
    # of the five counted spikes: T = time_ns / 5 is their mean.
    rng = np.random.default_rng(4)
    k = 5
    origins = {1: ORIGIN_NS, 2: ORIGIN_NS + 7_000_000, 3: ORIGIN_NS - 3_000}
    arrivals = [(sample, origins[sample] + int(rng.integers(-1_000, 4_000_000))) for sample in origins for _ in range(9)]
    order = rng.permutation(len(arrivals))
    with load_first_k_gate(k, slots=4, window_ns=WINDOW_NS) as g:
        seen: dict[int, list[int]] = {sample: [] for sample in origins}
        events = {}
        for i in order:
            sample, rx = arrivals[i]
            verdict, header = run_spike(g, sample, rx, origins[sample])
            if rx - origins[sample] <= WINDOW_NS and len(seen[sample]) < k:
                seen[sample].append(rx - origins[sample])
            if verdict == PASS:
                assert sample not in events
                events[sample] = header
            else:
                assert verdict == DROP and header.kind == KIND_SPIKE
        assert sorted(events) == [1, 2, 3]
        for sample, header in events.items():
            assert (header.kind, header.seq, header.time_ns) == (KIND_EVENT, k, sum(seen[sample]))
            assert (header.layer, header.source, header.sign, header.sample) == (1, 7, 0, sample)
            assert g.partial(sample) == NeuronState(k, sum(seen[sample]))
        counters = g.counters()
        assert counters.events_passed == 3 and counters.spikes_counted == 3 * k
        assert counters.spikes_counted + counters.spikes_dropped_after_k + counters.spikes_dropped_late == len(arrivals)


@pytest.mark.root
def test_a_set_short_of_k_passes_nothing_and_its_state_is_read_at_the_deadline() -> None:
    with load_first_k_gate(3, slots=4, window_ns=WINDOW_NS) as g:
        assert [run_spike(g, 9, ORIGIN_NS + t)[0] for t in (2_000, -500)] == [DROP, DROP]
        assert g.partial(9) == NeuronState(2, 1_500)
        assert g.partial(13) == NeuronState(0, 0)  # its slot holds sample 9
        assert g.partial(10) == NeuronState(0, 0)  # nothing came


@pytest.mark.root
def test_the_deadline_drops_late_spikes_before_they_count() -> None:
    with load_first_k_gate(2, slots=4, window_ns=WINDOW_NS) as g:
        on_time, at_deadline, late = ORIGIN_NS + 1_000, ORIGIN_NS + WINDOW_NS, ORIGIN_NS + WINDOW_NS + 1
        got = [run_spike(g, 1, rx) for rx in (late, on_time, late, at_deadline, on_time)]
        # Late spikes use up nothing: the two on-time spikes after them make the event, the third is after K.
        assert [v for v, _ in got] == [DROP, DROP, DROP, PASS, DROP]
        assert got[3][1].time_ns == 1_000 + WINDOW_NS
        assert g.counters() == GateCounters(spikes_counted=2, events_passed=1, spikes_dropped_after_k=1,
                                            spikes_dropped_late=2)
        # Each spike's own origin counts: sample 2 began a second later, so the same stamp is early for it.
        assert [run_spike(g, 2, late, ORIGIN_NS + 10**9)[0], run_spike(g, 2, late)[0]] == [DROP, DROP]
        assert g.partial(2) == NeuronState(1, late - ORIGIN_NS - 10**9)


@pytest.mark.root
def test_spikes_without_an_origin_or_an_rx_stamp_are_dropped() -> None:
    with load_first_k_gate(1, slots=4, window_ns=WINDOW_NS) as g:
        assert verdicts(g, [spike(1, time_ns=0), spike(1)], rx_ns=0) == [DROP, DROP]
        assert verdicts(g, [spike(1, time_ns=0)]) == [DROP]
        assert g.counters() == GateCounters(spikes_dropped_untimed=3)
    with load_first_k_gate(1, slots=4) as no_window:  # no time-out: any arrival counts
        assert verdicts(no_window, [spike(1)], rx_ns=ORIGIN_NS + 10**12) == [PASS]


@pytest.mark.root
def test_late_spikes_within_the_slot_window_still_count(gate: GateProgram) -> None:
    got = verdicts(gate, [spike(20), spike(21), spike(22), spike(23), spike(20), spike(20)])
    assert got == [DROP] * 4 + [PASS, DROP]


@pytest.mark.root
def test_sample_ids_wrap_in_serial_order(gate: GateProgram) -> None:
    top = 0xFFFF_FFFE  # slot 2, like sample 2 after the wrap
    assert verdicts(gate, [spike(top), spike(2), spike(top), spike(2), spike(2)]) == [DROP, DROP, DROP, PASS, DROP]
    assert gate.counters().spikes_dropped_stale == 1
    # An empty slot takes any id, even one that is "older" than 0 in serial order.
    assert verdicts(gate, [spike(0x9000_0001), spike(0x9000_0001)]) == [DROP, PASS]


@pytest.mark.root
def test_primers_are_always_dropped_and_never_use_up_k(gate: GateProgram) -> None:
    primers = [spike(5, kind=KIND_PRIMER, payload_bytes=1000) for _ in range(3)]
    assert verdicts(gate, primers + [spike(5), spike(5), spike(5)] + primers[:1]) == [DROP] * 3 + [DROP, PASS, DROP, DROP]
    assert gate.counters() == GateCounters(spikes_counted=2, events_passed=1, spikes_dropped_after_k=1,
                                           primers_dropped=4)


@pytest.mark.root
def test_non_spikes_pass_untouched(gate: GateProgram) -> None:
    arp = bytes.fromhex("ffffffffffff" "020000000001" "0806") + bytes(28)
    others = [
        arp,
        spike(1, dport=OTHER_PORT),
        spike(1, ihl=6),  # IP options: not the wire format's layout
        spike(1, fragment=0x2000),  # more fragments
        spike(1, fragment=0x0001),  # a later fragment
        spike(1, payload_bytes=wire.PAYLOAD_BYTES - 1),  # shorter than a spike header
        spike(1, kind=KIND_EVENT),  # an event: already a neuron's output
        spike(1, kind=3),  # unknown kind
    ]
    assert verdicts(gate, others * 3) == [PASS] * 24
    assert gate.counters() == GateCounters()


@pytest.mark.root
def test_reset_forgets_samples_and_counts(gate: GateProgram) -> None:
    assert verdicts(gate, [spike(3), spike(3), spike(3), spike(7)]) == [DROP, PASS, DROP, DROP]
    assert verdicts(gate, [spike(3)]) == [DROP]  # stale now: 7 holds slot 3
    gate.reset()
    assert gate.counters() == GateCounters()
    assert gate.partial(7) == NeuronState(0, 0)
    assert verdicts(gate, [spike(3), spike(3), spike(3)]) == [DROP, PASS, DROP]


@pytest.mark.root
def test_loss_drops_one_spike_in_n_before_counting_and_never_a_primer() -> None:
    with load_first_k_gate(1000, slots=1, drop_one_in=4) as g:
        got = verdicts(g, [spike(1)] * 800 + [spike(1, kind=KIND_PRIMER, payload_bytes=1000)] * 50)
        counts = g.counters()
    # 800 spikes each lost with probability 1/4: 200 ± 12 (sd); 130..270 is 5.8 sd either way.
    assert 130 < counts.spikes_dropped_lost < 270
    assert counts == GateCounters(spikes_counted=800 - counts.spikes_dropped_lost,
                                  spikes_dropped_lost=counts.spikes_dropped_lost, primers_dropped=50)
    assert got.count(PASS) == 0  # K = 1000 was never reached
    with load_first_k_gate(1, slots=1, drop_one_in=1) as everything_lost:
        assert verdicts(everything_lost, [spike(1), spike(2)]) == [DROP, DROP]
        assert everything_lost.counters() == GateCounters(spikes_dropped_lost=2)


@pytest.mark.root
def test_gate_without_counters_gates_the_same() -> None:
    with load_first_k_gate(1, slots=1, counters=False) as g:
        # One slot: only the newest sample counts ("only newer ids").
        assert verdicts(g, [spike(1), spike(1), spike(2), spike(1), spike(2), spike(3)]) == [PASS, DROP, PASS, DROP, DROP, PASS]
        with pytest.raises(KernelError, match="without counters"):
            g.counters()
    with pytest.raises(KernelError, match="is closed"):
        _ = g.fd


# --- real veth, real packets -------------------------------------------------------------------

A_ADDR, B_ADDR = "192.0.2.1", "192.0.2.2"  # TEST-NET-1, inside our own namespaces only


@pytest.fixture
def veth_pair() -> Iterator[tuple[str, str, int]]:
    """Namespaces p2<run>ga and p2<run>gb joined by a veth; yields (ns_a, ns_b, ifindex of B's end)."""
    run_id = names.new_run_id()
    ns_a, ns_b = names.object_name(run_id, "ga"), names.object_name(run_id, "gb")
    made: list[str] = []
    try:
        for ns in (ns_a, ns_b):
            made.append(ns)
            netns.create(ns)
        with netns.iproute(ns_a) as ipr:
            ipr.link("add", ifname=ns_a, kind="veth", peer={"ifname": ns_b, "net_ns_fd": ns_b})
            index_a = ipr.link_lookup(ifname=ns_a)[0]
            ipr.addr("add", index=index_a, address=A_ADDR, prefixlen=24)
            ipr.link("set", index=index_a, state="up")
        with netns.iproute(ns_b) as ipr:
            index_b = ipr.link_lookup(ifname=ns_b)[0]
            ipr.addr("add", index=index_b, address=B_ADDR, prefixlen=24)
            ipr.link("set", index=index_b, state="up")
        yield ns_a, ns_b, index_b
    finally:
        for ns in reversed(made):
            netns.remove(ns)  # the veth goes with its namespaces


def _udp(ns: str, port: int | None = None) -> socket.socket:
    sock = netns.socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM)
    if port is not None:
        sock.bind((B_ADDR, port))
    return sock


def _drain(sock: socket.socket, quiet_s: float = 0.2) -> list[SpikeHeader]:
    """Every datagram queued on `sock`, until nothing more arrives for `quiet_s`."""
    got = []
    while select.select([sock], [], [], quiet_s)[0]:
        got.append(SpikeHeader.unpack(sock.recv(2048)))
    return got


def _wait_for_verdicts(gate: GateProgram, total: int, timeout_s: float = 5.0) -> GateCounters:
    """Poll the counters until the gate has judged `total` packets (the kernel works asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while True:
        counters = gate.counters()
        if sum(counters.to_dict().values()) >= total or time.monotonic() > deadline:
            return counters
        time.sleep(0.01)


@pytest.fixture
def gated_port(veth_pair: tuple[str, str, int]) -> Iterator[tuple[GateProgram, socket.socket, socket.socket, socket.socket, Receiver]]:
    """A K = 3, 4-slot neuron on B's ingress; yields (gate, sender in A, event receiver and other-port
    receiver in B, and a tap on B's end that sees every frame, with its kernel RX stamp, before the gate).

    The sender is pinned to one CPU while the test runs: veth hands each frame to the sending CPU's
    backlog, so a sender migrating between CPUs could reorder a burst. A first datagram to the other
    port resolves the neighbour (ARP passes the gate) before any burst: an unresolved neighbour
    queues only a few packets. The tap (ETH_P_ALL, which sees a frame before tc ingress) also turns
    on the kernel's receive stamps, which the neuron reads.
    """
    ns_a, ns_b, index_b = veth_pair
    with load_first_k_gate(3, slots=4, name="p2_gate_test") as gate:
        # The builders' path: a clsact qdisc and the gate's bpf filter from a TcTree, one netlink batch.
        tree = TcTree((QdiscSpec("clsact", "ffff:", "root"),), (),
                      (FilterSpec("bpf", CLSACT_INGRESS, 1, {"program": "first_k_gate", "k": 3, "direct_action": 1}),))
        with NetlinkBatch(ns_b) as nl:
            queue_tree(nl, index_b, tree, "port B", lambda spec: gate.fd)
            nl.commit()
        tx, rx, rx_other = _udp(ns_a), _udp(ns_b, SPIKE_PORT), _udp(ns_b, OTHER_PORT)
        tap_sock = packet_socket(ns_b, ETH_P_ALL)
        affinity = os.sched_getaffinity(0)
        try:
            tap = Receiver(tap_sock)
            os.sched_setaffinity(0, {min(affinity)})
            tx.sendto(SpikeHeader(0, 0, 0, 99).pack(), (B_ADDR, OTHER_PORT))
            assert [h.sample for h in _drain(rx_other, quiet_s=2.0)] == [99]
            tap.discard()
            yield gate, tx, rx, rx_other, tap
        finally:
            os.sched_setaffinity(0, affinity)
            for sock in (tx, rx, rx_other, tap_sock):
                sock.close()


def _tapped_spikes(tap: Receiver) -> np.ndarray:
    """Spikes (not primers) the tap saw arrive at B, in arrival order."""
    got = tap.collect(time.monotonic_ns() + 200_000_000).arrivals
    return got[got["kind"] == KIND_SPIKE]


def _sums_of_first_k(spikes: np.ndarray, k: int, counted: set[int]) -> dict[int, tuple[int, int]]:
    """(count, Σ RX stamp − origin) of each sample's first k spikes, over samples the neuron counted."""
    out: dict[int, tuple[int, int]] = {}
    for sample in counted:
        mine = spikes[spikes["sample"] == sample][:k]
        out[sample] = (len(mine), int((mine["t_ns"] - mine["time_ns"]).sum()))
    return out


@pytest.mark.root
def test_neuron_on_a_veth_passes_one_event_with_the_sum_of_its_k_earliest_kernel_stamps(gated_port) -> None:
    gate, tx, rx, rx_other, tap = gated_port
    origin = time.clock_gettime_ns(time.CLOCK_REALTIME)
    schedule = (  # (sample, kind, seq) in sending order; K = 3, 4 slots
        [(10, KIND_PRIMER, 100), (10, KIND_SPIKE, 0), (10, KIND_PRIMER, 101)] + [(10, KIND_SPIKE, s) for s in range(1, 6)]
        + [(11, KIND_SPIKE, 0), (10, KIND_SPIKE, 6)] + [(11, KIND_SPIKE, s) for s in range(1, 5)]
        + [(14, KIND_SPIKE, 0), (10, KIND_SPIKE, 7), (10, KIND_SPIKE, 8)] + [(14, KIND_SPIKE, s) for s in range(1, 4)]
        + [(12, KIND_SPIKE, 0), (13, KIND_SPIKE, 0), (12, KIND_SPIKE, 1)]
        + [(15, KIND_PRIMER, 100 + s) for s in range(3)] + [(15, KIND_SPIKE, s) for s in range(4)]
    )
    for sample, kind, seq in schedule:
        size = 1000 if kind == KIND_PRIMER else wire.PAYLOAD_BYTES
        tx.sendto(SpikeHeader(1, 3, 0, sample, seq, kind, origin).pack(size), (B_ADDR, SPIKE_PORT))
    for seq in range(3):
        tx.sendto(SpikeHeader(0, 0, 0, 99, seq).pack(), (B_ADDR, OTHER_PORT))
    counters = _wait_for_verdicts(gate, len(schedule))
    events = {h.sample: h for h in _drain(rx)}
    assert [h.seq for h in _drain(rx_other)] == [0, 1, 2]
    # One event per sample that reached K (10, 11, 14, 15): the third spike, carrying K and the sum
    # of the three counted spikes' kernel RX stamps after the origin, exactly as the tap saw them.
    want = _sums_of_first_k(_tapped_spikes(tap), 3, {10, 11, 12, 13, 14, 15})
    assert sorted(events) == [10, 11, 14, 15]
    for sample, event in events.items():
        assert (event.kind, event.seq, event.time_ns) == (KIND_EVENT, 3, want[sample][1])
    # 12 and 13 got fewer than K: no event, and the neuron holds what the relay reads at the deadline.
    assert gate.partial(12) == NeuronState(*want[12]) and want[12][0] == 2
    assert gate.partial(13) == NeuronState(*want[13]) and want[13][0] == 1
    assert counters == GateCounters(spikes_counted=15, events_passed=4, spikes_dropped_after_k=8,
                                    spikes_dropped_stale=2, primers_dropped=5)

    # Without a reset sample 10 is stale (14 holds its slot); after one it counts afresh.
    gate.reset()
    for seq in range(4):
        tx.sendto(SpikeHeader(1, 3, 0, 10, seq, KIND_SPIKE, origin).pack(), (B_ADDR, SPIKE_PORT))
    counters = _wait_for_verdicts(gate, 4)
    assert [(h.sample, h.seq, h.kind) for h in _drain(rx)] == [(10, 3, KIND_EVENT)]
    assert counters == GateCounters(spikes_counted=3, events_passed=1, spikes_dropped_after_k=1)


@pytest.mark.root
def test_gate_pulls_spike_headers_out_of_paged_frames(gated_port) -> None:
    # MSG_ZEROCOPY puts the UDP payload in page fragments: the frame's linear part is then only the
    # 42 header bytes (checked on this kernel with a probe program), so the gate must pull the spike
    # header in (bpf_skb_pull_data) before it can read sample, kind and origin, or rewrite the event.
    gate, tx, rx, _, tap = gated_port
    origin = time.clock_gettime_ns(time.CLOCK_REALTIME)
    tx.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
    sends = [(KIND_PRIMER, 100, 1000)] + [(KIND_SPIKE, seq, wire.PAYLOAD_BYTES) for seq in range(5)]
    # The kernel reads zero-copy payloads from these buffers until delivery copies them, so they must
    # live (and keep their bytes) until the test ends: a freed buffer that Python reuses arrives changed.
    payloads = [SpikeHeader(1, 3, 0, 40, seq, kind, origin).pack(size) for kind, seq, size in sends]
    for payload in payloads:
        tx.sendmsg([payload], [], MSG_ZEROCOPY, (B_ADDR, SPIKE_PORT))
    counters = _wait_for_verdicts(gate, len(sends))
    want = _sums_of_first_k(_tapped_spikes(tap), 3, {40})
    assert [(h.kind, h.seq, h.time_ns) for h in _drain(rx)] == [(KIND_EVENT, 3, want[40][1])]
    assert counters == GateCounters(spikes_counted=3, events_passed=1, spikes_dropped_after_k=2, primers_dropped=1)
