"""AF_PACKET sockets for the injector and the receiver: opened inside a namespace, big buffers.

A socket stays in the network namespace it was created in, so `testbed.kernel.netns.socket_in`
creates it on a helper thread inside the namespace and the caller uses it from any thread.
"""

from __future__ import annotations

import socket

from testbed.errors import NeedsRootError
from testbed.kernel.netns import SO_RCVBUFFORCE, SO_SNDBUFFORCE, socket_in


def packet_socket(netns: str | None, proto: int) -> socket.socket:
    """A raw AF_PACKET socket in namespace `netns` (None: this process's) for ethertype `proto`
    (host order; 0: send only, no receive hook)."""
    try:
        return socket_in(netns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto))
    except PermissionError:
        raise NeedsRootError("raw AF_PACKET sockets need CAP_NET_RAW: run as root (sudo)") from None


def grow_receive_buffer(sock: socket.socket, size_bytes: int) -> None:
    """Raise the socket's receive buffer past net.core.rmem_max when allowed (SO_RCVBUFFORCE)."""
    _grow(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, size_bytes)


def grow_send_buffer(sock: socket.socket, size_bytes: int) -> None:
    """Raise the socket's send buffer past net.core.wmem_max when allowed (SO_SNDBUFFORCE).

    A sent frame stays charged to its socket until the kernel frees its last copy: for a
    flooded spike that is when the delayed copy leaves the last port's shaper, milliseconds
    later. With the default 208 KiB a few hundred 1514-byte primers in flight block send().
    """
    _grow(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, size_bytes)


def _grow(sock: socket.socket, forced: int, capped: int, size_bytes: int) -> None:
    """Set a buffer size with the FORCE option (CAP_NET_ADMIN), else the one capped by the sysctl."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, forced, size_bytes)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, capped, size_bytes)
