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
host ends as the netns backend does (testbed.fabric.ports), sets forward_delay and ageing to 0 (hub-like flooding) and
turns IPv6 off on every link. Mininet runs one shell command per link (its way; ≈10–30 ms each).

Teardown is `net.stop()` plus the run's own cleanup; never `mn -c` or mininet.clean, which kill
processes by name and delete every ``*-ethN`` link on the machine. Mininet's import also raises
a few root-namespace limits once per process (fixLimits: file, ARP-cache and buffer sizes, only
ever upwards), as `mn` does.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Sequence

from testbed.errors import KernelError
from testbed.fabric.handle import Built, LiveFabric, Progress
from testbed.fabric.ports import LayerLinks, cpu_mask, program_ports
from testbed.kernel import netns
from testbed.kernel.gate import GateProgram
from testbed.kernel.names import RunRegistry, object_name
from testbed.plan.fabric_plan import FabricPlan

HOST_SUFFIX = "h"


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


def build(plan: FabricPlan, registry: RunRegistry, progress: Progress | None = None,
          fabric_cpus: Sequence[int] | None = None, gate_cpus: Sequence[int] | None = None) -> Built:
    """Build `plan` with Mininet for `registry`'s run. Bridges, links and helper pids are recorded
    before they exist, so cleanup.down(run) removes them even if Mininet fails half-way."""
    mn_net, mn_nodelib = _mininet()
    from testbed.fabric.pi2_layers import Pi2LayersTopo
    cpu_mask(fabric_cpus), cpu_mask(gate_cpus)  # bad CPU lists fail before Mininet starts anything
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

        links = [LayerLinks(spec["switch"], spec["links"][0][1], spec["links"][0][0],
                            tuple(switch for _, switch in spec["links"][1:]),
                            tuple(host for host, _ in spec["links"][1:])) for spec in layers]
        ports = program_ports(plan, run, links, None, host_ns, gates, progress, fabric_cpus, gate_cpus)
        fabric = LiveFabric(run, "mininet", host_ns, tuple(names.inject_host for names in links), ports)
    except BaseException:
        stop()
        raise

    def detach() -> None:
        """Keep the relay host's namespace after this process (and the host's shell) exit:
        name it p2<run>h under /run/netns, so `pi2 down RUN` removes it with the rest."""
        registry.record("netns", name=host_name)
        netns.attach(host_ns, host_name)
        state["stopped"] = True  # Mininet must not tear down what pi2 up leaves running

    return Built(fabric, stop=stop, detach=detach)
