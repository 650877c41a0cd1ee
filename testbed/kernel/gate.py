"""The first-K gate of a π² neuron port: an eBPF tc program that passes the first K spikes of each sample.

Attached as a cls_bpf direct-action filter on the clsact ingress hook of a neuron port's receiving
veth end, it sees every frame after the delay classes and before any socket, and decides in the kernel
which spikes count:

- a spike (IPv4 without options, UDP to `wire.SPIKE_PORT`, kind 0) passes if fewer than K spikes of its
  sample id have passed on this port, and is dropped (TC_ACT_SHOT) otherwise;
- with loss (`drop_one_in` N), a spike is first dropped with probability 1/N (bpf_get_prandom_u32 mod N,
  counted as `spikes_dropped_lost`): the run's random packet loss, decided before the gate counts it;
- with a time-out (`window_ns` W), a spike whose header carries its sample's origin in the layer
  (`time_ns`, CLOCK_REALTIME ns, stamped by the injector) is dropped if the kernel received it more
  than W after that origin: RX stamp (skb->tstamp, the stamp SO_TIMESTAMPNS reports) − time_ns > W,
  counted as `spikes_dropped_late`. A late spike never counts towards K, so the gate passes the first
  K spikes *received by the deadline*: the model's time-out. A spike with time_ns 0 has no deadline;
  one with a deadline but no RX stamp (nobody enabled receive timestamps) is dropped as
  `spikes_dropped_unstamped`, since nothing tells whether it was on time;
- a primer (kind 1) is always dropped: it only exists to set a token bucket's delay upstream;
- anything else (ARP, other UDP ports, fragments, IP options, short or unknown-kind payloads) is
  left alone (TC_ACT_UNSPEC, so filters after the gate still run; with none, the frame is delivered).

Per-sample state is a ring of `slots` (a power of two) 8-byte words in an array map, slot
``sample % slots`` holding ``sample | count << 32``. A spike of sample s reading slot word (t, c):

- c == 0 (empty) or t older than s (serial arithmetic on u32, so ids may wrap): claim the slot,
  (s, 1), pass;
- t == s: pass and count if c < K, else drop;
- t newer than s: s is stale (its slot was taken by s + m·slots), drop without touching t's count.

So a sample's count is exact as long as no sample ≥ s + slots has arrived on the port: the window of
samples in flight is `slots`. Nobody resets anything per sample; `GateProgram.reset` zeroes the ring
between runs. Every slot update is a compare-and-exchange of the whole word, retried on a lost race,
so concurrent softirqs on several CPUs can neither pass K + 1 spikes nor bump a newer sample's count
with an older sample's spike. After `CAS_RETRIES` lost races in a row the spike is dropped and counted
as `spikes_dropped_contended` (each lost race means another CPU's update succeeded, and a sample sees
at most K updates, so this needs more than K racing spikes of one sample at one instant).

Design choice, one program and map pair per port (not one program per namespace with a map keyed by
(ifindex, slot)): K is an immediate, so a packet costs one array lookup (which the JIT inlines) and no
hash lookup of the ifindex; ports share nothing, so a port can be reset or replaced alone. Measured
here (bench/kernel_gate_cost.py, kernel 6.18, BPF_PROG_TEST_RUN medians): the gate adds 3–7 ns per
spike or primer and ≈0 ns per non-spike over an empty program, while the one hash lookup a shared
program would add costs 17 ns by itself. The price is per port: ≈0.75 ms to create the maps and
verify/JIT the program, and 3 fds while the `GateProgram` is open (the attached filter keeps the
program and its maps alive after `close`, so a builder may close gates it no longer needs to read).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, fields
from typing import Any

from testbed.errors import KernelError
from testbed.kernel import bpf
from testbed.kernel.bpf import (
    B, DW, FP, JEQ, JGE, JNE, JSGT, LSH, MOD, OR, RSH, SUB, W, ADD, AND, CMPXCHG,
    R0, R1, R2, R3, R4, R5, R6, R7, R8, R9,
)
from testbed.kernel.spike_parse import emit_spike_prologue
from testbed.plan import wire
from testbed.plan.tc import MAX_DROP_ONE_IN

SPIKE_FRAME_MIN_BYTES = wire.SPIKE_FRAME_BYTES  # 61: every byte the gate reads, up to time_ns
CAS_RETRIES = 8
MAX_SLOTS = 1 << 16
MAX_K = (1 << 31) - 1

PROGRAM_NAME = "p2_first_k"


@dataclass(frozen=True)
class GateCounters:
    """Per-port totals since load or the last reset: where spikes and primers went, and why."""

    spikes_passed: int = 0
    spikes_dropped_after_k: int = 0  # the sample already had K spikes through this port
    spikes_dropped_stale: int = 0  # a sample ≥ slots newer holds the slot: too late to count
    spikes_dropped_contended: int = 0  # lost CAS_RETRIES races for the slot in a row
    spikes_dropped_lost: int = 0  # the run's random loss (probability 1/drop_one_in), before counting
    spikes_dropped_late: int = 0  # RX stamp later than the spike's deadline: origin (time_ns) + window
    spikes_dropped_unstamped: int = 0  # carries a deadline but the kernel did not stamp it on receive
    primers_dropped: int = 0

    def to_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


COUNTER_NAMES = tuple(f.name for f in fields(GateCounters))
_COUNTER_OFFSET = {name: 8 * i for i, name in enumerate(COUNTER_NAMES)}  # u64 each in one map value


def build_first_k_gate(k: int, slots: int, state_fd: int, counter_fd: int | None,
                       drop_one_in: int | None = None, window_ns: int | None = None) -> bytes:
    """Bytecode of the gate for one port: K, the ring size, the loss's N and the time-out window
    are immediates, maps are fds."""
    a = bpf.Assembler()
    emit_spike_prologue(a, SPIKE_FRAME_MIN_BYTES, "other")  # R6 = skb, R7 = frame data
    a.emit(
        bpf.ldx(B, R2, R7, wire.FRAME_KIND_OFFSET), bpf.jmp(JEQ, R2, wire.KIND_PRIMER, "primer"),
        bpf.jmp(JNE, R2, wire.KIND_SPIKE, "other"),
    )
    if drop_one_in is not None:  # R0 = a random u32 mod N; 0 (probability 1/N) loses the spike
        a.emit(bpf.call(bpf.HELPER_GET_PRANDOM_U32), bpf.alu32(MOD, R0, drop_one_in), bpf.jmp(JEQ, R0, 0, "lost"))
    if window_ns is not None:
        # Time-out: late = RX stamp − origin > window, on CLOCK_REALTIME (skb->tstamp is the stamp
        # SO_TIMESTAMPNS reports, taken when the veth handed the frame to this namespace's stack,
        # i.e. when the delay class released it). Signed, so an early spike is never late.
        a.emit(
            bpf.ldx(DW, R3, R7, wire.FRAME_TIME_OFFSET), bpf.to_be(R3, 64), bpf.jmp(JEQ, R3, 0, "timely"),
            bpf.ldx(DW, R2, R6, bpf.SKB_TSTAMP), bpf.jmp(JEQ, R2, 0, "unstamped"),
            bpf.alu64(SUB, R2, R3), *bpf.ld_imm64(R4, window_ns), bpf.jmp(JSGT, R2, R4, "late"),
        )
        a.label("timely")
    # R7 = sample id (host order, zero-extended); R9 = its slot word in the state map.
    a.emit(
        bpf.ldx(W, R7, R7, wire.FRAME_SAMPLE_OFFSET), bpf.to_be(R7, 32),
        bpf.mov64(R1, R7), bpf.alu64(AND, R1, slots - 1), bpf.stx(W, FP, R1, -4),
        bpf.ld_map_fd(R1, state_fd), bpf.mov64(R2, FP), bpf.alu64(ADD, R2, -4),
        bpf.call(bpf.HELPER_MAP_LOOKUP_ELEM), bpf.jmp(JEQ, R0, 0, "other"),  # never NULL: key < slots
        bpf.mov64(R9, R0),
        # R8 = the word that claims the slot: (sample, count 1). R5 = races left.
        bpf.mov64(R8, 1), bpf.alu64(LSH, R8, 32), bpf.alu64(OR, R8, R7),
        bpf.mov64(R5, CAS_RETRIES),
    )
    a.label("read_slot")  # R1 = old word, R3 = its count, R2 = its sample
    a.emit(
        bpf.ldx(DW, R1, R9, 0),
        bpf.mov64(R3, R1), bpf.alu64(RSH, R3, 32), bpf.jmp(JEQ, R3, 0, "claim"),
        bpf.mov32(R2, R1), bpf.jmp(JEQ, R2, R7, "same_sample"),
        # Serial-number order on u32 ids: s is newer than t iff (s32)(s - t) > 0.
        bpf.mov32(R4, R7), bpf.alu32(SUB, R4, R2), bpf.jmp32(JSGT, R4, 0, "claim"),
        bpf.ja("stale"),
    )
    a.label("claim")
    a.emit(bpf.mov64(R0, R1), bpf.atomic(DW, R9, R8, 0, CMPXCHG), bpf.jmp(JEQ, R0, R1, "pass"), bpf.ja("lost_race"))
    a.label("same_sample")
    a.emit(
        bpf.jmp(JGE, R3, k, "after_k"),
        bpf.mov64(R2, 1), bpf.alu64(LSH, R2, 32), bpf.alu64(ADD, R2, R1),  # count + 1
        bpf.mov64(R0, R1), bpf.atomic(DW, R9, R2, 0, CMPXCHG), bpf.jmp(JEQ, R0, R1, "pass"),
    )
    a.label("lost_race")
    a.emit(bpf.alu64(SUB, R5, 1), bpf.jmp(JNE, R5, 0, "read_slot"), bpf.ja("contended"))

    a.label("other")
    a.emit(bpf.mov64(R0, bpf.TC_ACT_UNSPEC), bpf.exit_insn())

    # Verdicts of spikes and primers: R6 = counter offset, R7 = tc verdict, then count and return.
    for label, counter, verdict in (
        ("pass", "spikes_passed", bpf.TC_ACT_UNSPEC),
        ("after_k", "spikes_dropped_after_k", bpf.TC_ACT_SHOT),
        ("stale", "spikes_dropped_stale", bpf.TC_ACT_SHOT),
        ("contended", "spikes_dropped_contended", bpf.TC_ACT_SHOT),
        *([("lost", "spikes_dropped_lost", bpf.TC_ACT_SHOT)] if drop_one_in is not None else []),  # else unreachable
        *([("late", "spikes_dropped_late", bpf.TC_ACT_SHOT), ("unstamped", "spikes_dropped_unstamped", bpf.TC_ACT_SHOT)]
          if window_ns is not None else []),
        ("primer", "primers_dropped", bpf.TC_ACT_SHOT),
    ):
        a.label(label)
        a.emit(bpf.mov64(R6, _COUNTER_OFFSET[counter]), bpf.mov64(R7, verdict), bpf.ja("verdict"))
    a.label("verdict")
    if counter_fd is not None:
        # Per-CPU map: this CPU's copy, so a plain add is safe (tc runs with BH off, no migration).
        a.emit(
            bpf.st(W, FP, -4, 0), bpf.ld_map_fd(R1, counter_fd), bpf.mov64(R2, FP), bpf.alu64(ADD, R2, -4),
            bpf.call(bpf.HELPER_MAP_LOOKUP_ELEM), bpf.jmp(JEQ, R0, 0, "return"),
            bpf.alu64(ADD, R0, R6), bpf.ldx(DW, R1, R0, 0), bpf.alu64(ADD, R1, 1), bpf.stx(DW, R0, R1, 0),
        )
    a.label("return")
    a.emit(bpf.mov64(R0, R7), bpf.exit_insn())
    return a.assemble()


class GateProgram:
    """A loaded first-K gate for one port: its program fd and maps, until `close()`.

    Use as a context manager or call `close()`. Closing only drops our references: a filter
    that was attached keeps the program and maps alive until the filter or its device goes.
    """

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
        bpf.check_name(name)
        self.k = k
        self.slots = slots
        self.name = name
        self.drop_one_in = drop_one_in
        self.window_ns = window_ns
        self._state: bpf.BpfMap | None = None
        self._counters: bpf.BpfMap | None = None
        self._fd: int | None = None
        try:
            # Maps are named after the program (which carries the caller's run id): <name>.s / <name>.c.
            self._state = bpf.BpfMap(bpf.MAP_TYPE_ARRAY, 8, slots, name[:13] + ".s")
            if counters:
                self._counters = bpf.BpfMap(bpf.MAP_TYPE_PERCPU_ARRAY, 8 * len(COUNTER_NAMES), 1, name[:13] + ".c")
            code = build_first_k_gate(k, slots, self._state.fd, None if self._counters is None else self._counters.fd,
                                      drop_one_in, window_ns)
            self._fd = bpf.load_program(code, name)
        except BaseException:
            self.close()
            raise
        self.instructions = len(code) // 8

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise KernelError(f"first-K gate {self.name!r} is closed")
        return self._fd

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

    def reset(self) -> None:
        """Forget every sample and zero the counters: call between runs, never needed per sample."""
        if self._state is None:
            raise KernelError(f"first-K gate {self.name!r} is closed")
        self._state.clear()
        if self._counters is not None:
            self._counters.clear()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        for owned in (self._state, self._counters):
            if owned is not None:
                owned.close()

    def __enter__(self) -> "GateProgram":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def load_first_k_gate(k: int, slots: int = 16, counters: bool = True, name: str = PROGRAM_NAME,
                      drop_one_in: int | None = None, window_ns: int | None = None) -> GateProgram:
    """Load the gate passing the first `k` spikes per sample id, with a window of `slots` samples,
    after losing each spike with probability 1/`drop_one_in` (None: no loss) and dropping each spike
    received more than `window_ns` after its origin (None: no time-out)."""
    return GateProgram(k, slots=slots, counters=counters, name=name, drop_one_in=drop_one_in, window_ns=window_ns)
