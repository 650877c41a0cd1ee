"""Nanosecond pcaps: what we write, scapy and tcpdump read back with the same frames and times."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap, wrpcap

from testbed.errors import CaptureError
from testbed.plan.wire import KIND_PRIMER, SPIKE_FRAME_BYTES, SpikeHeader
from testbed.traffic.packets import Spike, spike_frame
from testbed.traffic.pcap import read_pcap, read_spikes, write_pcap

T0_NS = 1_760_000_000_123_456_789  # whole seconds and a sub-µs part, so ns resolution is visible
HEADERS = [SpikeHeader(layer=0, source=i, sign=i % 2, sample=42, seq=i) for i in range(5)]
HEADERS.append(SpikeHeader(layer=0, source=9, sign=0, sample=42, seq=5, kind=KIND_PRIMER))


def _frames():
    frames = [spike_frame("02:00:00:00:00:01", "02:00:00:00:00:02", "10.0.0.1", "10.0.0.2", h,
                          300 if h.kind == KIND_PRIMER else SPIKE_FRAME_BYTES) for h in HEADERS]
    stamps = T0_NS + np.arange(len(frames), dtype=np.int64) * 1_000_001
    return stamps, frames


def test_pcap_round_trip_with_scapy(tmp_path):
    stamps, frames = _frames()
    path = tmp_path / "spikes.pcap"
    write_pcap(path, stamps, frames)
    packets = rdpcap(str(path))
    assert [bytes(p) for p in packets] == frames
    # scapy keeps pcap times as Decimal seconds: exact to the ns.
    assert [int(p.time * 10**9) for p in packets] == stamps.tolist()
    assert [p[Spike].source for p in packets] == [h.source for h in HEADERS]
    got_stamps, got_frames = read_pcap(path)
    assert got_stamps.tolist() == stamps.tolist() and got_frames == frames
    spikes = read_spikes(path)
    assert spikes["t_ns"].tolist() == stamps.tolist()
    assert spikes["kind"].tolist() == [h.kind for h in HEADERS]
    assert spikes["seq"].tolist() == list(range(len(HEADERS)))


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="needs tcpdump")
def test_tcpdump_reads_our_pcap(tmp_path):
    stamps, frames = _frames()
    path = tmp_path / "spikes.pcap"
    write_pcap(path, stamps, frames)
    out = subprocess.run(["tcpdump", "-nn", "-r", str(path), "--time-stamp-precision=nano", "-tt"],
                         capture_output=True, text=True, timeout=20, check=True).stdout.splitlines()
    assert len(out) == len(frames)
    assert all("10.0.0.1.5402 > 10.0.0.2.5402: UDP" in line for line in out)
    assert out[0].startswith("1760000000.123456789 ")


def test_microsecond_pcaps_read_too(tmp_path):
    stamps, frames = _frames()
    path = tmp_path / "us.pcap"
    packets = [Ether(f) for f in frames]
    for p, t in zip(packets, stamps.tolist()):
        p.time = t // 1000 / 1e6
    wrpcap(str(path), packets)  # scapy's default: microsecond magic
    got, _ = read_pcap(path)
    assert np.all(np.abs(got - stamps // 1000 * 1000) <= 1000)


@pytest.mark.parametrize("content, match", [
    (b"\x00" * 10, "shorter than a pcap file header"),
    (b"\x0a\x0d\x0d\x0a" + bytes(40), "pcapng"),
    (b"\x4d\x3c\xb2\xa1" + bytes(16) + (113).to_bytes(4, "little"), "link type 113"),
])
def test_bad_pcaps_are_rejected(tmp_path, content, match):
    path = tmp_path / "bad.pcap"
    path.write_bytes(content)
    with pytest.raises(CaptureError, match=match):
        read_pcap(path)


def test_truncated_pcap_is_rejected(tmp_path):
    stamps, frames = _frames()
    path = tmp_path / "cut.pcap"
    write_pcap(path, stamps, frames)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(CaptureError, match="truncated frame"):
        read_pcap(path)
