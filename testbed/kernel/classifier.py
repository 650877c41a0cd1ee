"""The synapse classifier: an eBPF tc classifier that sends a spike to its synapse's delay class.

A neuron port holds one htb class per synapse event (i, sign). Matching them with a list of u32
filters costs the kernel a walk over up to 2n filters per packet copy (measured on a 64-input
port: 9.5 µs per flooded copy with 128 u32 filters, 3.4 µs with none). The compiler numbers a
port's classes by the event instead, minor = 2·source + sign + 1, so one program computes the
class from the spike's key in O(1)::

    classid = 1:(2·source + sign + 1)     for a spike or primer of this port's layer
    0 (no match)                          for anything else

Attached in classic (not direct-action) mode at the htb root, the program's return value *is*
the classid (cls_bpf). A classid the port has no class for (a synapse too short to shape) makes
htb fall back to its default class, which is 0: the packet is sent directly, undelayed. So the
program needs no table; the plan's classes alone decide which synapses are shaped.

A port may also *drop* events before its shaper: the compiler prunes synapses that calibration
shows never reach the port's first K (testbed.plan.compiler). Their copies would cost the
kernel a shaped primer and spike each, only to be dropped by the gate. The *synapse filter*, one
per port at clsact egress (before the qdisc lock and htb), drops them: it computes the same
event index and looks it up in the port's array map (1 = drop), so a pruned copy costs a map
lookup instead of an htb enqueue, a timer and a veth crossing.
"""

from __future__ import annotations

import struct

from testbed.errors import KernelError
from testbed.kernel import bpf
from testbed.kernel.bpf import ADD, AND, B, FP, JEQ, JGE, JNE, LSH, OR, R0, R1, R2, R7, W
from testbed.kernel.spike_parse import emit_spike_prologue
from testbed.plan import wire

FRAME_MIN_BYTES = wire.FRAME_KEY_OFFSET + 4  # every byte the programs read: up to the synapse key word
HTB_MAJOR = 0x10000  # classes live under the htb root 1:
PROGRAM_NAME = "p2_synapse"
FILTER_PROGRAM_NAME = "p2_prune"


def emit_event_index(a: bpf.Assembler, layer: int, need: int = FRAME_MIN_BYTES, none: str = "none") -> None:
    """R0 = 2·source + sign for a spike or primer of `layer` in the skb at R1 (reading up to frame
    byte `need`; R6 = the skb, R7 = packet data after it, as `emit_spike_prologue` leaves them);
    else jump to `none`."""
    if not 0 <= layer < 256:
        raise KernelError(f"synapse program: layer {layer} is not in 0..255")
    emit_spike_prologue(a, need, none)
    a.emit(
        bpf.ldx(B, R2, R7, wire.FRAME_KEY_OFFSET), bpf.jmp(JNE, R2, layer, none),
        # R0 = 2·source + sign, source big-endian, then sign.
        bpf.ldx(B, R0, R7, wire.FRAME_SOURCE_OFFSET), bpf.alu64(LSH, R0, 8),
        bpf.ldx(B, R2, R7, wire.FRAME_SOURCE_OFFSET + 1), bpf.alu64(OR, R0, R2),
        bpf.alu64(LSH, R0, 1), bpf.ldx(B, R2, R7, wire.FRAME_SIGN_OFFSET), bpf.alu64(AND, R2, 1), bpf.alu64(OR, R0, R2),
    )


def build_synapse_classifier(layer: int) -> bytes:
    """Bytecode returning the classid 1:(2·source + sign + 1) for spikes of `layer`."""
    a = bpf.Assembler()
    emit_event_index(a, layer)
    a.emit(bpf.alu64(ADD, R0, 1), bpf.alu64(OR, R0, HTB_MAJOR), bpf.exit_insn())
    a.label("none")
    a.emit(bpf.mov64(R0, 0), bpf.exit_insn())
    return a.assemble()


def build_synapse_filter(layer: int, events: int, drop_fd: int) -> bytes:
    """Bytecode (direct action) dropping spikes and primers of `layer` whose event index has a
    non-zero word in the array map `drop_fd` (`events` entries); everything else passes."""
    a = bpf.Assembler()
    emit_event_index(a, layer)
    a.emit(
        bpf.jmp(JGE, R0, events, "none"),
        bpf.stx(W, FP, R0, -4), bpf.ld_map_fd(R1, drop_fd), bpf.mov64(R2, FP), bpf.alu64(ADD, R2, -4),
        bpf.call(bpf.HELPER_MAP_LOOKUP_ELEM), bpf.jmp(JEQ, R0, 0, "none"),
        bpf.ldx(W, R1, R0, 0), bpf.jmp(JEQ, R1, 0, "none"),
        bpf.mov64(R0, bpf.TC_ACT_SHOT), bpf.exit_insn(),
    )
    a.label("none")
    a.emit(bpf.mov64(R0, bpf.TC_ACT_OK), bpf.exit_insn())
    return a.assemble()


class SynapseFilter(bpf.LoadedProgram):
    """A loaded synapse filter for one port: its program and drop map (bpf.LoadedProgram)."""

    what = "synapse filter"

    def __init__(self, layer: int, events: int, dropped: set[int], name: str = FILTER_PROGRAM_NAME) -> None:
        if events < 1 or any(not 0 <= e < events for e in dropped):
            raise KernelError(f"synapse filter {name!r}: dropped events must lie in 0..{events - 1}")
        super().__init__(name)
        with self.loading():
            drops = self.own(bpf.BpfMap(bpf.MAP_TYPE_ARRAY, 4, events, name[:13] + ".d"))
            for event in sorted(dropped):
                drops.update(event, struct.pack("=I", 1))
            self._fd = bpf.load_program(build_synapse_filter(layer, events, drops.fd), name)


def load_synapse_classifier(layer: int, name: str = PROGRAM_NAME) -> int:
    """Load the classifier for `layer`; returns its program fd (the caller closes it)."""
    return bpf.load_program(build_synapse_classifier(layer), name)
