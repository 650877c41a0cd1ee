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
"""

from __future__ import annotations

from testbed.errors import KernelError
from testbed.kernel import bpf
from testbed.kernel.bpf import ADD, AND, B, H, JEQ, JGT, JLT, JNE, LSH, OR, R0, R1, R2, R6, R7, R8, W
from testbed.plan import wire

_IP = wire.ETH_HEADER_BYTES
_UDP = _IP + wire.IPV4_HEADER_BYTES
_KEY = _UDP + wire.UDP_HEADER_BYTES  # the synapse key word: layer, source (u16), sign
FRAME_MIN_BYTES = _KEY + 4
HTB_MAJOR = 0x10000  # classes live under the htb root 1:
PROGRAM_NAME = "p2_synapse"


def _host16(value: int) -> int:
    """A big-endian u16 as the little-endian load of it reads."""
    return int.from_bytes(value.to_bytes(2, "big"), "little")


def build_synapse_classifier(layer: int) -> bytes:
    """Bytecode returning the classid 1:(2·source + sign + 1) for spikes of `layer`."""
    if not 0 <= layer < 256:
        raise KernelError(f"synapse classifier: layer {layer} is not in 0..255")
    a = bpf.Assembler()
    a.emit(
        bpf.ldx(W, R2, R1, bpf.SKB_LEN), bpf.jmp(JLT, R2, FRAME_MIN_BYTES, "none"),
        bpf.ldx(W, R7, R1, bpf.SKB_DATA), bpf.ldx(W, R8, R1, bpf.SKB_DATA_END),
        bpf.mov64(R2, R7), bpf.alu64(ADD, R2, FRAME_MIN_BYTES), bpf.jmp(JGT, R2, R8, "none"),
        bpf.ldx(H, R2, R7, 12), bpf.jmp(JNE, R2, _host16(0x0800), "none"),
        bpf.ldx(B, R2, R7, _IP), bpf.jmp(JNE, R2, 0x45, "none"),
        bpf.ldx(B, R2, R7, _IP + 9), bpf.jmp(JNE, R2, 17, "none"),
        bpf.ldx(H, R2, R7, _UDP + 2), bpf.jmp(JNE, R2, _host16(wire.SPIKE_PORT), "none"),
        bpf.ldx(B, R2, R7, _KEY), bpf.jmp(JNE, R2, layer, "none"),
        # R0 = 2·source + sign + 1, source big-endian at key+1, sign at key+3.
        bpf.ldx(B, R0, R7, _KEY + 1), bpf.alu64(LSH, R0, 8),
        bpf.ldx(B, R6, R7, _KEY + 2), bpf.alu64(OR, R0, R6),
        bpf.alu64(LSH, R0, 1), bpf.ldx(B, R6, R7, _KEY + 3), bpf.alu64(AND, R6, 1), bpf.alu64(OR, R0, R6),
        bpf.alu64(ADD, R0, 1), bpf.alu64(OR, R0, HTB_MAJOR),
        bpf.exit_insn(),
    )
    a.label("none")
    a.emit(bpf.mov64(R0, 0), bpf.exit_insn())
    return a.assemble()


def load_synapse_classifier(layer: int, name: str = PROGRAM_NAME) -> int:
    """Load the classifier for `layer`; returns its program fd (the caller closes it)."""
    return bpf.load_program(build_synapse_classifier(layer), name)
