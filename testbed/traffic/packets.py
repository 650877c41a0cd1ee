"""Spike frames: a scapy layer for people and pcaps, a plain-bytes builder for the injector.

The layout is `testbed.plan.wire`'s (the single source of truth); the scapy `Spike` layer
restates it as `fields_desc` so `rdpcap`/`show()` dissect spikes, and `spike_frame` builds the
same bytes without scapy, because scapy builds a frame in tens of µs and the injector must
prepare thousands per second.
"""

from __future__ import annotations

import ipaddress
import struct
from functools import lru_cache

from scapy.fields import ByteEnumField, ByteField, IntField, ShortField, SignedLongField
from scapy.layers.inet import UDP
from scapy.packet import Packet, bind_layers

from testbed.errors import PlanError
from testbed.plan.wire import (
    ETH_HEADER_BYTES,
    ETH_P_IP,
    FRAME_TIME_OFFSET,
    IPPROTO_UDP,
    IPV4_HEADER_BYTES,
    KIND_EVENT,
    KIND_PRIMER,
    KIND_SPIKE,
    MAX_FRAME_BYTES,
    PAYLOAD_BYTES,
    SPIKE_FRAME_BYTES,
    SPIKE_PORT,
    UDP_HEADER_BYTES,
    SpikeHeader,
)

IP_TTL = 64
IP_FLAG_DF = 0x4000  # don't fragment: a spike is one datagram, never a fragment
HEADERS_BYTES = ETH_HEADER_BYTES + IPV4_HEADER_BYTES + UDP_HEADER_BYTES
_ETH = struct.Struct("!6s6sH")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")
_TIME = struct.Struct("!q")  # the header's time_ns (testbed.plan.wire)
_SPIKE_PORT_BYTES = SPIKE_PORT.to_bytes(2, "big")


class Spike(Packet):
    """One spike's UDP payload (see `testbed.plan.wire` for the byte offsets)."""

    name = "Spike"
    fields_desc = [
        ByteField("layer", 0),  # layer the spike enters (0 = input layer)
        ShortField("source", 0),  # pre-synaptic neuron i within that layer
        ByteEnumField("sign", 0, {0: "t+", 1: "t-"}),
        IntField("sample", 0),  # sample id, wraps at 2**32
        ShortField("seq", 0),  # position in the sample's injection schedule
        ByteEnumField("kind", KIND_SPIKE, {KIND_SPIKE: "spike", KIND_PRIMER: "primer", KIND_EVENT: "event"}),
        ByteField("line", 0),  # a shared delay line's copy: its line (testbed.plan.wire); aligns time_ns
        SignedLongField("time_ns", 0),  # a spike: its layer origin (CLOCK_REALTIME ns); an event: Σ arrivals (ns)
    ]

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        # Bytes after the 20-byte header are a primer's filler (or zero padding), not a layer.
        return b"", s


def _mac(text: str) -> bytes:
    parts = text.split(":")
    try:
        raw = bytes(int(p, 16) for p in parts)
    except ValueError:
        raw = b""
    if len(parts) != 6 or len(raw) != 6:
        raise PlanError(f"MAC address {text!r} is malformed; expected six hex octets like 02:00:00:00:00:01")
    return raw


def _ipv4(text: str) -> bytes:
    try:
        return ipaddress.IPv4Address(text).packed
    except ValueError:
        raise PlanError(f"IPv4 address {text!r} is malformed; expected dotted quad like 10.0.0.1") from None


def ipv4_checksum(header: bytes) -> int:
    """RFC 791 header checksum: ones' complement of the ones' complement sum of 16-bit words."""
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@lru_cache(maxsize=4096)
def _headers(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, frame_bytes: int) -> bytes:
    """Ethernet + IPv4 + UDP headers; constant for a given endpoint pair and frame size."""
    if not SPIKE_FRAME_BYTES <= frame_bytes <= MAX_FRAME_BYTES:
        raise PlanError(
            f"spike frame size {frame_bytes} B is out of range; expected {SPIKE_FRAME_BYTES}..{MAX_FRAME_BYTES} B")
    ip_bytes = frame_bytes - ETH_HEADER_BYTES
    udp_bytes = ip_bytes - IPV4_HEADER_BYTES
    eth = _ETH.pack(_mac(dst_mac), _mac(src_mac), ETH_P_IP)
    ip_fields = [0x45, 0, ip_bytes, 0, IP_FLAG_DF, IP_TTL, IPPROTO_UDP, 0, _ipv4(src_ip), _ipv4(dst_ip)]
    ip_fields[7] = ipv4_checksum(_IPV4.pack(*ip_fields))
    # RFC 768: "An all zero transmitted checksum value means that the transmitter generated no
    # checksum" -- allowed for UDP over IPv4, and it keeps headers constant across payloads.
    udp = _UDP.pack(SPIKE_PORT, SPIKE_PORT, udp_bytes, 0)
    return eth + _IPV4.pack(*ip_fields) + udp


def spike_frame(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, header: SpikeHeader,
                frame_bytes: int = SPIKE_FRAME_BYTES) -> bytes:
    """Ethernet/IPv4/UDP frame of `frame_bytes` carrying `header`, zero-filled to size.

    `frame_bytes` is the length a qdisc counts (skb->len on a veth); primers use it to set a
    shaper's delay, spikes keep the default `SPIKE_FRAME_BYTES` (62 B).
    """
    headers = _headers(src_mac, dst_mac, src_ip, dst_ip, frame_bytes)
    return headers + header.pack(frame_bytes - HEADERS_BYTES)


def stamp_origin(frame: bytes, origin_ns: int) -> bytes:
    """`frame` (from `spike_frame`) with its header's time_ns set to `origin_ns`: the injector builds a
    slot's frames before it knows when the slot starts, then stamps each spike with its sample's origin."""
    return frame[:FRAME_TIME_OFFSET] + _TIME.pack(origin_ns) + frame[FRAME_TIME_OFFSET + _TIME.size:]


def parse_spike_frame(frame: bytes) -> SpikeHeader | None:
    """The spike header of an Ethernet frame, or None if it is not an IPv4/UDP spike.

    Any frame can reach a capture socket (IPv6 router solicitations, ARP), so non-spikes are
    skipped rather than treated as errors.
    """
    if len(frame) < HEADERS_BYTES + PAYLOAD_BYTES or frame[12:14] != b"\x08\x00":
        return None
    ihl_bytes = (frame[ETH_HEADER_BYTES] & 0x0F) * 4
    udp_at = ETH_HEADER_BYTES + ihl_bytes
    fragment = int.from_bytes(frame[ETH_HEADER_BYTES + 6:ETH_HEADER_BYTES + 8], "big") & 0x3FFF  # MF | offset
    if frame[ETH_HEADER_BYTES + 9] != IPPROTO_UDP or fragment or frame[udp_at + 2:udp_at + 4] != _SPIKE_PORT_BYTES:
        return None
    payload = frame[udp_at + UDP_HEADER_BYTES:]
    if len(payload) < PAYLOAD_BYTES:
        return None
    return SpikeHeader.unpack(payload)

# bind sport too: UDP's default sport 53 would let DNS claim the payload.
bind_layers(UDP, Spike, sport=SPIKE_PORT, dport=SPIKE_PORT)
