"""The hosts of a cluster run, as `--cluster` names them.

``--cluster localhost,server1,server2`` lists real hosts reached over ssh (the first must be
``localhost``: the orchestrator, where the relay injects and reads every layer; Mininet's cluster
edition needs ssh to every other host). ``--cluster emulated:N`` asks for N hosts on this machine:
localhost plus N − 1 network namespaces each running its own sshd (testbed.cluster.emulated).
"""

from __future__ import annotations

import re
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from testbed.errors import TestbedError

LOCALHOST = "localhost"
EMULATED_RE = re.compile(r"^emulated:([0-9]+)$")
HOST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
MAX_HOSTS = 9  # Mininet's cluster edition is experimental and known to break beyond ~10 nodes


class ClusterError(TestbedError):
    """A cluster specification or host is unusable (bad name, ssh fails, a check fails)."""


@dataclass(frozen=True)
class ClusterHost:
    """One host of the cluster: `name` as the placement names it, `address` the IPv4 the other
    hosts reach it at (the VXLAN tunnels' underlay), `netns` its namespace on this machine when it
    is emulated (None: localhost or a real server)."""

    name: str
    address: str
    netns: str | None = None

    @property
    def is_local(self) -> bool:
        return self.name == LOCALHOST


@dataclass(frozen=True)
class ClusterSpec:
    """What `--cluster` asked for: real host names (first localhost), or `emulated` hosts."""

    names: tuple[str, ...]
    emulated: bool

    def __post_init__(self) -> None:
        if not self.names or self.names[0] != LOCALHOST:
            raise ClusterError(f"--cluster {','.join(self.names)}: the first host must be {LOCALHOST} "
                               f"(the orchestrator, where the relay runs), e.g. --cluster localhost,server1")
        if len(set(self.names)) != len(self.names):
            raise ClusterError(f"--cluster {','.join(self.names)}: a host is named twice")
        if not 1 <= len(self.names) <= MAX_HOSTS:
            raise ClusterError(f"--cluster: {len(self.names)} hosts; expected 1..{MAX_HOSTS} (Mininet's cluster "
                               f"edition is experimental beyond ~10 nodes)")


def emulated_name(index: int) -> str:
    """The placement name of emulated host `index` (1..N−1): ``e1``, ``e2``, …"""
    return f"e{index}"


def parse_cluster(text: str) -> ClusterSpec:
    """`--cluster`'s value: ``emulated:N`` or ``localhost,HOST[,HOST…]``."""
    match = EMULATED_RE.match(text.strip())
    if match:
        count = int(match.group(1))
        if not 1 <= count <= MAX_HOSTS:
            raise ClusterError(f"--cluster {text}: expected emulated:N with N in 1..{MAX_HOSTS}")
        return ClusterSpec((LOCALHOST,) + tuple(emulated_name(i) for i in range(1, count)), emulated=True)
    names = tuple(name.strip() for name in text.split(","))
    bad = [name for name in names if not HOST_RE.match(name)]
    if bad:
        raise ClusterError(f"--cluster {text}: bad host name(s) {bad}; expected localhost,HOST[,HOST…] "
                           f"(names or IPv4 addresses ssh reaches) or emulated:N")
    return ClusterSpec(names, emulated=False)


@dataclass(frozen=True)
class ClusterHosts:
    """Hosts a run can reach: `hosts[0]` is localhost. `ssh_config` is the file every ssh of the
    run is given (``ssh -F``), None for real servers (the user's own ssh configuration applies)."""

    hosts: tuple[ClusterHost, ...]
    ssh_config: Path | None
    underlay_mtu: int

    def ssh_options(self) -> tuple[str, ...]:
        return () if self.ssh_config is None else ("-F", str(self.ssh_config))

    def by_name(self, name: str) -> ClusterHost:
        for host in self.hosts:
            if host.name == name:
                return host
        raise ClusterError(f"host {name!r} is not in the cluster ({', '.join(h.name for h in self.hosts)})")


def ssh_command(cluster: ClusterHosts, host: ClusterHost, *command: str) -> list[str]:
    """argv running `command` on `host` over the run's ssh (root@address, the run's keys)."""
    if host.is_local:
        raise ClusterError(f"ssh_command: {host.name} is this machine; run the command directly")
    return ["ssh", *cluster.ssh_options(), "-n", f"root@{host.address}", *command]


def _route_source(address: str) -> tuple[str, str]:
    """(source address, device) this machine uses towards `address` (``ip route get``)."""
    out = subprocess.run(["ip", "-o", "route", "get", address], capture_output=True, text=True).stdout
    src, dev = re.search(r" src ([0-9.]+)", out), re.search(r" dev (\S+)", out)
    if src is None or dev is None:
        raise ClusterError(f"host {address}: no route from this machine ({out.strip() or 'ip route get failed'})")
    return src.group(1), dev.group(1)


def real_hosts(spec: ClusterSpec) -> ClusterHosts:
    """The real servers of `spec`: each name resolved to IPv4, localhost to the address this
    machine reaches the first of them from (a tunnel's local end, never 127.0.0.1), the underlay
    MTU from the local device towards each (the remote ends must match: README)."""
    hosts, mtus = [], []
    for name in spec.names[1:]:
        try:
            address = socket.gethostbyname(name)
        except OSError as exc:
            raise ClusterError(f"--cluster host {name}: cannot resolve it ({exc}); use its IPv4 address") from None
        if address.startswith("127."):
            raise ClusterError(f"--cluster host {name} resolves to {address}, this machine's loopback: name it "
                               f"localhost (first) or give the address the other hosts reach it at")
        src, dev = _route_source(address)
        mtus.append(int(Path(f"/sys/class/net/{dev}/mtu").read_text()))
        hosts.append(ClusterHost(name, address))
    local = _route_source(hosts[0].address)[0] if hosts else "127.0.0.1"
    return ClusterHosts((ClusterHost(LOCALHOST, local), *hosts), None, min(mtus, default=65535))
