"""What a built fabric is to its users: the handle both backends return.

A backend (testbed.fabric.netns_backend, testbed.fabric.mininet_backend) builds a FabricPlan and
returns a `Built`: the `LiveFabric` (where to inject each layer's spikes, which host ends to read,
the gate programs with their counters) and the backend's own teardown. This module is the
vocabulary the backends and the orchestrator (testbed.fabric.live) share; it imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from testbed.kernel.gate import GateProgram

Progress = Callable[[str, int, int], None]
"""progress(stage, done, total): called as a build advances (stages: namespaces, links, tc, ...)."""


@dataclass(frozen=True, eq=False)
class LivePort:
    """One neuron port as built: its host end (read by the relay) and the gate on it."""

    layer: int
    neuron: int
    sign: int  # SIGN_PLUS (z⁺) or SIGN_MINUS (z⁻)
    ifname: str  # full name of the host end, in the fabric's host namespace
    ifindex: int  # in the host namespace (what a Receiver reports per arrival)
    gate: GateProgram


@dataclass(frozen=True, eq=False)
class LiveFabric:
    """A built plan. `host_netns` is a name under /run/netns or a path like /proc/PID/ns/net;
    testbed.kernel.netns (and so Injector.open / Receiver.open) take either."""

    run_id: str
    backend: str
    host_netns: str
    inject_ifs: tuple[str, ...]  # per layer, full names in the host namespace
    ports: tuple[tuple[LivePort, ...], ...]  # per layer, in plan order
    cluster: Any = None  # the cluster backend's placement and latencies (testbed.cluster.timing.ClusterLayout)

    def gate_counters(self) -> list[list[dict[str, Any]]]:
        """Per layer, one dict per port: its host end and the gate's totals since the last reset."""
        return [[{"ifname": p.ifname, "neuron": p.neuron, "sign": p.sign, **p.gate.counters().to_dict()}
                 for p in layer] for layer in self.ports]

    def reset_gates(self) -> None:
        """Forget every sample id and zero the counters of every gate (between runs)."""
        for layer in self.ports:
            for port in layer:
                port.gate.reset()

    def close_gates(self) -> None:
        """Drop our program/map fds; attached filters keep the gates working."""
        for layer in self.ports:
            for port in layer:
                port.gate.close()


@dataclass
class Built:
    """What a backend returns: the handle, and its own teardown (run before cleanup.down)."""

    fabric: LiveFabric
    stop: Callable[[], None]
    detach: Callable[[], None]  # leave the fabric up after this process exits (pi2 up)
