"""A FabricPlan built in the kernel: which backend builds it, and its life from build to teardown.

`build_fabric(plan)` builds the plan with a backend (plain namespaces by default, or Mininet),
yields a `LiveFabric` (where to inject each layer's spikes, which host ends to read, the gate
programs with their counters), and removes exactly what it made when the block ends, also on
Ctrl-C or SIGTERM. `bring_up(plan)` builds and leaves the fabric up for `pi2 up`; `pi2 down RUN`
removes it later (testbed.kernel.cleanup.down), and the gate programs stay attached meanwhile
(a cls_bpf filter holds its own reference to its program and maps). The handle is
testbed.fabric.handle; what both backends do once their links exist, testbed.fabric.ports.

What a backend makes, per layer l of the plan (names ``p2<run>…``, testbed.kernel.names):

    host namespace:  in<l> (injector end) ...................... l<l>n<j><p|m> (neuron-port ends, gates)
                        │ veth                                       │ veth
    fabric:          f<in l> ── bridge sw<l> (flood) ── s<l>n<j><p|m> (delay classes on egress)
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from testbed.cluster.hosts import ClusterSpec
from testbed.errors import KernelError, Terminated
from testbed.fabric.handle import Built, LiveFabric, Progress
from testbed.kernel import cleanup
from testbed.kernel.names import RunRegistry, release_run
from testbed.plan.fabric_plan import MAX_PORTS_PER_LAYER, FabricPlan

BACKENDS = ("netns", "mininet")


@dataclass(frozen=True)
class ClusterRequest:
    """Spread the fabric over hosts (the Mininet cluster edition, testbed.fabric.cluster_backend):
    `spec` names them (real, or emulated on this machine, which the run then makes), `placement`
    is a placement file (else testbed.plan.placement.place, splitting layers above `max_ports`)."""

    spec: ClusterSpec
    placement: Path | None = None
    max_ports: int | None = None


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


def _cluster_build(request: ClusterRequest) -> Callable[..., Built]:
    """The cluster backend's build for `request`: hosts (emulated ones made in the run), then
    the placement, then the fabric."""
    from testbed.cluster.emulated import emulate_hosts
    from testbed.cluster.hosts import real_hosts
    from testbed.fabric.cluster_backend import build as cluster_build
    from testbed.plan.placement import load_placement, place

    def build(plan: FabricPlan, registry: RunRegistry, **options: Any) -> Built:
        names = request.spec.names
        placement = (place(plan, names, request.max_ports) if request.placement is None
                     else load_placement(request.placement, plan, names))
        hosts = emulate_hosts(registry, len(names)) if request.spec.emulated else real_hosts(request.spec)
        return cluster_build(plan, registry, hosts, placement, **options)

    return build


def fits_one_machine(plan: FabricPlan) -> None:
    """Refuse, before making anything, a plan with a layer of more than `MAX_PORTS_PER_LAYER`
    neuron ports: each is a veth pair and a loaded neuron program (3 fds while the run reads its
    state), built one netlink batch per namespace. A plan may describe more (LeNet-5's conv1:
    6912 ports), which the simulator runs."""
    for layer in plan.layers:
        if len(layer.ports) > MAX_PORTS_PER_LAYER:
            raise KernelError(f"layer {layer.index} has {len(layer.ports)} neuron ports ({layer.n_neurons} neurons); "
                              f"a kernel fabric on one machine builds at most {MAX_PORTS_PER_LAYER} per layer (a veth "
                              f"pair and a neuron program each): run the plan with `pi2 simulate`")


def _build(plan: FabricPlan, backend: str, run_id: str | None, purpose: str, progress: Progress | None,
           cluster: ClusterRequest | None = None, **cpus: Sequence[int] | None) -> Built:
    """Build `plan` with `backend` (or over a cluster) for a new run; a failed build removes what
    it made."""
    if cluster is not None and backend != "mininet":
        raise KernelError(f"--cluster builds with Mininet's cluster edition: use --backend mininet, not {backend}")
    if cluster is None:
        fits_one_machine(plan)
    build = _backend_build(backend) if cluster is None else _cluster_build(cluster)
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
                 gate_cpus: Sequence[int] | None = None, cluster: ClusterRequest | None = None) -> Iterator[LiveFabric]:
    """Build `plan` with `backend`, yield the `LiveFabric`, then remove everything it made.

    `fabric_cpus` steers the fabric's packet work (bridge flooding, classification, htb
    enqueue) onto those CPUs (RPS on the fabric end of every injector link), away from a
    busy-waiting injector; `gate_cpus` steers the gates and the delivery of what they pass
    (RPS on every port's host end) off the CPU whose timers release the spikes. Teardown runs
    on errors, Ctrl-C and SIGTERM too. `cluster`: spread it over hosts (`ClusterRequest`).
    """
    with _sigterm_interrupts():
        built = _build(plan, backend, run_id, "building a fabric", progress, cluster, fabric_cpus=fabric_cpus,
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


def hold_up(plan: FabricPlan, cluster: ClusterRequest, ready: Callable[[LiveFabric], None],
            progress: Progress | None = None, fabric_cpus: Sequence[int] | None = None) -> None:
    """Build `plan` over `cluster`, call `ready`, and keep it up until Ctrl-C or SIGTERM (which
    `pi2 down RUN` sends), then tear it down on every host. A cluster fabric cannot outlive its
    builder as `bring_up`'s does: the cluster edition's remote nodes are shells on ssh sessions
    this process holds (testbed.fabric.cluster_backend)."""
    with build_fabric(plan, "mininet", progress=progress, fabric_cpus=fabric_cpus, cluster=cluster) as fabric:
        ready(fabric)
        while True:
            signal.pause()  # waiting for a signal to end the run, not a delay on any data path
