"""The receiver: read spikes with their kernel RX timestamps from an AF_PACKET socket.

Arrival times come from the kernel (SO_TIMESTAMPNS: the skb's receive stamp, taken when the
device hands the frame to the stack), never from when Python got around to reading it: waking a
blocked Python receiver costs 38–74 µs median and up to ms (kernel-notes.md). The stamps read
CLOCK_REALTIME; `testbed.traffic.clock` relates them to the injector's CLOCK_MONOTONIC.

The socket listens for ETH_P_IP, not ETH_P_ALL, on purpose: ETH_P_ALL taps see a frame before
the ingress qdisc (clsact/tc filters, where a gate may drop it), ETH_P_IP handlers after it, so
only what the fabric let through is captured. Such sockets also never see outgoing frames.
"""

from __future__ import annotations

import fcntl
import select
import socket
import struct
import time
from dataclasses import dataclass

import numpy as np

from testbed.errors import KernelError
from testbed.plan.wire import ETH_P_IP, KIND_PRIMER, MAX_FRAME_BYTES
from testbed.traffic.packets import parse_spike_frame
from testbed.traffic.sockets import grow_receive_buffer, packet_socket

SO_TIMESTAMPNS = 35  # SO_TIMESTAMPNS_OLD; its control message type SCM_TIMESTAMPNS is the same number
SOL_PACKET = 263
PACKET_STATISTICS = 6  # struct tpacket_stats {u32 tp_packets, tp_drops}; reading resets both
SIOCGIFINDEX = 0x8933
RCVBUF_BYTES = 16 << 20  # ≈ 20k queued small frames before the kernel drops (reported as drops)
_TIMESPEC = struct.Struct("=qq")
_STATS = struct.Struct("=II")
_ANCILLARY_BYTES = socket.CMSG_SPACE(_TIMESPEC.size)

ARRIVAL_DTYPE = np.dtype([
    ("ifindex", "<i4"),  # receiving interface in the socket's namespace; 0 when unknown (pcap)
    ("layer", "u1"),
    ("source", "<u2"),
    ("sign", "u1"),  # 0: t⁺ event, 1: t⁻ event
    ("sample", "<u4"),
    ("seq", "<u2"),
    ("kind", "u1"),  # 0: spike, 1: primer, 2: neuron event
    ("time_ns", "<i8"),  # the header's time_ns: a spike's origin, an event's sum of arrivals (ns)
    ("t_ns", "<i8"),  # kernel RX timestamp, CLOCK_REALTIME ns
])


@dataclass(frozen=True, eq=False)
class Capture:
    """What one `collect` read: spikes in receive order, and the raw frames if asked for."""

    arrivals: np.ndarray  # ARRIVAL_DTYPE
    frames: tuple[bytes, ...] | None  # aligned with arrivals (for pcaps), None unless kept
    dropped: int  # frames the kernel dropped at this socket (receive buffer full) meanwhile
    others: int  # frames that were not spikes (ARP, IPv6 neighbour discovery, ...) and were skipped

    @property
    def spikes(self) -> int:
        """Spikes and neuron events read (everything but primers)."""
        return int(np.count_nonzero(self.arrivals["kind"] != KIND_PRIMER))


class Receiver:
    """Reads spikes from one AF_PACKET socket (one interface, or a whole namespace).

    Give it an open AF_PACKET SOCK_RAW socket (the caller keeps ownership), or use
    `Receiver.open(netns, ifname)`, which opens one and closes it on `close()`.
    """

    def __init__(self, sock: socket.socket) -> None:
        if sock.family != socket.AF_PACKET:
            raise KernelError(f"receiver socket: family {sock.family!r}; expected AF_PACKET")
        self.sock = sock
        self._owned = False
        self._ifindex: dict[str, int] = {}
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        grow_receive_buffer(sock, RCVBUF_BYTES)
        await_rx_timestamps()

    @classmethod
    def open(cls, netns: str | None = None, ifname: str | None = None) -> "Receiver":
        """A receiver in `netns` (None: this process's) on `ifname`, or on every interface if None."""
        sock = packet_socket(netns, ETH_P_IP)
        if ifname is not None:
            try:
                sock.bind((ifname, ETH_P_IP))  # Python converts the protocol to network order here
            except OSError as exc:
                sock.close()
                where = "this namespace" if netns is None else f"netns {netns!r}"
                raise KernelError(f"receiver: cannot bind to interface {ifname!r} in {where}: {exc.strerror}") from None
        receiver = cls(sock)
        receiver._owned = True
        return receiver

    def close(self) -> None:
        if self._owned:
            self.sock.close()

    def __enter__(self) -> "Receiver":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def discard(self) -> int:
        """Drop every frame already queued (e.g. stale spikes of an earlier run); return how many."""
        count = 0
        while True:
            try:
                self.sock.recv(MAX_FRAME_BYTES, socket.MSG_DONTWAIT)
            except BlockingIOError:
                self._stats()  # restart the drop counter too
                return count
            count += 1

    def collect(self, deadline_mono_ns: int, *, expected_spikes: int | None = None,
                keep_frames: bool = False) -> Capture:
        """Read spikes until CLOCK_MONOTONIC reaches `deadline_mono_ns` or `expected_spikes`
        spikes or neuron events (primers are kept but not counted) have arrived, whichever is first."""
        rows: list[tuple[int, int, int, int, int, int, int, int]] = []
        frames: list[bytes] = []
        others = 0
        spikes = 0
        self._stats()
        poller = select.epoll()
        poller.register(self.sock.fileno(), select.EPOLLIN)
        recvmsg = self.sock.recvmsg
        try:
            while expected_spikes is None or spikes < expected_spikes:
                try:
                    frame, ancillary, _, address = recvmsg(MAX_FRAME_BYTES, _ANCILLARY_BYTES, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    left_s = (deadline_mono_ns - time.monotonic_ns()) / 1e9
                    if left_s <= 0:
                        break
                    poller.poll(left_s)
                    continue
                header = parse_spike_frame(frame)
                if header is None:
                    others += 1
                    continue
                rows.append((self._index(address[0]), header.layer, header.source, header.sign, header.sample,
                             header.seq, header.kind, header.time_ns, _stamp(ancillary)))
                if keep_frames:
                    frames.append(frame)
                spikes += header.kind != KIND_PRIMER
        finally:
            poller.close()
        return Capture(
            arrivals=np.array(rows, dtype=ARRIVAL_DTYPE),
            frames=tuple(frames) if keep_frames else None,
            dropped=self._stats(),
            others=others,
        )

    def _index(self, ifname: str) -> int:
        """ifindex of `ifname` in the socket's namespace (Python's address carries only the name)."""
        index = self._ifindex.get(ifname)
        if index is None:
            request = struct.pack("16si", ifname.encode(), 0)
            try:
                index = struct.unpack_from("16si", fcntl.ioctl(self.sock.fileno(), SIOCGIFINDEX, request))[1]
            except OSError:
                index = 0  # the interface vanished since the frame arrived
            self._ifindex[ifname] = index
        return index

    def _stats(self) -> int:
        """Drops since the last call (the kernel resets the counters on every read)."""
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS.size)
        return _STATS.unpack(raw)[1]


def await_rx_timestamps(timeout_s: float = 2.0) -> None:
    """Return once the kernel stamps frames as they arrive, not when they are read.

    Enabling SO_TIMESTAMPNS turns on receive stamping (the netstamp_needed static key) through
    a work queue, so it takes effect a little later, much later on a loaded machine. Until then
    a frame is stamped when recvmsg() reads it: once 62 ms after arrival in this project's tests.
    A loopback datagram read 1 ms after it was sent tells which case holds: a stamp taken on
    arrival predates the read.
    """
    deadline = time.monotonic_ns() + int(timeout_s * 1e9)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        try:
            probe.bind(("127.0.0.1", 0))
        except OSError as exc:
            raise KernelError(f"receiver: cannot check RX timestamping on loopback ({exc.strerror}); "
                              "bring `lo` up in this process's namespace") from None
        while time.monotonic_ns() < deadline:
            probe.sendto(b"p", probe.getsockname())
            time.sleep(0.001)
            read_at = time.clock_gettime_ns(time.CLOCK_REALTIME)
            _, ancillary, _, _ = probe.recvmsg(1, _ANCILLARY_BYTES)
            if _stamp(ancillary) < read_at:
                return
    raise KernelError(f"receiver: the kernel still stamps frames when read, not on arrival, after {timeout_s} s")


def _stamp(ancillary: list[tuple[int, int, bytes]]) -> int:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            sec, nsec = _TIMESPEC.unpack_from(data)
            return sec * 1_000_000_000 + nsec
    raise KernelError("receiver: a frame came without its SO_TIMESTAMPNS control message; the kernel ignored the option")
