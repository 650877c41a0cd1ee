"""Batched rtnetlink: encode many requests, send them in a few sendmsg calls, match errors.

pyroute2's IPRoute sends one request per call and waits for its ack, and its generic encoder
costs ≈0.4–0.7 ms per tc object here, so 10,000 htb classes would take seconds. This module
packs messages with `struct` and writes up to `CHUNK_BYTES` of them per sendmsg. The kernel
(netlink_rcv_skb) runs every message of one sendmsg in order, in the sender's context, and
answers a message without NLM_F_ACK only if it fails; so only the last message of a chunk asks
for an ack, and when that ack arrives every earlier error is already in the receive queue.
Failures are matched back to the object that caused them by sequence number.

Kernel uapi sources for the layouts: include/uapi/linux/netlink.h, rtnetlink.h.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass

from testbed.errors import KernelError
from testbed.kernel import netns

NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_CAPPED = 0x100  # error message carries only the request header
NLM_F_ACK_TLVS = 0x200  # extended ack attributes follow
NLMSGERR_ATTR_MSG = 1
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
RTM_NEWLINK = 16
RTM_DELLINK = 17
IFLA_IFNAME = 3
IFLA_MASTER = 10
IFLA_LINKINFO = 18  # nested: IFLA_INFO_KIND, IFLA_INFO_DATA
IFLA_NET_NS_FD = 28
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1  # include/uapi/linux/veth.h: an ifinfomsg and the peer's attributes
IFF_UP = 0x1

HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
ATTR = struct.Struct("=HH")  # rtattr: len, type
IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
ERR = struct.Struct("=i")
CHUNK_BYTES = 1 << 20  # per sendmsg; the socket's send buffer is sized above it
SOCKET_BUF = 8 << 20
RECV_TIMEOUT_S = 30.0


def align4(n: int) -> int:
    return (n + 3) & ~3


def attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    length = ATTR.size + len(payload)
    return ATTR.pack(length, kind) + payload + bytes(align4(length) - length)


def attr_u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=I", value))


def attr_str(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


@dataclass(frozen=True)
class Pending:
    """What a queued request builds, so an error can name it (and a kernel module to load)."""

    what: str
    module: str | None = None


class NetlinkBatch:
    """A raw NETLINK_ROUTE socket in one namespace that sends queued requests in bulk.

    ``with NetlinkBatch(ns) as nl: nl.add(...); nl.commit()`` raises `KernelError` naming the
    first object the kernel refused. Later requests in the same chunk still run (the kernel does
    not stop at an error), so callers that must leave nothing behind remove the link or namespace.
    """

    def __init__(self, netns_name: str | None = None) -> None:
        self.netns = netns_name
        self.sock = netns.socket_in(netns_name, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        for opt, size in ((netns.SO_SNDBUFFORCE, SOCKET_BUF), (netns.SO_RCVBUFFORCE, SOCKET_BUF)):
            self.sock.setsockopt(socket.SOL_SOCKET, opt, size)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        self.sock.settimeout(RECV_TIMEOUT_S)
        self.sock.bind((0, 0))
        self.port = self.sock.getsockname()[0]
        self._chunks: list[bytearray] = []
        self._tails: list[tuple[int, int]] = []  # per chunk: (offset, seq) of its last message
        self._pending: dict[int, Pending] = {}
        self._seq = 0

    def __enter__(self) -> "NetlinkBatch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, msg_type: int, flags: int, body: bytes, what: str, module: str | None = None) -> None:
        """Queue one request (`body` = the family header + attributes)."""
        self._seq += 1
        size = HEADER.size + len(body)
        if not self._chunks or len(self._chunks[-1]) + size > CHUNK_BYTES:
            self._chunks.append(bytearray())
            self._tails.append((0, 0))
        chunk = self._chunks[-1]
        self._tails[-1] = (len(chunk), self._seq)
        chunk += HEADER.pack(size, msg_type, flags | NLM_F_REQUEST, self._seq, self.port)
        chunk += body
        chunk += bytes(align4(size) - size)
        self._pending[self._seq] = Pending(what, module)

    def commit(self, tolerate: frozenset[int] = frozenset()) -> int:
        """Send everything queued; return the number of requests. Raise on the first failure
        whose errno is not in `tolerate` (e.g. ENODEV when removing what may be gone)."""
        count = len(self._pending)
        errors: list[tuple[int, int, str]] = []
        try:
            for chunk, (offset, last_seq) in zip(self._chunks, self._tails):
                # Only the chunk's last message asks for an ack (flags sit at offset 6 of a header).
                flags = struct.unpack_from("=H", chunk, offset + 6)[0]
                struct.pack_into("=H", chunk, offset + 6, flags | NLM_F_ACK)
                self.sock.sendall(chunk)
                errors.extend(e for e in self._collect(last_seq) if e[1] not in tolerate)
        finally:
            pending = self._pending
            self._chunks, self._tails, self._pending = [], [], {}
        if errors:
            seq, code, message = errors[0]
            raise _kernel_error(pending[seq], code, message, len(errors))
        return count

    def _collect(self, last_seq: int) -> list[tuple[int, int, str]]:
        """Read answers up to the ack of `last_seq`; return the (seq, errno, extack) of failures."""
        errors = []
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except socket.timeout:
                raise KernelError(f"netlink: no answer within {RECV_TIMEOUT_S:.0f} s to a batch of requests") from None
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # too many error messages for the receive buffer
                    raise KernelError("netlink: the kernel refused so many requests that its answers overflowed; "
                                      "fix the first error and retry") from None
                raise
            offset = 0
            while offset + HEADER.size <= len(data):
                length, msg_type, flags, seq, _ = HEADER.unpack_from(data, offset)
                if msg_type == NLMSG_ERROR:
                    code = -ERR.unpack_from(data, offset + HEADER.size)[0]
                    if code:
                        errors.append((seq, code, _extack(data[offset: offset + length], flags)))
                    if seq == last_seq:
                        return errors
                offset += align4(length)

    def link_up(self, index: int, what: str) -> None:
        """Queue setting link `index` up."""
        self.add(RTM_NEWLINK, 0, IFINFO.pack(socket.AF_UNSPEC, 0, index, IFF_UP, IFF_UP), what)

    def new_veth(self, name: str, peer: str, peer_netns_fd: int, master: int | None, what: str) -> None:
        """Queue creating veth pair `name` (in this batch's namespace; a port of bridge index
        `master` there unless None) / `peer` (in the namespace open as `peer_netns_fd`), both down:
        what ``ip link add NAME master BR type veth peer name PEER netns NS`` sends."""
        peer_info = IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr_str(IFLA_IFNAME, peer) + attr_u32(
            IFLA_NET_NS_FD, peer_netns_fd)
        link_info = attr_str(IFLA_INFO_KIND, "veth") + attr(IFLA_INFO_DATA, attr(VETH_INFO_PEER, peer_info))
        body = IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr_str(IFLA_IFNAME, name) + attr(IFLA_LINKINFO, link_info)
        if master is not None:
            body += attr_u32(IFLA_MASTER, master)
        self.add(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body, what, "veth")

    def delete_link(self, ifname: str, what: str) -> None:
        """Queue deleting link `ifname` (a veth goes with its peer, a bridge frees its ports)."""
        self.add(RTM_DELLINK, 0, IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr_str(IFLA_IFNAME, ifname), what)


def _extack(msg: bytes, flags: int) -> str:
    """The kernel's extended-ack text (e.g. "Specified qdisc kind is unknown"), or ""."""
    if not flags & NLM_F_ACK_TLVS:
        return ""
    # nlmsgerr = error (4) + the request's nlmsghdr (16), plus its payload unless capped.
    offset = HEADER.size + ERR.size + HEADER.size
    if not flags & NLM_F_CAPPED:
        offset += align4(struct.unpack_from("=I", msg, HEADER.size + ERR.size)[0] - HEADER.size)
    while offset + ATTR.size <= len(msg):
        length, kind = ATTR.unpack_from(msg, offset)
        if length < ATTR.size:
            break
        if kind == NLMSGERR_ATTR_MSG:
            return msg[offset + ATTR.size: offset + length].rstrip(b"\0").decode(errors="replace")
        offset += align4(length)
    return ""


def _kernel_error(pending: Pending, code: int, message: str, count: int) -> KernelError:
    text = f"{pending.what}: kernel said {os.strerror(code)}"
    if message:
        text += f" ({message})"
    if pending.module is not None and code in (errno.ENOENT, errno.EOPNOTSUPP) and (
        "unknown" in message.lower() or "not found" in message.lower() or "failed to load" in message.lower()
        or not message
    ):
        text += f"; this kernel lacks module {pending.module} (`pi2 doctor` lists what it has)"
    if count > 1:
        text += f" [{count - 1} more request(s) failed]"
    return KernelError(text)
