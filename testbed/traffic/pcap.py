"""Nanosecond pcap files of captured spikes, for tcpdump, Wireshark and scapy.

The classic pcap format (https://datatracker.ietf.org/doc/draft-ietf-opsawg-pcap/): a 24-byte
file header, then per frame a 16-byte record header and the frame. Magic 0xa1b23c4d marks
nanosecond timestamps (0xa1b2c3d4 microseconds); link type 1 is Ethernet. We write what the
receiver captured, with its kernel RX timestamps, so `tcpdump -r` shows the fabric's timing.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Sequence

import numpy as np

from testbed.atomic_file import write_atomic
from testbed.errors import CaptureError
from testbed.traffic.capture import ARRIVAL_DTYPE
from testbed.plan.wire import MAX_FRAME_BYTES
from testbed.traffic.packets import parse_spike_frame

MAGIC_NS = 0xA1B23C4D
MAGIC_US = 0xA1B2C3D4
LINKTYPE_ETHERNET = 1
_FILE = struct.Struct("IHHiIII")  # magic, major, minor, thiszone, sigfigs, snaplen, linktype
_RECORD = struct.Struct("IIII")  # seconds, fraction (ns or µs), captured length, original length


def write_pcap(path: Path | str, t_ns: Sequence[int] | np.ndarray, frames: Sequence[bytes]) -> None:
    """Write Ethernet `frames` stamped `t_ns` (ns since the epoch, CLOCK_REALTIME) as a ns pcap."""
    if len(t_ns) != len(frames):
        raise CaptureError(f"pcap {path}: {len(t_ns)} timestamps for {len(frames)} frames; expected one each")
    parts = [_FILE.pack(MAGIC_NS, 2, 4, 0, 0, MAX_FRAME_BYTES, LINKTYPE_ETHERNET)]
    for stamp, frame in zip(np.asarray(t_ns, dtype=np.int64).tolist(), frames):
        seconds, nanos = divmod(stamp, 1_000_000_000)
        parts += [_RECORD.pack(seconds, nanos, len(frame), len(frame)), frame]
    write_atomic(path, b"".join(parts))  # as root, often into a shared directory


def read_pcap(path: Path | str) -> tuple[np.ndarray, list[bytes]]:
    """(timestamps ns, frames) of an Ethernet pcap, ns or µs resolution, either byte order."""
    data = Path(path).read_bytes()
    if len(data) < _FILE.size:
        raise CaptureError(f"pcap {path}: {len(data)} B is shorter than a pcap file header (24 B)")
    for order in "<>":
        magic = struct.unpack_from(order + "I", data)[0]
        if magic in (MAGIC_NS, MAGIC_US):
            break
    else:
        raise CaptureError(f"pcap {path}: magic {data[:4].hex()} is not a classic pcap's; "
                           "pcapng is not read here (convert with `editcap -F pcap`)")
    linktype = struct.unpack_from(order + _FILE.format, data)[6] & 0x0FFFFFFF
    if linktype != LINKTYPE_ETHERNET:
        raise CaptureError(f"pcap {path}: link type {linktype}; expected 1 (Ethernet): "
                           "capture on the interface itself, not on `any`")
    scale = 1 if magic == MAGIC_NS else 1000
    record = struct.Struct(order + _RECORD.format)
    stamps: list[int] = []
    frames: list[bytes] = []
    at = _FILE.size
    while at < len(data):
        if at + record.size > len(data):
            raise CaptureError(f"pcap {path}: truncated record header at byte {at}")
        seconds, fraction, captured, _ = record.unpack_from(data, at)
        at += record.size
        if at + captured > len(data):
            raise CaptureError(f"pcap {path}: truncated frame at byte {at} ({captured} B announced)")
        stamps.append(seconds * 1_000_000_000 + fraction * scale)
        frames.append(data[at:at + captured])
        at += captured
    return np.array(stamps, dtype=np.int64), frames


def read_spikes(path: Path | str) -> np.ndarray:
    """The spikes of a pcap as arrivals (`ARRIVAL_DTYPE`, ifindex 0); other frames are skipped."""
    stamps, frames = read_pcap(path)
    rows = []
    for stamp, frame in zip(stamps.tolist(), frames):
        header = parse_spike_frame(frame)
        if header is not None:
            rows.append((0, header.layer, header.source, header.sign, header.sample, header.seq, header.kind,
                         header.time_ns, stamp))
    return np.array(rows, dtype=ARRIVAL_DTYPE)
