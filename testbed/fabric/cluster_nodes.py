"""Mininet cluster-edition node and link classes the cluster backend needs, and what it lacks.

Built on `mininet.examples.cluster` (Mininet's "Cluster Edition", marked experimental): its
`RemoteMixin` runs a node's shell over ssh on its server, `RemoteLink` makes links between
servers, `MininetCluster` adds servers and placement. Where it falls short here, these classes
work around it:

- Switches: it has only `RemoteOVSSwitch`, and this kernel has no openvswitch module
  (kernel-notes.md). `RemoteLinuxBridge` is Mininet's `LinuxBridge` made remote by the same mix-in.
- Tunnels: `RemoteGRELink` needs gretap and `RemoteSSHLink` an ssh tap tunnel per link. This
  kernel has no GRE at all ("Unknown device type"), and an ssh tunnel would put a user-space
  process on the data path. `RemoteVXLANLink` makes a VXLAN tunnel per link (in-kernel,
  point-to-point: ``remote`` set, no learning), created straight inside its node with its
  underlay in the server's root namespace (RemoteGRELink creates gretap in the root namespace
  and then moves it, so a crash between the two leaves it there).
- MTU: RemoteGRELink sets every tunnel to 1450 bytes. The fabric's primers are full 1514-byte
  frames (an MTU of 1500), so a tunnel carrying fewer silently drops every primer and every
  delay becomes 0. Ours keep MTU 1500, which needs an underlay of ≥ 1550 bytes (VXLAN adds 50):
  the emulated hosts' bridge has 9000; real servers need jumbo frames on the interconnect, and
  the backend refuses an underlay too small for the plan, naming the fix.
- Same-server links between remote nodes: RemoteLink makes those with the *local* ``ip``, which
  is wrong on a remote server; ours runs ``ip`` there, each end created inside its node.
- ssh: RemoteMixin's ssh command is a class attribute with ForwardAgent on and no way to pass
  options; `cluster_classes` makes subclasses whose ssh carries the run's options (``-F`` the
  emulated hosts' config: keys and known hosts of the run) and no agent forwarding.
- Python 3: the PyPI release (2.3.0.dev6) of `RemoteMixin.rcmd` adds the bytes it reads to a
  str (a TypeError on the first remote command; Debian's copy decodes); `_TextRcmd` decodes.
- sudo: as root, RemoteMixin still wraps every ssh in ``sudo -E -u root``, so the pid Mininet
  holds (and the registry records) is sudo's, and killing it leaves ssh and the remote shell
  running; `_TextRcmd` drops that wrapper when we are root already.
- Cleanup: ClusterCleanup runs ``ssh host sudo mn -c`` on every server, which kills processes by
  name and deletes links that are not ours: never called (it runs only from mininet.clean).
"""

from __future__ import annotations

import os
import shlex
from typing import Any

from mininet.examples.cluster import RemoteLink, RemoteMixin
from mininet.link import Link
from mininet.nodelib import LinuxBridge

VXLAN_PORT = 4789  # IANA's VXLAN port; links are told apart by their VNI
TUNNEL_MTU = 1500  # a full primer frame (1514 bytes with its Ethernet header)
VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14


def _shell(node: Any, script: str) -> str:
    """Run a shell `script` in `node`'s server's root namespace (Mininet's rcmd: ssh for a remote
    node, which joins its arguments into one remote command line, so quote it there)."""
    return node.rcmd(["sh", "-c", shlex.quote(script) if node.isRemote else script])


class _TextRcmd:
    """RemoteMixin fixes (module docstring): text from rcmd, no sudo around ssh for root."""

    def rcmd(self, *cmd: Any, **opts: Any) -> str:
        popen = self.rpopen(*cmd, **opts)  # type: ignore[attr-defined]
        out, _ = popen.communicate()
        return out.decode(errors="replace")

    def startShell(self, *args: Any, **kwargs: Any) -> None:
        sshcmd = self.sshcmd  # type: ignore[attr-defined]
        if os.geteuid() == 0 and sshcmd[:4] == ["sudo", "-E", "-u", "root"]:
            self.sshcmd = sshcmd[4:]
        super().startShell(*args, **kwargs)  # type: ignore[misc]


class RemoteLinuxBridge(_TextRcmd, RemoteMixin, LinuxBridge):
    """Mininet's LinuxBridge (brctl; STP off) on a cluster server."""


class RemoteVXLANLink(RemoteLink):
    """A link whose ends may be on two servers: a veth pair on one server, else one VXLAN tunnel
    (module docstring). `vni` numbers the run's tunnels; `serverIP`s of the nodes are the underlay."""

    vni = 0  # set per run by cluster_classes, then counted up per tunnel
    premade: frozenset[str] = frozenset()  # tunnel ends make_tunnels already made

    def makeIntfPair(self, intfname1: str, intfname2: str, addr1: str | None = None, addr2: str | None = None,
                     node1: Any = None, node2: Any = None, deleteIntfs: bool = True) -> Any:
        node1 = self.node1 if node1 is None else node1
        node2 = self.node2 if node2 is None else node2
        if node1.server == node2.server:
            if not node1.isRemote:
                return Link.makeIntfPair(intfname1, intfname2, addr1, addr2, node1, node2, deleteIntfs=deleteIntfs)
            # Both ends are born in their nodes (one request, as for tunnel_end): nothing of the
            # pair can stay in the server's root namespace.
            self._check(node1, _shell(node1, f"ip link add {intfname1} netns {node1.pid} type veth "
                                             f"peer name {intfname2} netns {node2.pid}"), intfname1)
            return None
        if intfname1 in self.premade and intfname2 in self.premade:
            self.tunnel = True  # made by make_tunnels, one batch per server
            return None
        type(self).vni += 1
        for node, name, peer in ((node1, intfname1, node2), (node2, intfname2, node1)):
            self._check(node, _shell(node, tunnel_end(name, type(self).vni, node, peer)), name)
        self.tunnel = True  # RemoteLink.stop then deletes both ends through their nodes
        return None

    @staticmethod
    def _check(node: Any, output: str, name: str) -> None:
        if output.strip():
            raise RuntimeError(f"tunnel end {name} on {node.server}: {output.strip()[:200]}")

    def stop(self) -> None:
        if self.tunnel:
            self.intf1.delete()
            self.intf2.delete()
            self.tunnel = None
        else:
            Link.stop(self)


def tunnel_end(name: str, vni: int, node: Any, peer: Any) -> str:
    """The shell command making one VXLAN end on `node`'s server, created straight inside `node`
    (``netns``: the device is born there) while its underlay socket belongs to the server's root
    namespace, where the command runs and the tunnel's packets arrive. One netlink request, so
    no crash can leave the end behind in the root namespace, where only the node's namespace
    going away would not remove it (RemoteGRELink creates it there, then moves it)."""
    return (f"ip link add {name} mtu {TUNNEL_MTU} netns {node.pid} type vxlan id {vni} local {node.serverIP} "
            f"remote {peer.serverIP} dstport {VXLAN_PORT} nolearning ttl 64")


def make_tunnels(link_class: type, pairs: list[tuple[Any, Any, str, str]]) -> None:
    """Make the VXLAN ends of every cross-server pair (node1, node2, name1, name2) with one shell
    per server, not one ssh per end as RemoteLink would (≈ 0.1–1 s each on a loaded machine);
    `link_class` then only wraps them (its `premade`)."""
    scripts: dict[str, tuple[Any, list[str]]] = {}
    made = set(link_class.premade)
    for node1, node2, name1, name2 in pairs:
        link_class.vni += 1
        for node, name, peer in ((node1, name1, node2), (node2, name2, node1)):
            scripts.setdefault(node.server, (node, []))[1].append(tunnel_end(name, link_class.vni, node, peer))
            made.add(name)
    for server, (node, lines) in scripts.items():
        RemoteVXLANLink._check(node, _shell(node, " && ".join(lines)), f"{len(lines)} tunnel ends")
    link_class.premade = frozenset(made)


def cluster_classes(ssh_options: tuple[str, ...], vni_base: int) -> dict[str, type]:
    """Host, switch and link classes for one run: ssh with `ssh_options` (no agent forwarding),
    tunnels numbered from `vni_base` + 1."""
    sshbase = ["ssh", *ssh_options, "-q", "-o", "BatchMode=yes", "-tt"]
    from mininet.examples.cluster import RemoteHost

    host = type("Pi2RemoteHost", (_TextRcmd, RemoteHost), {"sshbase": sshbase})
    switch = type("Pi2RemoteLinuxBridge", (RemoteLinuxBridge,), {"sshbase": sshbase})
    link = type("Pi2VXLANLink", (RemoteVXLANLink,), {"vni": vni_base})
    return {"host": host, "switch": switch, "link": link}
