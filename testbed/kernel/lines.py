"""Shared delay lines in the kernel: the splitter that sends an event down each of its lines, and
after the delay either the membership table that counts a line's copy in each member's neuron, or
the fan-out that copies it to each member neuron port.

A plan with shared delay lines (testbed.plan.fabric_plan `DelayLine`) delays each event once per
distinct delay its synapses need, instead of once per synapse. eBPF tc programs (direct action,
clsact ingress) work around the line's htb class; none delays anything:

- the **splitter**, on the fabric end of a layer's injector link: for a spike (or primer) of
  event e = 2·source + sign of sample s it reads e's lines in s's bank, s mod B (B banks: each line
  has B classes of one delay, so samples s and s + 1 … s + B − 1 share none), from an array map
  (count, then one htb classid per line, 0 for an unshaped line) and, for line r = 1..count, writes r into the frame's line byte
  (`wire.FRAME_LINE_OFFSET`; primers need none), sets skb->priority to the line's classid and clones the frame to
  the *egress* of the same device (bpf_clone_redirect). htb takes a packet whose priority names
  one of its leaf classes straight into that class (net/sched/sch_htb.c, htb_classify, before any
  filter), so the copy waits in line r's class: the kernel holds it for the line's delay. A
  primer is cloned only to shaped lines (an unshaped line needs none). The original is dropped.
- the **membership table** (plans with delay_lines "shared"), on the injector end's ingress (the
  host namespace, where the neuron ports' host ends are), receives each line's copy as its class
  releases it, stamped by the kernel then (skb->tstamp: the RX stamp, taken before tc ingress).
  For a spike on line r of event e it reads the line's members (the fan-out's table, below) and
  for each member runs that member's π²_K neuron on the member's own state and counters (the
  port's gate maps, testbed.kernel.gate, reached through maps of maps): loss (1/N per member),
  the deadline, then count and sum of the K earliest arrivals under the entry's lock — the gate's
  code (`emit_neuron_count`), with the line copy's stamp as every member's arrival. A member whose
  count reaches K gets its neuron event: the frame rewritten as the gate rewrites its K-th spike
  and cloned into the member's host end ingress (bpf_clone_redirect, BPF_F_INGRESS; the clone
  leaves the original uncloned for the next rewrite), where the port's gate passes it to the
  relay. So a line copy costs one map update per member and a port one frame per sample, where
  the fan-out below costs a cloned frame through a veth per member. The arrival is still the
  kernel's: the instant the line's class released the copy, which is also what each member's copy
  would carry (see below). Member blocks are unrolled, each with its own exit (jumps span
  ±32767 slots) and `TABLE_CAS_RETRIES` tries for the lock (the verifier walks every try: 32
  per member exceeds its 8192 pending branches at a few hundred members). Measured: loading
  (verifying) the program takes ≈30 ms per member (1 s for 32, 17 s for 512 members); running it
  adds ≈12 ns per member counted and ≈3 ns per member past K to a line copy (bench/kernel_gate_cost.py,
  BPF_PROG_TEST_RUN, bench/results/kernel_gate_cost.json), where a clone into a member's veth is a
  whole frame's trip through the receive path (kernel-notes: 0.3–0.6 µs a bare copy).
- the **fan-out** (delay_lines "shared-clone"), in the same place, receives each line's copy as
  its class releases it. For a spike on line r of
  event e it reads the line's members from an array map (key e·lines + r − 1: count, then each
  member's ifindex, then its port index) and clones the frame into each member's *ingress*
  (bpf_clone_redirect with BPF_F_INGRESS), where the port's neuron (testbed.kernel.gate) counts
  it; primers and the original are dropped. Within one namespace the redirect keeps the skb's RX
  stamp (____dev_forward_skb scrubs the stamp only across namespaces), so every member's copy
  carries the instant the line's delayed copy reached the injector end: its arrival time is the
  kernel's, set by a qdisc holding the packet. A member whose neuron already counted K spikes of
  the sample would only drop the copy (the gate's after-K verdict), so the fan-out first reads the
  member's state entry (through a map of the members' state maps) and makes no copy for it
  (`copies_skipped_after_k`). That matters beyond the copy's own cost: clones queue on the CPU's
  backlog (net.core.netdev_max_backlog frames), and a burst of them overflows it and loses copies.
  Measured on MNIST 784-50-10 (K = 140 of 1568 arrivals, τ 25 ms, 1000 test images,
  bench/results/infer_mnist.json, the gates' counters): copies reaching the neurons 47.9k → 16.2k
  per sample, spikes that never reached their neuron in time 60,907 → 24 over the 1000 samples.

Loops are unrolled (one block per line, one per member), so the verifier sees straight code;
the programs are as long as the layer's widest event (≤ 255 lines) or line (≤ 512 members).
Frames that are not spikes of the layer pass (TC_ACT_UNSPEC): ARP and neighbour discovery keep
working.
"""

from __future__ import annotations

import struct
from typing import Callable, Sequence

from testbed.errors import KernelError
from testbed.kernel import bpf
from testbed.kernel.bpf import ADD, AND, B, DW, FP, JEQ, JGE, JGT, JLE, JLT, JNE, JSGT, MOD, MUL, RSH, SUB, W, R0, R1, R2, R3, R4, R5, R6, R7, R8, R9
from testbed.kernel.classifier import emit_event_index
from testbed.kernel.gate import COUNTER_OFFSET, GateProgram, SPIKE_FRAME_MIN_BYTES, emit_event_rewrite, emit_neuron_count
from testbed.plan import wire

FRAME_MIN_BYTES = wire.FRAME_LINE_OFFSET + 1  # every byte the line programs read: up to the line byte
HELPER_SKB_STORE_BYTES = 9
HELPER_CLONE_REDIRECT = 13
BPF_F_INGRESS = 1
SKB_PRIORITY = 32  # struct __sk_buff: priority (writable by tc programs)
MAX_MEMBERS = 512  # a layer's ports (testbed.plan.fabric_plan.MAX_PORTS_PER_LAYER)
MAX_LINES = 255  # the wire's line byte
MAX_BANKS = 8  # testbed.plan.fabric_plan.MAX_BANKS
COUNT_MASK = 0x7FFFFFFF  # a neuron state word's count, below its lock bit (testbed.kernel.gate)
SPLITTER_NAME = "p2_split"
FANOUT_NAME = "p2_fanout"
NEURONS_NAME = "p2_members"
TABLE_CAS_RETRIES = 8
NO_VERDICT = -1  # the membership table's stack word: count each member (else: every member's counter offset)


def build_line_splitter(layer: int, events: int, lines: int, map_fd: int, banks: int = 1) -> bytes:
    """Bytecode of the splitter (module docstring); `map_fd`: `events`·`banks` entries of 4 + 4·`lines`
    B, (event, bank) at event·banks + bank, a sample's bank being its id mod `banks` (a power of two)."""
    if not 1 <= lines <= MAX_LINES:
        raise KernelError(f"line splitter: {lines} lines per event; expected 1..{MAX_LINES}")
    if not (1 <= banks <= MAX_BANKS and banks & (banks - 1) == 0):
        raise KernelError(f"line splitter: {banks} banks; expected a power of two in 1..{MAX_BANKS}")
    a = bpf.Assembler()
    emit_event_index(a, layer, FRAME_MIN_BYTES, "other")  # R0 = event, R6 = skb, R7 = packet data
    a.emit(
        bpf.jmp(JGE, R0, events, "other"),
        bpf.ldx(B, R2, R7, wire.FRAME_KIND_OFFSET), bpf.mov64(R9, 1), bpf.jmp(JEQ, R2, wire.KIND_PRIMER, "known"),
        bpf.mov64(R9, 0), bpf.jmp(JNE, R2, wire.KIND_SPIKE, "other"),
    )
    a.label("known")  # R9 = 1 for a primer; R0 = the map key: event·banks + the sample's bank
    if banks > 1:
        a.emit(bpf.ldx(W, R2, R7, wire.FRAME_SAMPLE_OFFSET), bpf.to_be(R2, 32), bpf.alu64(AND, R2, banks - 1),
               bpf.alu64(MUL, R0, banks), bpf.alu64(ADD, R0, R2))
    a.emit(
        bpf.stx(W, FP, R0, -4), bpf.ld_map_fd(R1, map_fd), bpf.mov64(R2, FP), bpf.alu64(ADD, R2, -4),
        bpf.call(bpf.HELPER_MAP_LOOKUP_ELEM), bpf.jmp(JEQ, R0, 0, "drop"), bpf.mov64(R8, R0),
    )
    for r in range(lines):
        a.emit(bpf.ldx(W, R1, R8, 0), bpf.jmp(JLE, R1, r, "drop"), bpf.ldx(W, R3, R8, 4 + 4 * r))
        # A primer goes down shaped lines only, and needs no line byte (the fan-out drops it unread).
        a.emit(bpf.jmp(JEQ, R9, 0, f"mark{r}"), bpf.jmp(JEQ, R3, 0, f"next{r}"),
               bpf.stx(W, R6, R3, SKB_PRIORITY), bpf.ja(f"send{r}"))
        a.label(f"mark{r}")
        a.emit(
            bpf.stx(W, R6, R3, SKB_PRIORITY),
            bpf.st(B, FP, -8, r + 1), bpf.mov64(R1, R6), bpf.mov64(R2, wire.FRAME_LINE_OFFSET),
            bpf.mov64(R3, FP), bpf.alu64(ADD, R3, -8), bpf.mov64(R4, 1), bpf.mov64(R5, 0),
            bpf.call(HELPER_SKB_STORE_BYTES), bpf.jmp(JNE, R0, 0, "drop"),
        )
        a.label(f"send{r}")
        a.emit(bpf.mov64(R1, R6), bpf.ldx(W, R2, R6, bpf.SKB_IFINDEX), bpf.mov64(R3, 0), bpf.call(HELPER_CLONE_REDIRECT))
        a.label(f"next{r}")
    a.emit(bpf.ja("drop"))
    a.label("other")
    a.emit(bpf.mov64(R0, bpf.TC_ACT_UNSPEC), bpf.exit_insn())
    a.label("drop")
    a.emit(bpf.mov64(R0, bpf.TC_ACT_SHOT), bpf.exit_insn())
    return a.assemble()


def _emit_line_key(a: bpf.Assembler, what: str, layer: int, events: int, lines: int, members: int, need: int) -> None:
    """The start of a program after the lines: for a spike of `layer` (reading up to frame byte
    `need`) that came down line r of event e, the member table's key e·lines + r − 1 at FP − 4;
    R6 = the skb, R7 = packet data. Other frames jump to "other" (pass), primers (their work ends
    with the line's delay) and spikes on no line (line 0 or > `lines`) to "drop"."""
    if not 1 <= lines <= MAX_LINES or not 1 <= members <= MAX_MEMBERS:
        raise KernelError(f"{what}: {lines} lines, {members} members; expected 1..{MAX_LINES} and 1..{MAX_MEMBERS}")
    emit_event_index(a, layer, need, "other")
    a.emit(
        bpf.jmp(JGE, R0, events, "other"),
        bpf.ldx(B, R2, R7, wire.FRAME_KIND_OFFSET), bpf.jmp(JEQ, R2, wire.KIND_PRIMER, "drop"),
        bpf.jmp(JNE, R2, wire.KIND_SPIKE, "other"),
        bpf.ldx(B, R2, R7, wire.FRAME_LINE_OFFSET), bpf.jmp(JEQ, R2, 0, "drop"), bpf.jmp(JGT, R2, lines, "drop"),
        bpf.alu64(MUL, R0, lines), bpf.alu64(ADD, R0, R2), bpf.alu64(SUB, R0, 1), bpf.stx(W, FP, R0, -4),
    )


def build_line_fanout(layer: int, events: int, lines: int, members: int, map_fd: int, states_fd: int, k: int,
                      slots: int, counter_fd: int) -> bytes:
    """Bytecode of the fan-out (module docstring). `map_fd`: events·lines entries of 4 + 8·`members` B
    (count, the members' ifindexes, their port indexes into `states_fd`, a map of the members'
    neuron state rings of `slots` entries, testbed.kernel.gate); `counter_fd`: a per-CPU array of one
    (copies made, copies skipped) pair of u64."""
    a = bpf.Assembler()
    _emit_line_key(a, "line fan-out", layer, events, lines, members, FRAME_MIN_BYTES)
    a.emit(
        bpf.ldx(W, R9, R7, wire.FRAME_SAMPLE_OFFSET), bpf.to_be(R9, 32),  # R9 = the sample id
        bpf.ld_map_fd(R1, map_fd), bpf.mov64(R2, FP), bpf.alu64(ADD, R2, -4),
        bpf.call(bpf.HELPER_MAP_LOOKUP_ELEM), bpf.jmp(JEQ, R0, 0, "drop"), bpf.mov64(R8, R0),
        bpf.mov64(R1, R9), bpf.alu64(AND, R1, slots - 1), bpf.stx(W, FP, R1, -8),  # the sample's state entry
        bpf.mov64(R7, 0),  # R7 = copies skipped
    )
    for q in range(members):
        a.emit(
            bpf.ldx(W, R1, R8, 0), bpf.jmp(JLE, R1, q, "done"),
            # A member whose neuron already counted K spikes of this sample would drop the copy
            # (its gate's after-K verdict): skip it. The entry is read without its lock; a stale
            # read only sends a copy the gate then drops, so the verdicts are the gate's either way.
            bpf.ldx(W, R1, R8, 4 + 4 * members + 4 * q), bpf.stx(W, FP, R1, -12),
            bpf.ld_map_fd(R1, states_fd), bpf.mov64(R2, FP), bpf.alu64(ADD, R2, -12),
            bpf.call(bpf.HELPER_MAP_LOOKUP_ELEM), bpf.jmp(JEQ, R0, 0, f"send{q}"),
            bpf.mov64(R1, R0), bpf.mov64(R2, FP), bpf.alu64(ADD, R2, -8),
            bpf.call(bpf.HELPER_MAP_LOOKUP_ELEM), bpf.jmp(JEQ, R0, 0, f"send{q}"),
            bpf.ldx(DW, R1, R0, 0), bpf.mov32(R2, R1), bpf.jmp(JNE, R2, R9, f"send{q}"),
            bpf.alu64(RSH, R1, 32), bpf.alu64(AND, R1, COUNT_MASK), bpf.jmp(JLT, R1, k, f"send{q}"),
            bpf.alu64(ADD, R7, 1), bpf.ja(f"next{q}"),
        )
        a.label(f"send{q}")
        a.emit(bpf.mov64(R1, R6), bpf.ldx(W, R2, R8, 4 + 4 * q), bpf.mov64(R3, BPF_F_INGRESS),
               bpf.call(HELPER_CLONE_REDIRECT))
        a.label(f"next{q}")
    a.label("done")  # R7 = skipped; made = the line's members − skipped
    a.emit(
        bpf.ldx(W, R9, R8, 0), bpf.alu64(SUB, R9, R7),
        bpf.st(W, FP, -4, 0), bpf.ld_map_fd(R1, counter_fd), bpf.mov64(R2, FP), bpf.alu64(ADD, R2, -4),
        bpf.call(bpf.HELPER_MAP_LOOKUP_ELEM), bpf.jmp(JEQ, R0, 0, "drop"),
        bpf.ldx(DW, R1, R0, 0), bpf.alu64(ADD, R1, R9), bpf.stx(DW, R0, R1, 0),
        bpf.ldx(DW, R1, R0, 8), bpf.alu64(ADD, R1, R7), bpf.stx(DW, R0, R1, 8),
        bpf.ja("drop"),
    )
    a.label("other")
    a.emit(bpf.mov64(R0, bpf.TC_ACT_UNSPEC), bpf.exit_insn())
    a.label("drop")
    a.emit(bpf.mov64(R0, bpf.TC_ACT_SHOT), bpf.exit_insn())
    return a.assemble()


def build_line_neurons(layer: int, events: int, lines: int, members: int, map_fd: int, states_fd: int,
                       counters_fd: int, k: int, slots: int, drop_one_in: int | None = None,
                       window_ns: int | None = None) -> bytes:
    """Bytecode of the membership table (module docstring): `map_fd` as the fan-out's (count, the
    members' ifindexes, their port indexes); `states_fd` / `counters_fd`: maps of the members'
    neuron state rings (`slots` entries) and per-CPU counter arrays (testbed.kernel.gate), by port
    index. The neuron's K, loss and window are the ports' gates'."""
    # Stack: -4 the table key, then a lookup key; -8 the sample's slot; -16 the table entry
    # (a spilled pointer); -24 the verdict every member gets (NO_VERDICT: count it); -28 zero.
    a = bpf.Assembler()
    _emit_line_key(a, "line neurons", layer, events, lines, members, SPIKE_FRAME_MIN_BYTES)
    a.emit(
        bpf.st(W, FP, -28, 0), bpf.st(DW, FP, -24, NO_VERDICT),
        # R8 = arrival = the line copy's RX stamp − origin (ns): the instant its class released it.
        bpf.ldx(DW, R3, R7, wire.FRAME_TIME_OFFSET), bpf.to_be(R3, 64),
        bpf.ldx(DW, R8, R6, bpf.SKB_TSTAMP),
        bpf.ldx(W, R7, R7, wire.FRAME_SAMPLE_OFFSET), bpf.to_be(R7, 32),  # R7 = the sample id
        bpf.mov64(R1, R7), bpf.alu64(AND, R1, slots - 1), bpf.stx(W, FP, R1, -8),
        bpf.jmp(JEQ, R3, 0, "untimed"), bpf.jmp(JEQ, R8, 0, "untimed"), bpf.alu64(SUB, R8, R3),
    )
    if window_ns is not None:
        a.emit(*bpf.ld_imm64(R4, window_ns), bpf.jmp(JSGT, R8, R4, "late"))
    a.emit(bpf.ja("table"))
    a.label("other")
    a.emit(bpf.mov64(R0, bpf.TC_ACT_UNSPEC), bpf.exit_insn())
    a.label("drop")
    a.emit(bpf.mov64(R0, bpf.TC_ACT_SHOT), bpf.exit_insn())
    verdicts = [("untimed", "spikes_dropped_untimed")] + ([("late", "spikes_dropped_late")] if window_ns is not None else [])
    for label, counter in verdicts:  # the verifier refuses an unreachable block
        a.label(label)
        a.emit(bpf.st(DW, FP, -24, COUNTER_OFFSET[counter]), bpf.ja("table"))
    a.label("table")
    a.emit(
        bpf.ld_map_fd(R1, map_fd), bpf.mov64(R2, FP), bpf.alu64(ADD, R2, -4),
        bpf.call(bpf.HELPER_MAP_LOOKUP_ELEM), bpf.jmp(JEQ, R0, 0, "drop"), bpf.stx(DW, FP, R0, -16),
    )
    for q in range(members):
        p = f"m{q}."
        a.emit(
            bpf.ldx(DW, R1, FP, -16), bpf.ldx(W, R2, R1, 0), bpf.jmp(JLE, R2, q, f"{p}drop"),
            bpf.ldx(W, R2, R1, 4 + 4 * members + 4 * q), bpf.stx(W, FP, R2, -4),  # the member's port index
            bpf.ldx(DW, R9, FP, -24), bpf.jmp(JNE, R9, NO_VERDICT, f"{p}verdict"),
        )
        if drop_one_in is not None:  # the run's random loss, per member: the synapse's copy is lost
            a.emit(bpf.call(bpf.HELPER_GET_PRANDOM_U32), bpf.alu32(MOD, R0, drop_one_in),
                   bpf.mov64(R9, COUNTER_OFFSET["spikes_dropped_lost"]), bpf.jmp(JEQ, R0, 0, f"{p}verdict"))
        a.emit(
            bpf.ld_map_fd(R1, states_fd), bpf.mov64(R2, FP), bpf.alu64(ADD, R2, -4),
            bpf.call(bpf.HELPER_MAP_LOOKUP_ELEM), bpf.jmp(JEQ, R0, 0, f"{p}next"),
            bpf.mov64(R1, R0), bpf.mov64(R2, FP), bpf.alu64(ADD, R2, -8),
            bpf.call(bpf.HELPER_MAP_LOOKUP_ELEM), bpf.jmp(JEQ, R0, 0, f"{p}next"),
            bpf.mov64(R9, R0),
        )
        emit_neuron_count(a, k, p, counted=f"{p}counted", after_k=f"{p}after_k", stale=f"{p}stale",
                          contended=f"{p}contended", kth=f"{p}kth", retries=TABLE_CAS_RETRIES)
        a.label(f"{p}kth")  # the member's K-th: send it its neuron event
        emit_event_rewrite(a, k, f"{p}drop")
        a.emit(bpf.mov64(R1, R6), bpf.ldx(DW, R2, FP, -16), bpf.ldx(W, R2, R2, 4 + 4 * q),
               bpf.mov64(R3, BPF_F_INGRESS), bpf.call(HELPER_CLONE_REDIRECT),
               bpf.mov64(R9, COUNTER_OFFSET["events_passed"]), bpf.ja(f"{p}verdict"))
        for verdict, counter in (("counted", "spikes_counted"), ("after_k", "spikes_dropped_after_k"),
                                 ("stale", "spikes_dropped_stale"), ("contended", "spikes_dropped_contended")):
            a.label(f"{p}{verdict}")
            a.emit(bpf.mov64(R9, COUNTER_OFFSET[counter]), bpf.ja(f"{p}verdict"))
        # R9 = the counter offset. The member's counters: this CPU's copy (a plain add is safe);
        # an event is a counted spike too, as in the gate.
        a.label(f"{p}verdict")
        a.emit(
            bpf.ld_map_fd(R1, counters_fd), bpf.mov64(R2, FP), bpf.alu64(ADD, R2, -4),
            bpf.call(bpf.HELPER_MAP_LOOKUP_ELEM), bpf.jmp(JEQ, R0, 0, f"{p}next"),
            bpf.mov64(R1, R0), bpf.mov64(R2, FP), bpf.alu64(ADD, R2, -28),
            bpf.call(bpf.HELPER_MAP_LOOKUP_ELEM), bpf.jmp(JEQ, R0, 0, f"{p}next"),
            bpf.mov64(R1, R0), bpf.alu64(ADD, R1, R9), bpf.ldx(DW, R2, R1, 0), bpf.alu64(ADD, R2, 1),
            bpf.stx(DW, R1, R2, 0),
            bpf.jmp(JNE, R9, COUNTER_OFFSET["events_passed"], f"{p}next"),
            bpf.ldx(DW, R2, R0, COUNTER_OFFSET["spikes_counted"]), bpf.alu64(ADD, R2, 1),
            bpf.stx(DW, R0, R2, COUNTER_OFFSET["spikes_counted"]),
        )
        # Each member has its own exit: jumps span at most ±32767 slots, a wide table is longer.
        a.emit(bpf.ja(f"{p}next"))
        a.label(f"{p}drop")
        a.emit(bpf.mov64(R0, bpf.TC_ACT_SHOT), bpf.exit_insn())
        a.label(f"{p}next")
    a.emit(bpf.mov64(R0, bpf.TC_ACT_SHOT), bpf.exit_insn())
    return a.assemble()


class LineProgram(bpf.LoadedProgram):
    """A loaded line program (splitter or fan-out) and its array map (bpf.LoadedProgram)."""

    what = "line program"

    def __init__(self, code_for_map: Callable[[int], bytes], entries: int, width: int, table: dict[int, Sequence[int]],
                 name: str) -> None:
        super().__init__(name)
        with self.loading():
            lines = self.own(bpf.BpfMap(bpf.MAP_TYPE_ARRAY, 4 + 4 * width, entries, name[:13] + ".m"))
            for key, values in table.items():
                if not 0 <= key < entries or len(values) > width:
                    raise KernelError(f"{name}: map entry {key} with {len(values)} values does not fit "
                                      f"{entries} entries of {width}")
                lines.update(key, struct.pack(f"=I{width}I", len(values), *values, *[0] * (width - len(values))))
            self._fd = bpf.load_program(code_for_map(lines.fd), name)


def load_line_splitter(layer: int, events: int, lines: int, classids: dict[int, Sequence[int]],
                       name: str = SPLITTER_NAME, banks: int = 1) -> LineProgram:
    """The splitter of `layer`: `classids[e·banks + b]` lists event e's lines' htb classids in bank b
    (0: unshaped)."""
    return LineProgram(lambda fd: build_line_splitter(layer, events, lines, fd, banks), events * banks, lines,
                       classids, name)


class LineFanout(bpf.LoadedProgram):
    """A loaded fan-out: its program, its member table, the map of its members' neuron states and
    its counters (bpf.LoadedProgram)."""

    what = "line fan-out"

    def __init__(self, layer: int, events: int, lines: int, members: dict[int, Sequence[tuple[int, int]]],
                 states: Sequence[int], k: int, slots: int, name: str = FANOUT_NAME) -> None:
        super().__init__(name)
        width = max((len(m) for m in members.values()), default=1)
        with self.loading():
            table = self.own(_member_table(members, width, events * lines, name))
            outer = self.own(_map_of(name[:13] + ".n", states))
            self._counters = self.own(bpf.BpfMap(bpf.MAP_TYPE_PERCPU_ARRAY, 16, 1, name[:13] + ".c"))
            code = build_line_fanout(layer, events, lines, width, table.fd, outer.fd, k, slots, self._counters.fd)
            self._fd = bpf.load_program(code, name)

    def counters(self) -> dict[str, int]:
        """Copies made (sent to a member's neuron) and skipped (the member already had K), over all CPUs."""
        raw = self._counters.lookup(0)
        made = skipped = 0
        for cpu in range(len(raw) // 16):
            m, s = struct.unpack_from("=QQ", raw, 16 * cpu)
            made, skipped = made + m, skipped + s
        return {"copies_made": made, "copies_skipped_after_k": skipped}


class LineNeurons(bpf.LoadedProgram):
    """A loaded membership table: its program, its member table and the maps of its members' neuron
    states and counters (the ports' gates', testbed.kernel.gate; bpf.LoadedProgram)."""

    what = "line neurons"

    def __init__(self, layer: int, events: int, lines: int, members: dict[int, Sequence[tuple[int, int]]],
                 gates: Sequence[GateProgram], name: str = NEURONS_NAME) -> None:
        if not gates:
            raise KernelError(f"line neurons {name!r}: no member gates")
        first = gates[0]
        if any((g.k, g.slots, g.drop_one_in, g.window_ns) != (first.k, first.slots, first.drop_one_in, first.window_ns)
               for g in gates):
            raise KernelError(f"line neurons {name!r}: the members' gates differ in K, slots, loss or window; "
                              "a layer's ports share them (recompile the plan with `pi2 compile`)")
        super().__init__(name)
        width = max((len(m) for m in members.values()), default=1)
        with self.loading():
            table = self.own(_member_table(members, width, events * lines, name))
            states = self.own(_map_of(name[:13] + ".n", [g.state_fd for g in gates]))
            counters = self.own(_map_of(name[:13] + ".c", [g.counters_fd for g in gates]))
            code = build_line_neurons(layer, events, lines, width, table.fd, states.fd, counters.fd, first.k,
                                      first.slots, first.drop_one_in, first.window_ns)
            self._fd = bpf.load_program(code, name)


def _member_table(members: dict[int, Sequence[tuple[int, int]]], width: int, entries: int, name: str) -> bpf.BpfMap:
    """The array map (event·lines + line − 1) → count, `width` member ifindexes, `width` port indexes."""
    table = bpf.BpfMap(bpf.MAP_TYPE_ARRAY, 4 + 8 * width, entries, name[:13] + ".m")
    try:
        for key, pairs in members.items():
            ifindexes, ports = [p[0] for p in pairs], [p[1] for p in pairs]
            pad = [0] * (width - len(pairs))
            table.update(key, struct.pack(f"=I{2 * width}I", len(pairs), *ifindexes, *pad, *ports, *pad))
    except BaseException:
        table.close()
        raise
    return table


def _map_of(name: str, fds: Sequence[int]) -> bpf.BpfMap:
    """An array of maps holding `fds` (maps alike) at keys 0, 1, …"""
    outer = bpf.BpfMap(bpf.MAP_TYPE_ARRAY_OF_MAPS, 4, len(fds), name, fds[0])
    try:
        for key, fd in enumerate(fds):
            outer.update(key, struct.pack("=I", fd))
    except BaseException:
        outer.close()
        raise
    return outer


def load_line_fanout(layer: int, events: int, lines: int, members: dict[int, Sequence[tuple[int, int]]],
                     states: Sequence[int], k: int, slots: int, name: str = FANOUT_NAME) -> LineFanout:
    """The fan-out of `layer`: `members[e·lines + r − 1]` lists (ifindex, port index) of line r of
    event e's members; `states[port]` is that port's neuron state map fd (K `k`, `slots` entries)."""
    return LineFanout(layer, events, lines, members, states, k, slots, name)


def load_line_neurons(layer: int, events: int, lines: int, members: dict[int, Sequence[tuple[int, int]]],
                      gates: Sequence[GateProgram], name: str = NEURONS_NAME) -> LineNeurons:
    """The membership table of `layer`: `members` as for `load_line_fanout`; `gates[port]` is that
    port's neuron (its state and counters are the ones the table updates; K, loss and window too)."""
    return LineNeurons(layer, events, lines, members, gates, name)
