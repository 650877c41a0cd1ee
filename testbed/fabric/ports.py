"""The phase both backends share once their links exist: delay trees, gates, carrier, CPUs.

A backend makes the namespaces, bridges and veth pairs its own way (batched netlink, or Mininet),
then hands `program_ports` the full names of what it made, per layer (`LayerLinks`). That brings
every link up, builds each port's delay tree on its switch end (testbed.kernel.tc, the synapse
programs of testbed.kernel.classifier) and its first-K gate on its host end (testbed.kernel.gate),
and, for shared delay lines, the layer's line tree on the injector link's switch end and its
membership table (or clone fan-out) on the injector's host end (testbed.kernel.lines), one netlink
batch per namespace, waits
until every switch-side link has carrier, and steers the packet work onto the requested CPUs (RPS):

    host side:    inject_host (shared: table/fan-out) ..... port_host[q]  (gate on clsact ingress)
                      │ veth                                    │ veth
    switch side:  inject_switch (shared: splitter, lines) ── bridge (flood) ── port_switch[q]
                                                           (per synapse: delay classes on egress)
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from testbed.errors import KernelError
from testbed.fabric.handle import LivePort, Progress
from testbed.kernel import netns
from testbed.kernel.classifier import SynapseFilter, load_synapse_classifier
from testbed.kernel.gate import GateProgram, load_first_k_gate
from testbed.kernel.lines import LineFanout, LineNeurons, LineProgram, load_line_fanout, load_line_neurons, load_line_splitter
from testbed.kernel.names import SUFFIX_MAX, object_name
from testbed.kernel.netlink import NetlinkBatch
from testbed.kernel.tc import parse_handle, queue_tree
from testbed.plan.fabric_plan import FabricPlan, LayerPlan, NeuronPort
from testbed.plan.tc import FilterSpec

GATE_PROGRAM = "first_k_gate"  # the bpf program a plan's gate_tc names (testbed.plan.compiler)
CLASSIFIER_PROGRAM = "synapse_classifier"  # the bpf programs a plan's delay_tc names
FILTER_PROGRAM = "synapse_filter"
# a shared-lines layer's programs: the splitter, and the membership table or the clone fan-out
SPLITTER_PROGRAM, NEURONS_PROGRAM, FANOUT_PROGRAM = "line_splitter", "line_neurons", "line_fanout"


@dataclass(frozen=True)
class LayerLinks:
    """One layer's links as a backend made them (full names; switch side and host side)."""

    bridge: str
    inject_switch: str  # switch end of the injector link: the fabric CPUs' RPS goes here
    inject_host: str  # where the relay injects the layer's spikes
    port_switch: tuple[str, ...]  # per plan port: carries the delay classes
    port_host: tuple[str, ...]  # per plan port: carries the gate, read by the relay


class ClassifierCache:
    """The programs of the ports' delay trees (testbed.kernel.classifier): synapse classifiers,
    one per layer shared by the layer's ports (a program fd may back any number of filters, each
    holding its own reference), and a synapse filter per port that drops pruned events. The cache
    closes its fds once the build has committed; attached filters keep what they use."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.fds: dict[int, int] = {}
        self.filters: list[SynapseFilter] = []

    def loader(self, port: NeuronPort) -> Callable[[FilterSpec], int]:
        def load(spec: FilterSpec) -> int:
            program = spec.params.get("program")
            if program not in (CLASSIFIER_PROGRAM, FILTER_PROGRAM) or spec.params.get("layer") != port.layer:
                raise KernelError(f"port {port.switch_if}: delay tree names bpf program {program!r} for layer "
                                  f"{spec.params.get('layer')!r}; expected {CLASSIFIER_PROGRAM!r} or {FILTER_PROGRAM!r} "
                                  f"for layer {port.layer}; recompile the plan with `pi2 compile`")
            if program == FILTER_PROGRAM:
                events = int(spec.params.get("events", 0))
                kept = {2 * syn.source + syn.sign for syn in port.synapses}
                dropped = set(range(events)) - kept
                self.filters.append(SynapseFilter(port.layer, events, dropped,
                                                  object_name(self.run_id, ("f" + port.switch_if[1:])[:SUFFIX_MAX])))
                return self.filters[-1].fd
            if port.layer not in self.fds:
                self.fds[port.layer] = load_synapse_classifier(port.layer, object_name(self.run_id, f"c{port.layer}"))
            return self.fds[port.layer]

        return load

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
        for program in self.filters:
            program.close()
        self.filters.clear()


LinePrograms = list[LineProgram | LineFanout | LineNeurons]


def line_loader(run_id: str, layer: LayerPlan, member_ifindex: Sequence[int], loaded: LinePrograms,
                gates: Sequence[GateProgram] = ()) -> Callable[[FilterSpec], int]:
    """The `bpf_loader` for a layer's line tree and fan-out tree: loads the splitter (event →
    its lines' classids), the membership table or the clone fan-out ((event, line) → its members'
    ifindexes, `member_ifindex` per port in plan order, and their neurons, `gates` in plan order)
    from the plan's delay lines, named ``p2<run>s<l>`` / ``p2<run>o<l>``, and appends it to
    `loaded` (the caller closes it once the filters are attached)."""

    def load(spec: FilterSpec) -> int:
        program, params = spec.params.get("program"), spec.params
        if program not in (SPLITTER_PROGRAM, NEURONS_PROGRAM, FANOUT_PROGRAM) or params.get("layer") != layer.index:
            raise KernelError(f"layer {layer.index}: line tree names bpf program {program!r} for layer "
                              f"{params.get('layer')!r}; expected {SPLITTER_PROGRAM!r}, {NEURONS_PROGRAM!r} or "
                              f"{FANOUT_PROGRAM!r}; "
                              f"recompile the plan with `pi2 compile`")
        events, width = int(params["events"]), int(params["lines"])
        if program == SPLITTER_PROGRAM:
            banks = int(params.get("banks", 1))
            classids: dict[int, list[int]] = {}
            for line in layer.lines:  # listed by event, then line number
                for bank in range(banks):
                    classids.setdefault((2 * line.source + line.sign) * banks + bank, []).append(
                        parse_handle(line.classids[bank], f"line {line.classids[bank]}") if line.classids else 0)
            loaded.append(load_line_splitter(layer.index, events, width, classids,
                                             object_name(run_id, f"s{layer.index}"), banks))
        else:
            if len(gates) != len(layer.ports):
                raise KernelError(f"layer {layer.index}: the fan-out needs its {len(layer.ports)} ports' neurons loaded "
                                  f"first, got {len(gates)}")
            members = {(2 * line.source + line.sign) * width + line.line - 1:
                       [(member_ifindex[q], q) for q in line.members] for line in layer.lines}
            name = object_name(run_id, f"o{layer.index}")
            if program == NEURONS_PROGRAM:
                loaded.append(load_line_neurons(layer.index, events, width, members, gates, name))
            else:
                loaded.append(load_line_fanout(layer.index, events, width, members, [g.state_fd for g in gates],
                                               layer.k, gates[0].slots, name))
        return loaded[-1].fd

    return load


def gate_loader(run_id: str, port: NeuronPort, loaded: list[GateProgram]) -> Callable[[FilterSpec], int]:
    """The `bpf_loader` for one port's gate tree (testbed.kernel.tc.queue_tree): loads the
    neuron (first-K gate) named ``p2<run><host end>``, timing out after the tree's `window_us`, and
    appends it to `loaded` (the caller closes it)."""

    def load(spec: FilterSpec) -> int:
        program = spec.params.get("program")
        if program != GATE_PROGRAM:
            raise KernelError(f"port {port.host_if}: bpf program {program!r} is not one the testbed loads "
                              f"(expected {GATE_PROGRAM!r}); recompile the plan with `pi2 compile`")
        k = spec.params.get("k", port.k)
        if k != port.k:
            raise KernelError(f"port {port.host_if}: gate k={k} but the port's k={port.k}; recompile the plan")
        window_us = spec.params.get("window_us")
        gate = load_first_k_gate(k, name=object_name(run_id, port.host_if), drop_one_in=spec.params.get("drop_one_in"),
                                 window_ns=None if window_us is None else int(window_us) * 1000)
        loaded.append(gate)
        return gate.fd

    return load


# UNKNOWN: an up device without carrier detection, e.g. a VXLAN tunnel end (testbed.cluster.tunnels)
CARRIER_STATES = frozenset({"UP", "UNKNOWN"})


def wait_until_up(ns: str | None, names: Sequence[str], timeout_s: float | None = None) -> None:
    """Return once every link in `names` (namespace `ns`) reports operstate UP (or UNKNOWN: tunnels).

    A veth's carrier change reaches the bridge (which forwards only through ports with carrier)
    via linkwatch, immediately when the event is "urgent", else batched up to 1 s later. A veth
    counts as urgent when its ifindex differs from its peer's, so a pair whose ends got equal
    indexes in their two namespaces would silently drop a second of spikes: wait instead.
    Linkwatch takes the links one after another: 310 of them (a conv layer's 288 ports and
    more) took 6.5 s on this 2-core machine at load 4, so the default wait grows with the links.
    """
    timeout_s = 3.0 + 0.02 * len(names) if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout_s
    wanted = set(names)
    with netns.iproute(ns) as ipr:
        while True:
            down = {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()
                    if link.get_attr("IFLA_OPERSTATE") not in CARRIER_STATES} & wanted
            if not down:
                return
            if time.monotonic() > deadline:
                where = "the root namespace" if ns is None else f"namespace {ns}"
                raise KernelError(f"links {sorted(down)[:4]} in {where} are not up after {timeout_s:g} s")
            time.sleep(0.01)


def cpu_mask(cpus: Sequence[int] | None) -> str | None:
    """rps_cpus bitmap (hex) for `cpus`, checked against the CPUs this process may use."""
    if cpus is None:
        return None
    allowed = os.sched_getaffinity(0)
    bad = sorted(set(cpus) - allowed)
    if not cpus or bad:
        raise KernelError(f"fabric_cpus {list(cpus)}: expected a non-empty subset of the CPUs {sorted(allowed)}")
    return format(sum(1 << c for c in set(cpus)), "x")


def rps_path(ifname: str) -> str:
    """The rps_cpus file of a link's receive queue (as its namespace's sysfs shows it)."""
    return f"/sys/class/net/{ifname}/queues/rx-0/rps_cpus"


def _indexes(ns: str | None) -> dict[str, int]:
    return {name: index for index, name in netns.run_in(ns, socket.if_nameindex)}


def _where(name: str, ns: str | None) -> str:
    return name if ns is None else f"{name} (namespace {ns})"


def program_delay_trees(run_id: str, switch_ns: str | None, up: Sequence[str],
                        ports: Sequence[tuple[NeuronPort, str]], fabric_links: Sequence[str] = (),
                        fabric_cpus: Sequence[int] | None = None) -> None:
    """The switch side of a fabric (or of one host's part of it): bring the links `up` (bridges,
    injector and trunk ends) and every port's switch end up, build each port's delay tree on its
    end (one netlink batch), wait until every end has carrier (a veth's once its peer is up too:
    program the host side first), and put RPS on `fabric_links`."""
    mask = cpu_mask(fabric_cpus)
    index = _indexes(switch_ns)
    classifiers = ClassifierCache(run_id)
    with NetlinkBatch(switch_ns) as nl:
        for name in up:
            nl.link_up(index[name], f"link {_where(name, switch_ns)} up")
        for port, name in ports:
            nl.link_up(index[name], f"link {_where(name, switch_ns)} up")
            queue_tree(nl, index[name], port.delay_tc, _where(name, switch_ns), classifiers.loader(port))
        try:
            nl.commit()
        finally:
            classifiers.close()
    bridges = set(up) - set(fabric_links)
    wait_until_up(switch_ns, [name for name in up if name not in bridges] + [name for _, name in ports])
    if mask is not None and fabric_links:
        netns.write_sysfs(switch_ns, {rps_path(name): mask for name in fabric_links})


def program_gates(run_id: str, host_ns: str, inject: Sequence[str], ports: Sequence[tuple[NeuronPort, str]],
                  gates: list[GateProgram], gate_cpus: Sequence[int] | None = None) -> list[LivePort]:
    """The host side: bring the injector ends `inject` and every port's host end up, load and
    attach each port's gate (one netlink batch; each loaded gate is appended to `gates` as it
    loads), put RPS on the host ends; return the ports as built, in the order given."""
    gate_mask = cpu_mask(gate_cpus)
    index = _indexes(host_ns)
    with NetlinkBatch(host_ns) as nl:
        for name in inject:
            nl.link_up(index[name], f"link {_where(name, host_ns)} up")
        for port, name in ports:
            nl.link_up(index[name], f"link {_where(name, host_ns)} up")
            queue_tree(nl, index[name], port.gate_tc, _where(name, host_ns), gate_loader(run_id, port, gates))
        nl.commit()
    if gate_mask is not None:
        netns.write_sysfs(host_ns, {rps_path(name): gate_mask for _, name in ports})
    gate_of = {gate.name: gate for gate in gates}
    return [LivePort(p.layer, p.neuron, p.sign, name, index[name], gate_of[name]) for p, name in ports]


def program_ports(plan: FabricPlan, run_id: str, links: Sequence[LayerLinks], switch_ns: str | None,
                  host_ns: str, gates: list[GateProgram], progress: Progress | None = None,
                  fabric_cpus: Sequence[int] | None = None,
                  gate_cpus: Sequence[int] | None = None) -> tuple[tuple[LivePort, ...], ...]:
    """Bring `links` up and build every port's delay tree and gate (module docstring); return the
    ports as built, per layer in plan order. Each loaded gate is appended to `gates` as it loads,
    so the caller can close them whatever happens.

    `fabric_cpus`: RPS on every injector link's switch end, so flooding, classification and htb
    enqueues leave the injector's CPU; `gate_cpus`: RPS on every port's host end, so the gates
    and the delivery to the relay leave the CPU whose timers release the spikes (see
    testbed.fabric.netns_backend).
    """
    cpu_mask(fabric_cpus), cpu_mask(gate_cpus)  # bad CPU lists fail before anything changes
    # The host side first: a veth has carrier only once both ends are up, which the switch side
    # waits for.
    if progress is not None:
        progress("tc", 0, 2)
    first = len(gates)
    built = program_gates(run_id, host_ns, [names.inject_host for names in links],
                          [(p, n) for layer, names in zip(plan.layers, links) for p, n in zip(layer.ports, names.port_host)],
                          gates, gate_cpus)
    program_lines(plan, run_id, links, switch_ns, host_ns, gates[first:], gate_cpus)
    if progress is not None:
        progress("tc", 1, 2)
    program_delay_trees(run_id, switch_ns, [n for names in links for n in (names.bridge, names.inject_switch)],
                        [(p, n) for layer, names in zip(plan.layers, links) for p, n in zip(layer.ports, names.port_switch)],
                        [names.inject_switch for names in links], fabric_cpus)
    if progress is not None:
        progress("tc", 2, 2)
    it = iter(built)
    return tuple(tuple(next(it) for _ in layer.ports) for layer in plan.layers)


def program_lines(plan: FabricPlan, run_id: str, links: Sequence[LayerLinks], switch_ns: str | None, host_ns: str,
                  gates: Sequence[GateProgram], gate_cpus: Sequence[int] | None = None) -> None:
    """Shared delay lines: each such layer's line tree (splitter and one htb class per line) on its
    injector link's switch end and its membership table or fan-out on the injector's host end, after
    the gates it reads (`gates`: every port's, in plan order), one netlink batch per namespace; its RPS goes
    with the gates it feeds."""
    shared = [(layer, names, q) for layer, names, q in zip(plan.layers, links, first_ports(plan)) if layer.lines]
    program_line_trees(run_id, switch_ns, [(layer, names.inject_switch) for layer, names, _ in shared])
    program_fanouts(run_id, host_ns, [(layer, names.inject_host, names.port_host, gates[q:q + len(layer.ports)])
                                      for layer, names, q in shared], gate_cpus)


def program_line_trees(run_id: str, switch_ns: str | None, layers: Sequence[tuple[LayerPlan, str]]) -> None:
    """The switch side of shared delay lines: per (layer, injector link's switch end), the layer's
    splitter and line classes on that end (one netlink batch); on whatever host holds that end
    (a cluster part's, testbed.fabric.cluster_backend). The programs' fds are closed once the
    batch is committed (or failed): the attached filters keep them."""
    if not layers:
        return
    index = _indexes(switch_ns)

    def add(nl: NetlinkBatch, loaded: LinePrograms) -> None:
        for layer, name in layers:
            queue_tree(nl, index[name], layer.line_tc, _where(name, switch_ns), line_loader(run_id, layer, (), loaded))

    _commit_line_programs(switch_ns, add)


def program_fanouts(run_id: str, host_ns: str,
                    layers: Sequence[tuple[LayerPlan, str, Sequence[str], Sequence[GateProgram]]],
                    gate_cpus: Sequence[int] | None = None) -> None:
    """The host side of shared delay lines: per (layer, injector's host end, its ports' host ends,
    their loaded gates), the membership table or fan-out on the injector's host end, after the
    gates it reads (one netlink batch, whose programs' fds are closed once it is committed); its
    RPS goes with the gates it feeds."""
    if not layers:
        return
    index = _indexes(host_ns)

    def add(nl: NetlinkBatch, loaded: LinePrograms) -> None:
        for layer, inject_host, port_host, gates in layers:
            queue_tree(nl, index[inject_host], layer.fanout_tc, _where(inject_host, host_ns),
                       line_loader(run_id, layer, [index[name] for name in port_host], loaded, gates))

    _commit_line_programs(host_ns, add)
    mask = cpu_mask(gate_cpus)
    if mask is not None:
        netns.write_sysfs(host_ns, {rps_path(inject_host): mask for _, inject_host, _, _ in layers})


def _commit_line_programs(ns: str | None, add: Callable[[NetlinkBatch, LinePrograms], None]) -> None:
    """One netlink batch in `ns` of what `add` queues (its loaders append the line programs they
    load); the programs' fds are closed once the batch is committed or failed: the attached
    filters keep the programs."""
    loaded: LinePrograms = []
    try:
        with NetlinkBatch(ns) as nl:
            add(nl, loaded)
            nl.commit()
    finally:
        for program in loaded:
            program.close()


def first_ports(plan: FabricPlan) -> list[int]:
    """Where each layer's ports start in the plan's ports, all layers in order (as gates are
    loaded: `program_gates` takes every layer's ports in plan order)."""
    sizes = [len(layer.ports) for layer in plan.layers]
    return [sum(sizes[:i]) for i in range(len(sizes))]
