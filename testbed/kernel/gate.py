"""The π²_K neuron of a neuron port, in the kernel: an eBPF tc program that counts the first K spikes of
each sample, sums their kernel arrival times, and passes one neuron event instead of K spikes.

Attached as a cls_bpf direct-action filter on the clsact ingress hook of a neuron port's receiving
veth end, it sees every frame after the delay classes and before any socket. (With shared delay
lines counted in a membership table, testbed.kernel.lines, that table runs this neuron's code on
the port's state and counters where a line's copy arrives, and the gate sees only the events.)

- a spike (IPv4 without options, UDP to `wire.SPIKE_PORT`, kind 0) carries its sample's origin in
  the layer (`time_ns`, CLOCK_REALTIME ns, stamped by the injector). Its arrival time is its kernel
  RX stamp (skb->tstamp: the stamp SO_TIMESTAMPNS reports, taken when the veth handed the frame to
  this namespace's stack, i.e. when its delay class released it) minus that origin. A spike without
  an origin or without an RX stamp (nobody enabled receive timestamps) cannot be placed in time and
  is dropped (`spikes_dropped_untimed`);
- with loss (`drop_one_in` N), a spike is first dropped with probability 1/N (bpf_get_prandom_u32 mod N,
  `spikes_dropped_lost`): the run's random packet loss, decided before the neuron counts it;
- with a time-out (`window_ns` W), a spike that arrives more than W after its origin is dropped
  (`spikes_dropped_late`) and never counts: the model's time-out;
- the first K spikes of a sample are counted (`spikes_counted`): the count and the sum of their
  arrival times (ns after the origin) are kept per (port, sample). Every counted spike is dropped
  except the K-th, which the program rewrites in place into the port's *neuron event* and passes
  (`events_passed`): kind `wire.KIND_EVENT`, seq = K (the count), time_ns = the sum. The relay's
  T = time_ns / (seq · τ): the mean of the K earliest kernel-stamped arrivals, computed here.
  Later spikes of the sample are dropped (`spikes_dropped_after_k`). A set that has fewer than K
  spikes by the deadline emits nothing; the relay reads its count and sum from the state map
  (`GateProgram.partial`), which is the same event taken at the deadline;
- a primer (kind 1) is always dropped: it only exists to set a token bucket's delay upstream;
- anything else (ARP, other UDP ports, fragments, IP options, short or unknown-kind payloads, events)
  is left alone (TC_ACT_UNSPEC, so filters after the gate still run; with none, the frame is delivered).

Every arrival time is the kernel's: a qdisc held each spike for its synapse's delay, and the
neuron only adds the stamps the kernel took when those qdiscs released them.

Per-sample state is a ring of `slots` (a power of two) 16-byte entries in an array map, entry
``sample % slots`` holding the word ``sample | count << 32 | lock << 63`` and the sum (s64 ns). A
spike of sample s reading the word (t, c):

- c == 0 (empty) or t older than s (serial arithmetic on u32, so ids may wrap): claim the entry,
  count 1, sum = its arrival;
- t == s: count it if c < K (count + 1, sum + its arrival), else drop;
- t newer than s: s is stale (its entry was taken by s + m·slots), drop without touching t's state.

So a sample's state is exact as long as no sample ≥ s + slots has arrived on the port: the window of
samples in flight is `slots`. Nobody resets anything per sample; `GateProgram.reset` zeroes the ring
between runs. Concurrent softirqs on several CPUs may see spikes of one port at once, and count and
sum must change together: a spike takes the entry by a compare-and-exchange that sets the lock bit
along with the new count, adds its arrival to the sum, and releases the word with an exchange (a full
barrier, so the sum is stored before the unlock is seen). A spike that finds the entry locked or loses
the exchange retries; after `CAS_RETRIES` tries it is dropped (`spikes_dropped_contended`). No spike
is counted twice or lost from the sum, and only the spike whose count reaches K passes.

Design choice, one program and map pair per port (not one program per namespace with a map keyed by
(ifindex, slot)): K and the window are immediates, so a packet costs one array lookup (which the JIT
inlines) and no hash lookup of the ifindex; ports share nothing, so a port can be reset or replaced
alone. Measured here (bench/kernel_gate_cost.py, kernel 6.18, BPF_PROG_TEST_RUN medians on a shared,
loaded machine): the neuron adds 12–14 ns per counted spike, ≈6 ns per spike over K, 5–8 ns per
primer and ≈2 ns per non-spike over an empty program; one hash lookup alone costs ≈24 ns. The
price is per port: ≈0.75 ms (idle machine; 14 ms loaded) to create the maps and verify/JIT the
program, and 3 fds while the `GateProgram` is open (the attached filter keeps the program and its
maps alive after `close`, so a builder may close gates it no longer needs to read; `partial` needs
them open).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, fields

from testbed.errors import KernelError
from testbed.kernel import bpf
from testbed.kernel.bpf import (
    B, DW, FP, H, JEQ, JGE, JGT, JNE, JSGT, LSH, MOD, OR, RSH, SUB, W, ADD, AND, CMPXCHG, XCHG,
    R0, R1, R2, R3, R4, R5, R6, R7, R8, R9,
)
from testbed.kernel.spike_parse import emit_spike_prologue
from testbed.plan import wire
from testbed.plan.tc import MAX_DROP_ONE_IN

SPIKE_FRAME_MIN_BYTES = wire.SPIKE_FRAME_BYTES  # 62: every byte the gate reads, up to time_ns
CAS_RETRIES = 32  # tries for the state entry: a holder keeps the lock for a handful of instructions
MAX_SLOTS = 1 << 16
MAX_K = 0xFFFF  # the event's count travels in the u16 seq field
LOCK = 1 << 63
STATE = struct.Struct("=Qq")  # the word (sample | count << 32 | lock << 63), the sum of arrivals (ns)

PROGRAM_NAME = "p2_first_k"


@dataclass(frozen=True)
class GateCounters:
    """Per-port totals since load or the last reset: where spikes and primers went, and why."""

    spikes_counted: int = 0  # among their sample's first K on time: in the neuron's count and sum
    events_passed: int = 0  # neuron events: the K-th counted spike, rewritten, passed
    spikes_dropped_after_k: int = 0  # the sample already had K spikes counted on this port
    spikes_dropped_stale: int = 0  # a sample ≥ slots newer holds the entry: too late to count
    spikes_dropped_contended: int = 0  # found the entry locked or lost the race CAS_RETRIES times
    spikes_dropped_lost: int = 0  # the run's random loss (probability 1/drop_one_in), before counting
    spikes_dropped_late: int = 0  # arrived more than the window after its origin (time_ns)
    spikes_dropped_untimed: int = 0  # no origin in the spike, or no kernel RX stamp
    primers_dropped: int = 0

    def to_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class NeuronState:
    """What a port's neuron holds for one sample: how many spikes it counted and their arrivals' sum."""

    count: int
    sum_ns: int  # Σ (RX stamp − origin) of the counted spikes


COUNTER_NAMES = tuple(f.name for f in fields(GateCounters))
COUNTER_OFFSET = {name: 8 * i for i, name in enumerate(COUNTER_NAMES)}  # u64 each in one map value


def build_first_k_gate(k: int, slots: int, state_fd: int, counter_fd: int | None,
                       drop_one_in: int | None = None, window_ns: int | None = None) -> bytes:
    """Bytecode of the neuron for one port: K, the ring size, the loss's N and the time-out window
    are immediates, maps are fds."""
    a = bpf.Assembler()
    emit_spike_prologue(a, SPIKE_FRAME_MIN_BYTES, "other")  # R6 = skb, R7 = frame data
    a.emit(
        bpf.ldx(B, R2, R7, wire.FRAME_KIND_OFFSET), bpf.jmp(JEQ, R2, wire.KIND_PRIMER, "primer"),
        bpf.jmp(JNE, R2, wire.KIND_SPIKE, "other"),
    )
    if drop_one_in is not None:  # R0 = a random u32 mod N; 0 (probability 1/N) loses the spike
        a.emit(bpf.call(bpf.HELPER_GET_PRANDOM_U32), bpf.alu32(MOD, R0, drop_one_in), bpf.jmp(JEQ, R0, 0, "lost"))
    # R8 = arrival = RX stamp − origin (ns, signed: an early spike is never late).
    a.emit(
        bpf.ldx(DW, R3, R7, wire.FRAME_TIME_OFFSET), bpf.to_be(R3, 64), bpf.jmp(JEQ, R3, 0, "untimed"),
        bpf.ldx(DW, R8, R6, bpf.SKB_TSTAMP), bpf.jmp(JEQ, R8, 0, "untimed"),
        bpf.alu64(SUB, R8, R3),
    )
    if window_ns is not None:
        a.emit(*bpf.ld_imm64(R4, window_ns), bpf.jmp(JSGT, R8, R4, "late"))
    # R7 = sample id (host order, zero-extended); R9 = its state entry.
    a.emit(
        bpf.ldx(W, R7, R7, wire.FRAME_SAMPLE_OFFSET), bpf.to_be(R7, 32),
        bpf.mov64(R1, R7), bpf.alu64(AND, R1, slots - 1), bpf.stx(W, FP, R1, -4),
        bpf.ld_map_fd(R1, state_fd), bpf.mov64(R2, FP), bpf.alu64(ADD, R2, -4),
        bpf.call(bpf.HELPER_MAP_LOOKUP_ELEM), bpf.jmp(JEQ, R0, 0, "other"),  # never NULL: key < slots
        bpf.mov64(R9, R0),
    )
    emit_neuron_count(a, k, "", counted="counted", after_k="after_k", stale="stale", contended="contended",
                      kth="kth")
    a.label("kth")  # R3 = K, R4 = the sum
    emit_event_rewrite(a, k, "other")
    a.emit(bpf.ja("event"))
    a.label("other")
    a.emit(bpf.mov64(R0, bpf.TC_ACT_UNSPEC), bpf.exit_insn())

    # Verdicts of spikes and primers: R6 = counter offset, R7 = tc verdict, then count and return.
    # An event is a counted spike too: it bumps both counters.
    verdicts = [
        ("event", "events_passed", bpf.TC_ACT_UNSPEC),
        ("after_k", "spikes_dropped_after_k", bpf.TC_ACT_SHOT),
        ("stale", "spikes_dropped_stale", bpf.TC_ACT_SHOT),
        ("contended", "spikes_dropped_contended", bpf.TC_ACT_SHOT),
        ("untimed", "spikes_dropped_untimed", bpf.TC_ACT_SHOT),
        ("primer", "primers_dropped", bpf.TC_ACT_SHOT),
        ("counted", "spikes_counted", bpf.TC_ACT_SHOT),
    ]
    if drop_one_in is not None:  # else unreachable, which the verifier refuses
        verdicts.append(("lost", "spikes_dropped_lost", bpf.TC_ACT_SHOT))
    if window_ns is not None:
        verdicts.append(("late", "spikes_dropped_late", bpf.TC_ACT_SHOT))
    for label, counter, verdict in verdicts:
        a.label(label)
        a.emit(bpf.mov64(R6, COUNTER_OFFSET[counter]), bpf.mov64(R7, verdict), bpf.ja("verdict"))
    a.label("verdict")
    if counter_fd is not None:
        # Per-CPU map: this CPU's copy, so a plain add is safe (tc runs with BH off, no migration).
        a.emit(
            bpf.st(W, FP, -4, 0), bpf.ld_map_fd(R1, counter_fd), bpf.mov64(R2, FP), bpf.alu64(ADD, R2, -4),
            bpf.call(bpf.HELPER_MAP_LOOKUP_ELEM), bpf.jmp(JEQ, R0, 0, "return"),
            bpf.mov64(R1, R0), bpf.alu64(ADD, R1, R6), bpf.ldx(DW, R2, R1, 0), bpf.alu64(ADD, R2, 1),
            bpf.stx(DW, R1, R2, 0),
            bpf.jmp(JNE, R6, COUNTER_OFFSET["events_passed"], "return"),
            bpf.ldx(DW, R2, R0, COUNTER_OFFSET["spikes_counted"]), bpf.alu64(ADD, R2, 1),
            bpf.stx(DW, R0, R2, COUNTER_OFFSET["spikes_counted"]),
        )
    a.label("return")
    a.emit(bpf.mov64(R0, R7), bpf.exit_insn())
    return a.assemble()


def emit_neuron_count(a: bpf.Assembler, k: int, prefix: str, *, counted: str, after_k: str, stale: str,
                      contended: str, kth: str, retries: int = CAS_RETRIES) -> None:
    """Count one spike of sample R7 (u32, zero-extended), arriving R8 ns after its origin, on the
    state entry R9 points at (module docstring: claim, count, or drop as stale or after K, under
    the entry's lock). Jumps to `kth` with R3 = K and R4 = the sum when this spike's count reaches
    K, else to the label of its verdict, after `retries` tries for the lock `contended`. Uses
    R0–R5; `prefix` keeps the labels of several counts in one program apart (the membership
    table's, testbed.kernel.lines, counts once per member)."""
    p = prefix
    a.emit(bpf.mov64(R5, retries))
    a.label(f"{p}read_slot")  # R1 = old word, R3 = its count, R2 = its sample
    a.emit(
        bpf.ldx(DW, R1, R9, 0),
        bpf.jmp(JSGT, R1, -1, f"{p}unlocked"),  # bit 63 clear: nobody holds the entry
        bpf.ja(f"{p}retry"),
    )
    a.label(f"{p}unlocked")
    a.emit(
        bpf.mov64(R3, R1), bpf.alu64(RSH, R3, 32), bpf.jmp(JEQ, R3, 0, f"{p}claim"),
        bpf.mov32(R2, R1), bpf.jmp(JEQ, R2, R7, f"{p}same_sample"),
        # Serial-number order on u32 ids: s is newer than t iff (s32)(s - t) > 0.
        bpf.mov32(R4, R7), bpf.alu32(SUB, R4, R2), bpf.jmp32(JSGT, R4, 0, f"{p}claim"),
        bpf.ja(stale),
    )
    a.label(f"{p}claim")  # R3 = the new count (1), R2 = the locked word; on success the sum restarts
    a.emit(
        bpf.mov64(R3, 1), *_locked_word(R2, R3, R7),
        bpf.mov64(R0, R1), bpf.atomic(DW, R9, R2, 0, CMPXCHG), bpf.jmp(JNE, R0, R1, f"{p}retry"),
        bpf.stx(DW, R9, R8, 8), bpf.mov64(R4, R8), bpf.ja(f"{p}release"),
    )
    a.label(f"{p}same_sample")
    a.emit(
        bpf.jmp(JGE, R3, k, after_k),
        bpf.alu64(ADD, R3, 1), *_locked_word(R2, R3, R7),
        bpf.mov64(R0, R1), bpf.atomic(DW, R9, R2, 0, CMPXCHG), bpf.jmp(JNE, R0, R1, f"{p}retry"),
        bpf.ldx(DW, R4, R9, 8), bpf.alu64(ADD, R4, R8), bpf.stx(DW, R9, R4, 8),
    )
    a.label(f"{p}release")  # holding the entry: R3 = count, R4 = sum. Unlock with a full barrier.
    a.emit(
        bpf.mov64(R2, R3), bpf.alu64(LSH, R2, 32), bpf.alu64(OR, R2, R7),
        bpf.atomic(DW, R9, R2, 0, XCHG),
        bpf.jmp(JNE, R3, k, counted), bpf.ja(kth),
    )
    a.label(f"{p}retry")
    a.emit(bpf.alu64(SUB, R5, 1), bpf.jmp(JNE, R5, 0, f"{p}read_slot"), bpf.ja(contended))


def emit_event_rewrite(a: bpf.Assembler, k: int, short: str) -> None:
    """Rewrite the frame of skb R6 in place into a neuron event: seq = K, kind = event, time_ns =
    R4 (the sum). The verifier asks for the packet bounds again (helper calls may have moved the
    data); a frame shorter than a spike jumps to `short`. Uses R0–R2, R4."""
    a.emit(
        bpf.ldx(W, R2, R6, bpf.SKB_DATA), bpf.ldx(W, R1, R6, bpf.SKB_DATA_END),
        bpf.mov64(R0, R2), bpf.alu64(ADD, R0, SPIKE_FRAME_MIN_BYTES), bpf.jmp(JGT, R0, R1, short),
        bpf.mov64(R1, k), bpf.to_be(R1, 16), bpf.stx(H, R2, R1, wire.FRAME_SEQ_OFFSET),
        bpf.st(B, R2, wire.FRAME_KIND_OFFSET, wire.KIND_EVENT),
        bpf.to_be(R4, 64), bpf.stx(DW, R2, R4, wire.FRAME_TIME_OFFSET),
    )


def _locked_word(dst: bpf.Reg, count: bpf.Reg, sample: bpf.Reg) -> tuple[bpf.Insn, ...]:
    """dst = sample | count << 32 | the lock bit."""
    return (bpf.mov64(dst, 1), bpf.alu64(LSH, dst, 31), bpf.alu64(OR, dst, count), bpf.alu64(LSH, dst, 32),
            bpf.alu64(OR, dst, sample))


class GateProgram(bpf.LoadedProgram):
    """A loaded neuron (first-K gate) for one port: its program, state ring and counters
    (bpf.LoadedProgram: a context manager, or call `close()`)."""

    what = "first-K gate"

    def __init__(self, k: int, slots: int = 16, counters: bool = True, name: str = PROGRAM_NAME,
                 drop_one_in: int | None = None, window_ns: int | None = None) -> None:
        if not 1 <= k <= MAX_K:
            raise KernelError(f"first-K gate {name!r}: k={k}; expected 1..{MAX_K}")
        if drop_one_in is not None and not 1 <= drop_one_in <= MAX_DROP_ONE_IN:
            raise KernelError(f"first-K gate {name!r}: drop_one_in={drop_one_in}; expected 1..{MAX_DROP_ONE_IN}")
        if not (1 <= slots <= MAX_SLOTS and slots & (slots - 1) == 0):
            raise KernelError(f"first-K gate {name!r}: slots={slots}; expected a power of two in 1..{MAX_SLOTS}")
        if window_ns is not None and not 0 < window_ns < 1 << 63:
            raise KernelError(f"first-K gate {name!r}: window_ns={window_ns}; expected a positive time-out in ns")
        super().__init__(name)
        self.k = k
        self.slots = slots
        self.drop_one_in = drop_one_in
        self.window_ns = window_ns
        self._counters: bpf.BpfMap | None = None
        with self.loading():
            # Maps are named after the program (which carries the caller's run id): <name>.s / <name>.c.
            self._state = self.own(bpf.BpfMap(bpf.MAP_TYPE_ARRAY, STATE.size, slots, name[:13] + ".s"))
            if counters:
                self._counters = self.own(bpf.BpfMap(bpf.MAP_TYPE_PERCPU_ARRAY, 8 * len(COUNTER_NAMES), 1,
                                                     name[:13] + ".c"))
            code = build_first_k_gate(k, slots, self._state.fd, None if self._counters is None else self._counters.fd,
                                      drop_one_in, window_ns)
            self._fd = bpf.load_program(code, name)
        self.instructions = len(code) // 8

    @property
    def state_fd(self) -> int:
        """The state ring's map fd: a shared line's fan-out reads it (testbed.kernel.lines)."""
        if self._state.fd is None:
            raise KernelError(f"first-K gate {self.name!r} is closed")
        return self._state.fd

    @property
    def counters_fd(self) -> int:
        """The per-CPU counters' map fd: a shared line's membership table counts into it (testbed.kernel.lines)."""
        if self._counters is None or self._counters.fd is None:
            raise KernelError(f"first-K gate {self.name!r} is closed or has no counters")
        return self._counters.fd

    def counters(self) -> GateCounters:
        """Totals over all CPUs, read from the counter map."""
        if self._counters is None:
            raise KernelError(f"first-K gate {self.name!r} was loaded without counters; load it with counters=True")
        raw = self._counters.lookup(0)
        stride = (self._counters.value_bytes + 7) // 8 * 8
        totals = [0] * len(COUNTER_NAMES)
        for cpu in range(len(raw) // stride):
            for i, value in enumerate(struct.unpack_from(f"={len(COUNTER_NAMES)}Q", raw, cpu * stride)):
                totals[i] += value
        return GateCounters(*totals)

    def partial(self, sample: int) -> NeuronState:
        """What the neuron counted for `sample` so far (count 0 if its entry holds another sample):
        read at the deadline, it is the event of a set that got fewer than K spikes."""
        if self._state.fd is None:
            raise KernelError(f"first-K gate {self.name!r} is closed")
        sample &= 0xFFFFFFFF
        # The lookup copies word and sum one after the other, not atomically: a spike counted in
        # between would pair an old count with a new sum. Two equal, unlocked copies in a row
        # were taken with no update in flight.
        seen = self._state.lookup(sample % self.slots)
        while True:
            again = self._state.lookup(sample % self.slots)
            word, total = STATE.unpack(again)
            if again == seen and not word & LOCK:
                break
            seen = again
        if word & 0xFFFFFFFF != sample:
            return NeuronState(0, 0)
        return NeuronState(word >> 32, total)

    def reset(self) -> None:
        """Forget every sample and zero the counters: call between runs, never needed per sample."""
        if self._state.fd is None:
            raise KernelError(f"first-K gate {self.name!r} is closed")
        self._state.clear()
        if self._counters is not None:
            self._counters.clear()



def load_first_k_gate(k: int, slots: int = 16, counters: bool = True, name: str = PROGRAM_NAME,
                      drop_one_in: int | None = None, window_ns: int | None = None) -> GateProgram:
    """Load the neuron counting the first `k` spikes per sample id and passing one event for them,
    with a window of `slots` samples, after losing each spike with probability 1/`drop_one_in`
    (None: no loss) and dropping each spike received more than `window_ns` after its origin (None: no
    time-out)."""
    return GateProgram(k, slots=slots, counters=counters, name=name, drop_one_in=drop_one_in, window_ns=window_ns)
