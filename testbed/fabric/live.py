"""A FabricPlan built in the kernel: the handle both backends return, and how to get one.

`build_fabric(plan)` builds the plan with a backend (plain namespaces by default, or Mininet),
yields a `LiveFabric` (where to inject each layer's spikes, which host ends to read, the gate
programs with their counters), and removes exactly what it made when the block ends, also on
Ctrl-C or SIGTERM. `bring_up(plan)` builds and leaves the fabric up for `pi2 up`; `pi2 down RUN`
removes it later (testbed.kernel.cleanup.down), and the gate programs stay attached meanwhile
(a cls_bpf filter holds its own reference to its program and maps).

What a backend makes, per layer l of the plan (names ``p2<run>…``, testbed.kernel.names):

    host namespace:  in<l> (injector end) ...................... l<l>n<j><p|m> (neuron-port ends, gates)
                        │ veth                                       │ veth
    fabric:          f<in l> ── bridge sw<l> (flood) ── s<l>n<j><p|m> (delay classes on egress)
"""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from testbed.errors import KernelError, Terminated
from testbed.kernel import cleanup, netns
from testbed.kernel.classifier import SynapseFilter, load_synapse_classifier
from testbed.kernel.gate import GateProgram, load_first_k_gate
from testbed.kernel.names import SUFFIX_MAX, RunRegistry, object_name, release_run
from testbed.plan.fabric_plan import FabricPlan, NeuronPort
from testbed.plan.tc import FilterSpec

BACKENDS = ("netns", "mininet")
GATE_PROGRAM = "first_k_gate"  # the bpf program a plan's gate_tc names (testbed.plan.compiler)
CLASSIFIER_PROGRAM = "synapse_classifier"  # the bpf programs a plan's delay_tc names
FILTER_PROGRAM = "synapse_filter"

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


def gate_loader(run_id: str, port: NeuronPort, loaded: list[GateProgram]) -> Callable[[FilterSpec], int]:
    """The `bpf_loader` for one port's gate tree (testbed.kernel.tc.queue_tree): loads the
    first-K gate named ``p2<run><host end>``, timing out after the tree's `window_us`, and
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


def wait_until_up(ns: str | None, names: Sequence[str], timeout_s: float = 3.0) -> None:
    """Return once every link in `names` (namespace `ns`) reports operstate UP.

    A veth's carrier change reaches the bridge (which forwards only through ports with carrier)
    via linkwatch, immediately when the event is "urgent", else batched up to 1 s later. A veth
    counts as urgent when its ifindex differs from its peer's, so a pair whose ends got equal
    indexes in their two namespaces would silently drop a second of spikes: wait instead.
    """
    deadline = time.monotonic() + timeout_s
    wanted = set(names)
    with netns.iproute(ns) as ipr:
        while True:
            down = {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()
                    if link.get_attr("IFLA_OPERSTATE") != "UP"} & wanted
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


def _interrupt(signum: int, frame: Any) -> None:
    raise Terminated(signum)


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Make SIGTERM raise KeyboardInterrupt (as Ctrl-C does), so `finally` blocks tear down."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    old = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _backend_build(backend: str) -> Callable[..., Built]:
    if backend == "netns":
        from testbed.fabric.netns_backend import build
    elif backend == "mininet":
        from testbed.fabric.mininet_backend import build
    else:
        raise KernelError(f"fabric backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    return build


def _teardown(run_id: str, built: Built | None) -> None:
    try:
        if built is not None:
            built.stop()
    finally:
        cleanup.down(run_id)  # the backend recorded every object before making it


def _build(plan: FabricPlan, backend: str, run_id: str | None, purpose: str, progress: Progress | None,
           **cpus: Sequence[int] | None) -> Built:
    """Build `plan` with `backend` for a new run; a failed build removes what it made."""
    build = _backend_build(backend)
    cleanup.require_root(f"{purpose} ({backend})")
    registry = RunRegistry.create(run_id)
    try:
        return build(plan, registry, progress=progress, **cpus)
    except BaseException:
        _teardown(registry.run_id, None)  # the backend recorded every object before making it
        raise


@contextmanager
def build_fabric(plan: FabricPlan, backend: str = "netns", run_id: str | None = None,
                 progress: Progress | None = None, fabric_cpus: Sequence[int] | None = None,
                 gate_cpus: Sequence[int] | None = None) -> Iterator[LiveFabric]:
    """Build `plan` with `backend`, yield the `LiveFabric`, then remove everything it made.

    `fabric_cpus` steers the fabric's packet work (bridge flooding, classification, htb
    enqueue) onto those CPUs (RPS on the fabric end of every injector link), away from a
    busy-waiting injector; `gate_cpus` steers the gates and the delivery of what they pass
    (RPS on every port's host end) off the CPU whose timers release the spikes. Teardown runs
    on errors, Ctrl-C and SIGTERM too.
    """
    with _sigterm_interrupts():
        built = _build(plan, backend, run_id, "building a fabric", progress, fabric_cpus=fabric_cpus,
                       gate_cpus=gate_cpus)
        try:
            yield built.fabric
        finally:
            _teardown(built.fabric.run_id, built)


def bring_up(plan: FabricPlan, backend: str = "netns", run_id: str | None = None,
             progress: Progress | None = None, fabric_cpus: Sequence[int] | None = None) -> str:
    """Build `plan` and leave it up (gates stay attached); return the run id for `pi2 down`.
    A failed build removes what it made."""
    with _sigterm_interrupts():
        built = _build(plan, backend, run_id, "pi2 up", progress, fabric_cpus=fabric_cpus)
        try:
            built.detach()
        except BaseException:
            _teardown(built.fabric.run_id, built)
            raise
    built.fabric.close_gates()
    release_run(built.fabric.run_id)  # up and idle: not in use by this process any more
    return built.fabric.run_id
