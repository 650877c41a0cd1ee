"""The default backend: a FabricPlan in two named namespaces, built with batched netlink.

``p2<run>h`` (host) holds every injector end ``in<l>`` and every neuron port's host end with its
eBPF neuron (first-K gate); ``p2<run>f`` (fabric) holds one bridge per layer and the switch ends with their
delay classes. Bridges run STP off, forward_delay 0 and ageing 0: every frame floods to every
port like a hub (spikes go to ff:ff:ff:ff:ff:ff anyway), and a new port forwards at once.

Cost, for the bundled 64-16-10 plan (54 veth pairs; with the default pruning ≈1.6k htb classes,
one eBPF synapse classifier per layer shared by its ports, a synapse filter per pruning port, and
52 gates): each layer's veth pairs are made in one `NetlinkBatch` commit, already ports of the
layer's bridge (LinkBuilder.veths), every tc object of a namespace goes in one commit
(testbed.fabric.ports), and gates are loaded (≈0.75 ms each: maps + verifier + JIT) while their
filters are queued (the `bpf_loader` hook of testbed.kernel.tc.queue_tree), so one commit
attaches them all.

CPU placement: a veth transmit hands the frame to the peer's receive path on the *sending* CPU
(netif_rx: the per-CPU backlog, processed in that CPU's softirq), so without help the bridge
flood, the eBPF classification and the htb enqueue of every port run on the injector's CPU, in
its send() call. RPS on the fabric end of each injector link (its rx queue's rps_cpus) queues
the frame to a chosen CPU's backlog instead; htb's watchdog timers are then armed, and fire,
there too. The same holds one hop later: a class's timer releases a spike into the port's host
end on the fabric CPU, which would then also run the gate and the delivery to the relay's
socket, in the way of the next timer; RPS on the host ends (`gate_cpus`) moves that work off.
The kernel RX timestamp is taken as the frame is queued (before RPS), so it still marks the
release. sysfs shows the devices of the namespace it was mounted in, so the rps_cpus files
are written through a sysfs mounted in a private mount namespace of a helper thread
(testbed.kernel.netns.write_sysfs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from testbed.fabric.handle import Built, LiveFabric, Progress
from testbed.fabric.ports import LayerLinks, program_ports
from testbed.kernel import netns
from testbed.kernel.gate import GateProgram
from testbed.kernel.links import LinkBuilder
from testbed.kernel.names import RunRegistry
from testbed.plan.fabric_plan import FabricPlan

HOST_NS, FABRIC_NS = "h", "f"


def inject_peer(inject_if: str) -> str:
    """Suffix of the fabric end of a layer's injector link (``in0`` → ``fin0``)."""
    return "f" + inject_if


def _bridge_netfilter_off(ns: str) -> None:
    """Keep bridged spikes out of iptables/arptables/ip6tables in namespace `ns`.

    With br_netfilter in the kernel (as here), every namespace starts with
    net.bridge.bridge-nf-call-* = 1 (per namespace since Linux 5.3), which runs each bridged IPv4
    frame through the netfilter hooks: work on the data path that computes nothing.
    """
    if netns.run_in(ns, Path("/proc/sys/net/bridge").is_dir):
        for table in ("iptables", "ip6tables", "arptables"):
            netns.write_sysctl(ns, f"net/bridge/bridge-nf-call-{table}", "0")


def build(plan: FabricPlan, registry: RunRegistry, progress: Progress | None = None,
          fabric_cpus: Sequence[int] | None = None, gate_cpus: Sequence[int] | None = None) -> Built:
    """Build `plan` for `registry`'s run; objects are recorded there before they exist, so the
    caller's cleanup.down(run) removes them whatever happens here."""
    gates: list[GateProgram] = []
    try:
        links = []
        with LinkBuilder(registry) as lb:
            if progress is not None:
                progress("namespaces", 0, 2)
            host, fab = lb.namespace(HOST_NS), lb.namespace(FABRIC_NS)
            _bridge_netfilter_off(fab)
            if progress is not None:
                progress("namespaces", 2, 2)
            total, done = sum(1 + len(layer.ports) for layer in plan.layers), 0
            for layer in plan.layers:
                bridge = lb.bridge(layer.switch, fab, ageing_time_cs=0)
                pairs = [(inject_peer(layer.inject_if), layer.inject_if)] + [(p.switch_if, p.host_if)
                                                                            for p in layer.ports]
                made = lb.veths(pairs, fab, host, master=bridge)
                links.append(LayerLinks(bridge, made[0][0], made[0][1], tuple(s for s, _ in made[1:]),
                                        tuple(h for _, h in made[1:])))
                done += len(pairs)
                if progress is not None:
                    progress("links", done, total)
        ports = program_ports(plan, registry.run_id, links, fab, host, gates, progress, fabric_cpus, gate_cpus)
        fabric = LiveFabric(registry.run_id, "netns", host, tuple(names.inject_host for names in links), ports)
    except BaseException:
        for gate in gates:
            gate.close()
        raise
    return Built(fabric, stop=fabric.close_gates, detach=lambda: None)
