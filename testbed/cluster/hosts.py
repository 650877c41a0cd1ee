"""The hosts of a cluster run, as `--cluster` names them.

``--cluster localhost,server1,server2`` lists real hosts reached over ssh (the first must be
``localhost``: the orchestrator, where the relay injects and reads every layer; Mininet's cluster
edition needs ssh to every other host). ``--cluster emulated:N`` asks for N hosts on this machine:
localhost plus N − 1 network namespaces each running its own sshd (testbed.cluster.emulated).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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
