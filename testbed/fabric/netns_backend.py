"""The default backend: a FabricPlan in two named namespaces, built with batched netlink.

``p2<run>h`` (host) holds every injector end ``in<l>`` and every neuron port's host end with its
first-K gate; ``p2<run>f`` (fabric) holds one bridge per layer and the switch ends with their
delay classes. Bridges run STP off, forward_delay 0 and ageing 0: every frame floods to every
port like a hub (spikes go to ff:ff:ff:ff:ff:ff anyway), and a new port forwards at once.

Cost, for the bundled 64-16-10 plan (54 veth pairs, ≈4.7k htb classes + 4.7k u32 filters, 52
gates): links are made one netlink request each (pyroute2, ≈3 ms per veth pair), every tc
object of a namespace goes in one `NetlinkBatch` commit, and gates are loaded (≈0.75 ms each:
maps + verifier + JIT) while their filters are queued (the `bpf_loader` hook of
testbed.kernel.tc.queue_tree), so one commit attaches them all.

CPU placement: a veth transmit hands the frame to the peer's receive path on the *sending* CPU
(netif_rx: the per-CPU backlog, processed in that CPU's softirq), so without help the bridge
flood, the u32 classification and the htb enqueue of every port run on the injector's CPU, in
its send() call. RPS on the fabric end of each injector link (its rx queue's rps_cpus) queues
the frame to a chosen CPU's backlog instead; htb's watchdog timers are then armed, and fire,
there too. The same holds one hop later: a class's timer releases a spike into the port's host
end on the fabric CPU, which would then also run the gate and the delivery to the relay's
socket, in the way of the next timer; RPS on the host ends (`gate_cpus`) moves that work off.
The kernel RX timestamp is taken as the frame is queued (before RPS), so it still marks the
release. sysfs shows the devices of the namespace it was mounted in, so the rps_cpus files
are written through a sysfs mounted in a private mount namespace of a helper thread.
"""

from __future__ import annotations

import ctypes
import socket
import threading
from pathlib import Path
from typing import Sequence

from testbed.errors import KernelError
from testbed.fabric.live import (Built, ClassifierCache, LiveFabric, LivePort, Progress, cpu_mask, gate_loader,
                                 wait_until_up)
from testbed.kernel import netns
from testbed.kernel.gate import GateProgram
from testbed.kernel.links import LinkBuilder
from testbed.kernel.names import RunRegistry
from testbed.kernel.netlink import NetlinkBatch
from testbed.kernel.tc import queue_tree
from testbed.plan.fabric_plan import FabricPlan

HOST_NS, FABRIC_NS = "h", "f"
CLONE_NEWNS = 0x00020000  # include/uapi/linux/sched.h
MS_REC, MS_PRIVATE = 0x4000, 1 << 18
_libc = ctypes.CDLL(None, use_errno=True)


def inject_peer(inject_if: str) -> str:
    """Suffix of the fabric end of a layer's injector link (``in0`` → ``fin0``)."""
    return "f" + inject_if


def rps_path(ifname: str) -> str:
    return f"/sys/class/net/{ifname}/queues/rx-0/rps_cpus"


def write_sysfs_in(ns: str, values: dict[str, str]) -> None:
    """Write sysfs files (absolute /sys paths → text) as namespace `ns` sees them.

    A helper thread unshares its own mount namespace (with CLONE_FS, so only that thread moves),
    makes every mount private, enters `ns` and mounts a fresh sysfs over /sys: a sysfs mount shows
    the network devices of the namespace its mounter was in. The mount vanishes with the thread.
    """
    box: dict[str, BaseException] = {}

    def body() -> None:
        try:
            if _libc.unshare(CLONE_NEWNS) != 0:
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
            if _libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
                raise OSError(ctypes.get_errno(), "make / private")
            with netns.entered(ns):
                if _libc.mount(b"sysfs", b"/sys", b"sysfs", 0, None) != 0:
                    raise OSError(ctypes.get_errno(), f"mount sysfs of namespace {ns}")
                for path, value in values.items():
                    Path(path).write_text(value)
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=body, name=f"sysfs-{ns}")
    thread.start()
    thread.join()
    if "error" in box:
        exc = box["error"]
        raise KernelError(f"namespace {ns}: writing {', '.join(values)} failed: {exc}") from None


def _bridge_netfilter_off(ns: str) -> None:
    """Keep bridged spikes out of iptables/arptables/ip6tables in namespace `ns`.

    With br_netfilter in the kernel (as here), every namespace starts with
    net.bridge.bridge-nf-call-* = 1 (per namespace since Linux 5.3), which runs each bridged IPv4
    frame through the netfilter hooks: work on the data path that computes nothing.
    """
    if netns.run_in(ns, Path("/proc/sys/net/bridge").is_dir):
        for table in ("iptables", "ip6tables", "arptables"):
            netns.write_sysctl(ns, f"net/bridge/bridge-nf-call-{table}", "0")


def _indexes(ns: str) -> dict[str, int]:
    return {name: index for index, name in netns.run_in(ns, socket.if_nameindex)}


def _step(progress: Progress | None, stage: str, done: int, total: int) -> None:
    if progress is not None:
        progress(stage, done, total)


def build(plan: FabricPlan, registry: RunRegistry, progress: Progress | None = None,
          fabric_cpus: Sequence[int] | None = None, gate_cpus: Sequence[int] | None = None) -> Built:
    """Build `plan` for `registry`'s run; objects are recorded there before they exist, so the
    caller's cleanup.down(run) removes them whatever happens here."""
    mask, gate_mask = cpu_mask(fabric_cpus), cpu_mask(gate_cpus)
    gates: list[GateProgram] = []
    try:
        with LinkBuilder(registry) as lb:
            _step(progress, "namespaces", 0, 2)
            host, fab = lb.namespace(HOST_NS), lb.namespace(FABRIC_NS)
            _bridge_netfilter_off(fab)
            _step(progress, "namespaces", 2, 2)
            total = sum(1 + len(layer.ports) for layer in plan.layers)
            done = 0
            for layer in plan.layers:
                lb.bridge(layer.switch, fab, ageing_time_cs=0)
                for host_sfx, fab_sfx in [(layer.inject_if, inject_peer(layer.inject_if))] + [
                        (p.host_if, p.switch_if) for p in layer.ports]:
                    lb.veth(host_sfx, fab_sfx, host, fab)
                    lb.enslave(lb.name(fab_sfx), lb.name(layer.switch), fab)
                    done += 1
                    _step(progress, "links", done, total)
        host_index, fab_index = _indexes(host), _indexes(fab)

        _step(progress, "tc", 0, 2)
        classifiers = ClassifierCache(registry.run_id)
        with NetlinkBatch(fab) as nl:
            for layer in plan.layers:
                nl.link_up(fab_index[lb.name(layer.switch)], f"bridge {lb.name(layer.switch)} up")
                peer = lb.name(inject_peer(layer.inject_if))
                nl.link_up(fab_index[peer], f"link {peer} up")
                for port in layer.ports:
                    name = lb.name(port.switch_if)
                    nl.link_up(fab_index[name], f"link {name} up")
                    queue_tree(nl, fab_index[name], port.delay_tc, f"{name} (namespace {fab})",
                               classifiers.loader(port))
            try:
                nl.commit()
            finally:
                classifiers.close()
        _step(progress, "tc", 1, 2)
        with NetlinkBatch(host) as nl:
            for layer in plan.layers:
                name = lb.name(layer.inject_if)
                nl.link_up(host_index[name], f"link {name} up")
                for port in layer.ports:
                    name = lb.name(port.host_if)
                    nl.link_up(host_index[name], f"link {name} up")
                    queue_tree(nl, host_index[name], port.gate_tc, f"{name} (namespace {host})",
                               gate_loader(registry.run_id, port, gates))
            nl.commit()
        _step(progress, "tc", 2, 2)
        wait_until_up(fab, [lb.name(p.switch_if) for layer in plan.layers for p in layer.ports]
                      + [lb.name(inject_peer(layer.inject_if)) for layer in plan.layers])
        if mask is not None:
            write_sysfs_in(fab, {rps_path(lb.name(inject_peer(layer.inject_if))): mask for layer in plan.layers})
        if gate_mask is not None:
            write_sysfs_in(host, {rps_path(lb.name(p.host_if)): gate_mask for layer in plan.layers for p in layer.ports})

        gate_of = {gate.name: gate for gate in gates}
        ports = tuple(tuple(LivePort(p.layer, p.neuron, p.sign, lb.name(p.host_if), host_index[lb.name(p.host_if)],
                                     gate_of[lb.name(p.host_if)]) for p in layer.ports) for layer in plan.layers)
        fabric = LiveFabric(registry.run_id, "netns", host,
                            tuple(lb.name(layer.inject_if) for layer in plan.layers), ports)
    except BaseException:
        for gate in gates:
            gate.close()
        raise
    return Built(fabric, stop=fabric.close_gates, detach=lambda: None)
