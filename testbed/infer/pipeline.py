"""`pi2 infer` as one library call: compile, build, stream, decode, report, tear down."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from testbed.errors import NeedsRootError, PlanError
from testbed.infer.autotau import TRIAL_SAMPLES, TauTrial, choose_tau
from testbed.infer.inputs import network_inputs
from testbed.infer.report import InferenceReport, build_report
from testbed.infer.session import KernelRun, run_inference
from testbed.model.netfile import load_network
from testbed.model.network import Pi2Network
from testbed.plan.compiler import (DEFAULT_BANKS, DEFAULT_DELAY_LINES, DEFAULT_LEAD, DEFAULT_PRUNE_MARGIN, DEFAULT_RELAY_US,
                                   compile_network)
from testbed.plan.fabric_plan import FabricPlan, load_plan
from testbed.plan.select import realisation_for

BUNDLED_NETWORK = Path(__file__).resolve().parents[1] / "networks" / "digits-mlp.npz"


def probed_capabilities(purpose: str):  # type: ignore[no-untyped-def]
    """The live kernel's capabilities when we may probe (root), else None."""
    if os.geteuid() != 0:
        return None
    from testbed.kernel.probe import probe_capabilities

    return probe_capabilities(purpose)


def compiler_for(net_path: Path, profile: str, relay_us: float, dataset: str | None, calibration: int,
                 prune_margin: float | None = DEFAULT_PRUNE_MARGIN, loss: float = 0.0,
                 lead: float = DEFAULT_LEAD, delay_lines: str = DEFAULT_DELAY_LINES, banks: int = DEFAULT_BANKS
                 ) -> tuple[Callable[[float], FabricPlan], np.ndarray]:
    """(compile the network file at a τ, the calibration inputs): the profile is resolved and the
    calibration inputs (its data set's training split) loaded once, so several τ cost one probe."""
    net = load_network(net_path)
    caps = probed_capabilities(f"--profile {profile}") if profile == "auto" else None
    real = realisation_for(profile, caps)
    x = network_inputs(net, dataset, "train", calibration).x

    def compile_at(tau_us: float) -> FabricPlan:
        return compile_network(net, real, tau_us, x, net_path, relay_us=relay_us, prune_margin=prune_margin,
                               loss=loss, lead=lead, delay_lines=delay_lines, banks=banks)

    return compile_at, x


def compile_for(net_path: Path, profile: str, tau_us: float, relay_us: float, dataset: str | None,
                calibration: int, prune_margin: float | None = DEFAULT_PRUNE_MARGIN, loss: float = 0.0,
                lead: float = DEFAULT_LEAD, delay_lines: str = DEFAULT_DELAY_LINES,
                banks: int = DEFAULT_BANKS) -> FabricPlan:
    """Compile a network file, calibrating windows (and pruning) on its data set's training split;
    `loss`: drop probability per spike at each neuron port (profiles whose loss kind the compiler builds)."""
    compile_at, _ = compiler_for(net_path, profile, relay_us, dataset, calibration, prune_margin, loss, lead,
                                 delay_lines, banks)
    return compile_at(tau_us)


def network_of(plan: FabricPlan, source: Path) -> Pi2Network:
    """The network a plan was compiled from, checked by hash against the plan."""
    path = plan.network.get("path")
    if not path or not Path(path).is_file():
        raise PlanError(f"{source}: its network file {path!r} is missing; recompile with `pi2 compile NET`")
    if hashlib.sha256(Path(path).read_bytes()).hexdigest() != plan.network.get("sha256"):
        raise PlanError(f"{source}: network {path} changed since the plan was compiled; recompile it")
    return load_network(path)


@dataclass(frozen=True)
class InferOptions:
    dataset: str | None = None
    limit: int | None = None
    backend: str = "netns"
    profile: str = "auto"
    tau_us: float | None = None  # None: measure this machine and pick (testbed.infer.autotau)
    relay_us: float = DEFAULT_RELAY_US
    prune_margin: float | None = DEFAULT_PRUNE_MARGIN
    lead: float = DEFAULT_LEAD
    loss: float = 0.0  # drop probability per spike at each neuron port
    delay_lines: str = DEFAULT_DELAY_LINES  # "shared", "shared-clone" or "per-synapse" (testbed.plan.compiler)
    banks: int = DEFAULT_BANKS  # delay-line banks: samples in flight per layer (testbed.plan.compiler)
    calibration: int = 500
    inject_cpu: int | None = 0
    pcap_dir: Path | None = None
    plots_dir: Path | None = None
    cluster: Any = None  # testbed.fabric.live.ClusterRequest: spread the fabric over hosts


def infer(source: Path, options: InferOptions, progress: Callable[[int], None] | None = None,
          started: Callable[[FabricPlan, int], None] | None = None,
          tried: Callable[[TauTrial], None] | None = None) -> tuple[InferenceReport, KernelRun, list[Path]]:
    """Classify a data set's test samples on a live kernel fabric; returns the report, the raw run
    and the files written (pcaps, plots). A plan file runs as compiled; a network is compiled at
    `options.tau_us`, or, when that is None, at the τ `choose_tau` measures this machine for (each
    trial reported to `tried`). Every fabric is torn down on return, error or Ctrl-C."""
    if os.geteuid() != 0:
        raise NeedsRootError("pi2 infer builds namespaces, veths, bridges and qdiscs: run it with sudo")
    from testbed.fabric.live import build_fabric

    choice = None
    if source.suffix == ".json":
        plan = load_plan(source)
        net = network_of(plan, source)
    else:
        net = load_network(source)
        compile_at, x_calibration = compiler_for(source, options.profile, options.relay_us, options.dataset,
                                                 options.calibration, options.prune_margin, options.loss,
                                                 options.lead, options.delay_lines, options.banks)
        if options.tau_us is None:
            measure = trial_runner(x_calibration[:TRIAL_SAMPLES], options.backend, options.inject_cpu, options.cluster)
            choice = choose_tau(compile_at, measure, x_calibration, tried)
        plan = compile_at(options.tau_us if choice is None else choice.tau_us)
    inputs = network_inputs(net, options.dataset, "test", options.limit)
    x = inputs.x.reshape(len(inputs.x), -1)
    if started is not None:
        started(plan, len(x))
    with build_fabric(plan, options.backend, cluster=options.cluster, **cpu_placement(options.inject_cpu)) as fabric:
        run = run_inference(plan, fabric, x, inject_cpu=options.inject_cpu,
                            keep_frames=options.pcap_dir is not None, progress=progress)
        counters = fabric.gate_counters()
    report = build_report(plan, net, run, x, inputs.y, inputs.dataset, fabric.backend, counters, choice, fabric.cluster)
    return report, run, write_outputs(plan, run, options)


def trial_runner(x: np.ndarray, backend: str, inject_cpu: int | None,
                 cluster: Any = None) -> Callable[[FabricPlan], KernelRun]:
    """`choose_tau`'s measure: build a plan's fabric, stream the samples `x` through it, tear it down."""
    from testbed.fabric.live import build_fabric

    def measure(plan: FabricPlan) -> KernelRun:
        with build_fabric(plan, backend, cluster=cluster, **cpu_placement(inject_cpu)) as fabric:
            return run_inference(plan, fabric, x, inject_cpu=inject_cpu)

    return measure


def cpu_placement(inject_cpu: int | None) -> dict[str, list[int] | None]:
    """build_fabric's `fabric_cpus` and `gate_cpus` for a relay pinned to `inject_cpu`.

    The fabric's packet work (flooding, classification, shaping) goes to the other CPUs: a send()
    would otherwise run every flooded copy's work before it returns, delaying the next injection
    (measured: 0.26 ms per spike into 32 ports; 0.03 ms with RPS to the other CPU). The relay's
    CPU takes the gates and the delivery of what they pass, so the fabric CPU's time goes to the
    htb timers that release spikes (bundled network: arrival error vs simulation median 231 →
    151 µs). With one CPU there is nothing to steer."""
    others = [] if inject_cpu is None else sorted(os.sched_getaffinity(0) - {inject_cpu})
    if not others:
        return {"fabric_cpus": None, "gate_cpus": None}
    return {"fabric_cpus": others, "gate_cpus": [inject_cpu]}


def write_outputs(plan: FabricPlan, run: KernelRun, options: InferOptions) -> list[Path]:
    """Pcaps (received: what the gates passed, at kernel RX time; injected: at kernel TX time) and plots."""
    written: list[Path] = []
    if options.pcap_dir is not None:
        from testbed.traffic.pcap import write_pcap

        options.pcap_dir.mkdir(parents=True, exist_ok=True)
        stamps = [t for capture in run.arrivals for t in capture["t_ns"].tolist()]
        received = list(zip(stamps, run.frames))
        for name, stamped in (("received.pcap", received), ("injected.pcap", run.injected)):
            stamped = sorted(stamped, key=lambda pair: pair[0])
            write_pcap(options.pcap_dir / name, [t for t, _ in stamped], [f for _, f in stamped])
            written.append(options.pcap_dir / name)
    if options.plots_dir is not None:
        from testbed.infer.plots import error_histogram, raster

        options.plots_dir.mkdir(parents=True, exist_ok=True)
        written.append(raster(plan, run, 0, options.plots_dir / "raster-sample0.png"))
        written.append(error_histogram(plan, run, options.plots_dir / "arrival-error.png"))
    return written
