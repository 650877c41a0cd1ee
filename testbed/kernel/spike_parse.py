"""The eBPF prologue every spike program starts with: is this frame a spike, and where are its bytes.

The synapse classifier, the synapse filter and the neuron port's gate each need the same answer
before they read a spike's fields, so one emitter writes it and `testbed.plan.wire` (the wire
format) owns every offset it uses. A frame is a spike if it is

    Ethernet → IPv4 without options (version/IHL 0x45), protocol UDP, not a fragment
             → UDP to `wire.SPIKE_PORT` whose length covers the payload bytes the program reads,

and its first `need` bytes are in the skb's linear part, where direct packet access can read them.
Paged frames (MSG_ZEROCOPY puts a UDP payload in page fragments, leaving only the 42 header bytes
linear) are pulled in with bpf_skb_pull_data first. Anything else jumps to the caller's label.
"""

from __future__ import annotations

import sys

from testbed.errors import KernelError
from testbed.kernel import bpf
from testbed.kernel.bpf import ADD, JGT, JLT, JNE, JSET, B, H, R0, R1, R2, R6, R7, R8, W
from testbed.plan import wire

IPV4_NO_OPTIONS = 0x45  # version 4, header length 5 words: the only layout wire.py's offsets allow
IP_MORE_FRAGMENTS_AND_OFFSET = 0x3FFF


def host16(value: int) -> int:
    """How a big-endian u16 field reads when loaded into a register (ldx is host order)."""
    return int.from_bytes(value.to_bytes(2, "big"), sys.byteorder)


def emit_spike_prologue(a: bpf.Assembler, need: int, not_spike: str) -> None:
    """Emit the parse of the frame in the skb at R1, reading up to frame byte `need`.

    After it: R6 = the skb, R7 = packet data (the Ethernet header), R8 = data_end, with
    R7 + `need` ≤ R8 proven to the verifier. Non-spikes jump to `not_spike` (R6 still the skb).
    Uses the labels ``spike_parse``, ``spike_pull`` and ``spike_ok``: call it once per program.
    """
    if not wire.FRAME_KEY_OFFSET + 4 <= need <= wire.FRAME_PAYLOAD_OFFSET + wire.PAYLOAD_BYTES:
        raise KernelError(f"spike prologue: need={need} B; a program reads between the synapse key "
                          f"({wire.FRAME_KEY_OFFSET + 4} B) and the whole header ({wire.SPIKE_FRAME_BYTES} B)")
    a.emit(bpf.mov64(R6, R1), bpf.ldx(W, R2, R6, bpf.SKB_LEN), bpf.jmp(JLT, R2, need, not_spike))
    # Direct packet access needs a proven bound: data + need <= data_end.
    a.emit(
        bpf.ldx(W, R7, R6, bpf.SKB_DATA), bpf.ldx(W, R8, R6, bpf.SKB_DATA_END),
        bpf.mov64(R2, R7), bpf.alu64(ADD, R2, need), bpf.jmp(JGT, R2, R8, "spike_pull"),
    )
    a.label("spike_parse")
    a.emit(
        bpf.ldx(H, R2, R7, wire.ETHERTYPE_OFFSET), bpf.jmp(JNE, R2, host16(wire.ETH_P_IP), not_spike),
        bpf.ldx(B, R2, R7, wire.IP_VERSION_IHL_OFFSET), bpf.jmp(JNE, R2, IPV4_NO_OPTIONS, not_spike),
        bpf.ldx(B, R2, R7, wire.IP_PROTOCOL_OFFSET), bpf.jmp(JNE, R2, wire.IPPROTO_UDP, not_spike),
        bpf.ldx(H, R2, R7, wire.IP_FRAGMENT_OFFSET), bpf.jmp(JSET, R2, host16(IP_MORE_FRAGMENTS_AND_OFFSET), not_spike),
        bpf.ldx(H, R2, R7, wire.UDP_DPORT_OFFSET), bpf.jmp(JNE, R2, host16(wire.SPIKE_PORT), not_spike),
        bpf.ldx(H, R2, R7, wire.UDP_LENGTH_OFFSET), bpf.to_be(R2, 16),
        bpf.jmp(JLT, R2, need - wire.FRAME_UDP_OFFSET, not_spike),
        bpf.ja("spike_ok"),
    )
    a.label("spike_pull")
    a.emit(
        bpf.mov64(R1, R6), bpf.mov64(R2, need), bpf.call(bpf.HELPER_SKB_PULL_DATA),
        bpf.jmp(JNE, R0, 0, not_spike),
        bpf.ldx(W, R7, R6, bpf.SKB_DATA), bpf.ldx(W, R8, R6, bpf.SKB_DATA_END),
        bpf.mov64(R2, R7), bpf.alu64(ADD, R2, need), bpf.jmp(JGT, R2, R8, not_spike),
        bpf.ja("spike_parse"),
    )
    a.label("spike_ok")
