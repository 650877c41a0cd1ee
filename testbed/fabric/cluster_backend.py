"""The cluster backend: a FabricPlan spread over hosts with Mininet's cluster edition.

Placed parts (testbed.plan.placement) become Mininet nodes on their hosts (`MininetCluster`,
the classes of testbed.fabric.cluster_nodes), every kernel object named ``p2<run>…``. The relay
host p2<run>h on localhost injects every layer and reads every port (the gates are there); a link
to a node on another host is a VXLAN tunnel. A layer is built one of two ways, as its plan says:

    shared delay lines (one part: the layer is built whole on its host):

    localhost:  relay p2<run>h: in<l> (fan-out) · l<l>n<j><p|m> (gates) ── sw<l>b (local node: the
                  │ tunnel                                                  ports' inert switch ends)
    part host:  sw<l>: sw<l>i (splitter, one htb class per line): each delayed copy returns
                through the tunnel to in<l>, whose fan-out copies it to its member ports' gates

    a class per synapse (one or more parts):

    localhost:   relay host p2<run>h
                  │ in<l>                    │ l<l>n<j><p|m>          one link each, a tunnel
                  │                          │                        when the part is elsewhere
    part 0 of l: bridge sw<l> ── sw<l>n<j><p|m> (delay trees)
                  │ sw<l>t<x> ═ trunk ═ sw<l><x>t
    part x of l: bridge sw<l><x> ── sw<l><x>n<j><p|m>                  (a layer split in parts)

Each node lives in a namespace of its own (a Mininet node with its shell on the part's host), so
everything remote goes when that shell goes: when Mininet stops, when `pi2 down`/`pi2 clean`
kills the recorded ssh client (its session ends, the remote shell gets SIGHUP), and, for an
emulated host, when its sshd's PID namespace dies (testbed.cluster.emulated). The relay's links
are built by the testbed's gate and fan-out code here; a part's delay or line trees by
`testbed.cluster.part` run in the part's own shell on its host (for localhost parts, directly
from here).

Every layer's spikes leave the relay through one link, and with a class per synapse part 0's
bridge floods them to its ports and through the trunks to the other parts: all of a neuron's
inputs travel one path, and both its ports are in one part, so the inter-host links add the same
latency to T⁺ and T⁻ (testbed.cluster.timing measures them and folds them into the plan). With
shared lines every copy of a layer makes the same round trip relay → part host → relay.
"""

from __future__ import annotations

import json
import os
import shutil
import string
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any, Sequence

from testbed.cluster import timing
from testbed.cluster.emulated import underlay_links
from testbed.cluster.hosts import LOCALHOST, ClusterError, ClusterHosts
from testbed.cluster.part import OK
from testbed.errors import KernelError
from testbed.fabric.handle import Built, LiveFabric, Progress
from testbed.fabric.mininet_backend import HOST_SUFFIX, port_tag
from testbed.fabric.ports import (cpu_mask, first_ports, program_delay_trees, program_fanouts, program_gates,
                                  program_line_trees, rps_path)
from testbed.kernel import netns
from testbed.kernel.gate import GateProgram
from testbed.kernel.links import make_hub
from testbed.kernel.names import RunRegistry, object_name
from testbed.plan.fabric_plan import FabricPlan
from testbed.plan.placement import Placement

PART_LETTERS = string.ascii_lowercase[1:]  # part 0 keeps the plan's switch name; parts 1.. get b, c, …


def _mininet() -> Any:
    if shutil.which("mnexec") is None:
        raise KernelError("the cluster backend needs Mininet's `mnexec` on PATH: apt-get install mininet")
    try:
        from mininet.examples import cluster
        from mininet import log
    except ImportError:
        raise KernelError("the cluster backend needs Mininet's Python API with its examples (mininet.examples."
                          "cluster): pip install '.[mininet]'") from None
    log.setLogLevel("error")
    return cluster


def part_switch(run: str, switch: str, part: int) -> str:
    return object_name(run, switch + ("" if part == 0 else PART_LETTERS[part - 1]))


class _Build:
    """One build's Mininet network and what it recorded (so `stop` and cleanup find it)."""

    def __init__(self, plan: FabricPlan, registry: RunRegistry, hosts: ClusterHosts, placement: Placement) -> None:
        self.plan, self.registry, self.hosts, self.placement = plan, registry, hosts, placement
        self.run = registry.run_id
        self.gates: list[GateProgram] = []
        self.net: Any = None
        self.stopped = False

    def record_node(self, node: Any) -> None:
        """A local node's shell pid; a remote node's local ssh client (its remote shell ends
        with the ssh session: SIGHUP)."""
        self.registry.record_pid(node.shell.pid if node.isRemote else node.pid)

    def node_ns(self, node: Any) -> str:
        return f"/proc/{node.pid}/ns/net"

    def stop(self) -> None:
        """Close the gates; stop Mininet's local nodes and links its way. Remote nodes are not
        stopped through their shells: a node's ssh, blocked writing to a pty nobody read during
        the run, answers neither a command nor SIGHUP, and Mininet would wait forever. Their ssh
        clients are SIGKILLed instead; the remote shell, its namespace and every tunnel end in it
        go with the session (and an emulated host's with its sshd, testbed.cluster.emulated)."""
        for gate in self.gates:
            gate.close()
        if self.stopped or self.net is None:
            return
        self.stopped = True
        remote = [node for node in self.net.switches + self.net.hosts if node.isRemote]
        for node in remote:
            if node.shell is not None and node.shell.poll() is None:
                node.shell.kill()
                node.shell.wait()
        gone = set(remote)
        self.net.links = [link for link in self.net.links
                          if not {getattr(link, "node1", None), getattr(link, "node2", None)} & gone]
        self.net.switches = [node for node in self.net.switches if node not in gone]
        self.net.hosts = [node for node in self.net.hosts if node not in gone]
        self.net.stop()
        for node in remote:
            node.stdin.close()
            os.close(node.slave)


def _server_ips(hosts: ClusterHosts) -> dict[str, str]:
    return {h.name: h.address for h in hosts.hosts}


def _push(hosts: ClusterHosts, host_name: str, path: Path) -> None:
    """Copy a file of the run directory to the same path on a real server (an emulated host
    shares this machine's files)."""
    host = hosts.by_name(host_name)
    if host.is_local or host.netns is not None:
        return
    done = subprocess.run(["ssh", *hosts.ssh_options(), f"root@{host.address}",
                           f"mkdir -p {path.parent} && cat > {path}"], input=path.read_bytes(), capture_output=True)
    if done.returncode != 0:
        raise ClusterError(f"host {host_name}: copying {path.name} failed: {done.stderr.decode().strip()[:200]}")


def build(plan: FabricPlan, registry: RunRegistry, hosts: ClusterHosts, placement: Placement,
          progress: Progress | None = None, fabric_cpus: Sequence[int] | None = None,
          gate_cpus: Sequence[int] | None = None) -> Built:
    """Build `plan` over `hosts` as `placement` says (module docstring) for `registry`'s run;
    the returned fabric carries the placement and the measured inter-host latencies
    (`LiveFabric.cluster`, a testbed.cluster.timing.ClusterLayout)."""
    cluster = _mininet()
    from testbed.fabric.cluster_nodes import TUNNEL_MTU, VXLAN_OVERHEAD, cluster_classes, make_tunnels

    placement.check(plan)
    cpu_mask(fabric_cpus), cpu_mask(gate_cpus)
    if plan.packets.primer_bytes > TUNNEL_MTU + 14 or hosts.underlay_mtu < TUNNEL_MTU + VXLAN_OVERHEAD:
        raise ClusterError(f"the interconnect's MTU {hosts.underlay_mtu} is too small: tunnels must carry the plan's "
                           f"{plan.packets.primer_bytes}-byte primers (MTU {TUNNEL_MTU}) plus {VXLAN_OVERHEAD} bytes of "
                           f"VXLAN; enable jumbo frames (MTU ≥ {TUNNEL_MTU + VXLAN_OVERHEAD}) between the hosts")
    run = registry.run_id
    b = _Build(plan, registry, hosts, placement)
    ips = _server_ips(hosts)
    classes = cluster_classes(hosts.ssh_options(), (zlib.crc32(run.encode()) & 0xFFF) << 12)
    where = {}

    class PlanPlacer(cluster.Placer):
        """Mininet's placement hook answering from our Placement (nodes carry `server` anyway)."""

        def place(self, node: str) -> str:
            return where[node]

    b.net = cluster.MininetCluster(topo=None, build=False, servers=[h.name for h in hosts.hosts], serverIP=ips,
                                   user="root", precheck=False, placement=PlanPlacer, controller=None,
                                   autoSetMacs=False, waitConnected=False, **classes)
    try:
        relay_name = object_name(run, HOST_SUFFIX)
        relay = b.net.addHost(relay_name, server="localhost", serverIP=ips["localhost"], ip=None)
        b.record_node(relay)
        relay_ns = b.node_ns(relay)
        for conf in ("all", "default"):
            netns.write_sysctl(relay_ns, f"net/ipv6/conf/{conf}/disable_ipv6", "1")
        layer_parts = [placement.layer_parts(layer.index) for layer in plan.layers]
        switches: list[list[Any]] = []
        for layer, parts in zip(plan.layers, layer_parts):
            row = []
            # Shared lines: the part's node holds the injector link's switch end (splitter, line
            # classes), a second node here the ports' switch ends, which then carry nothing.
            for i, host in enumerate([part.host for part in parts] + ([LOCALHOST] if layer.lines else [])):
                name = part_switch(run, layer.switch, i)
                where[name] = host
                node = b.net.addSwitch(name, server=host, serverIP=ips[host], inNamespace=True,
                                       dpid=f"{layer.index + 1:08x}{i:08x}")
                b.record_node(node)
                node.cmd("for c in all default; do echo 1 > /proc/sys/net/ipv6/conf/$c/disable_ipv6; done")
                row.append(node)
            switches.append(row)
        links: list[tuple[Any, Any, str, str]] = []
        spec_ports: dict[int, list[list[Any]]] = {}
        for layer, parts, row in zip(plan.layers, layer_parts, switches):
            links.append((relay, row[0], object_name(run, layer.inject_if), object_name(run, layer.switch + "i")))
            for i in range(1, len(parts)):  # a shared-lines layer is one part: no trunks
                letter = PART_LETTERS[i - 1]
                links.append((row[0], row[i], object_name(run, f"{layer.switch}t{letter}"),
                              object_name(run, f"{layer.switch}{letter}t")))
            for index, port in enumerate(layer.ports):
                # Shared lines: every port's switch end in the local node row[1].
                i = 1 if layer.lines else next(n for n, part in enumerate(parts) if port.neuron in part.neurons)
                switch_end = row[i].name + port_tag(layer.index, port.switch_if)
                links.append((relay, row[i], object_name(run, port.host_if), switch_end))
                spec_ports.setdefault(id(row[i]), []).append([layer.index, index, switch_end])
        # Local ends are made in (or moved through) this machine's root namespace: recorded there
        # first, so a crash between creating and moving one leaves nothing cleanup cannot find.
        for link in links:
            for node, name in ((link[0], link[2]), (link[1], link[3])):
                if not node.isRemote:
                    registry.record("link", name=name, netns=None, peer=None, peer_netns=None)
        make_tunnels(classes["link"], [link for link in links if link[0].server != link[1].server])
        for done, (a, node, name_a, name_b) in enumerate(links, 1):
            b.net.addLink(a, node, intfName1=name_a, intfName2=name_b)
            if progress is not None:
                progress("links", done, len(links))
        b.net.build()
        b.net.start()

        # Gates and fan-outs on the relay (localhost), then each part's trees on its own host.
        ports = program_gates(run, relay_ns, [object_name(run, layer.inject_if) for layer in plan.layers],
                              [(port, object_name(run, port.host_if)) for layer in plan.layers for port in layer.ports],
                              b.gates, gate_cpus)
        _program_fanouts(b, relay_ns, gate_cpus)
        plan_path = registry.run_dir / "plan.json"
        plan.save(plan_path)
        for layer, parts, row in zip(plan.layers, layer_parts, switches):
            if layer.lines:
                end = object_name(run, layer.switch + "i")
                _build_part(b, row[0], plan_path, [end], [], [end], fabric_cpus, lines=[[layer.index, end]])
                _build_part(b, row[1], plan_path, [], spec_ports[id(row[1])], [], fabric_cpus)
                continue
            for i, node in enumerate(row):
                up = [object_name(run, layer.switch + "i")] if i == 0 else [f"{node.name}t"]
                if i == 0:
                    up += [object_name(run, f"{layer.switch}t{PART_LETTERS[x - 1]}") for x in range(1, len(row))]
                _build_part(b, node, plan_path, up, spec_ports.get(id(node), []),
                            [up[0]] if i == 0 else [], fabric_cpus)
        _steer_underlay(hosts, run, fabric_cpus, gate_cpus)
        it = iter(ports)
        live = tuple(tuple(next(it) for _ in layer.ports) for layer in plan.layers)
        layout = timing.ClusterLayout.of(plan, placement, timing.measure(hosts, placement))
        (registry.run_dir / "cluster.json").write_text(json.dumps(layout.to_dict(), indent=1))
        fabric = LiveFabric(run, "cluster", relay_ns, tuple(object_name(run, layer.inject_if) for layer in plan.layers),
                            live, cluster=layout)
    except BaseException:
        b.stop()
        raise

    def detach() -> None:
        raise ClusterError("pi2 up --cluster: a cluster fabric lives as long as the Mininet shells of the process "
                           "that built it; keep `pi2 up --cluster … --hold` running instead")

    return Built(fabric, stop=b.stop, detach=detach)


def _steer_underlay(hosts: ClusterHosts, run: str, fabric_cpus: Sequence[int] | None,
                    gate_cpus: Sequence[int] | None) -> None:
    """Emulated hosts share this machine's CPUs: without RPS a packet crossing the interconnect
    is processed (bridge, VXLAN decapsulation, the remote part's flooding and classification) on
    the CPU that sent it, the injector's, whose busy-wait then stalls (kernel-notes.md). So the
    emulated host's underlay end takes `fabric_cpus` (the part's work) and the root end
    `gate_cpus` (what returns to the relay's gates), as testbed.fabric.ports does on one host."""
    fabric_mask, gate_mask = cpu_mask(fabric_cpus), cpu_mask(gate_cpus)
    for host in hosts.hosts:
        if host.netns is None:
            continue
        outer, inner = underlay_links(run, host)
        if fabric_mask is not None:
            netns.write_sysfs(host.netns, {rps_path(inner): fabric_mask})
        if gate_mask is not None:
            netns.write_sysfs(None, {rps_path(outer): gate_mask})


def _program_fanouts(b: _Build, relay_ns: str, gate_cpus: Sequence[int] | None) -> None:
    """Each shared-lines layer's fan-out on the relay's injector end, reading its ports' gates
    (`b.gates`, every layer's ports in plan order)."""
    program_fanouts(b.run, relay_ns, [(layer, object_name(b.run, layer.inject_if),
                                       [object_name(b.run, port.host_if) for port in layer.ports],
                                       b.gates[first:first + len(layer.ports)])
                                      for layer, first in zip(b.plan.layers, first_ports(b.plan)) if layer.lines],
                    gate_cpus)


def _build_part(b: _Build, node: Any, plan_path: Path, up: list[str], ports: list[list[Any]],
                fabric_links: list[str], fabric_cpus: Sequence[int] | None, lines: Sequence[list[Any]] = ()) -> None:
    """One part's switch side: here for a localhost part, else by testbed.cluster.part in the
    part's own shell on its host. `lines`: [layer, injector switch end] whose line tree it builds."""
    bridges = [node.name]
    if not node.isRemote:
        ns = b.node_ns(node)
        make_hub(node.name, ns)
        program_delay_trees(b.run, ns, bridges + up, [(b.plan.layers[l].ports[i], n) for l, i, n in ports],
                            fabric_links, fabric_cpus)
        program_line_trees(b.run, ns, [(b.plan.layers[l], n) for l, n in lines])
        return
    # No RPS on a remote part: its CPUs are the host's own (fabric_cpus name this machine's),
    # and inside a Mininet node's namespace on an emulated host a fresh sysfs cannot be mounted
    # (EBUSY), so its rps_cpus files cannot be reached.
    spec = {"run_id": b.run, "plan": str(plan_path), "bridges": bridges, "up": up, "ports": ports,
            "lines": list(lines), "fabric_links": [], "fabric_cpus": None}
    spec_path = b.registry.run_dir / f"part_{node.name}.json"
    spec_path.write_text(json.dumps(spec))
    for path in (plan_path, spec_path):
        _push(b.hosts, node.server, path)
    output = node.cmd(f"{sys.executable} -m testbed.cluster.part {spec_path}")
    if OK not in output:
        raise ClusterError(f"part {node.name} on {node.server}: {output.strip().splitlines()[-1:] or ['no output']}"
                           f"; check the host with `pi2 doctor --cluster`")
