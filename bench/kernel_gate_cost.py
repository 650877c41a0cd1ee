"""What the eBPF neuron (first-K gate) costs per packet and per port, measured by the kernel (needs root).

Per packet: BPF_PROG_TEST_RUN runs a program `repeat` times on one frame and reports the mean ns per
run; the same harness runs an empty program ("return UNSPEC") side by side, so
`gate - empty` is what the gate adds to a packet. Paths: a non-spike frame (ARP), a spike that is
counted (K = 65535 > repeat, so every run counts it into the sum; the state is reset before each
measurement), a spike over K (K = 1, reached by one run before the measured ones: the K-th spike is
rewritten into the event, and the repeats of a test run reuse one packet), a primer; with and without the counter map. `hash_ifindex` is one hash-map lookup keyed by skb->ifindex: the extra per-packet
work a single program shared by all ports of a namespace would need to find its port's K and slots.
The shared lines' membership table (testbed.kernel.lines) on one line copy of a line with `--members`
members (each member's neuron K = 65535: every copy counted; K = 1: every copy past K), and per member.

Per port: wall time to create the maps, verify and JIT-load one gate (what building a fabric pays).

    sudo python bench/kernel_gate_cost.py [--repeat 200000] [--rounds 7] [--members 32] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import struct
import time

from testbed.kernel import bpf
from testbed.kernel.bpf import FP, JEQ, W, R0, R1, R2
from testbed.kernel.gate import MAX_K, load_first_k_gate
from testbed.kernel.lines import load_line_neurons
from testbed.plan.wire import KIND_PRIMER, PAYLOAD_BYTES, SPIKE_PORT, SpikeHeader


ORIGIN_NS = 1_700_000_000_000_000_000  # the spikes' origin; each run's RX stamp is 1 µs after it


def spike_frame(sample: int, kind: int = 0, payload_bytes: int = PAYLOAD_BYTES) -> bytes:
    payload = SpikeHeader(1, 7, 0, sample, 0, kind, ORIGIN_NS).pack(payload_bytes)
    udp = struct.pack("!HHHH", SPIKE_PORT, SPIKE_PORT, 8 + len(payload), 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 0, 0x4000, 64, 17, 0, b"\xc0\x00\x02\x01", b"\xc0\x00\x02\x02")
    return bytes.fromhex("020000000002" "020000000001" "0800") + ip + udp + payload


ARP_FRAME = bytes.fromhex("ffffffffffff" "020000000001" "0806") + bytes(28)


def empty_program() -> int:
    a = bpf.Assembler()
    a.emit(bpf.mov64(R0, bpf.TC_ACT_UNSPEC), bpf.exit_insn())
    return bpf.load_program(a.assemble(), "p2_bench_empty")


def hash_ifindex_program(map_fd: int) -> int:
    a = bpf.Assembler()
    a.emit(
        bpf.ldx(W, R2, R1, bpf.SKB_IFINDEX), bpf.stx(W, FP, R2, -4),
        bpf.ld_map_fd(R1, map_fd), bpf.mov64(R2, FP), bpf.alu64(bpf.ADD, R2, -4),
        bpf.call(bpf.HELPER_MAP_LOOKUP_ELEM), bpf.jmp(JEQ, R0, 0, "out"),
    )
    a.label("out")
    a.emit(bpf.mov64(R0, bpf.TC_ACT_UNSPEC), bpf.exit_insn())
    return bpf.load_program(a.assemble(), "p2_bench_hash")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=50_000, help=f"runs per measurement (default 50000, ≤ {MAX_K})")
    parser.add_argument("--rounds", type=int, default=7, help="measurements per case, reported as median (default 7)")
    parser.add_argument("--loads", type=int, default=30, help="gates loaded to time loading (default 30)")
    parser.add_argument("--members", type=int, default=32, help="members of the membership table's line (default 32)")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    if not 1 <= args.repeat <= MAX_K:
        parser.error(f"--repeat {args.repeat}: expected 1..{MAX_K}, so the counted spike never reaches K")

    hash_map = bpf.BpfMap(1, 8, 64, "p2_bench_ifidx")  # BPF_MAP_TYPE_HASH, u32 key -> (k, base)
    fds = {"empty": empty_program(), "hash_ifindex": hash_ifindex_program(hash_map.fd)}
    gates = {
        "counters": load_first_k_gate(MAX_K, slots=16, counters=True, name="p2_bench_gate"),
        "no_counters": load_first_k_gate(MAX_K, slots=16, counters=False, name="p2_bench_gate"),
    }
    small_k = {
        "counters": load_first_k_gate(1, slots=16, counters=True, name="p2_bench_gate"),
        "no_counters": load_first_k_gate(1, slots=16, counters=False, name="p2_bench_gate"),
    }
    # Layer 1, event 14 (source 7, sign 0) of 16, its line 1: the table's key 14.
    members = {14: [(0, q) for q in range(args.members)]}  # ifindex 0: the K-th's clone fails, costed all the same
    table_gates = {k: [load_first_k_gate(k, slots=16, name=f"p2_bench_m{q}") for q in range(args.members)]
                   for k in (MAX_K, 1)}
    tables = {k: load_line_neurons(1, 16, 1, members, table_gates[k], "p2_bench_tab") for k in table_gates}
    line_copy = spike_frame(1)[:-PAYLOAD_BYTES] + SpikeHeader(1, 7, 0, 1, 0, 0, ORIGIN_NS, 1).pack()
    cases = {
        "empty": (fds["empty"], spike_frame(1)),
        "table_line_copy_counted": (tables[MAX_K].fd, line_copy),
        "table_line_copy_over_k": (tables[1].fd, line_copy),
        "hash_ifindex": (fds["hash_ifindex"], spike_frame(1)),
    }
    for variant in gates:
        cases[f"gate_{variant}_non_spike"] = (gates[variant].fd, ARP_FRAME)
        cases[f"gate_{variant}_spike_counted"] = (gates[variant].fd, spike_frame(1))
        cases[f"gate_{variant}_spike_over_k"] = (small_k[variant].fd, spike_frame(1))
        cases[f"gate_{variant}_primer"] = (gates[variant].fd, spike_frame(1, KIND_PRIMER, 1000))
    try:
        samples: dict[str, list[int]] = {name: [] for name in cases}
        for _ in range(args.rounds):  # interleave cases so drifts hit all of them alike
            for name, (fd, frame) in cases.items():
                for gate in (*gates.values(), *small_k.values(), *table_gates[MAX_K], *table_gates[1]):
                    gate.reset()
                if name.endswith("over_k"):  # reach K first: the K-th is rewritten into the event, and
                    # a test run's repeats reuse one packet, so the measured runs would see an event
                    bpf.prog_test_run(fd, frame, repeat=1, tstamp_ns=ORIGIN_NS + 1_000)
                run = bpf.prog_test_run(fd, frame, repeat=args.repeat, tstamp_ns=ORIGIN_NS + 1_000)
                samples[name].append(run.duration_ns)
        per_packet = {name: statistics.median(v) for name, v in samples.items()}
        added = {name: per_packet[name] - per_packet["empty"] for name in cases if name != "empty"}

        load_s = []
        for _ in range(args.loads):
            t0 = time.perf_counter()
            gate = load_first_k_gate(3, slots=16)
            load_s.append(time.perf_counter() - t0)
            gate.close()
    finally:
        for fd in fds.values():
            os.close(fd)
        for gate in (*gates.values(), *small_k.values(), *table_gates[MAX_K], *table_gates[1]):
            gate.close()
        for table in tables.values():
            table.close()
        hash_map.close()

    result = {
        "bench": "kernel_gate_cost",
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "repeat": args.repeat,
        "rounds": args.rounds,
        "instructions": gates["counters"].instructions,
        "instructions_no_counters": gates["no_counters"].instructions,
        "per_packet_ns_median": per_packet,
        "added_over_empty_ns": added,
        "table_members": args.members,
        "table_ns_per_member": {case: added[f"table_line_copy_{case}"] / args.members for case in ("counted", "over_k")},
        "load_gate_us": {"median": statistics.median(load_s) * 1e6, "p90": sorted(load_s)[int(0.9 * len(load_s))] * 1e6},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
