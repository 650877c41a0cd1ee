"""The injector: send a schedule of frames at absolute times from one AF_PACKET socket.

Pacing the *injection* times is the injector's whole job; every delay a spike meets after
that is realised by the kernel. Absolute pacing (each frame at start + offset, never "sleep
then send") keeps errors from accumulating. time.sleep overshoots by ~0.1 ms and more under load
(kernel-notes.md: 1131 µs for 1 ms), so the injector sleeps only through long gaps, waking a
margin early, and busy-waits the rest on CLOCK_MONOTONIC.

The send time that counts is the kernel's: with SO_TIMESTAMPING / SOF_TIMESTAMPING_TX_SOFTWARE
the device driver stamps each frame as it transmits it (veth does, in veth_xmit, measured on
this project's kernel 6.18), and the stamp comes back on the socket's error queue. The user-space
clock read right before each send() is reported too, to measure the pacing loop itself.
"""

from __future__ import annotations

import errno
import gc
import os
import select
import socket
import struct
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from testbed.errors import KernelError, PlanError
from testbed.traffic.clock import realtime_minus_monotonic_ns
from testbed.traffic.packets import MAX_FRAME_BYTES
from testbed.traffic.sockets import grow_receive_buffer, grow_send_buffer, packet_socket

# <linux/net_tstamp.h>, <asm-generic/socket.h>, <linux/if_packet.h>, <linux/errqueue.h>
SO_TIMESTAMPING = 37  # SO_TIMESTAMPING_OLD: struct timespec with 64-bit fields on 64-bit ABIs
SCM_TIMESTAMPING = SO_TIMESTAMPING
SOF_TIMESTAMPING_TX_SOFTWARE = 1 << 1
SOF_TIMESTAMPING_SOFTWARE = 1 << 4
SOF_TIMESTAMPING_OPT_ID = 1 << 7  # number each sent frame: ee_data = 0, 1, 2, ... per socket
SOF_TIMESTAMPING_OPT_TSONLY = 1 << 11  # return the stamp without a copy of the frame
SOL_PACKET = 263
PACKET_TX_TIMESTAMP = 16
SO_EE_ORIGIN_TIMESTAMPING = 4
SCM_TSTAMP_SND = 0  # stamped by the driver at transmit
_EXTENDED_ERR = struct.Struct("=IBBBBII")  # struct sock_extended_err
_TIMESPEC3 = struct.Struct("=qqqqqq")  # struct scm_timestamping: ts[0] software, ts[2] hardware

SLEEP_ABOVE_NS = 2_000_000  # only gaps longer than this are slept through...
SLEEP_MARGIN_NS = 1_000_000  # ...waking this early, then busy-waiting
DRAIN_SLACK_NS = 200_000  # with this much slack left, empty the TX-timestamp queue while waiting
DEFAULT_LEAD_NS = 2_000_000  # default start: this long after send() is called
ERRQUEUE_BYTES = 8 << 20  # TX stamps queue on the socket's receive buffer until read
SEND_BUFFER_BYTES = 64 << 20  # frames in flight (queued in shapers) stay charged here; see grow_send_buffer
TX_GRACE_NS = 100_000_000  # after the last frame, wait this long for outstanding TX stamps


@dataclass(frozen=True, eq=False)
class Schedule:
    """Frames to send at offsets (ns, ascending, ≥ 0) from a start time.

    `ifnames`, if given, names each frame's outgoing interface (one unbound socket then feeds
    several switches, e.g. every layer's injector link); else frames leave the bound interface.
    """

    offsets_ns: np.ndarray
    frames: tuple[bytes, ...]
    ifnames: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        offsets = np.asarray(self.offsets_ns, dtype=np.int64)
        object.__setattr__(self, "offsets_ns", offsets)
        object.__setattr__(self, "frames", tuple(self.frames))
        if offsets.ndim != 1 or len(offsets) != len(self.frames):
            raise PlanError(
                f"schedule: {offsets.size} offsets for {len(self.frames)} frames; expected one offset per frame")
        if len(offsets) and (offsets[0] < 0 or np.any(np.diff(offsets) < 0)):
            raise PlanError("schedule: offsets_ns must be ascending and >= 0; build it with Schedule.from_pairs to sort")
        if self.ifnames is not None:
            object.__setattr__(self, "ifnames", tuple(self.ifnames))
            if len(self.ifnames) != len(self.frames):
                raise PlanError(f"schedule: {len(self.ifnames)} interface names for {len(self.frames)} frames")
        for i, frame in enumerate(self.frames):
            if not 14 <= len(frame) <= MAX_FRAME_BYTES:
                raise PlanError(f"schedule: frame {i} has {len(frame)} B; expected 14..{MAX_FRAME_BYTES} B")

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[int, bytes]] | Iterable[tuple[int, bytes, str]]) -> "Schedule":
        """A schedule from (offset ns, frame[, ifname]) tuples in any order (ties keep their given order)."""
        ordered = sorted(pairs, key=lambda pair: pair[0])
        ifnames = tuple(p[2] for p in ordered) if ordered and len(ordered[0]) == 3 else None
        return cls(np.array([p[0] for p in ordered], dtype=np.int64), tuple(p[1] for p in ordered), ifnames)

    def __len__(self) -> int:
        return len(self.frames)


@dataclass(frozen=True, eq=False)
class SendReport:
    """When each frame of a schedule was sent.

    `sent_mono_ns` is CLOCK_MONOTONIC read right before each send(); `tx_real_ns` is the kernel's
    TX software timestamp (CLOCK_REALTIME, comparable with SO_TIMESTAMPNS receive stamps), −1 where
    none came back, or None when TX timestamps were off.
    """

    start_mono_ns: int
    offsets_ns: np.ndarray
    sent_mono_ns: np.ndarray
    tx_real_ns: np.ndarray | None
    realtime_minus_monotonic_ns: int
    refused: int = 0  # frames the kernel refused (ENOBUFS: the receiving CPU's backlog was full)

    @property
    def start_real_ns(self) -> int:
        """The schedule's start on the kernel timestamps' clock (CLOCK_REALTIME)."""
        return self.start_mono_ns + self.realtime_minus_monotonic_ns

    @property
    def lateness_ns(self) -> np.ndarray:
        """How late the pacing loop issued each send() (user-space clock; ≥ 0 unless the clock jumped)."""
        return self.sent_mono_ns - (self.start_mono_ns + self.offsets_ns)

    @property
    def send_real_ns(self) -> np.ndarray:
        """Authoritative send times (CLOCK_REALTIME): the kernel's TX stamp where there is one,
        else the user-space clock read before send()."""
        user = self.sent_mono_ns + self.realtime_minus_monotonic_ns
        if self.tx_real_ns is None:
            return user
        return np.where(self.tx_real_ns >= 0, self.tx_real_ns, user)

    @property
    def tx_missing(self) -> int:
        """Frames whose kernel TX stamp never came back (0 when TX timestamps are off)."""
        return 0 if self.tx_real_ns is None else int(np.count_nonzero(self.tx_real_ns < 0))


class Injector:
    """Sends schedules from an AF_PACKET raw socket bound to one interface.

    Give it an open, bound AF_PACKET socket (the caller keeps ownership), or use
    `Injector.open(ifname, netns)`, which opens one inside a network namespace and closes it on
    `close()`.
    """

    def __init__(self, sock: socket.socket, *, tx_timestamps: bool = True) -> None:
        if sock.family != socket.AF_PACKET:
            raise KernelError(f"injector socket: family {sock.family!r}; expected AF_PACKET (a raw link-layer socket)")
        self.sock = sock
        self.tx_timestamps = tx_timestamps
        self._owned = False
        self._sent_total = 0  # frames sent since TX timestamping was enabled: the next OPT_ID key
        grow_send_buffer(sock, SEND_BUFFER_BYTES)
        if tx_timestamps:
            flags = (SOF_TIMESTAMPING_TX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE
                     | SOF_TIMESTAMPING_OPT_ID | SOF_TIMESTAMPING_OPT_TSONLY)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, flags)
            grow_receive_buffer(sock, ERRQUEUE_BYTES)

    @classmethod
    def open(cls, ifname: str | None, netns: str | None = None, *, tx_timestamps: bool = True) -> "Injector":
        """An injector on interface `ifname` inside namespace `netns` (None: this process's).

        With `ifname` None the socket stays unbound and sends only schedules that name each
        frame's interface.
        """
        # Protocol 0: the socket only sends; it registers no receive hook, so it queues nothing.
        sock = packet_socket(netns, 0)
        if ifname is None:
            injector = cls(sock, tx_timestamps=tx_timestamps)
            injector._owned = True
            return injector
        try:
            sock.bind((ifname, 0))
        except OSError as exc:
            sock.close()
            where = "this namespace" if netns is None else f"netns {netns!r}"
            raise KernelError(f"injector: cannot bind to interface {ifname!r} in {where}: {exc.strerror}") from None
        injector = cls(sock, tx_timestamps=tx_timestamps)
        injector._owned = True
        return injector

    def close(self) -> None:
        if self._owned:
            self.sock.close()

    def __enter__(self) -> "Injector":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, schedule: Schedule, *, start_mono_ns: int | None = None, cpu: int | None = None) -> SendReport:
        """Send every frame at `start_mono_ns` + its offset (CLOCK_MONOTONIC ns).

        `start_mono_ns` defaults to 2 ms from now. A frame whose time has passed goes at once
        (its lateness shows in the report). `cpu` pins the calling thread there for the run, so
        the kernel's packet work can take the other cores; the old affinity is restored after.
        """
        offsets = schedule.offsets_ns.tolist()
        frames = schedule.frames
        n = len(frames)
        sent = [0] * n
        tx = [-1] * n if self.tx_timestamps else None
        key_base = self._sent_total
        offset_real = realtime_minus_monotonic_ns()
        start = time.monotonic_ns() + DEFAULT_LEAD_NS if start_mono_ns is None else start_mono_ns
        gc_was_enabled = gc.isenabled()
        gc.disable()  # a collection pause mid-schedule would delay the frames behind it
        mono = time.monotonic_ns
        send = self.sock.send
        sendto = self.sock.sendto
        ifnames = schedule.ifnames
        i = refused = 0
        try:
            with pinned(cpu):
                for i in range(n):
                    target = start + offsets[i]
                    now = mono()
                    if target - now > DRAIN_SLACK_NS and tx is not None:
                        self._drain(tx, key_base, n)
                        now = mono()
                    if target - now > SLEEP_ABOVE_NS:
                        time.sleep((target - now - SLEEP_MARGIN_NS) / 1e9)
                    while now < target:
                        now = mono()
                    sent[i] = now  # the last clock read before this send()
                    try:
                        if ifnames is None:
                            send(frames[i])
                        else:
                            sendto(frames[i], (ifnames[i], 0))
                    except OSError as exc:
                        if exc.errno != errno.ENOBUFS:
                            raise
                        # The frame is lost, as a full switch queue would lose it; the run goes on
                        # and reports it (its TX stamp never comes).
                        refused += 1
        except OSError as exc:
            raise KernelError(f"injector: send of frame {i} of {n} failed: {exc.strerror}") from None
        finally:
            self._sent_total = key_base + n
            if gc_was_enabled:
                gc.enable()
        if tx is not None:
            self._collect_remaining(tx, key_base, n)
        return SendReport(
            start_mono_ns=start,
            offsets_ns=schedule.offsets_ns,
            sent_mono_ns=np.array(sent, dtype=np.int64),
            tx_real_ns=None if tx is None else np.array(tx, dtype=np.int64),
            realtime_minus_monotonic_ns=offset_real,
            refused=refused,
        )

    def _drain(self, tx: list[int], key_base: int, n: int) -> int:
        """Read queued TX stamps into `tx` (indexed by OPT_ID key − key_base); return how many."""
        got = 0
        while True:
            try:
                _, ancillary, _, _ = self.sock.recvmsg(0, 256, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
            except BlockingIOError:
                return got
            stamp, key = -1, -1
            for level, kind, data in ancillary:
                if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPING:
                    sec, nsec = _TIMESPEC3.unpack_from(data)[:2]
                    stamp = sec * 1_000_000_000 + nsec
                elif level == SOL_PACKET and kind == PACKET_TX_TIMESTAMP:
                    _, origin, _, _, _, info, key = _EXTENDED_ERR.unpack_from(data)
                    if origin != SO_EE_ORIGIN_TIMESTAMPING or info != SCM_TSTAMP_SND:
                        key = -1
            index = key - key_base
            if stamp > 0 and 0 <= index < n:  # stale keys belong to an earlier schedule
                tx[index] = stamp
                got += 1

    def _collect_remaining(self, tx: list[int], key_base: int, n: int) -> None:
        missing = tx.count(-1) - self._drain(tx, key_base, n)
        deadline = time.monotonic_ns() + TX_GRACE_NS
        poller = select.poll()
        poller.register(self.sock, select.POLLERR)  # a queued error-queue message raises POLLERR
        while missing > 0:
            left_ms = (deadline - time.monotonic_ns()) / 1e6
            if left_ms <= 0 or not poller.poll(left_ms):
                return
            missing -= self._drain(tx, key_base, n)


@contextmanager
def pinned(cpu: int | None) -> Iterator[None]:
    """Run the calling thread on `cpu` alone inside the block (None: leave it where it is).

    Kernel packet work steered to the other CPUs (RPS) then never competes with the pacing
    loop, nor the pacing loop and the relay's decoding with the kernel.
    """
    if cpu is None:
        yield
        return
    allowed = os.sched_getaffinity(0)
    if cpu not in allowed:
        raise KernelError(f"injector: cpu {cpu} is not available to this process; choose one of {sorted(allowed)}")
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)
