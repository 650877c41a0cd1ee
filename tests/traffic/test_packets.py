"""Spike frames: golden bytes, scapy and the fast builder agree both ways, and the parser skips non-spikes."""

from __future__ import annotations

import pytest
from scapy.compat import raw
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from testbed.errors import PlanError
from testbed.plan.wire import KIND_PRIMER, PAYLOAD_BYTES, SPIKE_FRAME_BYTES, SPIKE_PORT, SpikeHeader
from testbed.traffic.packets import Spike, parse_spike_frame, spike_frame, stamp_origin

SRC_MAC, DST_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
SRC_IP, DST_IP = "10.0.0.1", "10.0.0.2"
HEADERS = [
    SpikeHeader(layer=1, source=7, sign=1, sample=250, seq=3, time_ns=0x0102030405060708),
    SpikeHeader(layer=0, source=65535, sign=0, sample=2**32 - 1, seq=65535, time_ns=-1),
    SpikeHeader(layer=255, source=0, sign=1, sample=0, seq=0, kind=KIND_PRIMER),
]


def _scapy(header: SpikeHeader, frame_bytes: int = SPIKE_FRAME_BYTES):
    pkt = (Ether(src=SRC_MAC, dst=DST_MAC) / IP(src=SRC_IP, dst=DST_IP, id=0, flags="DF", ttl=64)
           / UDP(sport=SPIKE_PORT, dport=SPIKE_PORT, chksum=0)
           / Spike(layer=header.layer, source=header.source, sign=header.sign, sample=header.sample,
                   seq=header.seq, kind=header.kind, time_ns=header.time_ns))
    filler = frame_bytes - SPIKE_FRAME_BYTES
    return pkt / Raw(bytes(filler)) if filler else pkt  # a primer's filler is UDP payload


def test_spike_payload_golden_bytes():
    assert raw(Spike(layer=1, source=7, sign=1, sample=250, seq=3, kind=0, time_ns=0x0102030405060708)) == bytes.fromhex(
        "01" "0007" "01" "000000fa" "0003" "00" "00" "0102030405060708")


def test_spike_frame_golden_bytes():
    frame = spike_frame(SRC_MAC, DST_MAC, SRC_IP, DST_IP, HEADERS[0])
    assert frame == bytes.fromhex(
        "020000000002" "020000000001" "0800"  # Ethernet: dst, src, IPv4
        "45000030" "00004000" "4011" "26bb" "0a000001" "0a000002"  # IPv4: len 48, DF, ttl 64, UDP, checksum
        "151a" "151a" "001c" "0000"  # UDP 5402 -> 5402, len 28, no checksum (RFC 768)
        "01" "0007" "01" "000000fa" "0003" "00" "00" "0102030405060708")  # spike: ..., kind, pad, time_ns
    assert len(frame) == SPIKE_FRAME_BYTES


@pytest.mark.parametrize("frame_bytes", [SPIKE_FRAME_BYTES, 64, 1000, 1514])
@pytest.mark.parametrize("header", HEADERS, ids=lambda h: f"L{h.layer}S{h.source}K{h.kind}")
def test_scapy_build_equals_fast_builder(header, frame_bytes):
    assert raw(_scapy(header, frame_bytes)) == spike_frame(SRC_MAC, DST_MAC, SRC_IP, DST_IP, header, frame_bytes)


@pytest.mark.parametrize("frame_bytes", [SPIKE_FRAME_BYTES, 1000])
@pytest.mark.parametrize("header", HEADERS, ids=lambda h: f"L{h.layer}S{h.source}K{h.kind}")
def test_scapy_dissects_fast_frames(header, frame_bytes):
    pkt = Ether(spike_frame(SRC_MAC, DST_MAC, SRC_IP, DST_IP, header, frame_bytes))
    spike = pkt[Spike]
    got = SpikeHeader(spike.layer, spike.source, spike.sign, spike.sample, spike.seq, spike.kind, spike.time_ns)
    assert got == header
    assert pkt[IP].len == frame_bytes - 14 and pkt[UDP].len == frame_bytes - 34
    # scapy recomputes the IPv4 checksum from the dissected header: ours must agree.
    rebuilt = pkt[IP].copy()
    del rebuilt.chksum
    assert IP(raw(rebuilt)).chksum == pkt[IP].chksum


@pytest.mark.parametrize("header", HEADERS, ids=lambda h: f"L{h.layer}S{h.source}K{h.kind}")
def test_parse_spike_frame_round_trip(header):
    assert parse_spike_frame(spike_frame(SRC_MAC, DST_MAC, SRC_IP, DST_IP, header, 200)) == header


def test_parse_skips_non_spikes():
    spike = raw(_scapy(HEADERS[0]))
    dns = raw(Ether() / IP() / UDP(sport=53, dport=53) / bytes(PAYLOAD_BYTES))
    tcp_like = bytearray(spike)
    tcp_like[23] = 6  # IP protocol TCP
    fragment = bytearray(spike)
    fragment[20:22] = b"\x20\x00"  # more fragments
    assert parse_spike_frame(spike) == HEADERS[0]
    for frame in (dns, bytes(tcp_like), bytes(fragment), spike[:-1], b"\x00" * 12 + b"\x86\xdd" + bytes(60)):
        assert parse_spike_frame(frame) is None


@pytest.mark.parametrize("kwargs, match", [
    ({"frame_bytes": SPIKE_FRAME_BYTES - 1}, f"{SPIKE_FRAME_BYTES}..1514"),
    ({"frame_bytes": 1515}, f"{SPIKE_FRAME_BYTES}..1514"),
    ({"src_mac": "02:00:00:00:01"}, "MAC address"),
    ({"dst_ip": "10.0.0.300"}, "IPv4 address"),
])
def test_bad_frame_arguments_are_rejected(kwargs, match):
    args = {"src_mac": SRC_MAC, "dst_mac": DST_MAC, "src_ip": SRC_IP, "dst_ip": DST_IP, "header": HEADERS[0]} | kwargs
    with pytest.raises(PlanError, match=match):
        spike_frame(**args)


def test_stamping_an_origin_changes_only_time_ns():
    frame = spike_frame(SRC_MAC, DST_MAC, SRC_IP, DST_IP, HEADERS[0])
    stamped = stamp_origin(frame, -5)
    assert parse_spike_frame(stamped) == SpikeHeader(1, 7, 1, 250, 3, time_ns=-5)
    assert len(stamped) == len(frame) and stamped[:-8] == frame[:-8]
