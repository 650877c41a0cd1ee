"""Shared delay lines in the kernel: the splitter that sends an event down each of its lines, and
the fan-out that copies a delayed line to its member neuron ports.

A plan with shared delay lines (testbed.plan.fabric_plan `DelayLine`) delays each event once per
distinct delay its synapses need, instead of once per synapse. Two eBPF tc programs (direct
action, clsact ingress) do the copying around the line's htb class; neither delays anything:

- the **splitter**, on the fabric end of a layer's injector link: for a spike (or primer) of
  event e = 2·source + sign it reads e's lines from an array map (count, then one htb classid per
  line, 0 for an unshaped line) and, for line r = 1..count, writes r into the frame's line byte
  (`wire.FRAME_LINE_OFFSET`), sets skb->priority to the line's classid and clones the frame to
  the *egress* of the same device (bpf_clone_redirect). htb takes a packet whose priority names
  one of its leaf classes straight into that class (net/sched/sch_htb.c, htb_classify, before any
  filter), so the copy waits in line r's class: the kernel holds it for the line's delay. A
  primer is cloned only to shaped lines (an unshaped line needs none). The original is dropped.
- the **fan-out**, on the injector end's ingress (the host namespace, where the neuron ports'
  host ends are), receives each line's copy as its class releases it. For a spike on line r of
  event e it reads the members' ifindexes from an array map (key e·lines + r − 1: count, then
  one ifindex per member) and clones the frame into each member's *ingress*
  (bpf_clone_redirect with BPF_F_INGRESS), where the port's neuron (testbed.kernel.gate) counts
  it; primers and the original are dropped. Within one namespace the redirect keeps the skb's RX
  stamp (____dev_forward_skb scrubs the stamp only across namespaces), so every member's copy
  carries the instant the line's delayed copy reached the injector end: its arrival time is the
  kernel's, set by a qdisc holding the packet.

Loops are unrolled (one block per line, one per member), so the verifier sees straight code;
the programs are as long as the layer's widest event (≤ 255 lines) or line (≤ 512 members).
Frames that are not spikes of the layer pass (TC_ACT_UNSPEC): ARP and neighbour discovery keep
working.
"""

from __future__ import annotations

import os
import struct
from typing import Callable, Sequence

from testbed.errors import KernelError
from testbed.kernel import bpf
from testbed.kernel.bpf import ADD, B, FP, JEQ, JGE, JGT, JLE, JNE, MUL, SUB, W, R0, R1, R2, R3, R4, R5, R6, R7, R8, R9
from testbed.kernel.classifier import emit_event_index
from testbed.plan import wire

FRAME_MIN_BYTES = wire.FRAME_LINE_OFFSET + 1  # every byte the line programs read: up to the line byte
HELPER_SKB_STORE_BYTES = 9
HELPER_CLONE_REDIRECT = 13
BPF_F_INGRESS = 1
SKB_PRIORITY = 32  # struct __sk_buff: priority (writable by tc programs)
MAX_MEMBERS = 512  # a layer's ports (testbed.plan.fabric_plan.MAX_PORTS_PER_LAYER)
MAX_LINES = 255  # the wire's line byte
SPLITTER_NAME = "p2_split"
FANOUT_NAME = "p2_fanout"


def build_line_splitter(layer: int, events: int, lines: int, map_fd: int) -> bytes:
    """Bytecode of the splitter (module docstring); `map_fd`: `events` entries of 4 + 4·`lines` B."""
    if not 1 <= lines <= MAX_LINES:
        raise KernelError(f"line splitter: {lines} lines per event; expected 1..{MAX_LINES}")
    a = bpf.Assembler()
    emit_event_index(a, layer, FRAME_MIN_BYTES, "other")  # R0 = event, R6 = skb, R7 = packet data
    a.emit(
        bpf.jmp(JGE, R0, events, "other"),
        bpf.ldx(B, R2, R7, wire.FRAME_KIND_OFFSET), bpf.mov64(R9, 1), bpf.jmp(JEQ, R2, wire.KIND_PRIMER, "known"),
        bpf.mov64(R9, 0), bpf.jmp(JNE, R2, wire.KIND_SPIKE, "other"),
    )
    a.label("known")  # R9 = 1 for a primer
    a.emit(
        bpf.stx(W, FP, R0, -4), bpf.ld_map_fd(R1, map_fd), bpf.mov64(R2, FP), bpf.alu64(ADD, R2, -4),
        bpf.call(bpf.HELPER_MAP_LOOKUP_ELEM), bpf.jmp(JEQ, R0, 0, "drop"), bpf.mov64(R8, R0),
    )
    for r in range(lines):
        a.emit(bpf.ldx(W, R1, R8, 0), bpf.jmp(JLE, R1, r, "drop"), bpf.ldx(W, R3, R8, 4 + 4 * r))
        a.emit(bpf.jmp(JEQ, R9, 0, f"send{r}"), bpf.jmp(JEQ, R3, 0, f"next{r}"))  # no primer on an unshaped line
        a.label(f"send{r}")
        a.emit(
            bpf.stx(W, R6, R3, SKB_PRIORITY),
            bpf.st(B, FP, -8, r + 1), bpf.mov64(R1, R6), bpf.mov64(R2, wire.FRAME_LINE_OFFSET),
            bpf.mov64(R3, FP), bpf.alu64(ADD, R3, -8), bpf.mov64(R4, 1), bpf.mov64(R5, 0),
            bpf.call(HELPER_SKB_STORE_BYTES), bpf.jmp(JNE, R0, 0, "drop"),
            bpf.mov64(R1, R6), bpf.ldx(W, R2, R6, bpf.SKB_IFINDEX), bpf.mov64(R3, 0), bpf.call(HELPER_CLONE_REDIRECT),
        )
        a.label(f"next{r}")
    a.emit(bpf.ja("drop"))
    a.label("other")
    a.emit(bpf.mov64(R0, bpf.TC_ACT_UNSPEC), bpf.exit_insn())
    a.label("drop")
    a.emit(bpf.mov64(R0, bpf.TC_ACT_SHOT), bpf.exit_insn())
    return a.assemble()


def build_line_fanout(layer: int, events: int, lines: int, members: int, map_fd: int) -> bytes:
    """Bytecode of the fan-out (module docstring); `map_fd`: events·lines entries of 4 + 4·`members` B."""
    if not 1 <= lines <= MAX_LINES or not 1 <= members <= MAX_MEMBERS:
        raise KernelError(f"line fan-out: {lines} lines, {members} members; expected 1..{MAX_LINES} and 1..{MAX_MEMBERS}")
    a = bpf.Assembler()
    emit_event_index(a, layer, FRAME_MIN_BYTES, "other")
    a.emit(
        bpf.jmp(JGE, R0, events, "other"),
        bpf.ldx(B, R2, R7, wire.FRAME_KIND_OFFSET), bpf.jmp(JEQ, R2, wire.KIND_PRIMER, "drop"),
        bpf.jmp(JNE, R2, wire.KIND_SPIKE, "other"),
        # key = event·lines + line − 1; a spike that came down no line (line 0) is dropped.
        bpf.ldx(B, R2, R7, wire.FRAME_LINE_OFFSET), bpf.jmp(JEQ, R2, 0, "drop"), bpf.jmp(JGT, R2, lines, "drop"),
        bpf.alu64(MUL, R0, lines), bpf.alu64(ADD, R0, R2), bpf.alu64(SUB, R0, 1),
        bpf.stx(W, FP, R0, -4), bpf.ld_map_fd(R1, map_fd), bpf.mov64(R2, FP), bpf.alu64(ADD, R2, -4),
        bpf.call(bpf.HELPER_MAP_LOOKUP_ELEM), bpf.jmp(JEQ, R0, 0, "drop"), bpf.mov64(R8, R0),
    )
    for q in range(members):
        a.emit(
            bpf.ldx(W, R1, R8, 0), bpf.jmp(JLE, R1, q, "drop"),
            bpf.mov64(R1, R6), bpf.ldx(W, R2, R8, 4 + 4 * q), bpf.mov64(R3, BPF_F_INGRESS),
            bpf.call(HELPER_CLONE_REDIRECT),
        )
    a.emit(bpf.ja("drop"))
    a.label("other")
    a.emit(bpf.mov64(R0, bpf.TC_ACT_UNSPEC), bpf.exit_insn())
    a.label("drop")
    a.emit(bpf.mov64(R0, bpf.TC_ACT_SHOT), bpf.exit_insn())
    return a.assemble()


class LineProgram:
    """A loaded line program (splitter or fan-out) and its array map, until `close()`. The
    attached filter keeps both alive after close, as for the gates."""

    def __init__(self, code_for_map: Callable[[int], bytes], entries: int, width: int, table: dict[int, Sequence[int]],
                 name: str) -> None:
        bpf.check_name(name)
        self.name = name
        self._map: bpf.BpfMap | None = None
        self._fd: int | None = None
        try:
            self._map = bpf.BpfMap(bpf.MAP_TYPE_ARRAY, 4 + 4 * width, entries, name[:13] + ".m")
            for key, values in table.items():
                if not 0 <= key < entries or len(values) > width:
                    raise KernelError(f"{name}: map entry {key} with {len(values)} values does not fit "
                                      f"{entries} entries of {width}")
                self._map.update(key, struct.pack(f"=I{width}I", len(values), *values, *[0] * (width - len(values))))
            self._fd = bpf.load_program(code_for_map(self._map.fd), name)
        except BaseException:
            self.close()
            raise

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise KernelError(f"line program {self.name!r} is closed")
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._map is not None:
            self._map.close()
            self._map = None


def load_line_splitter(layer: int, events: int, lines: int, classids: dict[int, Sequence[int]],
                       name: str = SPLITTER_NAME) -> LineProgram:
    """The splitter of `layer`: `classids[e]` lists event e's lines' htb classids (0: unshaped)."""
    return LineProgram(lambda fd: build_line_splitter(layer, events, lines, fd), events, lines, classids, name)


def load_line_fanout(layer: int, events: int, lines: int, members: dict[int, Sequence[int]],
                     name: str = FANOUT_NAME) -> LineProgram:
    """The fan-out of `layer`: `members[e·lines + r − 1]` lists the ifindexes of line r of event e."""
    width = max((len(m) for m in members.values()), default=1)
    return LineProgram(lambda fd: build_line_fanout(layer, events, lines, width, fd), events * lines, width,
                       members, name)
