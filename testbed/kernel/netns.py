"""Named network namespaces, made in-process, and ways to work inside them.

A namespace is created the way ``ip netns add`` does it, minus the fork: the calling thread
unshares a new network namespace, bind-mounts it at ``/run/netns/<name>`` (which keeps it alive
and visible to ``ip netns``), and setns()es back. That costs ≈0.5 ms here, against ≈7 ms for
pyroute2's ``netns.create`` and ≈8 ms for ``IPRoute(netns=...)``, which both fork a child
(measured on this project's 2-core VM; kernel-notes.md has 0.42 vs 6.9 ms).

Namespace membership is per thread (setns(2) moves only the calling thread), and a socket
stays in the namespace it was created in. So `socket_in` and `iproute` create their socket on
a helper thread that entered the namespace, and the socket can then be used from any thread.

This module owns every unshare, setns and mount the testbed does: creating and naming
namespaces (`create`, `attach`), and sysfs as a namespace sees it (`write_sysfs`). It imports
no other testbed.kernel module, so netlink (which makes its sockets here) can import it.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from pyroute2 import IPRoute

from testbed.errors import KernelError, NeedsRootError

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000  # include/uapi/linux/sched.h
CLONE_NEWNS = 0x00020000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SHARED = 1 << 20
MNT_DETACH = 2
THREAD_NS = "/proc/thread-self/ns/net"
# ioctls on an inet socket (include/uapi/linux/sockios.h); struct ifreq = name[16] + flags (short).
SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
IFREQ_FLAGS = struct.Struct("16sH22x")
IFF_UP = 0x1
# Like SO_SNDBUF/SO_RCVBUF but may exceed net.core.wmem_max/rmem_max (CAP_NET_ADMIN;
# asm-generic/socket.h; Python's socket module lacks them).
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33

_libc = ctypes.CDLL(None, use_errno=True)
_shared_dir_ready = False
T = TypeVar("T")


def _os_error(what: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"{what}: {os.strerror(code)}")


def path_of(name: str) -> Path:
    return NETNS_DIR / name


def exists(name: str) -> bool:
    return path_of(name).exists()


def list_names() -> list[str]:
    """Names under /run/netns (every named namespace, ours or not)."""
    return sorted(os.listdir(NETNS_DIR)) if NETNS_DIR.is_dir() else []


def _share_netns_dir() -> None:
    """Make /run/netns a shared mount point once, as iproute2 does, so our bind mounts also
    appear in mount namespaces forked later (e.g. ``ip netns exec``)."""
    global _shared_dir_ready
    if _shared_dir_ready:
        return
    NETNS_DIR.mkdir(parents=True, exist_ok=True)
    target = bytes(NETNS_DIR)
    if _libc.mount(b"none", target, None, MS_SHARED | MS_REC, None) != 0:
        # EINVAL: not a mount point yet; bind it onto itself, then share.
        if _libc.mount(target, target, b"none", MS_BIND | MS_REC, None) != 0:
            raise _os_error(f"bind-mount {NETNS_DIR}")
        if _libc.mount(b"none", target, None, MS_SHARED | MS_REC, None) != 0:
            raise _os_error(f"make {NETNS_DIR} shared")
    _shared_dir_ready = True


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise _os_error(f"setns into {what}")


def create(name: str, disable_ipv6: bool = True) -> None:
    """Create the named namespace, with loopback up and (by default) IPv6 off for every link
    that will appear in it (no router solicitations, DAD or MLD reports on the data path)."""
    if os.geteuid() != 0:
        raise NeedsRootError(f"creating namespace {name} needs root: run with sudo")
    _share_netns_dir()
    path = path_of(name)
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
    except FileExistsError:
        raise KernelError(f"namespace {name} already exists; `sudo pi2 down` its run or `sudo pi2 clean`") from None
    home = os.open(THREAD_NS, os.O_RDONLY)
    try:
        if _libc.unshare(CLONE_NEWNET) != 0:
            raise _os_error(f"unshare for namespace {name}")
        try:
            if _libc.mount(THREAD_NS.encode(), bytes(path), b"none", MS_BIND, None) != 0:
                raise _os_error(f"bind-mount namespace {name}")
            # /proc/sys/net shows the namespace of the thread that opens it: we are inside now.
            if disable_ipv6:
                for conf in ("all", "default"):
                    Path(f"/proc/sys/net/ipv6/conf/{conf}/disable_ipv6").write_text("1")
            _loopback_up()  # a socket made here, on this thread, is inside
        finally:
            _setns(home, "the original namespace")
    except BaseException:
        _libc.umount2(bytes(path), MNT_DETACH)
        path.unlink(missing_ok=True)
        raise
    finally:
        os.close(home)


def _loopback_up() -> None:
    """Set ``lo`` up in the calling thread's namespace (SIOCSIFFLAGS, as ``ifconfig lo up``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        current = fcntl.ioctl(sock, SIOCGIFFLAGS, IFREQ_FLAGS.pack(b"lo", 0))
        flags = IFREQ_FLAGS.unpack(current)[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, IFREQ_FLAGS.pack(b"lo", flags | IFF_UP))


def attach(source: str, name: str) -> None:
    """Give the namespace at `source` (a path like /proc/PID/ns/net) the name `name` under
    /run/netns, as ``ip netns attach`` does, so it outlives its process; `remove` takes it away."""
    _share_netns_dir()
    target = path_of(name)
    try:
        os.close(os.open(target, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
    except FileExistsError:
        raise KernelError(f"namespace {name} already exists; `sudo pi2 down` its run or `sudo pi2 clean`") from None
    if _libc.mount(source.encode(), bytes(target), b"none", MS_BIND, None) != 0:
        error = _os_error(f"naming namespace {source} as {name}")
        target.unlink(missing_ok=True)
        raise KernelError(str(error))


def remove(name: str) -> bool:
    """Unmount and unlink the namespace; its links go once no process or socket holds it.

    Returns False if it did not exist (tolerated: removal must be safe to repeat).
    """
    path = path_of(name)
    if _libc.umount2(bytes(path), MNT_DETACH) != 0 and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
        raise _os_error(f"unmount namespace {name}")
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _target(name: str) -> Path:
    """Where namespace `name` lives: a name under /run/netns, or an absolute path such as
    ``/proc/PID/ns/net`` (the anonymous namespace of a process, e.g. a Mininet host)."""
    return Path(name) if name.startswith("/") else path_of(name)


@contextmanager
def entered(name: str | None) -> Iterator[None]:
    """Move the *calling thread* into namespace `name` (None: stay; a name under /run/netns or
    an absolute path like ``/proc/PID/ns/net``) and back on exit."""
    if name is None:
        yield
        return
    home = os.open(THREAD_NS, os.O_RDONLY)
    try:
        try:
            target = os.open(_target(name), os.O_RDONLY)
        except FileNotFoundError:
            where = "no such file" if name.startswith("/") else f"looked in {NETNS_DIR}"
            raise KernelError(f"namespace {name} does not exist ({where})") from None
        try:
            _setns(target, f"namespace {name}")
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home, "the original namespace")
    finally:
        os.close(home)


def run_in(name: str | None, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn(*args, **kwargs)`` on a helper thread inside namespace `name`; return its result
    or raise its exception. The caller's own thread never changes namespace."""
    if name is None:
        return fn(*args, **kwargs)

    def body() -> T:
        with entered(name):
            return fn(*args, **kwargs)

    return _on_thread(f"netns-{name}", body)


def _on_thread(label: str, fn: Callable[[], T]) -> T:
    """Run `fn` on a new thread and return its result or raise its exception here."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # re-raised in the caller below
            box["error"] = exc

    thread = threading.Thread(target=body, name=label)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def socket_in(name: str | None, family: int, type_: int, proto: int = 0) -> socket.socket:
    """A socket living in namespace `name` (a name or a path, as for `entered`), usable from any thread."""
    return run_in(name, socket.socket, family, type_, proto)


def iproute(name: str | None = None, **options: Any) -> IPRoute:
    """An `IPRoute` talking to namespace `name` (None: this process's namespace; a name or a path,
    as for `entered`), without the fork pyroute2's ``IPRoute(netns=...)`` does; `options` go to
    IPRoute (e.g. ext_ack=True). Close it when done."""
    if name is None:
        return IPRoute(**options)
    sock = socket_in(name, socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE)
    return IPRoute(fileno=sock.detach(), **options)


def write_sysfs(name: str | None, values: dict[str, str]) -> None:
    """Write sysfs files (absolute /sys paths → text) as namespace `name` sees them.

    A sysfs mount shows the network devices of the namespace its mounter was in, so a helper
    thread unshares its own mount namespace (CLONE_NEWNS; with CLONE_FS threads share a root, so
    only that thread moves), makes every mount private, enters `name` and mounts a fresh sysfs
    over /sys. The mount vanishes with the thread. For this process's own namespace (None) /sys
    already is that view (and a second sysfs of it over /sys is refused: EBUSY), so the files are
    written directly.
    """
    if name is None:
        for path, value in values.items():
            Path(path).write_text(value)
        return

    def body() -> None:
        if _libc.unshare(CLONE_NEWNS) != 0:
            raise _os_error("unshare(CLONE_NEWNS)")
        if _libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
            raise _os_error("make / private")
        with entered(name):
            if _libc.mount(b"sysfs", b"/sys", b"sysfs", 0, None) != 0:
                raise _os_error(f"mount sysfs of namespace {name}")
            for path, value in values.items():
                Path(path).write_text(value)

    try:
        _on_thread(f"sysfs-{name}", body)
    except OSError as exc:
        raise KernelError(f"namespace {name}: writing {', '.join(values)} failed: {exc}") from None


def write_sysctl(netns: str | None, key: str, value: str) -> None:
    """Write ``/proc/sys/<key>`` (slash-separated, e.g. ``net/ipv6/conf/p2k3x9br/disable_ipv6``)
    as seen from namespace `netns`: the net/ tree is per namespace."""
    run_in(netns, Path("/proc/sys", key).write_text, value)
