"""Namespaces, veth pairs and bridges of one run, each recorded before it is made.

`LinkBuilder` names every object ``p2<run><suffix>`` (testbed.kernel.names), records it in the
run's registry *before* asking the kernel, and keeps one `IPRoute` per namespace open. Veth
pairs are made in batches (`veths`: one netlink commit for a whole layer's ports, already
enslaved to its bridge), from a socket in the first end's namespace with the peer created
straight in its own (IFLA_NET_NS_FD), so nothing is moved afterwards.

Kernel semantics that matter for the data path:
- Bridges are made with STP off and forward_delay 0: with either on, a new port spends ~1 s in
  listening/learning before it forwards (br_make_forwarding; kernel-notes.md).
- IPv6 is off on our links (namespaces made by testbed.kernel.netns default to it; links in the
  root namespace get it per device), so no router solicitations, DAD or MLD reports appear on
  the data path.
"""

from __future__ import annotations

import os
from types import TracebackType
from typing import Sequence

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from testbed.errors import KernelError
from testbed.kernel import netns
from testbed.kernel.names import RunRegistry, object_name
from testbed.kernel.netlink import NetlinkBatch

NUD_PERMANENT = 0x80  # include/uapi/linux/neighbour.h


def _where(name: str, ns: str | None) -> str:
    return name if ns is None else f"{name} (namespace {ns})"


def _where_pair(ns: str | None, peer_ns: str | None) -> str:
    return " / ".join("the root namespace" if n is None else f"namespace {n}" for n in (ns, peer_ns))


class LinkBuilder:
    """Builds one run's namespaces and links; ``with LinkBuilder(reg) as lb: ...``.

    Every method that creates something takes a *suffix* (≤ 9 chars of [a-z0-9._-]) and returns
    the full name. Closing the builder closes its netlink sockets, not the objects: removal is
    `testbed.kernel.cleanup.down(run_id)`.
    """

    def __init__(self, registry: RunRegistry) -> None:
        self.registry = registry
        self._iproutes: dict[str | None, IPRoute] = {}

    def __enter__(self) -> "LinkBuilder":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        for ipr in self._iproutes.values():
            ipr.close()
        self._iproutes.clear()

    def ipr(self, ns: str | None) -> IPRoute:
        """The cached `IPRoute` of namespace `ns` (None: the root namespace)."""
        if ns not in self._iproutes:
            self._iproutes[ns] = netns.iproute(ns)
        return self._iproutes[ns]

    def name(self, suffix: str) -> str:
        return object_name(self.registry.run_id, suffix)

    def namespace(self, suffix: str) -> str:
        """Create namespace ``p2<run><suffix>`` (loopback up, IPv6 off)."""
        name = self.name(suffix)
        self.registry.record("netns", name=name)
        netns.create(name)
        return name

    def veth(self, suffix: str, peer_suffix: str, ns: str | None = None, peer_ns: str | None = None) -> tuple[str, str]:
        """Create a veth pair with one end in `ns` and the other in `peer_ns`; both stay down."""
        return self.veths([(suffix, peer_suffix)], ns, peer_ns)[0]

    def veths(self, pairs: Sequence[tuple[str, str]], ns: str | None, peer_ns: str | None,
              master: str | None = None) -> list[tuple[str, str]]:
        """Create veth pairs (suffix in `ns`, peer suffix in `peer_ns`), all down and, with `master`
        (a bridge's full name in `ns`), all ports of that bridge: one netlink batch instead of a
        request (and two lookups to enslave) per pair, as tc objects are built."""
        made = [(self.name(suffix), self.name(peer)) for suffix, peer in pairs]
        for name, peer in made:
            self.registry.record("link", name=name, netns=ns, peer=peer, peer_netns=peer_ns)
        master_index = None if master is None else self.index(master, ns)
        peer_fd = os.open(netns.THREAD_NS if peer_ns is None else netns.path_of(peer_ns), os.O_RDONLY)
        try:
            with NetlinkBatch(ns) as nl:
                for name, peer in made:
                    nl.new_veth(name, peer, peer_fd, master_index, f"veth {name}/{peer} ({_where_pair(ns, peer_ns)})")
                nl.commit()
        finally:
            os.close(peer_fd)
        for n_ns, ends in ((ns, [n for n, _ in made]), (peer_ns, [p for _, p in made])):
            if n_ns is None:
                for n in ends:
                    self.disable_ipv6(n, None)
        return made

    def bridge(self, suffix: str, ns: str | None = None, ageing_time_cs: int | None = None) -> str:
        """Create a bridge (STP off, forward_delay 0). ``ageing_time_cs=0`` makes it forget every
        MAC at once, so it floods every frame to all ports like a hub (times in 1/100 s)."""
        name = self.name(suffix)
        self.registry.record("bridge", name=name, netns=ns)
        options: dict[str, int] = {"br_stp_state": 0, "br_forward_delay": 0}
        if ageing_time_cs is not None:
            options["br_ageing_time"] = ageing_time_cs
        self._call(f"bridge {_where(name, ns)}", self.ipr(ns).link, "add", ifname=name, kind="bridge", **options)
        if ns is None:
            self.disable_ipv6(name, None)
        return name

    def index(self, ifname: str, ns: str | None) -> int:
        found = self.ipr(ns).link_lookup(ifname=ifname)
        if not found:
            raise KernelError(f"link {_where(ifname, ns)}: no such interface")
        return found[0]

    def enslave(self, ifname: str, bridge: str, ns: str | None = None) -> None:
        """Make `ifname` a port of `bridge` (both in `ns`)."""
        master = self.index(bridge, ns)
        self._call(f"port {ifname} of bridge {_where(bridge, ns)}", self.ipr(ns).link, "set",
                   index=self.index(ifname, ns), master=master)

    def mac(self, ifname: str, mac: str, ns: str | None = None) -> None:
        self._call(f"MAC {mac} on {_where(ifname, ns)}", self.ipr(ns).link, "set", index=self.index(ifname, ns), address=mac)

    def address(self, ifname: str, ipv4: str, prefixlen: int, ns: str | None = None) -> None:
        self._call(f"address {ipv4}/{prefixlen} on {_where(ifname, ns)}", self.ipr(ns).addr, "add",
                   index=self.index(ifname, ns), address=ipv4, prefixlen=prefixlen)

    def up(self, ifname: str, ns: str | None = None) -> None:
        self._call(f"link up {_where(ifname, ns)}", self.ipr(ns).link, "set", index=self.index(ifname, ns), state="up")

    def neighbour(self, ifname: str, ipv4: str, mac: str, ns: str | None = None) -> None:
        """A permanent ARP entry, so the first packet to `ipv4` is not held for ARP resolution."""
        self._call(f"neighbour {ipv4} → {mac} on {_where(ifname, ns)}", self.ipr(ns).neigh, "add",
                   dst=ipv4, lladdr=mac, ifindex=self.index(ifname, ns), state=NUD_PERMANENT)

    def disable_ipv6(self, ifname: str, ns: str | None) -> None:
        netns.write_sysctl(ns, f"net/ipv6/conf/{ifname}/disable_ipv6", "1")

    @staticmethod
    def _call(what: str, method, *args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return method(*args, **kwargs)
        except NetlinkError as exc:
            raise KernelError(f"{what}: kernel said {os.strerror(exc.code)} ({exc})") from None


def make_hub(name: str, ns: str | None = None) -> None:
    """Bridge `name` (in `ns`) forwarding at once and flooding every frame like a hub (STP off,
    forward_delay 0, ageing 0), by netlink: for bridges another tool made (Mininet's brctl),
    from inside namespaces whose sysfs no mount shows."""
    with netns.iproute(ns) as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise KernelError(f"bridge {_where(name, ns)}: no such interface")
        LinkBuilder._call(f"bridge {_where(name, ns)} options", ipr.link, "set", index=found[0], kind="bridge",
                          br_stp_state=0, br_forward_delay=0, br_ageing_time=0)
