"""The first-K gate: its verdicts run in the kernel (BPF_PROG_TEST_RUN) and on a real veth with real UDP spikes."""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from typing import Iterator

import pytest

from testbed.errors import KernelError
from testbed.kernel import bpf, names, netns
from testbed.kernel.gate import GateCounters, GateProgram, load_first_k_gate
from testbed.kernel.netlink import NetlinkBatch
from testbed.kernel.tc import queue_tree
from testbed.plan import wire
from testbed.plan.tc import CLSACT_INGRESS, FilterSpec, QdiscSpec, TcTree
from testbed.plan.wire import KIND_PRIMER, KIND_SPIKE, SPIKE_PORT, SpikeHeader

PASS, DROP = bpf.TC_ACT_UNSPEC, bpf.TC_ACT_SHOT
OTHER_PORT = SPIKE_PORT + 1
SO_ZEROCOPY = 60  # asm-generic/socket.h
MSG_ZEROCOPY = 0x4000000  # linux/socket.h


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


def verdicts(gate: GateProgram, frames: list[bytes]) -> list[int]:
    return [bpf.prog_test_run(gate.fd, f).retval for f in frames]


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
    ({"k": 0}, "k=0"), ({"k": 1, "slots": 3}, "slots=3"), ({"k": 1, "slots": 1 << 17}, "slots=131072"),
    ({"k": 1, "name": "gate"}, "object name"), ({"k": 1, "drop_one_in": 0}, "drop_one_in=0"),
    ({"k": 1, "window_ns": 0}, "window_ns=0"),
])
def test_bad_parameters_are_refused_before_touching_the_kernel(kwargs: dict, match: str) -> None:
    with pytest.raises(KernelError, match=match):
        load_first_k_gate(**kwargs)


@pytest.mark.root
def test_first_k_spikes_of_each_sample_pass(gate: GateProgram) -> None:
    # K = 2, ring of 4 slots: samples 7 and 11 share slot 3, 8 and 12 share slot 0.
    samples = [7, 7, 7, 8, 7, 8, 8, 11, 7, 11, 11, 12, 8]
    expected = [PASS, PASS, DROP, PASS, DROP, PASS, DROP, PASS, DROP, PASS, DROP, PASS, DROP]
    assert verdicts(gate, [frame(s) for s in samples]) == expected
    # 7 after 11 took its slot, 8 after 12 took its slot: stale, and 11/12 keep their counts.
    assert gate.counters() == GateCounters(spikes_passed=7, spikes_dropped_after_k=4, spikes_dropped_stale=2)
    assert verdicts(gate, [frame(12), frame(12)]) == [PASS, DROP]


@pytest.mark.root
def test_late_spikes_within_the_window_still_count(gate: GateProgram) -> None:
    assert verdicts(gate, [frame(20), frame(21), frame(22), frame(23), frame(20), frame(20)]) == [PASS] * 5 + [DROP]


@pytest.mark.root
def test_sample_ids_wrap_in_serial_order(gate: GateProgram) -> None:
    top = 0xFFFF_FFFE  # slot 2, like sample 2 after the wrap
    assert verdicts(gate, [frame(top), frame(2), frame(top), frame(2), frame(2)]) == [PASS, PASS, DROP, PASS, DROP]
    assert gate.counters().spikes_dropped_stale == 1
    # An empty slot takes any id, even one that is "older" than 0 in serial order.
    assert verdicts(gate, [frame(0x9000_0001), frame(0x9000_0001)]) == [PASS, PASS]


@pytest.mark.root
def test_primers_are_always_dropped_and_never_use_up_k(gate: GateProgram) -> None:
    primers = [frame(5, kind=KIND_PRIMER, payload_bytes=1000) for _ in range(3)]
    assert verdicts(gate, primers + [frame(5), frame(5), frame(5)] + primers[:1]) == [DROP] * 3 + [PASS, PASS, DROP, DROP]
    assert gate.counters() == GateCounters(spikes_passed=2, spikes_dropped_after_k=1, primers_dropped=4)


@pytest.mark.root
def test_non_spikes_pass_untouched(gate: GateProgram) -> None:
    arp = bytes.fromhex("ffffffffffff" "020000000001" "0806") + bytes(28)
    others = [
        arp,
        frame(1, dport=OTHER_PORT),
        frame(1, ihl=6),  # IP options: not the wire format's layout
        frame(1, fragment=0x2000),  # more fragments
        frame(1, fragment=0x0001),  # a later fragment
        frame(1, payload_bytes=wire.PAYLOAD_BYTES - 1),  # shorter than a spike header
        frame(1, kind=2),  # unknown kind
    ]
    assert verdicts(gate, others * 3) == [PASS] * 21
    assert gate.counters() == GateCounters()


@pytest.mark.root
def test_reset_forgets_samples_and_counts(gate: GateProgram) -> None:
    assert verdicts(gate, [frame(3), frame(3), frame(3), frame(7)]) == [PASS, PASS, DROP, PASS]
    assert verdicts(gate, [frame(3)]) == [DROP]  # stale now: 7 holds slot 3
    gate.reset()
    assert gate.counters() == GateCounters()
    assert verdicts(gate, [frame(3), frame(3), frame(3)]) == [PASS, PASS, DROP]


@pytest.mark.root
def test_loss_drops_one_spike_in_n_before_counting_and_never_a_primer() -> None:
    with load_first_k_gate(1000, slots=1, drop_one_in=4) as g:
        got = verdicts(g, [frame(1)] * 800 + [frame(1, kind=KIND_PRIMER, payload_bytes=1000)] * 50)
        counts = g.counters()
    # 800 spikes each lost with probability 1/4: 200 ± 12 (sd); 130..270 is 5.8 sd either way.
    assert 130 < counts.spikes_dropped_lost < 270
    assert counts == GateCounters(spikes_passed=800 - counts.spikes_dropped_lost,
                                  spikes_dropped_lost=counts.spikes_dropped_lost, primers_dropped=50)
    assert got.count(PASS) == counts.spikes_passed  # lost spikes did not use up K
    with load_first_k_gate(1, slots=1, drop_one_in=1) as everything_lost:
        assert verdicts(everything_lost, [frame(1), frame(2)]) == [DROP, DROP]
        assert everything_lost.counters() == GateCounters(spikes_dropped_lost=2)


ORIGIN_NS = 1_700_000_000_000_000_000  # a CLOCK_REALTIME origin (2023), as the injector stamps it
WINDOW_NS = 5_000_000


def timed_verdicts(gate: GateProgram, spikes: list[tuple[int, int, int]]) -> list[int]:
    """Verdicts for (sample, origin stamped in the spike, kernel RX stamp) spikes."""
    return [bpf.prog_test_run(gate.fd, frame(sample, time_ns=origin), tstamp_ns=rx).retval for sample, origin, rx in spikes]


@pytest.mark.root
def test_the_deadline_drops_late_spikes_before_they_count() -> None:
    with load_first_k_gate(2, slots=4, window_ns=WINDOW_NS) as g:
        on_time, at_deadline, late = ORIGIN_NS + 1_000, ORIGIN_NS + WINDOW_NS, ORIGIN_NS + WINDOW_NS + 1
        got = timed_verdicts(g, [(1, ORIGIN_NS, late), (1, ORIGIN_NS, on_time), (1, ORIGIN_NS, late),
                                 (1, ORIGIN_NS, at_deadline), (1, ORIGIN_NS, on_time)])
        # Late spikes use up nothing: the two on-time spikes after them still pass, the third is after K.
        assert got == [DROP, PASS, DROP, PASS, DROP]
        assert g.counters() == GateCounters(spikes_passed=2, spikes_dropped_after_k=1, spikes_dropped_late=2)
        # Each spike's own origin counts: sample 2 began a second later, so the same stamp is early for it.
        assert timed_verdicts(g, [(2, ORIGIN_NS + 10**9, late), (2, ORIGIN_NS, late)]) == [PASS, DROP]


@pytest.mark.root
def test_spikes_without_an_origin_have_no_deadline_and_unstamped_ones_are_dropped() -> None:
    with load_first_k_gate(3, slots=4, window_ns=WINDOW_NS) as g:
        assert timed_verdicts(g, [(1, 0, ORIGIN_NS), (1, 0, 0), (1, ORIGIN_NS, 0)]) == [PASS, PASS, DROP]
        assert g.counters() == GateCounters(spikes_passed=2, spikes_dropped_unstamped=1)
    with load_first_k_gate(3, slots=4) as no_window:  # no time-out: origins are ignored
        assert timed_verdicts(no_window, [(1, ORIGIN_NS, ORIGIN_NS + 10**12), (1, ORIGIN_NS, 0)]) == [PASS, PASS]


@pytest.mark.root
def test_gate_without_counters_gates_the_same() -> None:
    with load_first_k_gate(1, slots=1, counters=False) as g:
        # One slot: only the newest sample counts ("only newer ids").
        assert verdicts(g, [frame(1), frame(1), frame(2), frame(1), frame(2), frame(3)]) == [PASS, DROP, PASS, DROP, DROP, PASS]
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
def gated_port(veth_pair: tuple[str, str, int]) -> Iterator[tuple[GateProgram, socket.socket, socket.socket, socket.socket]]:
    """A K = 3, 4-slot gate on B's ingress; yields (gate, sender in A, spike receiver and other-port receiver in B).

    The sender is pinned to one CPU while the test runs: veth hands each frame to the sending CPU's
    backlog, so a sender migrating between CPUs could reorder a burst. A first datagram to the other
    port resolves the neighbour (ARP passes the gate) before any burst: an unresolved neighbour
    queues only a few packets.
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
        affinity = os.sched_getaffinity(0)
        try:
            os.sched_setaffinity(0, {min(affinity)})
            tx.sendto(SpikeHeader(0, 0, 0, 99).pack(), (B_ADDR, OTHER_PORT))
            assert [h.sample for h in _drain(rx_other, quiet_s=2.0)] == [99]
            yield gate, tx, rx, rx_other
        finally:
            os.sched_setaffinity(0, affinity)
            for sock in (tx, rx, rx_other):
                sock.close()


@pytest.mark.root
def test_gate_on_a_veth_passes_exactly_k_real_spikes_per_sample(gated_port) -> None:
    gate, tx, rx, rx_other = gated_port
    schedule = (  # (sample, kind, seq) in sending order; K = 3, 4 slots
        [(10, KIND_PRIMER, 100), (10, KIND_SPIKE, 0), (10, KIND_PRIMER, 101)] + [(10, KIND_SPIKE, s) for s in range(1, 6)]
        + [(11, KIND_SPIKE, 0), (10, KIND_SPIKE, 6)] + [(11, KIND_SPIKE, s) for s in range(1, 5)]
        + [(14, KIND_SPIKE, 0), (10, KIND_SPIKE, 7), (10, KIND_SPIKE, 8)] + [(14, KIND_SPIKE, s) for s in range(1, 4)]
        + [(12, KIND_SPIKE, 0), (13, KIND_SPIKE, 0), (12, KIND_SPIKE, 1)]
        + [(15, KIND_PRIMER, 100 + s) for s in range(3)] + [(15, KIND_SPIKE, s) for s in range(4)]
    )
    expected = {(10, 0), (10, 1), (10, 2), (11, 0), (11, 1), (11, 2), (14, 0), (14, 1), (14, 2),
                (12, 0), (12, 1), (13, 0), (15, 0), (15, 1), (15, 2)}
    for sample, kind, seq in schedule:
        size = 1000 if kind == KIND_PRIMER else wire.PAYLOAD_BYTES
        tx.sendto(SpikeHeader(1, 3, 0, sample, seq, kind).pack(size), (B_ADDR, SPIKE_PORT))
    for seq in range(3):
        tx.sendto(SpikeHeader(0, 0, 0, 99, seq).pack(), (B_ADDR, OTHER_PORT))
    counters = _wait_for_verdicts(gate, len(schedule))
    received = _drain(rx)
    assert [h.seq for h in _drain(rx_other)] == [0, 1, 2]
    assert sorted((h.sample, h.seq) for h in received) == sorted(expected)
    assert all(h.kind == KIND_SPIKE for h in received)
    assert counters == GateCounters(spikes_passed=15, spikes_dropped_after_k=8, spikes_dropped_stale=2, primers_dropped=5)

    # Without a reset sample 10 is stale (14 holds its slot); after one it counts afresh.
    gate.reset()
    for seq in range(4):
        tx.sendto(SpikeHeader(1, 3, 0, 10, seq).pack(), (B_ADDR, SPIKE_PORT))
    counters = _wait_for_verdicts(gate, 4)
    assert sorted(h.seq for h in _drain(rx)) == [0, 1, 2]
    assert counters == GateCounters(spikes_passed=3, spikes_dropped_after_k=1)


@pytest.mark.root
def test_gate_pulls_spike_headers_out_of_paged_frames(gated_port) -> None:
    # MSG_ZEROCOPY puts the UDP payload in page fragments: the frame's linear part is then only the
    # 42 header bytes (checked on this kernel with a probe program), so the gate must pull the spike
    # header in (bpf_skb_pull_data) before it can read sample and kind.
    gate, tx, rx, _ = gated_port
    tx.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
    sends = [(KIND_PRIMER, 100, 1000)] + [(KIND_SPIKE, seq, wire.PAYLOAD_BYTES) for seq in range(5)]
    for kind, seq, size in sends:
        tx.sendmsg([SpikeHeader(1, 3, 0, 40, seq, kind).pack(size)], [], MSG_ZEROCOPY, (B_ADDR, SPIKE_PORT))
    counters = _wait_for_verdicts(gate, len(sends))
    assert sorted(h.seq for h in _drain(rx)) == [0, 1, 2]
    assert counters == GateCounters(spikes_passed=3, spikes_dropped_after_k=2, primers_dropped=1)
