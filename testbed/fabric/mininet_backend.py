"""The Mininet backend: the same FabricPlan wired by Mininet's Python API, shaped by the testbed.

Mininet builds the wiring of `testbed.fabric.pi2_layers` (`Pi2LayersTopo`, also usable as
``mn --custom topologies/pi2_layers.py``): one relay host (an
anonymous network namespace around a shell, reachable at /proc/<pid>/ns/net) and one Linux bridge
per layer (LinuxBridge: STP off, no controller; bridges live in the root namespace), every link
named explicitly so each object is ``p2<run>…``:

    host ends (relay host):   in<l>, l<l>n<j><p|m>           as in the netns backend
    switch ends (root ns):    sw<l>i, sw<l>n<j><p|m>          LinuxBridge only enslaves interfaces
                                                              whose names contain the switch's name

Then the testbed, not TCLink, builds the plan's delay trees on the switch ends and the gates on the
host ends (testbed.kernel.tc, batched), sets forward_delay and ageing to 0 (hub-like flooding) and
turns IPv6 off on every link. Mininet runs one shell command per link (its way; ≈10–30 ms each).

Teardown is `net.stop()` plus the run's own cleanup; never `mn -c` or mininet.clean, which kill
processes by name and delete every ``*-ethN`` link on the machine. Mininet's import also raises
a few root-namespace limits once per process (fixLimits: file, ARP-cache and buffer sizes, only
ever upwards), as `mn` does.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
from pathlib import Path
from typing import Any, Sequence

from testbed.errors import KernelError
from testbed.fabric.live import (Built, ClassifierCache, LiveFabric, LivePort, Progress, cpu_mask, gate_loader,
                                 wait_until_up)
from testbed.fabric.netns_backend import rps_path, write_sysfs_in
from testbed.kernel import netns
from testbed.kernel.gate import GateProgram
from testbed.kernel.names import RunRegistry, object_name
from testbed.kernel.netlink import NetlinkBatch
from testbed.kernel.tc import queue_tree
from testbed.plan.fabric_plan import FabricPlan

HOST_SUFFIX = "h"
MS_BIND = 0x1000
_libc = ctypes.CDLL(None, use_errno=True)


def _mininet() -> Any:
    """Mininet's modules, or a one-line error saying what to install."""
    if shutil.which("mnexec") is None:
        raise KernelError("the mininet backend needs Mininet's `mnexec` on PATH: apt-get install mininet")
    try:
        from mininet import net, nodelib
    except ImportError:
        raise KernelError("the mininet backend needs Mininet's Python API: pip install '.[mininet]' "
                          "(PyPI package mininet)") from None
    return net, nodelib


def switch_end(run_id: str, switch: str, port_tag: str) -> str:
    """A switch end's full name: the switch's name + a port tag (``p2<run>sw0`` + ``n3p``)."""
    return object_name(run_id, switch + port_tag)


def port_tag(layer: int, switch_if: str) -> str:
    """``s0n3p`` → ``n3p``: the plan's switch-end suffix without its layer prefix."""
    return switch_if[len(f"s{layer}"):]


def _bind_namespace(source: str, name: str) -> None:
    """Give namespace `source` (a /proc path) the name `name` under /run/netns, like `ip netns attach`."""
    target = netns.path_of(name)
    netns.NETNS_DIR.mkdir(parents=True, exist_ok=True)
    target.touch(exist_ok=False)
    if _libc.mount(source.encode(), bytes(target), b"none", MS_BIND, None) != 0:
        err = ctypes.get_errno()
        target.unlink(missing_ok=True)
        raise KernelError(f"naming namespace {source} as {name} failed: {os.strerror(err)}")


def build(plan: FabricPlan, registry: RunRegistry, progress: Progress | None = None,
          fabric_cpus: Sequence[int] | None = None, gate_cpus: Sequence[int] | None = None) -> Built:
    """Build `plan` with Mininet for `registry`'s run. Bridges, links and helper pids are recorded
    before they exist, so cleanup.down(run) removes them even if Mininet fails half-way."""
    mn_net, mn_nodelib = _mininet()
    from testbed.fabric.pi2_layers import Pi2LayersTopo
    mask, gate_mask = cpu_mask(fabric_cpus), cpu_mask(gate_cpus)
    run = registry.run_id
    host_name = object_name(run, HOST_SUFFIX)
    layers = []
    for layer in plan.layers:
        switch = object_name(run, layer.switch)
        links = [(object_name(run, layer.inject_if), switch_end(run, layer.switch, "i"))]
        links += [(object_name(run, p.host_if), switch_end(run, layer.switch, port_tag(layer.index, p.switch_if)))
                  for p in layer.ports]
        layers.append({"switch": switch, "dpid": f"{layer.index + 1:016x}", "links": links})
    topo = Pi2LayersTopo(layers=layers, relay=host_name, host_params={"ip": None})

    net = mn_net.Mininet(topo=None, switch=mn_nodelib.LinuxBridge, controller=None, build=False,
                         autoSetMacs=False, waitConnected=False)
    gates: list[GateProgram] = []
    state: dict[str, Any] = {"stopped": False}

    def stop() -> None:
        for gate in gates:
            gate.close()
        if not state["stopped"]:
            state["stopped"] = True
            net.stop()

    try:
        # Mininet.buildFromTopo's order (hosts, switches, links), recording each object first.
        total = len(topo.links())
        host = net.addHost(host_name, **topo.nodeInfo(host_name))
        registry.record_pid(host.pid)
        host_ns = f"/proc/{host.pid}/ns/net"
        for conf in ("all", "default"):  # before any link appears in it
            netns.write_sysctl(host_ns, f"net/ipv6/conf/{conf}/disable_ipv6", "1")
        for name in topo.switches():
            registry.record("bridge", name=name, netns=None)
            switch = net.addSwitch(name, **topo.nodeInfo(name))
            registry.record_pid(switch.pid)
        for done, (_, _, info) in enumerate(topo.links(sort=False, withInfo=True), 1):
            registry.record("link", name=info["intfName2"], netns=None, peer=info["intfName1"], peer_netns=host_ns)
            net.addLink(**info)
            netns.write_sysctl(None, f"net/ipv6/conf/{info['intfName2']}/disable_ipv6", "1")
            if progress is not None:
                progress("links", done, total)
        net.build()
        net.start()
        for spec in layers:
            netns.write_sysctl(None, f"net/ipv6/conf/{spec['switch']}/disable_ipv6", "1")
            for key in ("forward_delay", "ageing_time"):  # sysfs: hundredths of a second
                Path(f"/sys/class/net/{spec['switch']}/bridge/{key}").write_text("0")

        root_index = {name: index for index, name in socket.if_nameindex()}
        host_index = {name: index for index, name in netns.run_in(host_ns, socket.if_nameindex)}
        if progress is not None:
            progress("tc", 0, 2)
        classifiers = ClassifierCache(run)
        with NetlinkBatch(None) as nl:
            for spec, layer in zip(layers, plan.layers):
                nl.link_up(root_index[spec["switch"]], f"bridge {spec['switch']} up")
                for (_, name), port in zip(spec["links"], (None,) + layer.ports):
                    nl.link_up(root_index[name], f"link {name} up")
                    if port is not None:
                        queue_tree(nl, root_index[name], port.delay_tc, name, classifiers.loader(port))
            try:
                nl.commit()
            finally:
                classifiers.close()
        with NetlinkBatch(host_ns) as nl:
            for spec, layer in zip(layers, plan.layers):
                for (name, _), port in zip(spec["links"], (None,) + layer.ports):
                    nl.link_up(host_index[name], f"link {name} up (host {host_name})")
                    if port is not None:
                        queue_tree(nl, host_index[name], port.gate_tc, f"{name} (host {host_name})",
                                   gate_loader(run, port, gates))
            nl.commit()
        if progress is not None:
            progress("tc", 2, 2)
        wait_until_up(None, [name for spec in layers for _, name in spec["links"]])
        if mask is not None:
            for spec in layers:
                Path(rps_path(spec["links"][0][1])).write_text(mask)
        if gate_mask is not None:
            write_sysfs_in(host_ns, {rps_path(object_name(run, p.host_if)): gate_mask
                                     for layer in plan.layers for p in layer.ports})

        gate_of = {gate.name: gate for gate in gates}
        ports = tuple(tuple(LivePort(p.layer, p.neuron, p.sign, object_name(run, p.host_if),
                                     host_index[object_name(run, p.host_if)], gate_of[object_name(run, p.host_if)])
                            for p in layer.ports) for layer in plan.layers)
        fabric = LiveFabric(run, "mininet", host_ns, tuple(object_name(run, layer.inject_if) for layer in plan.layers),
                            ports)
    except BaseException:
        stop()
        raise

    def detach() -> None:
        """Keep the relay host's namespace after this process (and the host's shell) exit:
        name it p2<run>h under /run/netns, so `pi2 down RUN` removes it with the rest."""
        registry.record("netns", name=host_name)
        _bind_namespace(host_ns, host_name)
        state["stopped"] = True  # Mininet must not tear down what pi2 up leaves running

    return Built(fabric, stop=stop, detach=detach)
