"""The spike's wire format: what a packet carries, and where in the frame the fabric reads it.

A spike is one UDP datagram to port `SPIKE_PORT`. Its value is *when* it arrives, never its
content; the header only names the synapse source so the fabric can route it into the right
delay class, and the sample so gates and decoders keep samples apart.

Payload layout (network byte order), offsets from the start of the UDP payload::

    0  u8   layer    layer the spike enters (0 = the injector's input layer)
    1  u16  source   pre-synaptic index i within that layer
    3  u8   sign     0: t⁺ event, 1: t⁻ event
    4  u32  sample   sample id (wraps at 2³²)
    8  u16  seq      position of the event in its sample's injection schedule
   10  u8   kind     0: spike, 1: token-bucket primer (a filler whose size sets a shaper's delay),
                     2: neuron event (what a neuron port's gate passes instead of K spikes)
   11  u8   line     0 as injected; on a shared delay line (plans with delay_lines "shared"), the line
                     splitter (testbed.kernel.lines) writes r ≥ 1 into the copy it sends down the event's
                     r-th line, so the fan-out after the delay knows whose members the copy is for. The
                     byte also keeps time_ns 8-byte aligned in the kernel's packet buffer (NET_IP_ALIGN 2
                     + frame offset 54 = 56), as strict-alignment kernels (UML, some CPUs) require
   12  s64  time_ns  a spike: its sample's origin in the layer it enters (CLOCK_REALTIME ns of model
                     time 0), from which the port's neuron times its arrival and its deadline;
                     an event: the sum of its K spikes' arrival times after that origin, ns

A neuron event is the K-th counted spike of a (port, sample), rewritten in the kernel
(testbed.kernel.gate): layer, source, sign and sample stay, seq becomes the count K and
time_ns the sum, so T = time_ns / (seq · τ) model units after the origin.

Bytes 0..3 form one 32-bit word, the *synapse key* (layer, source, sign), at `FRAME_KEY_OFFSET`
of the frame: the eBPF synapse classifier (testbed.kernel.classifier) reads it to put a spike or
its primer into its synapse's class. (A u32 filter could match the same word at IP offset
`KEY_IP_OFFSET`, 20 B IPv4 header without options + 8 B UDP header; the fabric no longer uses
one per synapse, benches and tc tests still do.)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from testbed.errors import PlanError

SPIKE_PORT = 5402
PAYLOAD = struct.Struct("!BHBIHBBq")
PAYLOAD_BYTES = PAYLOAD.size  # 20
KIND_SPIKE = 0
KIND_PRIMER = 1
KIND_EVENT = 2

# u32 offsets are relative to the network header; the key is the first payload word.
IPV4_HEADER_BYTES = 20
UDP_HEADER_BYTES = 8
ETH_HEADER_BYTES = 14
KEY_IP_OFFSET = IPV4_HEADER_BYTES + UDP_HEADER_BYTES
# Bytes a spike frame occupies on a veth (what qdiscs count as skb->len).
SPIKE_FRAME_BYTES = ETH_HEADER_BYTES + IPV4_HEADER_BYTES + UDP_HEADER_BYTES + PAYLOAD_BYTES
# The largest frame (a primer) a 1500-byte-MTU veth carries, Ethernet header included.
MAX_FRAME_BYTES = ETH_HEADER_BYTES + 1500
ETH_P_IP = 0x0800  # the Ethernet type of every spike frame (IPv4)
IPPROTO_UDP = 17

# Offsets from the start of the Ethernet frame (where a tc program's packet data begins), for the
# kernel's programs (testbed.kernel.spike_parse): the frame layout has this one owner.
ETHERTYPE_OFFSET = 12
FRAME_IP_OFFSET = ETH_HEADER_BYTES
IP_VERSION_IHL_OFFSET = FRAME_IP_OFFSET
IP_FRAGMENT_OFFSET = FRAME_IP_OFFSET + 6
IP_PROTOCOL_OFFSET = FRAME_IP_OFFSET + 9
FRAME_UDP_OFFSET = FRAME_IP_OFFSET + IPV4_HEADER_BYTES
UDP_DPORT_OFFSET = FRAME_UDP_OFFSET + 2
UDP_LENGTH_OFFSET = FRAME_UDP_OFFSET + 4
FRAME_PAYLOAD_OFFSET = FRAME_UDP_OFFSET + UDP_HEADER_BYTES
# Payload fields at their frame offsets, from PAYLOAD's format (the table above).
FRAME_KEY_OFFSET = FRAME_PAYLOAD_OFFSET  # the synapse key word: layer, source, sign
FRAME_SOURCE_OFFSET = FRAME_PAYLOAD_OFFSET + struct.calcsize("!B")
FRAME_SIGN_OFFSET = FRAME_PAYLOAD_OFFSET + struct.calcsize("!BH")
FRAME_SAMPLE_OFFSET = FRAME_PAYLOAD_OFFSET + struct.calcsize("!BHB")
FRAME_SEQ_OFFSET = FRAME_PAYLOAD_OFFSET + struct.calcsize("!BHBI")
FRAME_KIND_OFFSET = FRAME_PAYLOAD_OFFSET + struct.calcsize("!BHBIH")
FRAME_LINE_OFFSET = FRAME_PAYLOAD_OFFSET + struct.calcsize("!BHBIHB")
FRAME_TIME_OFFSET = FRAME_PAYLOAD_OFFSET + struct.calcsize("!BHBIHBB")


def synapse_key(layer: int, source: int, sign: int) -> int:
    """The 32-bit word (layer, source, sign) that u32 filters match at `KEY_IP_OFFSET`."""
    if not (0 <= layer < 256 and 0 <= source < 65536 and sign in (0, 1)):
        raise PlanError(f"spike key out of range: layer={layer} (0..255), source={source} (0..65535), sign={sign} (0|1)")
    return (layer << 24) | (source << 8) | sign


@dataclass(frozen=True)
class SpikeHeader:
    """One decoded spike payload."""

    layer: int
    source: int
    sign: int
    sample: int
    seq: int = 0
    kind: int = KIND_SPIKE
    time_ns: int = 0
    line: int = 0  # 0 as injected; the shared delay line a copy travels (testbed.kernel.lines)

    def pack(self, size: int = PAYLOAD_BYTES) -> bytes:
        """Payload bytes, zero-padded to `size` (primers are padded to set a shaper's delay)."""
        head = PAYLOAD.pack(self.layer, self.source, self.sign, self.sample & 0xFFFFFFFF, self.seq, self.kind,
                            self.line, self.time_ns)
        return head + bytes(max(0, size - len(head)))

    @classmethod
    def unpack(cls, payload: bytes) -> "SpikeHeader":
        if len(payload) < PAYLOAD_BYTES:
            raise PlanError(f"spike payload of {len(payload)} B is shorter than the {PAYLOAD_BYTES} B header")
        layer, source, sign, sample, seq, kind, line, time_ns = PAYLOAD.unpack_from(payload)
        return cls(layer, source, sign, sample, seq, kind, time_ns, line)
